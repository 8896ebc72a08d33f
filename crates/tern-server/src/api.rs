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
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
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
use crate::plans::{Origin, PlanError, PlanOptions, Planner};
use crate::platform;
use crate::store::{
    AttemptRecord, Connectivity, DependencyRecord, Event, Inventory, ModuleRecord, NewDevice, PlanRecord, Policy,
    Store, StoreError,
};
use crate::updates::{UpdateInput, Updates};
use crate::uplink::{integrity_name, UplinkCounters};

/// The OpenAPI 3.1 document served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

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

type ApiResult<T> = Result<T, ApiError>;

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

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
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
        Ok(Some(_)) => next.run(request).await,
        Ok(None) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token").into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "link": state.link.stats(), "uplink": state.uplink.snapshot() }))
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

async fn upload_module(
    State(state): State<AppState>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("module upload refused: {rejection}"))
    })?;
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty", "the upload is empty"));
    }
    let filename = query.filename.filter(|name| !name.is_empty());
    // A signed module (`tern module upload` with a statement): the statement and the module.
    let (module, statement) = if body.starts_with(&tern_image::bundle::MAGIC) {
        let bad = |e: tern_image::bundle::Error| unprocessable("bad_signed_module", e.to_string());
        let bundle = tern_image::bundle::Bundle::parse(&body).map_err(bad)?;
        let document = bundle.unverified_manifest().map_err(bad)?;
        if document.kind != tern_image::manifest::Kind::ModuleStatement || document.module_count() != 1 {
            return Err(unprocessable(
                "bad_signed_module",
                "a signed module carries one module statement and its module (release bundles go to `tern flash`)",
            ));
        }
        bundle.check_modules(&document).map_err(bad)?;
        let size = document.modules().map(|m| m.size as usize).sum::<usize>();
        (&body[body.len() - size..], Some((bundle.signed_manifest, document)))
    } else {
        (&body[..], None)
    };
    let record = match (tern_image::inspect(module).info, &statement) {
        (Some(info), _) if info.integrity == tern_image::Integrity::Invalid => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "integrity_failed",
                "the module's own checksum or hash does not match its contents",
            ));
        }
        (Some(info), _) => module_record(hex::encode(Sha256::digest(module)), filename, &info),
        // A module Tern cannot read is described by its statement alone.
        (None, Some((_, document))) => statement_record(module, filename, document)
            .ok_or_else(|| unprocessable("bad_signed_module", "the statement lists no module"))?,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unrecognised_module",
                "not a firmware module Tern can read (neither a Particle module nor an MCUboot image); \
                 upload it with a signed statement that describes it",
            ))
        }
    };
    let record = match &statement {
        Some((_, document)) => placed(&record, document),
        None => record,
    };
    if let Some((signed, document)) = &statement {
        check_statement(&record, document)?;
        check_signature(&state.config, signed)?;
    }
    let address = state.blobs.put(module).await?;
    if address != record.sha256 {
        tracing::error!(address, sha256 = record.sha256, "the blob store's address is not the module's SHA-256");
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal storage error"));
    }
    let created = state.store.put_module(&record).await?;
    if let Some((_, document)) = &statement {
        // The same bytes were in the catalog already: the statement must fit that entry.
        if let (false, Some(existing)) = (created, state.store.get_module(&record.sha256).await?) {
            let placed = placed(&existing, document);
            check_statement(&placed, document)?;
            if placed != existing {
                state.store.place_module(&placed.sha256, placed.platform_id, placed.start_address).await?;
            }
        }
    }
    if let Some((signed, document)) = statement {
        let address = state.blobs.put(signed).await?;
        state.store.set_module_statement(&record.sha256, &address, document.security_counter).await?;
    }
    let stored = state.store.get_module(&record.sha256).await?.unwrap_or(record);
    if created {
        state.hub.publish(None, "module.uploaded", serde_json::to_value(&stored)?).await?;
    }
    // Same bytes uploaded before: the catalog entry is the earlier one (now signed if a
    // statement came with this upload).
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(stored)))
}

/// The catalog record of a module known only through its signed statement.
fn statement_record(
    module: &[u8],
    filename: Option<String>,
    document: &tern_image::manifest::Manifest,
) -> Option<ModuleRecord> {
    let entry = document.modules().next()?;
    Some(ModuleRecord {
        sha256: hex::encode(Sha256::digest(module)),
        filename,
        format: entry.format.name().to_owned(),
        platform_id: document.platform_id,
        function: entry.function.code(),
        function_name: entry.function.name().to_owned(),
        index: entry.index,
        version: entry.version,
        size: entry.size,
        module_sha256: None,
        integrity: "unchecked".to_owned(),
        dependencies: entry.dependencies().map(DependencyRecord::from).collect(),
        start_address: entry.start_address,
        uploaded_at: now_millis(),
        statement: None,
        security_counter: 0,
    })
}

/// With trusted keys configured, checks that one of them signed `signed`.
fn check_signature(config: &Config, signed: &[u8]) -> ApiResult<()> {
    if config.trusted_keys.is_empty() {
        return Ok(());
    }
    let document = tern_image::manifest::SignedDocument::parse(signed)
        .map_err(|e| unprocessable("bad_statement", format!("not a signed document: {e}")))?;
    document.verify(&config.trusted_keys).map(|_| ()).map_err(|e| {
        unprocessable(
            "bad_signature",
            format!(
                "the statement (key id {}) is not signed by a key this server trusts: {e}; \
                 devices trusting the same keys would refuse it",
                hex::encode(document.kid)
            ),
        )
    })
}

/// The catalog record `module` as placed by its first signed statement. A module's own
/// bytes do not always say where it is installed: one built for no particular platform
/// (platform 0) takes the statement's platform, and an asset (function 9, whose Particle
/// prefix holds no flash address: Device OS keeps assets apart from the code, Tern in the
/// profile's asset slot) takes the statement's start address. A module that already has a
/// statement keeps the placement that one gave.
fn placed(module: &ModuleRecord, statement: &tern_image::manifest::Manifest) -> ModuleRecord {
    let mut placed = module.clone();
    if module.statement.is_some() {
        return placed;
    }
    if module.platform_id == 0 {
        placed.platform_id = statement.platform_id;
    }
    if module.function == tern_image::ModuleFunction::Asset.code() {
        if let Some(entry) = statement.modules().next() {
            placed.start_address = entry.start_address;
        }
    }
    placed
}

/// Checks that a module statement describes exactly the catalog module `module`; the
/// refusal names every field that differs.
fn check_statement(module: &ModuleRecord, statement: &tern_image::manifest::Manifest) -> ApiResult<()> {
    let bad = |message: String| unprocessable("bad_statement", message);
    if statement.kind != tern_image::manifest::Kind::ModuleStatement {
        return Err(bad("a release manifest, not a module statement".into()));
    }
    let mut entries = statement.modules();
    let (Some(entry), None) = (entries.next(), entries.next()) else {
        return Err(bad("a module statement lists exactly one module".into()));
    };
    let mut differences = Vec::new();
    let mut differ = |what: &str, stated: String, catalog: String| {
        if stated != catalog {
            differences.push(format!("{what} {stated} in the statement, {catalog} in the module"));
        }
    };
    differ("file sha256", hex::encode(entry.sha256), module.sha256.clone());
    differ("size", entry.size.to_string(), module.size.to_string());
    differ(
        "module",
        format!("{} {} v{}", entry.function.name(), entry.index, entry.version),
        format!("{} {} v{}", module.function_name, module.index, module.version),
    );
    differ("start address", format!("{:#x}", entry.start_address), format!("{:#x}", module.start_address));
    if module.platform_id != 0 {
        differ("platform", statement.platform_id.to_string(), module.platform_id.to_string());
    }
    if !differences.is_empty() {
        return Err(bad(format!(
            "the statement does not describe module {}: {}",
            module.sha256,
            differences.join("; ")
        )));
    }
    Ok(())
}

pub(crate) fn module_record(sha256: String, filename: Option<String>, info: &tern_image::ModuleInfo) -> ModuleRecord {
    ModuleRecord {
        sha256,
        filename,
        format: info.format.name().to_owned(),
        platform_id: info.platform_id,
        function: info.function.code(),
        function_name: info.function.name().to_owned(),
        index: info.index,
        version: info.version,
        size: info.size,
        module_sha256: info.sha256.map(hex::encode),
        integrity: integrity_name(info.integrity).to_owned(),
        dependencies: info.dependencies().map(DependencyRecord::from).collect(),
        start_address: info.start_address,
        uploaded_at: now_millis(),
        statement: None,
        security_counter: 0,
    }
}

async fn list_modules(State(state): State<AppState>) -> ApiResult<Json<Vec<ModuleRecord>>> {
    Ok(Json(state.store.list_modules().await?))
}

async fn show_module(State(state): State<AppState>, Path(sha256): Path<String>) -> ApiResult<Json<ModuleRecord>> {
    let module = state.store.get_module(&sha256.to_ascii_lowercase()).await?;
    module.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no module {sha256}")))
}

#[derive(Deserialize)]
struct AddDevice {
    id: String,
    platform: serde_json::Value,
    /// `wifi` (default), `ethernet` or `cellular`.
    connectivity: Option<String>,
    /// Whether the server heals the device without asking; default: on unless cellular.
    auto_heal: Option<bool>,
}

fn parse_connectivity(name: &str) -> ApiResult<Connectivity> {
    Connectivity::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Connectivity::ALL.iter().map(|c| c.name()).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_connectivity",
            format!("connectivity must be one of {}", known.join(", ")),
        )
    })
}

#[derive(Serialize)]
struct AddedDevice {
    id: String,
    platform_id: u16,
    platform: Option<&'static str>,
    connectivity: &'static str,
    /// Whether the server heals it without asking (the policy in force).
    auto_heal: bool,
    /// Shown once; only its hash is stored.
    secret: String,
}

fn policy_json(policy: &Policy) -> serde_json::Value {
    json!({ "connectivity": policy.connectivity.name(), "auto_heal": policy.heals_automatically() })
}

async fn add_device(
    State(state): State<AppState>,
    body: Result<Json<AddDevice>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<AddedDevice>)> {
    let Json(body) =
        body.map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text()))?;
    if !tern_proto::is_valid_device_id(&body.id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_device_id",
            "a device id is 1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let platform_id = match &body.platform {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        serde_json::Value::String(name) => platform::parse(name),
        _ => None,
    }
    .ok_or_else(|| {
        let known: Vec<&str> = platform::PLATFORMS.iter().map(|(name, _)| *name).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_platform",
            format!("platform must be a platform id or one of {}", known.join(", ")),
        )
    })?;
    if tern_image::platform::by_id(platform_id).is_none() {
        let known: Vec<String> =
            tern_image::platform::PLATFORMS.iter().map(|p| format!("{} ({})", p.name, p.id)).collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_platform",
            format!("platform {platform_id} is not one Tern serves: {}", known.join(", ")),
        ));
    }
    let connectivity = body.connectivity.as_deref().map(parse_connectivity).transpose()?.unwrap_or(Connectivity::Wifi);
    let policy = Policy { connectivity, auto_heal: body.auto_heal };
    let secret = auth::new_device_secret();
    let device = NewDevice {
        id: body.id.clone(),
        platform_id,
        secret_hash: auth::hash_secret(&secret),
        created_at: now_millis(),
        policy,
    };
    state.store.create_device(&device).await?;
    let data = json!({ "platform_id": platform_id, "policy": policy_json(&policy) });
    state.hub.publish(Some(&device.id), "device.registered", data).await?;
    let added = AddedDevice {
        id: device.id,
        platform_id,
        platform: platform::name(platform_id),
        connectivity: connectivity.name(),
        auto_heal: policy.heals_automatically(),
        secret,
    };
    Ok((StatusCode::CREATED, Json(added)))
}

/// One line of the device list.
#[derive(Serialize)]
struct DeviceSummary {
    id: String,
    platform_id: u16,
    platform: Option<&'static str>,
    online: bool,
    /// `online`, `offline` or `safe_mode` (as last described).
    status: &'static str,
    /// Version of the application module as last described.
    application_version: Option<u32>,
    last_seen: Option<i64>,
    described_at: Option<i64>,
    /// `wifi`, `ethernet` or `cellular`.
    connectivity: &'static str,
    /// Whether the server heals it without asking (the policy in force).
    auto_heal: bool,
}

fn summary(link: &dyn DeviceLink, device: &crate::store::DeviceRecord) -> DeviceSummary {
    let (id, platform_id, last_seen, inv) =
        (device.id.as_str(), device.platform_id, device.last_seen, device.inventory.as_ref());
    let online = link.is_online(id);
    let safe_mode = inv.is_some_and(|inv| inv.boot_reason == tern_proto::BootReason::SafeMode.name());
    let application = tern_image::ModuleFunction::UserPart.code();
    DeviceSummary {
        id: id.to_owned(),
        platform_id,
        platform: platform::name(platform_id),
        online,
        status: if safe_mode {
            "safe_mode"
        } else if online {
            "online"
        } else {
            "offline"
        },
        application_version: inv
            .and_then(|inv| inv.modules.iter().find(|m| m.function == application))
            .map(|m| m.version),
        last_seen,
        described_at: inv.map(|inv| inv.described_at),
        connectivity: device.policy.connectivity.name(),
        auto_heal: device.policy.heals_automatically(),
    }
}

async fn list_devices(State(state): State<AppState>) -> ApiResult<Json<Vec<DeviceSummary>>> {
    let devices = state.store.list_devices().await?;
    Ok(Json(devices.iter().map(|d| summary(&*state.link, d)).collect()))
}

#[derive(Serialize)]
struct DeviceDetail {
    #[serde(flatten)]
    summary: DeviceSummary,
    created_at: i64,
    /// What the device last described: the modules actually installed.
    inventory: Option<Inventory>,
    /// Its most recent update attempts, newest first.
    attempts: Vec<AttemptRecord>,
    /// Its most recent plans, newest first (a proposed heal waits here for an operator).
    plans: Vec<PlanRecord>,
    /// Its most recent events, oldest first.
    history: Vec<Event>,
}

/// How many attempts `GET /api/devices/{id}` includes.
const ATTEMPTS_SHOWN: u32 = 10;

/// How many events `GET /api/devices/{id}` includes.
const HISTORY_LEN: u32 = 50;

async fn show_device(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<DeviceDetail>> {
    let device = device_or_404(&state, &id).await?;
    let history = state.store.recent_events(&id, HISTORY_LEN).await?;
    let attempts = state.store.device_attempts(&id, ATTEMPTS_SHOWN).await?;
    let plans = state.store.device_plans(&id, ATTEMPTS_SHOWN).await?;
    Ok(Json(DeviceDetail {
        attempts,
        plans,
        summary: summary(&*state.link, &device),
        created_at: device.created_at,
        inventory: device.inventory,
        history,
    }))
}

#[derive(Deserialize)]
struct SendCommand {
    action: String,
    attempt: Option<u64>,
}

async fn send_command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SendCommand>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let Json(body) =
        body.map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text()))?;
    device_or_404(&state, &id).await?;
    let action = Action::from_name(&body.action).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_action",
            "action must be one of reboot, safe_mode, factory_restore, cancel",
        )
    })?;
    // Low bits of the clock: distinct for commands sent more than a millisecond apart.
    let command = Command { id: now_millis() as u32, action, attempt: body.attempt };
    let message = Message::Command(command);
    let mut payload = vec![0u8; message.encoded_len()];
    let written = message.encode(&mut payload).expect("buffer sized by encoded_len");
    payload.truncate(written);
    match state.link.send(&id, MessageKind::Command, payload.into()).await {
        Ok(()) => {}
        Err(LinkError::NotConnected) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "device_offline", format!("device {id} is not connected")))
        }
        Err(LinkError::Unavailable) => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "link_busy", "the device link is busy"))
        }
    }
    let data = json!({ "command_id": command.id, "action": action.name(), "attempt": body.attempt });
    state.hub.publish(Some(&id), "device.command_sent", data.clone()).await?;
    Ok((StatusCode::ACCEPTED, Json(data)))
}

#[derive(Deserialize)]
struct EventsQuery {
    device: Option<String>,
    since: Option<i64>,
}

/// How many stored events one catch-up read returns.
const CATCH_UP: u32 = 1000;

struct Feed {
    hub: EventHub,
    live: broadcast::Receiver<Event>,
    pending: VecDeque<Event>,
    last: i64,
    device: Option<String>,
}

/// `GET /api/events`: stored events after `since` (or `Last-Event-ID`), then live ones.
async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // Subscribe before reading the store, so nothing published in between is missed; the
    // id check below drops what both deliver.
    let live = state.hub.subscribe();
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let since = query.since.or(resume);
    let mut pending = VecDeque::new();
    if let Some(since) = since {
        pending.extend(state.store.events_after(since, query.device.as_deref(), CATCH_UP).await?);
    }
    let feed = Feed { hub: state.hub.clone(), live, pending, last: since.unwrap_or(0), device: query.device };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                let wanted = feed.device.as_ref().is_none_or(|device| event.device.as_ref() == Some(device));
                if event.id > feed.last && wanted {
                    feed.last = event.id;
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = SseEvent::default().id(event.id.to_string()).event(event.kind.clone()).data(data);
                    return Some((Ok(sse), feed));
                }
                continue;
            }
            match feed.live.recv().await {
                Ok(event) => feed.pending.push_back(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live buffer: catch up from the store.
                    match feed.hub.store().events_after(feed.last, feed.device.as_deref(), CATCH_UP).await {
                        Ok(events) => feed.pending.extend(events),
                        Err(_) => return None,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Device `id`, or `404 not_found` in the API's error format.
async fn device_or_404(state: &AppState, id: &str) -> ApiResult<crate::store::DeviceRecord> {
    state
        .store
        .get_device(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")))
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

#[derive(Deserialize, Default)]
struct BundleQuery {
    /// The plan's bytes on the air, typed by the operator: required for cellular devices.
    confirm_air_bytes: Option<u64>,
}

/// `POST /api/devices/{id}/attempts`: the body is a signed release bundle (`tern release
/// build`). The same as making a plan from the bundle and starting it at once: only what
/// the device does not run is sent, in stages that fit it, and a cellular device's plan
/// starts only with `?confirm_air_bytes=N` equal to its estimate (else `409
/// confirmation_required`, and the plan stays proposed).
async fn start_attempt(
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
    let (_, attempt) = state.planner.start(plan.id, query.confirm_air_bytes, Origin::Operator).await?;
    Ok((StatusCode::CREATED, Json(attempt)))
}

/// A numeric id from the path; one that is not a number names nothing (`404`, in the API's
/// error format rather than axum's plain-text rejection).
fn numeric_id(id: Result<Path<i64>, PathRejection>, what: &str) -> ApiResult<i64> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} with that id")))
}

async fn show_attempt(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<AttemptRecord>> {
    let id = numeric_id(id, "attempt")?;
    let attempt = state.store.get_attempt(id).await?;
    attempt.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no attempt {id}")))
}

async fn cancel_attempt(
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

/// `PUT /api/modules/{sha256}/statement`: attaches a signed module statement (`tern module
/// sign`) to a catalog module. The server holds no keys, so it cannot judge the signature
/// (devices do); it checks that the statement is well formed and describes exactly this
/// module.
async fn put_statement(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ModuleRecord>> {
    let body = body.map_err(|rejection| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("statement refused: {rejection}"))
    })?;
    let sha256 = sha256.to_ascii_lowercase();
    let module = state
        .store
        .get_module(&sha256)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no module {sha256}")))?;
    let bad = |message: String| unprocessable("bad_statement", message);
    let document =
        tern_image::manifest::SignedDocument::parse(&body).map_err(|e| bad(format!("not a signed document: {e}")))?;
    let statement = tern_image::manifest::decode_document(document.payload)
        .map_err(|e| bad(format!("unreadable statement: {e}")))?;
    let placed = placed(&module, &statement);
    check_statement(&placed, &statement)?;
    check_signature(&state.config, &body)?;
    let address = state.blobs.put(&body).await?;
    state.store.set_module_statement(&sha256, &address, statement.security_counter).await?;
    if placed != module {
        state.store.place_module(&sha256, placed.platform_id, placed.start_address).await?;
    }
    let module = state.store.get_module(&sha256).await?.unwrap_or(module);
    let data = json!({ "module": sha256, "statement": address, "key_id": hex::encode(document.kid) });
    state.hub.publish(None, "module.signed", data).await?;
    Ok(Json(module))
}

#[derive(Deserialize)]
struct SetPolicy {
    connectivity: Option<String>,
    /// `true`, `false`, or `null` to follow the connectivity's default.
    #[serde(default, deserialize_with = "present")]
    auto_heal: Option<Option<bool>>,
}

/// Distinguishes a JSON field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<bool>>, D::Error> {
    Option::<bool>::deserialize(d).map(Some)
}

/// `PATCH /api/devices/{id}`: changes a device's update policy.
async fn set_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<SetPolicy>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(body) =
        body.map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", rejection.body_text()))?;
    let device = device_or_404(&state, &id).await?;
    let mut policy = device.policy;
    if let Some(name) = &body.connectivity {
        policy.connectivity = parse_connectivity(name)?;
    }
    if let Some(auto_heal) = body.auto_heal {
        policy.auto_heal = auto_heal;
    }
    state.store.set_policy(&id, &policy).await?;
    let data = policy_json(&policy);
    state.hub.publish(Some(&id), "device.policy", data.clone()).await?;
    if policy.heals_automatically() && !device.policy.heals_automatically() {
        // A heal that waited for an operator goes now that the policy allows it.
        if let Err(err) = state.planner.start_proposed_heal(&id).await {
            tracing::warn!(device = id, "the proposed heal did not start: {err}");
        }
    }
    Ok(Json(data))
}

#[derive(Deserialize)]
struct CreatePlan {
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
async fn create_plan(
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
    let plan = state.planner.build(&device, &body.modules, Origin::Operator, &options).await?;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// How many plans `GET /api/devices/{id}/plans` lists.
const PLANS_SHOWN: u32 = 20;

async fn list_plans(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Vec<PlanRecord>>> {
    device_or_404(&state, &id).await?;
    Ok(Json(state.store.device_plans(&id, PLANS_SHOWN).await?))
}

async fn show_plan(State(state): State<AppState>, id: Result<Path<i64>, PathRejection>) -> ApiResult<Json<PlanRecord>> {
    let id = numeric_id(id, "plan")?;
    let plan = state.store.get_plan(id).await?;
    plan.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plan {id}")))
}

#[derive(Deserialize, Default)]
struct StartPlan {
    /// The plan's `air_bytes`, typed by the operator: required for cellular devices.
    confirm_air_bytes: Option<u64>,
}

/// `POST /api/plans/{id}/start`: sends a proposed plan to its device as an update attempt.
/// The body is optional (Wi-Fi plans need no confirmation); when present it is JSON.
async fn start_plan(
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
    let (_, attempt) = state.planner.start(id, body.confirm_air_bytes, Origin::Operator).await?;
    Ok((StatusCode::CREATED, Json(attempt)))
}
