//! The HTTP JSON API (axum). The OpenAPI document (`/api/openapi.json`) lists every route.
//!
//! Every route but `/api/health` and `/api/openapi.json` needs `Authorization: Bearer
//! <token>`. Errors are `{"error": {"code": "...", "message": "..."}}` with a fitting
//! status; storage failures are logged and reported as `500 internal` without details.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tern_proto::{Action, Command, Message, MessageKind};
use tokio::sync::broadcast;

use crate::auth::{self, now_millis};
use crate::blob::BlobStore;
use crate::config::Config;
use crate::events::EventHub;
use crate::link::{DeviceLink, LinkError};
use crate::plans::{PlanError, PlanOptions, Planner};
use crate::platform;
use crate::store::{
    AttemptRecord, ClientKeyRecord, Connectivity, DependencyRecord, Event, ModuleRecord, NewDevice, PlanOrigin,
    PlanRecord, PlanStatus, Policy, Store, StoreError,
};
use crate::updates::{UpdateInput, Updates};
use crate::uplink::{integrity_name, UplinkCounters};

mod devices;
mod events;
mod fleet;
mod modules;
mod plans;
mod rollouts;
pub mod types;

use devices::*;
use events::*;
use fleet::*;
pub(crate) use modules::module_record;
use modules::*;
use plans::*;
use rollouts::*;

/// The OpenAPI 3.1 document served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything a request handler may use.
#[derive(Clone)]
pub struct AppState {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Module files.
    pub blobs: Arc<dyn BlobStore>,
    /// The event stream.
    pub hub: EventHub,
    /// The link to devices.
    pub link: Arc<dyn DeviceLink>,
    /// Uplink counters.
    pub uplink: Arc<UplinkCounters>,
    /// The update task.
    pub updates: Updates,
    /// Install plans.
    pub planner: Planner,
    /// The rollout pump.
    pub rollouts: crate::rollouts::Rollouts,
    /// The configuration in force.
    pub config: Arc<Config>,
}

/// An API error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{what} exists already"))
            }
            StoreError::Backend(msg) => {
                tracing::error!("storage: {msg}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal storage error")
            }
        }
    }
}

impl From<crate::blob::BlobError> for ApiError {
    fn from(err: crate::blob::BlobError) -> Self {
        tracing::error!("blobs: {err}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal storage error")
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(err: serde_json::Error) -> Self {
        tracing::error!("json: {err}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// The operator a request acts for: the name of its token (recorded in events).
#[derive(Clone, Debug)]
pub(super) struct Operator(pub String);

/// A JSON request body. A body that is not the JSON a route expects is `400 bad_request`
/// in the API's error format, naming what is wrong (axum's own rejection is plain text).
pub(super) struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| JsonBody(value))
            .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text()))
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let max_upload = state.config.max_module_size;
    let protected = Router::new()
        .route("/api/modules", post(upload_module).get(list_modules).layer(DefaultBodyLimit::max(max_upload)))
        .route("/api/modules/{sha256}", get(show_module))
        .route("/api/modules/{sha256}/statement", put(put_statement))
        .route("/api/devices", post(add_device).get(list_devices))
        .route("/api/devices/{id}", get(show_device).patch(set_policy))
        .route(
            "/api/devices/{id}/plans",
            post(create_plan).get(list_plans).layer(DefaultBodyLimit::max(max_upload.saturating_mul(4))),
        )
        .route("/api/plans/{id}", get(show_plan))
        .route("/api/plans/{id}/start", post(start_plan))
        .route("/api/devices/{id}/commands", post(send_command))
        .route(
            "/api/devices/{id}/attempts",
            post(start_attempt).layer(DefaultBodyLimit::max(max_upload.saturating_mul(4))),
        )
        .route("/api/attempts/{id}", get(show_attempt))
        .route("/api/attempts/{id}/cancel", post(cancel_attempt))
        .route("/api/devices/{id}/fleet", patch(set_membership))
        .route("/api/products", post(create_product).get(list_products))
        .route("/api/products/{id}", get(show_product))
        .route("/api/products/{id}/releases", post(create_release).get(list_releases))
        .route("/api/products/{id}/releases/{number}", get(show_release))
        .route("/api/groups", get(list_groups))
        .route("/api/groups/{name}", put(put_group).get(show_group).delete(delete_group))
        .route("/api/rollouts", post(start_rollout).get(list_rollouts))
        .route("/api/rollouts/{id}", get(show_rollout))
        .route("/api/rollouts/{id}/members", get(list_members))
        .route("/api/rollouts/{id}/pause", post(pause_rollout))
        .route("/api/rollouts/{id}/resume", post(resume_rollout))
        .route("/api/rollouts/{id}/abort", post(abort_rollout))
        .route("/api/rollouts/{id}/approve", post(approve_member))
        .route("/api/events", get(events))
        .route("/api/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

pub(super) async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token").into_response();
    };
    match state.store.find_token(&auth::hash_secret(token)).await {
        Ok(Some(record)) => {
            let mut request = request;
            request.extensions_mut().insert(Operator(record.name));
            next.run(request).await
        }
        Ok(None) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token").into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub(super) async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "link": state.link.stats(), "uplink": state.uplink.snapshot() }))
}

/// Device `id`, or `404 not_found` in the API's error format.
pub(super) async fn device_or_404(state: &AppState, id: &str) -> ApiResult<crate::store::DeviceRecord> {
    state
        .store
        .get_device(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")))
}

pub(super) fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// A numeric id from the path; one that is not a number names nothing (`404`, in the API's
/// error format rather than axum's plain-text rejection).
pub(super) fn numeric_id(id: Result<Path<i64>, PathRejection>, what: &str) -> ApiResult<i64> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with that id")))
}

impl From<PlanError> for ApiError {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::NotFound(message) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            PlanError::Rejected { code, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            PlanError::Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            PlanError::Store(err) => err.into(),
            PlanError::Blob(err) => err.into(),
        }
    }
}
