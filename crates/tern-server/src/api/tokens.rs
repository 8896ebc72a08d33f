//! Operator tokens: create, list, show, revoke, rotate (admin only; see `auth::Role`).

use super::*;
pub use crate::api::types::{IssuedToken, TokenView};
use crate::auth::Role;
use crate::store::TokenRecord;

#[derive(Deserialize)]
pub(super) struct NewToken {
    name: String,
    role: String,
    /// Unix milliseconds; absent or `null`: never expires.
    expires_at: Option<i64>,
}

/// The view of a stored token at time `now`.
pub(super) fn token_view(record: &TokenRecord, now: i64) -> TokenView {
    let state = if record.revoked_at.is_some() {
        "revoked"
    } else if record.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    };
    TokenView {
        name: record.name.clone(),
        role: record.role.clone(),
        state: state.to_owned(),
        created_at: record.created_at,
        expires_at: record.expires_at,
        revoked_at: record.revoked_at,
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The live token `name`, or `404 not_found`.
async fn live_or_404(state: &AppState, name: &str) -> ApiResult<TokenRecord> {
    state.store.live_token(name).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no token {name} (or it was revoked)"))
    })
}

/// `POST /api/tokens`.
pub(super) async fn create_token(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    if !valid_name(&body.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_token_name",
            "a token name is 1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let role = Role::parse(&body.role).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
        ApiError::new(StatusCode::BAD_REQUEST, "bad_role", format!("role must be one of {}", known.join(", ")))
    })?;
    let now = now_millis();
    if body.expires_at.is_some_and(|at| at <= now) {
        return Err(unprocessable("expiry_in_past", "expires_at is not in the future"));
    }
    if state.store.live_token(&body.name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("token {} exists already; revoke or rotate it", body.name),
        ));
    }
    let token = auth::new_token();
    let record = TokenRecord {
        name: body.name,
        token_hash: auth::hash_secret(&token),
        role: role.name().to_owned(),
        created_at: now,
        expires_at: body.expires_at,
        revoked_at: None,
    };
    let view = token_view(&record, now);
    let mut change = state.hub.begin().await?;
    change.create_token(&record).await?;
    change
        .publish(None, "token.created", json!({ "name": view.name, "role": view.role, "expires_at": view.expires_at }))
        .await?;
    change.commit().await?;
    Ok((StatusCode::CREATED, Json(IssuedToken { view, token })))
}

/// `GET /api/tokens`: every token, revoked ones too.
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    let now = now_millis();
    let tokens: Vec<TokenView> = state.store.list_tokens().await?.iter().map(|t| token_view(t, now)).collect();
    Ok(offset_page(&uri, tokens, limit, offset))
}

/// `GET /api/tokens/{name}`: the live token of that name.
pub(super) async fn show_token(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<TokenView>> {
    Ok(Json(token_view(&live_or_404(&state, &name).await?, now_millis())))
}

/// `DELETE /api/tokens/{name}`: revokes it; the last working admin token cannot go (nobody
/// could manage tokens after it).
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TokenView>> {
    let record = live_or_404(&state, &name).await?;
    let now = now_millis();
    if record.role == Role::Admin.name() {
        let admins = state.store.list_tokens().await?;
        let working = admins.iter().filter(|t| t.role == Role::Admin.name() && token_view(t, now).state == "active");
        if working.filter(|t| t.name != name).count() == 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_admin",
                format!("token {name} is the last working admin token; create another admin token first"),
            ));
        }
    }
    let mut change = state.hub.begin().await?;
    if !change.revoke_token(&name, now).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no token {name} (or it was revoked)")));
    }
    change.publish(None, "token.revoked", json!({ "name": name })).await?;
    change.commit().await?;
    Ok(Json(token_view(&TokenRecord { revoked_at: Some(now), ..record }, now)))
}

/// `POST /api/tokens/{name}/rotate`: a new token with the same name, role and expiry; the
/// old one stops working at once.
pub(super) async fn rotate_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<IssuedToken>> {
    let record = live_or_404(&state, &name).await?;
    let now = now_millis();
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "expired",
            format!("token {name} has expired; revoke it and create a new one"),
        ));
    }
    let token = auth::new_token();
    let hash = auth::hash_secret(&token);
    let mut change = state.hub.begin().await?;
    if !change.rotate_token(&name, &hash).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no token {name} (or it was revoked)")));
    }
    change.publish(None, "token.rotated", json!({ "name": name })).await?;
    change.commit().await?;
    let view = token_view(&TokenRecord { token_hash: hash, ..record }, now);
    Ok(Json(IssuedToken { view, token }))
}
