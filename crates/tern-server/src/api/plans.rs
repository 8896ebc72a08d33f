//! Plans and attempts: what the server would send to a device, and sending it.

use super::*;

#[derive(Deserialize, Default)]
pub(super) struct BundleQuery {
    /// The plan's bytes on the air, typed by the operator: required for cellular devices.
    confirm_air_bytes: Option<u64>,
}

/// `POST /api/devices/{id}/attempts`: the body is a signed release bundle (`tern release
/// build`). The same as making a plan from the bundle and starting it at once: only what
/// the device does not run is sent, in stages that fit it, and a cellular device's plan
/// starts only with `?confirm_air_bytes=N` equal to its estimate (else `409
/// confirmation_required`, and the plan stays proposed).
pub(super) async fn start_attempt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<BundleQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("bundle refused: {rejection}"))
    })?;
    let device = device_or_404(&state, &id).await?;
    let plan = state.planner.build_from_bundle(&device, &body).await?;
    let (_, attempt) = state.planner.start(plan.id, query.confirm_air_bytes, PlanOrigin::Operator).await?;
    Ok((StatusCode::CREATED, Json(attempt)))
}

pub(super) async fn show_attempt(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<AttemptRecord>> {
    let id = numeric_id(id, "attempt")?;
    let attempt = state.store.get_attempt(id).await?;
    attempt.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no attempt {id}")))
}

pub(super) async fn cancel_attempt(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<AttemptRecord>> {
    let id = numeric_id(id, "attempt")?;
    let attempt = state
        .store
        .get_attempt(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no attempt {id}")))?;
    if attempt.finished {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "finished",
            format!("attempt {id} is already {}", attempt.state),
        ));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    state.updates.send(UpdateInput::Cancel(id, reply)).await;
    if !answer.await.unwrap_or(false) {
        return Err(ApiError::new(StatusCode::CONFLICT, "not_in_flight", format!("attempt {id} is not in flight")));
    }
    // The update task has stored the cancellation before answering.
    let attempt = state.store.get_attempt(id).await?.unwrap_or(attempt);
    Ok(Json(attempt))
}

#[derive(Deserialize)]
pub(super) struct CreatePlan {
    /// Catalog SHA-256s of the modules wanted; empty or absent: heal only (or the Device
    /// OS release `device_os` names).
    #[serde(default)]
    modules: Vec<String>,
    /// A Device OS release to bring the device to ("2.3.1", or a system module version).
    #[serde(default)]
    device_os: Option<String>,
    /// Allow Device OS modules older than the installed ones.
    #[serde(default)]
    allow_downgrade: bool,
}

/// `POST /api/devices/{id}/plans`: computes the install plan for the modules asked for
/// (with every missing dependency, whole Device OS releases, split into stages that fit
/// the device) against what the device last described. The body is JSON, or a signed
/// release bundle (`tern release build`: only what the device does not run is planned).
/// Nothing is sent until the plan is started.
pub(super) async fn create_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PlanRecord>)> {
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("plan request refused: {rejection}"))
    })?;
    let device = device_or_404(&state, &id).await?;
    if body.starts_with(&tern_image::bundle::MAGIC) {
        let plan = state.planner.build_from_bundle(&device, &body).await?;
        return Ok((StatusCode::CREATED, Json(plan)));
    }
    let body: CreatePlan = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the plan request is not the expected JSON: {e}"))
    })?;
    if let Some(bad) = body.modules.iter().find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_module_hash",
            format!("{bad:?} is not a SHA-256 (64 hex digits)"),
        ));
    }
    let options = PlanOptions { device_os: body.device_os, allow_downgrade: body.allow_downgrade };
    let plan = state.planner.build(&device, &body.modules, PlanOrigin::Operator, &options).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// How many plans `GET /api/devices/{id}/plans` lists.
pub(super) const PLANS_SHOWN: u32 = 20;

pub(super) async fn list_plans(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<PlanRecord>>> {
    device_or_404(&state, &id).await?;
    Ok(Json(state.store.device_plans(&id, PLANS_SHOWN).await?))
}

pub(super) async fn show_plan(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<PlanRecord>> {
    let id = numeric_id(id, "plan")?;
    let plan = state.store.get_plan(id).await?;
    plan.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plan {id}")))
}

#[derive(Deserialize, Default)]
pub(super) struct StartPlan {
    /// The plan's `air_bytes`, typed by the operator: required for cellular devices.
    confirm_air_bytes: Option<u64>,
}

/// `POST /api/plans/{id}/start`: sends a proposed plan to its device as an update attempt.
/// The body is optional (Wi-Fi plans need no confirmation); when present it is JSON.
pub(super) async fn start_plan(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    let id = numeric_id(id, "plan")?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let body = body.map_err(|rejection| bad(rejection.body_text()))?;
    let body: StartPlan = if body.iter().all(u8::is_ascii_whitespace) {
        StartPlan::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("the start request is not the expected JSON: {e}")))?
    };
    let (_, attempt) = state.planner.start(id, body.confirm_air_bytes, PlanOrigin::Operator).await?;
    Ok((StatusCode::CREATED, Json(attempt)))
}
