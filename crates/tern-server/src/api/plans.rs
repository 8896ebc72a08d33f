//! Plans and attempts: what the server would send to a device, and sending it.

use super::*;

#[derive(Deserialize, Default)]
pub(super) struct BundleQuery {
    /// The plan's bytes on the air, typed by the operator: required for cellular devices.
    confirm_air_bytes: Option<u64>,
}

/// The header that makes a start request idempotent.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The client key a request carries (`Idempotency-Key`): 1 to 200 visible ASCII
/// characters, else `400 bad_idempotency_key`.
fn client_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )),
    }
}

/// The attempt that carries plan `plan`, if it was started (found through the attempt's
/// plan id too, in case the server stopped between creating the attempt and noting it on
/// the plan).
async fn attempt_of_plan(state: &AppState, plan: &PlanRecord) -> ApiResult<Option<AttemptRecord>> {
    if let Some(id) = plan.attempt {
        return Ok(state.store.get_attempt(id).await?);
    }
    let recent = state.store.device_attempts(&plan.device, 50).await?;
    Ok(recent.into_iter().find(|a| a.plan_id == Some(plan.id)))
}

/// A request whose client key was seen before: the answer is about the same plan — its
/// attempt (`200`) if it was started, else it is started now (`201`), as the first
/// request would have done.
async fn replay(
    state: &AppState,
    device: &str,
    key: &ClientKeyRecord,
    confirm_air_bytes: Option<u64>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    if key.device != device {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            format!("Idempotency-Key {} was used for device {}, not {device}", key.key, key.device),
        ));
    }
    let plan = state.store.get_plan(key.plan).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plan {} (Idempotency-Key {})", key.plan, key.key))
    })?;
    if let Some(attempt) = attempt_of_plan(state, &plan).await? {
        return Ok((StatusCode::OK, Json(attempt)));
    }
    if plan.status == PlanStatus::Started {
        // Claimed but without an attempt: a request with this key is creating it right
        // now, or the server stopped between the claim and the attempt. Give the first a
        // moment; then the plan is an orphan of the second and goes back to proposed.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = state.store.get_plan(plan.id).await?.unwrap_or_else(|| plan.clone());
            if let Some(attempt) = attempt_of_plan(state, &now).await? {
                return Ok((StatusCode::OK, Json(attempt)));
            }
        }
        let mut writes = state.store.begin().await?;
        writes.transition_plan(plan.id, PlanStatus::Started, PlanStatus::Proposed, None).await?;
        writes.commit().await?;
    }
    match state.planner.start(plan.id, confirm_air_bytes, PlanOrigin::Operator).await {
        Ok((_, attempt)) => Ok((StatusCode::CREATED, Json(attempt))),
        Err(err) => {
            // A concurrent request with the same key may have started it meanwhile.
            let plan = state.store.get_plan(key.plan).await?.unwrap_or(plan);
            match attempt_of_plan(state, &plan).await? {
                Some(attempt) => Ok((StatusCode::OK, Json(attempt))),
                None => Err(err.into()),
            }
        }
    }
}

/// Records `key` for `plan` and starts the plan; a request that recorded the same key
/// first wins, and this one answers as its replay.
async fn start_keyed(
    state: &AppState,
    device: &str,
    key: Option<String>,
    plan: i64,
    confirm_air_bytes: Option<u64>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    if let Some(key) = key {
        let record = ClientKeyRecord { key, device: device.to_owned(), plan, created_at: now_millis() };
        let mut writes = state.store.begin().await?;
        let claimed = writes.claim_client_key(&record).await?;
        writes.commit().await?;
        if claimed.plan != plan {
            return replay(state, device, &claimed, confirm_air_bytes).await;
        }
    }
    let (_, attempt) = state.planner.start(plan, confirm_air_bytes, PlanOrigin::Operator).await?;
    Ok((StatusCode::CREATED, Json(attempt)))
}

/// `POST /api/devices/{id}/attempts`: the body is a signed release bundle (`tern release
/// build`). The same as making a plan from the bundle and starting it at once: only what
/// the device does not run is sent, in stages that fit it, and a cellular device's plan
/// starts only with `?confirm_air_bytes=N` equal to its estimate (else `409
/// confirmation_required`, and the plan stays proposed). With an `Idempotency-Key` header,
/// a request repeating a key already seen answers with the attempt the first one started
/// (`200`) instead of making another plan.
pub(super) async fn start_attempt(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bundle: Result<Query<BundleQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    let query = super::query(bundle)?;
    let key = client_key(&headers)?;
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("bundle refused: {rejection}"))
    })?;
    if let Some(seen) = match &key {
        Some(key) => state.store.get_client_key(key).await?,
        None => None,
    } {
        return replay(&state, &id, &seen, query.confirm_air_bytes).await;
    }
    let device = device_or_404(&state, &id).await?;
    let plan = state.planner.build_from_bundle(&device, &body).await?;
    start_keyed(&state, &device.id, key, plan.id, query.confirm_air_bytes).await
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PlanRecord>)> {
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("plan request refused: {rejection}"))
    })?;
    let device = device_or_404(&state, &id).await?;
    // A bundle is sent as `application/octet-stream` (the document says so); one recognised
    // by its magic is taken whatever its content type, as `tern` sent it before.
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/octet-stream"));
    if octets || body.starts_with(&tern_image::bundle::MAGIC) {
        let plan = state.planner.build_from_bundle(&device, &body).await?;
        return Ok((StatusCode::CREATED, Json(plan)));
    }
    let body: CreatePlan = json_object_from_slice(&body).map_err(|e| {
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

#[derive(Deserialize)]
pub(super) struct PlanFilter {
    /// Only plans in this status.
    status: Option<String>,
}

/// `GET /api/devices/{id}/plans`: the device's plans, newest first, one page (`limit`
/// default [`PLANS_SHOWN`], `offset`), optionally in one status.
pub(super) async fn list_plans(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<PlanFilter>, QueryRejection>,
) -> ApiResult<Response> {
    let explicit = page.as_ref().is_ok_and(|Query(p)| p.limit.is_some());
    let (limit, offset) = page_query(page)?;
    let limit = if explicit { limit } else { PLANS_SHOWN };
    let filter = query(filter)?;
    if let Some(status) = filter.status.as_deref() {
        if PlanStatus::parse(status).is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_status",
                format!("plan status {status} is unknown"),
            ));
        }
    }
    device_or_404(&state, &id).await?;
    let wanted = u32::try_from(offset).unwrap_or(u32::MAX).saturating_add(limit).saturating_add(1);
    let plans: Vec<PlanRecord> = state
        .store
        .device_plans(&id, if filter.status.is_some() { u32::MAX } else { wanted })
        .await?
        .into_iter()
        .filter(|p| filter.status.as_deref().is_none_or(|s| p.status.name() == s))
        .collect();
    Ok(offset_page(&uri, plans, limit, offset))
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
/// The body is optional (Wi-Fi plans need no confirmation); when present it is JSON. With
/// an `Idempotency-Key` header, repeating the request with the same key answers with the
/// attempt the first one started (`200`), where a repeat without a key is `409
/// plan_not_proposed`.
pub(super) async fn start_plan(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<AttemptRecord>)> {
    let id = numeric_id(id, "plan")?;
    let key = client_key(&headers)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let body = body.map_err(|rejection| bad(rejection.body_text()))?;
    let body: StartPlan = if body.iter().all(u8::is_ascii_whitespace) {
        StartPlan::default()
    } else {
        json_object_from_slice(&body).map_err(|e| bad(format!("the start request is not the expected JSON: {e}")))?
    };
    let Some(key) = key else {
        let (_, attempt) = state.planner.start(id, body.confirm_air_bytes, PlanOrigin::Operator).await?;
        return Ok((StatusCode::CREATED, Json(attempt)));
    };
    let plan = state
        .store
        .get_plan(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plan {id}")))?;
    if let Some(seen) = state.store.get_client_key(&key).await? {
        if seen.plan != id {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!("Idempotency-Key {key} was used for plan {}, not {id}", seen.plan),
            ));
        }
        return replay(&state, &plan.device, &seen, body.confirm_air_bytes).await;
    }
    start_keyed(&state, &plan.device, Some(key), id, body.confirm_air_bytes).await
}
