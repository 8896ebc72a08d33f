//! The HTTP JSON API (axum). The OpenAPI document (`/api/openapi.json`) lists every route.
//!
//! Every route but `/api/health` and `/api/openapi.json` needs `Authorization: Bearer
//! <token>` (`/metrics` too, unless `[metrics] public` says otherwise). Errors are `{"error": {"code": "...", "message": "..."}}` with a fitting
//! status; storage failures are logged and reported as `500 internal` without details.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
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
mod tokens;
pub mod types;

use devices::*;
use events::*;
use fleet::*;
pub(crate) use modules::module_record;
use modules::*;
use plans::*;
use rollouts::*;
use tokens::*;

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
    /// Metrics kept by the HTTP layer (see [`crate::metrics`]).
    pub metrics: Arc<crate::metrics::Metrics>,
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
///
/// Numbers are read as JSON (and JSON Schema) defines them: `3.0` is the integer 3, so a
/// field the document types `integer` takes it; `3.5` stays a fraction and is refused there.
pub(super) struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
        let Json(value) = Json::<serde_json::Value>::from_request(request, state)
            .await
            .map_err(|rejection| bad(rejection.body_text()))?;
        json_object(value).map(JsonBody).map_err(bad)
    }
}

/// A request body's JSON read as `T`: the API's bodies are all JSON objects (serde would
/// also take a struct written as an array, which the document does not allow).
pub(super) fn json_object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    if !value.is_object() {
        return Err("the body must be a JSON object".to_owned());
    }
    serde_path_to_error::deserialize(integral_numbers(value))
        .map_err(|err| format!("the body is not the JSON this route expects: {err}"))
}

/// [`json_object`] from bytes.
pub(super) fn json_object_from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value = serde_json::from_slice(bytes).map_err(|err| format!("the body is not JSON: {err}"))?;
    json_object(value)
}

/// `value` with every number that is a whole number written with a fraction or exponent
/// (`3.0`, `1e3`) turned into that integer, where it fits one.
fn integral_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // The bounds are exact powers of two, so the casts below cannot saturate.
            let whole = f.fract() == 0.0;
            if whole && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
                Value::from(f as i64)
            } else if whole && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Value::from(f as u64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integral_numbers).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, integral_numbers(v))).collect()),
        other => other,
    }
}

/// Every error response in the API's error format: axum answers some requests itself
/// (a path segment that is not UTF-8, a method the route does not have) with plain text
/// or nothing; those become `{"error": {"code", "message"}}` with the same status and
/// headers (`Allow` stays on a `405`).
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let body = json!({ "error": { "code": code, "message": message } });
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let max_upload = state.config.max_module_size;
    let protected = Router::new()
        .route("/api/modules", post(upload_module).get(list_modules).layer(DefaultBodyLimit::max(max_upload)))
        .route("/api/modules/{sha256}", get(show_module))
        .route("/api/modules/{sha256}/statement", put(put_statement))
        .route("/api/devices", post(add_device).get(list_devices))
        .route("/api/devices/{id}", get(show_device).patch(set_policy).delete(remove_device))
        .route("/api/devices/{id}/secret", post(rotate_device_secret))
        .route("/api/devices/{id}/disable", post(disable_device))
        .route("/api/devices/{id}/enable", post(enable_device))
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
        .route("/api/tokens", post(create_token).get(list_tokens))
        .route("/api/tokens/{name}", get(show_token).delete(revoke_token))
        .route("/api/tokens/{name}/rotate", post(rotate_token))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // A viewer token may scrape; `[metrics] public` (loopback listeners only) needs none.
    let mut metrics = Router::new().route("/metrics", get(crate::metrics::scrape));
    if !state.config.metrics.public {
        metrics = metrics.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    }
    Router::new()
        .route("/api/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .merge(protected)
        .merge(metrics)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::track_http))
        .with_state(state)
}

pub(super) async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let token =
        request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(auth::bearer_token);
    let Some(token) = token else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing bearer token").into_response();
    };
    let record = match state.store.find_token(&auth::hash_secret(token)).await {
        Ok(Some(record)) => record,
        Ok(None) => return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token").into_response(),
        Err(err) => return ApiError::from(err).into_response(),
    };
    if record.revoked_at.is_some() {
        let message = format!("token {} was revoked", record.name);
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    }
    if record.expires_at.is_some_and(|at| at <= now_millis()) {
        let message = format!("token {} has expired", record.name);
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    }
    // A role the server does not know (a database written by hand) may only read.
    let role = auth::Role::parse(&record.role).unwrap_or(auth::Role::Viewer);
    let needed = auth::Role::required(request.method().as_str(), request.uri().path());
    if role < needed {
        let message = format!("token {} has role {}; this call needs {}", record.name, role.name(), needed.name());
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    let mut request = request;
    request.extensions_mut().insert(Operator(record.name.clone()));
    crate::events::ACTOR.scope(record.name, next.run(request)).await
}

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub(super) async fn stats(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let events = state.store.event_count().await?;
    Ok(Json(json!({ "link": state.link.stats(), "uplink": state.uplink.snapshot(), "store": { "events": events } })))
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

/// The most items one page of a list holds unless `limit` says otherwise.
pub const DEFAULT_PAGE: u32 = 500;
/// The most items one page of a list may hold.
pub const MAX_PAGE: u32 = 1000;

/// The paging part of a list route's query.
#[derive(Deserialize)]
pub(super) struct PageQuery {
    /// At most this many items (1 to [`MAX_PAGE`]; default [`DEFAULT_PAGE`]).
    limit: Option<u32>,
    /// Skip this many items (lists without a key cursor).
    offset: Option<u64>,
}

/// A route's query (paging or filters), or `400 bad_request` in the API's error format.
pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text()))
}

/// The limit and offset of a list route's query, checked.
pub(super) fn page_query(page: Result<Query<PageQuery>, QueryRejection>) -> ApiResult<(u32, u64)> {
    let page = query(page)?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    Ok((limit, page.offset.unwrap_or(0)))
}

/// A page of a list: the items as a JSON array, and when more follow, a `Link` header
/// (RFC 8288) with `rel="next"` naming the next page (the same query with the cursor
/// `key` set to `value`).
pub(super) fn page_response<T: Serialize>(
    uri: &axum::http::Uri,
    items: Vec<T>,
    next: Option<(&str, String)>,
) -> Response {
    let mut response = Json(items).into_response();
    if let Some((key, value)) = next {
        let mut pairs: Vec<String> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(key))
            .map(str::to_owned)
            .collect();
        pairs.push(format!("{key}={}", percent_encode(&value)));
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), pairs.join("&"));
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    response
}

/// Slices a full list by `offset` and `limit` into one page (lists that are small by
/// nature: modules, products, releases, groups, rollouts, plans, members, tokens).
pub(super) fn offset_page<T: Serialize>(uri: &axum::http::Uri, items: Vec<T>, limit: u32, offset: u64) -> Response {
    let total = items.len() as u64;
    let start = usize::try_from(offset.min(total)).unwrap_or(usize::MAX);
    let page: Vec<T> = items.into_iter().skip(start).take(limit as usize).collect();
    let end = offset.saturating_add(page.len() as u64);
    let next = (end < total).then(|| ("offset", end.to_string()));
    page_response(uri, page, next)
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass through); the CLI
/// builds its queries with it too.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        n: Option<u32>,
        x: Option<f64>,
    }

    fn check(input: &str, expected: Result<Body, &str>) {
        let got = json_object_from_slice::<Body>(input.as_bytes());
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got:?} should name {want:?}"),
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn json_bodies_are_objects_whose_whole_numbers_are_integers() {
        check(r#"{"n": 3}"#, Ok(Body { n: Some(3), x: None }));
        check(r#"{"n": 3.0}"#, Ok(Body { n: Some(3), x: None }));
        check(r#"{"n": 3e2}"#, Ok(Body { n: Some(300), x: None }));
        check(r#"{"n": -0.0}"#, Ok(Body { n: Some(0), x: None }));
        check(r#"{"x": 2.0}"#, Ok(Body { n: None, x: Some(2.0) }));
        check(r#"{"x": 2.5}"#, Ok(Body { n: None, x: Some(2.5) }));
        check(r#"{"n": null, "other": [1.0]}"#, Ok(Body { n: None, x: None }));
        check(r#"{"n": 3.5}"#, Err("n: invalid type: floating point"));
        check(r#"{"n": -1}"#, Err("n: invalid value: integer `-1`"));
        check(r#"{"n": 1e19}"#, Err("n: invalid value: integer `10000000000000000000`"));
        check(r#"{"n": 1e20}"#, Err("n: invalid type: floating point"));
        check(r#"{"n": 1e300}"#, Err("n: invalid type: floating point"));
        check(r#"[null, null]"#, Err("must be a JSON object"));
        check(r#""no""#, Err("must be a JSON object"));
        check("{", Err("not JSON"));
    }
}
