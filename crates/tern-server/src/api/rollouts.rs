//! Rollouts: start, watch, pause, resume, abort, approve over budget.

use super::*;
use crate::rollouts::{Control, NewRollout, RolloutError, RolloutView};
use crate::store::RolloutRecord;
use tern_rollout::{PhaseSize, Spec};

impl From<RolloutError> for ApiError {
    fn from(err: RolloutError) -> Self {
        match err {
            RolloutError::NotFound(message) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            RolloutError::Invalid { code, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            RolloutError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            RolloutError::Store(err) => err.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRollout {
    product: u32,
    group: Option<String>,
    release: u32,
    /// Cumulative phases: `"10"` (devices) or `"25%"`; the last must be `"100%"`.
    phases: Option<Vec<String>>,
    failure_threshold_percent: Option<u32>,
    min_finished: Option<u32>,
    max_concurrent: Option<u32>,
    rate_per_minute: Option<u32>,
    soak_seconds: Option<u64>,
    expiry_hours: Option<u64>,
    busy_backoff_seconds: Option<u64>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    unprocessable("bad_rollout", message)
}

/// Parses a phase: `10` (devices) or `25%`.
pub(super) fn parse_phase(text: &str) -> Result<PhaseSize, String> {
    let text = text.trim();
    match text.strip_suffix('%') {
        Some(p) => match p.trim().parse::<u8>() {
            Ok(p) if (1..=100).contains(&p) => Ok(PhaseSize::Percent(p)),
            _ => Err(format!("phase {text:?}: a percentage is 1% to 100%")),
        },
        None => match text.parse::<u32>() {
            Ok(n) if n > 0 => Ok(PhaseSize::Count(n)),
            _ => Err(format!("phase {text:?}: a number of devices (10) or a percentage (25%)")),
        },
    }
}

fn spec_of(body: &StartRollout) -> ApiResult<Spec> {
    let mut spec = Spec::default();
    if let Some(phases) = &body.phases {
        spec.phases = phases.iter().map(|p| parse_phase(p)).collect::<Result<_, _>>().map_err(invalid)?;
    }
    if let Some(t) = body.failure_threshold_percent {
        spec.failure_threshold_percent = u8::try_from(t)
            .ok()
            .filter(|t| *t <= 100)
            .ok_or_else(|| invalid(format!("failure threshold {t}%: 0 to 100")))?;
    }
    spec.min_finished = body.min_finished.unwrap_or(spec.min_finished);
    spec.max_concurrent = body.max_concurrent.unwrap_or(spec.max_concurrent);
    spec.rate_per_minute = body.rate_per_minute.unwrap_or(spec.rate_per_minute);
    spec.soak_ms = body.soak_seconds.map_or(spec.soak_ms, |s| s.saturating_mul(1000));
    spec.expiry_ms = body.expiry_hours.map_or(spec.expiry_ms, |h| h.saturating_mul(3_600_000));
    spec.busy_backoff_ms = body.busy_backoff_seconds.map_or(spec.busy_backoff_ms, |s| s.saturating_mul(1000));
    spec.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(spec)
}

/// `POST /api/rollouts`.
pub(super) async fn start_rollout(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    JsonBody(body): JsonBody<StartRollout>,
) -> ApiResult<(StatusCode, Json<RolloutView>)> {
    let spec = spec_of(&body)?;
    let new = NewRollout { product: body.product, group: body.group.clone(), release: body.release, spec };
    let record = state.rollouts.create(new, &operator.0).await?;
    Ok((StatusCode::CREATED, Json(state.rollouts.view(record.id).await?)))
}

#[derive(Deserialize)]
pub(super) struct RolloutFilter {
    /// Only rollouts in this status.
    status: Option<String>,
    /// Only rollouts of this product.
    product: Option<u32>,
}

/// `GET /api/rollouts`: one page (`limit`, `offset`), oldest first, optionally in one
/// status or of one product.
pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<RolloutFilter>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    let filter = query(filter)?;
    let rollouts: Vec<RolloutRecord> = state
        .store
        .list_rollouts()
        .await?
        .into_iter()
        .filter(|r| filter.status.as_deref().is_none_or(|s| r.status.name() == s))
        .filter(|r| filter.product.is_none_or(|p| r.product == p))
        .collect();
    Ok(offset_page(&uri, rollouts, limit, offset))
}

pub(super) async fn show_rollout(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<RolloutView>> {
    let id = numeric_id(id, "rollout")?;
    Ok(Json(state.rollouts.view(id).await?))
}

/// `GET /api/rollouts/{id}/members`: every member with its phase, state and attempt.
/// `GET /api/rollouts/{id}/members`: one page (`limit`, `offset`), by device id.
pub(super) async fn list_members(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = numeric_id(id, "rollout")?;
    let (limit, offset) = page_query(page)?;
    state.rollouts.get(id).await?;
    Ok(offset_page(&uri, state.store.rollout_members(id).await?, limit, offset))
}

async fn control(state: AppState, id: i64, action: Control, by: &str) -> ApiResult<Json<RolloutView>> {
    state.rollouts.control(id, action, by).await?;
    Ok(Json(state.rollouts.view(id).await?))
}

pub(super) async fn pause_rollout(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<RolloutView>> {
    control(state, numeric_id(id, "rollout")?, Control::Pause, &operator.0).await
}

pub(super) async fn resume_rollout(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<RolloutView>> {
    control(state, numeric_id(id, "rollout")?, Control::Resume, &operator.0).await
}

pub(super) async fn abort_rollout(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<RolloutView>> {
    control(state, numeric_id(id, "rollout")?, Control::Abort, &operator.0).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Approve {
    device: String,
}

/// `POST /api/rollouts/{id}/approve`: lets one device's update exceed its data budget.
pub(super) async fn approve_member(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    id: Result<Path<i64>, PathRejection>,
    JsonBody(body): JsonBody<Approve>,
) -> ApiResult<Json<RolloutView>> {
    let id = numeric_id(id, "rollout")?;
    state.rollouts.approve(id, &body.device, &operator.0).await?;
    Ok(Json(state.rollouts.view(id).await?))
}
