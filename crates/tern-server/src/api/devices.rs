//! Devices: registration, listing, details, commands, policy.

use super::*;
pub use crate::api::types::{AddedDevice, DeviceDetail, DeviceSummary, RotatedSecret};

#[derive(Deserialize)]
pub(super) struct AddDevice {
    id: String,
    platform: serde_json::Value,
    /// `wifi` (default), `ethernet` or `cellular`.
    connectivity: Option<String>,
    /// Whether the server heals the device without asking; default: on unless cellular.
    auto_heal: Option<bool>,
}

pub(super) fn parse_connectivity(name: &str) -> ApiResult<Connectivity> {
    Connectivity::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Connectivity::ALL.iter().map(|c| c.name()).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_connectivity",
            format!("connectivity must be one of {}", known.join(", ")),
        )
    })
}

pub(super) fn policy_json(policy: &Policy) -> serde_json::Value {
    let view = crate::api::types::PolicyView {
        connectivity: policy.connectivity.name().to_owned(),
        auto_heal: policy.heals_automatically(),
    };
    serde_json::to_value(view).unwrap_or_default()
}

pub(super) async fn add_device(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<AddDevice>,
) -> ApiResult<(StatusCode, Json<AddedDevice>)> {
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
    let data = json!({ "platform_id": platform_id, "policy": policy_json(&policy) });
    let registered = async {
        let mut change = state.hub.begin().await?;
        change.create_device(&device).await?;
        change.publish(Some(&body.id), "device.registered", data).await?;
        change.commit().await
    };
    registered.await.map_err(|err| match err {
        StoreError::Conflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "device_exists",
            format!(
                "device {} is registered already; if its secret was lost, issue a new one with \
                 `tern device rotate-secret {}` (POST /api/devices/{}/secret)",
                body.id, body.id, body.id
            ),
        ),
        other => other.into(),
    })?;
    let added = AddedDevice {
        id: device.id,
        platform_id,
        platform: platform::name(platform_id).map(str::to_owned),
        connectivity: connectivity.name().to_owned(),
        auto_heal: policy.heals_automatically(),
        secret,
    };
    Ok((StatusCode::CREATED, Json(added)))
}

pub(super) fn summary(link: &dyn DeviceLink, device: &crate::store::DeviceRecord) -> DeviceSummary {
    let (id, platform_id, last_seen, inv) =
        (device.id.as_str(), device.platform_id, device.last_seen, device.inventory.as_ref());
    let online = link.is_online(id);
    let safe_mode = inv.is_some_and(|inv| inv.boot_reason == tern_proto::BootReason::SafeMode.name());
    let application = tern_image::ModuleFunction::UserPart.code();
    DeviceSummary {
        id: id.to_owned(),
        platform_id,
        platform: platform::name(platform_id).map(str::to_owned),
        online,
        status: if safe_mode {
            "safe_mode"
        } else if online {
            "online"
        } else {
            "offline"
        }
        .to_owned(),
        application_version: inv
            .and_then(|inv| inv.modules.iter().find(|m| m.function == application))
            .map(|m| m.version),
        last_seen,
        described_at: inv.map(|inv| inv.described_at),
        connectivity: device.policy.connectivity.name().to_owned(),
        auto_heal: device.policy.heals_automatically(),
        fleet: device.fleet.clone(),
        disabled: device.disabled,
    }
}

#[derive(Deserialize)]
pub(super) struct DeviceFilter {
    /// Only ids after this one (the cursor of the next page).
    after: Option<String>,
    /// Only this platform (name or id).
    platform: Option<String>,
    /// Only members of this product.
    product: Option<u32>,
    /// Only devices carrying this tag.
    tag: Option<String>,
    /// Only disabled (`true`) or enabled (`false`) devices.
    disabled: Option<bool>,
}

/// `GET /api/devices`: one page, by id; a `Link` header names the next one.
pub(super) async fn list_devices(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<DeviceFilter>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    if offset != 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the device list pages with after=ID, not offset",
        ));
    }
    let filter = query(filter)?;
    let platform_id = filter
        .platform
        .as_deref()
        .map(|name| {
            name.parse::<u16>().ok().or_else(|| platform::parse(name)).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_platform", format!("platform {name} is unknown"))
            })
        })
        .transpose()?;
    let q = crate::store::DeviceQuery {
        after: filter.after,
        // One more than shown tells whether another page follows.
        limit: limit + 1,
        platform_id,
        product: filter.product,
        tag: filter.tag,
        disabled: filter.disabled,
    };
    let mut devices = state.store.page_devices(&q).await?;
    let more = devices.len() > limit as usize;
    devices.truncate(limit as usize);
    let next = more.then(|| devices.last().map(|d| ("after", d.id.clone()))).flatten();
    let summaries: Vec<DeviceSummary> = devices.iter().map(|d| summary(&*state.link, d)).collect();
    Ok(page_response(&uri, summaries, next))
}

/// Closes the device's connection after its credentials changed, and says so.
async fn drop_connection(state: &AppState, id: &str) {
    if state.link.disconnect(id) {
        tracing::info!(device = id, "closed the device's connection: its credentials changed");
    }
}

/// `POST /api/devices/{id}/secret`: a new secret, shown once; the old one stops working and
/// a connection made with it is closed. Also how a registration whose answer was lost is
/// recovered.
pub(super) async fn rotate_device_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RotatedSecret>> {
    device_or_404(&state, &id).await?;
    let secret = auth::new_device_secret();
    let mut change = state.hub.begin().await?;
    if !change.set_device_secret(&id, &auth::hash_secret(&secret)).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")));
    }
    change.publish(Some(&id), "device.secret_rotated", json!({})).await?;
    change.commit().await?;
    drop_connection(&state, &id).await;
    Ok(Json(RotatedSecret { id, secret }))
}

async fn set_disabled(state: &AppState, id: &str, disabled: bool) -> ApiResult<Json<DeviceSummary>> {
    device_or_404(state, id).await?;
    let mut change = state.hub.begin().await?;
    if !change.set_device_disabled(id, disabled).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")));
    }
    let kind = if disabled { "device.disabled" } else { "device.enabled" };
    change.publish(Some(id), kind, json!({})).await?;
    change.commit().await?;
    if disabled {
        drop_connection(state, id).await;
    }
    let device = device_or_404(state, id).await?;
    Ok(Json(summary(&*state.link, &device)))
}

/// `POST /api/devices/{id}/disable`: the device cannot connect (its connection is closed)
/// until enabled again; its secret stays valid.
pub(super) async fn disable_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceSummary>> {
    set_disabled(&state, &id, true).await
}

/// `POST /api/devices/{id}/enable`.
pub(super) async fn enable_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceSummary>> {
    set_disabled(&state, &id, false).await
}

/// `DELETE /api/devices/{id}`: removes the device. Its secret is erased and its connection
/// closed; an update attempt in flight is cancelled; its attempts, plans and events stay
/// as history. The id may be registered again later (as a new device).
pub(super) async fn remove_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    device_or_404(&state, &id).await?;
    let mut change = state.hub.begin().await?;
    if !change.remove_device(&id, now_millis()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")));
    }
    change.publish(Some(&id), "device.removed", json!({ "id": id, "removed": true })).await?;
    change.commit().await?;
    // Each cancelled attempt records its own event (the update task stores it).
    let mut cancelled = Vec::new();
    for attempt in state.store.unfinished_attempts().await?.into_iter().filter(|a| a.device == id) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        state.updates.send(UpdateInput::Cancel(attempt.id, reply)).await;
        if answer.await.unwrap_or(false) {
            cancelled.push(attempt.id);
        }
    }
    drop_connection(&state, &id).await;
    Ok(Json(json!({ "id": id, "removed": true, "cancelled_attempts": cancelled })))
}

/// How many attempts `GET /api/devices/{id}` includes.
pub(super) const ATTEMPTS_SHOWN: u32 = 10;

/// How many events `GET /api/devices/{id}` includes.
pub(super) const HISTORY_LEN: u32 = 50;

pub(super) async fn show_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDetail>> {
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
pub(super) struct SendCommand {
    action: String,
    attempt: Option<u64>,
}

pub(super) async fn send_command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SendCommand>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
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
pub(super) struct SetPolicy {
    connectivity: Option<String>,
    /// `true`, `false`, or `null` to follow the connectivity's default.
    #[serde(default, deserialize_with = "present")]
    auto_heal: Option<Option<bool>>,
}

/// Distinguishes a JSON field set to `null` (`Some(None)`) from an absent one (`None`).
pub(super) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<bool>>, D::Error> {
    Option::<bool>::deserialize(d).map(Some)
}

/// `PATCH /api/devices/{id}`: changes a device's update policy.
pub(super) async fn set_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SetPolicy>,
) -> ApiResult<Json<serde_json::Value>> {
    let device = device_or_404(&state, &id).await?;
    let mut policy = device.policy;
    if let Some(name) = &body.connectivity {
        policy.connectivity = parse_connectivity(name)?;
    }
    if let Some(auto_heal) = body.auto_heal {
        policy.auto_heal = auto_heal;
    }
    let data = policy_json(&policy);
    let mut change = state.hub.begin().await?;
    if !change.set_policy(&id, &policy).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")));
    }
    change.publish(Some(&id), "device.policy", data.clone()).await?;
    change.commit().await?;
    if policy.heals_automatically() && !device.policy.heals_automatically() {
        // A heal that waited for an operator goes now that the policy allows it.
        if let Err(err) = state.planner.start_proposed_heal(&id).await {
            tracing::warn!(device = id, "the proposed heal did not start: {err}");
        }
    }
    Ok(Json(data))
}
