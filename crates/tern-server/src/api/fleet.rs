//! The fleet: products, releases, groups, and each device's place (tags, pin, budget).

use super::*;
use crate::fleet::{self, check_tag, parse_filter, parse_windows};
use crate::store::{GroupRecord, Membership, ProductRecord, ReleaseModule, ReleaseRecord};

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    unprocessable(code, message)
}

pub(super) async fn product_or_404(state: &AppState, id: u32) -> ApiResult<ProductRecord> {
    state
        .store
        .get_product(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no product {id}")))
}

#[derive(Deserialize)]
pub(super) struct NewProduct {
    id: u32,
    /// Platform id or name.
    platform: serde_json::Value,
    name: Option<String>,
}

/// `POST /api/products`.
pub(super) async fn create_product(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewProduct>,
) -> ApiResult<(StatusCode, Json<ProductRecord>)> {
    if body.id == 0 || body.id > 0xFFFF {
        return Err(bad("bad_product", "a product id is 1 to 65535 (the product id in the module suffix)"));
    }
    let platform_id = platform_of(&body.platform)?;
    let product = ProductRecord {
        id: body.id,
        platform_id,
        name: body.name.unwrap_or_else(|| format!("product {}", body.id)),
        created_at: now_millis(),
    };
    let mut change = state.hub.begin().await?;
    change.create_product(&product).await?;
    change.publish(None, "product.created", json!({ "product": product.id, "platform_id": platform_id })).await?;
    change.commit().await?;
    Ok((StatusCode::CREATED, Json(product)))
}

/// A platform given as an id or a name, known to Tern.
pub(super) fn platform_of(value: &serde_json::Value) -> ApiResult<u16> {
    let id = match value {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        serde_json::Value::String(name) => platform::parse(name),
        _ => None,
    };
    match id.filter(|id| tern_image::platform::by_id(*id).is_some()) {
        Some(id) => Ok(id),
        None => {
            let known: Vec<&str> = platform::PLATFORMS.iter().map(|(name, _)| *name).collect();
            Err(bad("unknown_platform", format!("platform must be a platform id or one of {}", known.join(", "))))
        }
    }
}

/// `GET /api/products`: one page (`limit`, `offset`), by id.
pub(super) async fn list_products(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    Ok(offset_page(&uri, state.store.list_products().await?, limit, offset))
}

#[derive(Serialize)]
pub(super) struct ProductDetail {
    #[serde(flatten)]
    product: ProductRecord,
    /// Its devices, by id.
    devices: Vec<String>,
    /// Its releases.
    releases: Vec<ReleaseRecord>,
    /// Its groups, by name.
    groups: Vec<String>,
}

pub(super) async fn show_product(
    State(state): State<AppState>,
    id: Result<Path<u32>, PathRejection>,
) -> ApiResult<Json<ProductDetail>> {
    let id = id.map(|Path(id)| id).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such product"))?;
    let product = product_or_404(&state, id).await?;
    let devices = state.store.list_devices().await?.into_iter().filter(|d| d.fleet.product == Some(id)).map(|d| d.id);
    let groups = state.store.list_groups().await?.into_iter().filter(|g| g.product == id).map(|g| g.name);
    Ok(Json(ProductDetail {
        releases: state.store.list_releases(id).await?,
        devices: devices.collect(),
        groups: groups.collect(),
        product,
    }))
}

#[derive(Deserialize)]
pub(super) struct NewRelease {
    /// Catalog SHA-256s of the modules, in install order.
    modules: Vec<String>,
    note: Option<String>,
}

/// `POST /api/products/{id}/releases`: an immutable, numbered release made of signed catalog
/// modules of the product's platform.
pub(super) async fn create_release(
    State(state): State<AppState>,
    id: Result<Path<u32>, PathRejection>,
    JsonBody(body): JsonBody<NewRelease>,
) -> ApiResult<(StatusCode, Json<ReleaseRecord>)> {
    let id = id.map(|Path(id)| id).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such product"))?;
    let product = product_or_404(&state, id).await?;
    if body.modules.is_empty() {
        return Err(bad("empty_release", "a release needs at least one module"));
    }
    let mut modules = Vec::new();
    for hash in &body.modules {
        let hash = hash.to_ascii_lowercase();
        let module = state.store.get_module(&hash).await?.ok_or_else(|| {
            bad("unknown_module", format!("no module {hash} in the catalog: upload it with `tern module upload`"))
        })?;
        if module.platform_id != product.platform_id {
            return Err(bad(
                "wrong_platform",
                format!(
                    "module {} is for platform {}, product {} is {}",
                    &hash[..12],
                    module.platform_id,
                    product.id,
                    platform::name(product.platform_id).unwrap_or("?")
                ),
            ));
        }
        if module.statement.is_none() {
            return Err(bad(
                "unsigned_module",
                format!("module {} has no signed statement: a release holds only signed modules", &hash[..12]),
            ));
        }
        if modules.iter().any(|m: &ReleaseModule| m.function_name == module.function_name && m.index == module.index) {
            return Err(bad(
                "duplicate_slot",
                format!("two modules of the release fill {} {}", module.function_name, module.index),
            ));
        }
        modules.push(ReleaseModule {
            sha256: hash,
            function_name: module.function_name.clone(),
            index: module.index,
            version: module.version,
            size: module.size,
        });
    }
    let release = ReleaseRecord { product: id, number: 0, modules, note: body.note, created_at: now_millis() };
    let mut change = state.hub.begin().await?;
    let release = change.create_release(&release).await?;
    let data = json!({ "product": id, "release": release.number, "modules": release.modules.len() });
    change.publish(None, "release.created", data).await?;
    change.commit().await?;
    Ok((StatusCode::CREATED, Json(release)))
}

/// `GET /api/products/{id}/releases`: one page (`limit`, `offset`), by number.
pub(super) async fn list_releases(
    State(state): State<AppState>,
    id: Result<Path<u32>, PathRejection>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = id.map(|Path(id)| id).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such product"))?;
    let (limit, offset) = page_query(page)?;
    product_or_404(&state, id).await?;
    Ok(offset_page(&uri, state.store.list_releases(id).await?, limit, offset))
}

pub(super) async fn show_release(
    State(state): State<AppState>,
    path: Result<Path<(u32, u32)>, PathRejection>,
) -> ApiResult<Json<ReleaseRecord>> {
    let (id, number) =
        path.map(|Path(p)| p).map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such release"))?;
    product_or_404(&state, id).await?;
    let release = state.store.get_release(id, number).await?;
    release.map(Json).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("product {id} has no release {number}"))
    })
}

#[derive(Deserialize)]
pub(super) struct NewGroup {
    name: String,
    product: u32,
    #[serde(default)]
    filter: Vec<String>,
    #[serde(default)]
    windows: Vec<String>,
    budget_bytes: Option<u64>,
}

/// `PUT /api/groups/{name}`: creates or replaces a group.
pub(super) async fn put_group(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<NewGroup>,
) -> ApiResult<(StatusCode, Json<GroupRecord>)> {
    if body.name != name {
        return Err(bad("name_mismatch", format!("the body names group {}, the path {name}", body.name)));
    }
    check_tag(&name)
        .map_err(|_| bad("bad_group_name", "a group name is 1 to 64 characters from A-Z a-z 0-9 - _ . :"))?;
    product_or_404(&state, body.product).await?;
    parse_filter(&body.filter).map_err(|e| bad("bad_filter", e.0))?;
    parse_windows(&body.windows).map_err(|e| bad("bad_window", e.0))?;
    let existing = state.store.get_group(&name).await?;
    let group = GroupRecord {
        name: name.clone(),
        product: body.product,
        filter: body.filter,
        windows: body.windows,
        budget_bytes: body.budget_bytes,
        created_at: existing.as_ref().map_or_else(now_millis, |g| g.created_at),
    };
    let mut change = state.hub.begin().await?;
    change.put_group(&group).await?;
    change.publish(None, "group.saved", json!({ "group": name, "product": group.product })).await?;
    change.commit().await?;
    state.rollouts.wake();
    let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(group)))
}

#[derive(Deserialize)]
pub(super) struct GroupFilter {
    /// Only groups of this product.
    product: Option<u32>,
}

/// `GET /api/groups`: one page (`limit`, `offset`), by name, optionally of one product.
pub(super) async fn list_groups(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<GroupFilter>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    let filter = query(filter)?;
    let groups: Vec<GroupRecord> = state
        .store
        .list_groups()
        .await?
        .into_iter()
        .filter(|g| filter.product.is_none_or(|p| g.product == p))
        .collect();
    Ok(offset_page(&uri, groups, limit, offset))
}

#[derive(Serialize)]
pub(super) struct GroupDetail {
    #[serde(flatten)]
    group: GroupRecord,
    /// Its members now, by id.
    devices: Vec<String>,
    /// Whether its maintenance windows are open now.
    window_open: bool,
}

pub(super) async fn show_group(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<GroupDetail>> {
    let group = state
        .store
        .get_group(&name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no group {name}")))?;
    let devices = state.store.list_devices().await?;
    let members = devices.iter().filter(|d| fleet::in_group(d, &group)).map(|d| d.id.clone()).collect();
    let windows = parse_windows(&group.windows).unwrap_or_default();
    let now = u64::try_from(now_millis()).unwrap_or(0);
    Ok(Json(GroupDetail { window_open: tern_rollout::in_window(&windows, now), devices: members, group }))
}

pub(super) async fn delete_group(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let live = state
        .store
        .list_rollouts()
        .await?
        .into_iter()
        .find(|r| r.group.as_deref() == Some(name.as_str()) && r.status != crate::store::RolloutStatus::Aborted);
    if let Some(r) = live {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "group_in_use",
            format!("rollout {} targets group {name}: abort it first", r.id),
        ));
    }
    let mut change = state.hub.begin().await?;
    if !change.delete_group(&name).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no group {name}")));
    }
    change.publish(None, "group.deleted", json!({ "group": name })).await?;
    change.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Distinguishes a JSON field set to `null` (`Some(None)`) from an absent one (`None`).
fn maybe<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetMembership {
    /// The product (`null`: none).
    #[serde(default, deserialize_with = "maybe")]
    product: Option<Option<u32>>,
    /// Tags to add.
    #[serde(default)]
    add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    remove_tags: Vec<String>,
    development: Option<bool>,
    /// The release to lock the device to (`null`: unpin).
    #[serde(default, deserialize_with = "maybe")]
    pinned_release: Option<Option<u32>>,
    /// Bytes per month (`null`: no budget).
    #[serde(default, deserialize_with = "maybe")]
    budget_bytes: Option<Option<u64>>,
}

/// `PATCH /api/devices/{id}/fleet`: changes a device's product, tags, development flag, pin
/// or data budget. Every change is checked before any is stored.
pub(super) async fn set_membership(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SetMembership>,
) -> ApiResult<Json<Membership>> {
    let device = device_or_404(&state, &id).await?;
    let mut m = device.fleet.clone();
    if let Some(product) = body.product {
        if let Some(product) = product {
            let p = product_or_404(&state, product).await?;
            if p.platform_id != device.platform_id {
                return Err(bad(
                    "wrong_platform",
                    format!(
                        "device {id} is a {}, product {product} is for {}",
                        platform::name(device.platform_id).unwrap_or("?"),
                        platform::name(p.platform_id).unwrap_or("?")
                    ),
                ));
            }
        }
        if product != m.product {
            // A pin names a release of the old product.
            m.pinned_release = None;
        }
        m.product = product;
    }
    for tag in body.add_tags.iter().chain(&body.remove_tags) {
        check_tag(tag).map_err(|e| bad("bad_tag", e.0))?;
    }
    m.tags.extend(body.add_tags.iter().cloned());
    m.tags.retain(|t| !body.remove_tags.contains(t));
    m.tags.sort();
    m.tags.dedup();
    if let Some(dev) = body.development {
        m.development = dev;
    }
    if let Some(pin) = body.pinned_release {
        if let Some(number) = pin {
            let Some(product) = m.product else {
                return Err(bad(
                    "no_product",
                    format!("device {id} belongs to no product: a pin names a release of it"),
                ));
            };
            if state.store.get_release(product, number).await?.is_none() {
                return Err(bad("unknown_release", format!("product {product} has no release {number}")));
            }
        }
        m.pinned_release = pin;
    }
    if let Some(budget) = body.budget_bytes {
        m.budget_bytes = budget;
    }
    let mut change = state.hub.begin().await?;
    if !change.set_membership(&id, &m).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no device {id}")));
    }
    change.publish(Some(&id), "device.fleet", serde_json::to_value(&m)?).await?;
    change.commit().await?;
    state.rollouts.wake();
    Ok(Json(m))
}
