//! The module catalog: uploads, listings, signed statements.

use super::*;

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    filename: Option<String>,
}

pub(super) async fn upload_module(
    State(state): State<AppState>,
    upload: Result<Query<UploadQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    let query = super::query(upload)?;
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
    // The statement's blob first (content-addressed: one left behind by a failure is
    // harmless), so a new module's row, statement and event are written at once.
    let statement = match statement {
        Some((signed, document)) => Some((state.blobs.put(signed).await?, document)),
        None => None,
    };
    let mut fresh = record.clone();
    if let Some((address, document)) = &statement {
        fresh.statement = Some(address.clone());
        fresh.security_counter = document.security_counter;
    }
    let mut change = state.hub.begin().await?;
    let created = change.put_module(&fresh).await?;
    if created {
        change.publish(None, "module.uploaded", serde_json::to_value(&fresh)?).await?;
    } else if let Some((address, document)) = &statement {
        // The same bytes were in the catalog already: the statement must fit that entry.
        if let Some(existing) = state.store.get_module(&record.sha256).await? {
            let placed = placed(&existing, document);
            check_statement(&placed, document)?;
            if placed != existing {
                change.place_module(&placed.sha256, placed.platform_id, placed.start_address).await?;
            }
        }
        change.set_module_statement(&record.sha256, address, document.security_counter).await?;
        change.publish(None, "module.signed", json!({ "module": record.sha256, "statement": address })).await?;
    }
    change.commit().await?;
    let stored = state.store.get_module(&record.sha256).await?.unwrap_or(fresh);
    // Same bytes uploaded before: the catalog entry is the earlier one (now signed if a
    // statement came with this upload).
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(stored)))
}

/// The catalog record of a module known only through its signed statement.
pub(super) fn statement_record(
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
pub(super) fn check_signature(config: &Config, signed: &[u8]) -> ApiResult<()> {
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
pub(super) fn placed(module: &ModuleRecord, statement: &tern_image::manifest::Manifest) -> ModuleRecord {
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
pub(super) fn check_statement(module: &ModuleRecord, statement: &tern_image::manifest::Manifest) -> ApiResult<()> {
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

#[derive(Deserialize)]
pub(super) struct ModuleFilter {
    /// Only this platform id.
    platform: Option<u16>,
    /// Only this function (name, such as `user_part`, or number).
    function: Option<String>,
}

/// `GET /api/modules`: one page of the catalog (`limit`, `offset`), optionally of one
/// platform or function.
pub(super) async fn list_modules(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    page: Result<Query<PageQuery>, QueryRejection>,
    filter: Result<Query<ModuleFilter>, QueryRejection>,
) -> ApiResult<Response> {
    let (limit, offset) = page_query(page)?;
    let filter = query(filter)?;
    let modules: Vec<ModuleRecord> = state
        .store
        .list_modules()
        .await?
        .into_iter()
        .filter(|m| filter.platform.is_none_or(|p| m.platform_id == p))
        .filter(|m| {
            filter.function.as_deref().is_none_or(|f| m.function_name == f || f.parse::<u8>() == Ok(m.function))
        })
        .collect();
    Ok(offset_page(&uri, modules, limit, offset))
}

pub(super) async fn show_module(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> ApiResult<Json<ModuleRecord>> {
    let module = state.store.get_module(&sha256.to_ascii_lowercase()).await?;
    module.map(Json).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no module {sha256}")))
}

/// `PUT /api/modules/{sha256}/statement`: attaches a signed module statement (`tern module
/// sign`) to a catalog module. The server holds no keys, so it cannot judge the signature
/// (devices do); it checks that the statement is well formed and describes exactly this
/// module.
pub(super) async fn put_statement(
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
    let mut change = state.hub.begin().await?;
    change.set_module_statement(&sha256, &address, statement.security_counter).await?;
    if placed != module {
        change.place_module(&sha256, placed.platform_id, placed.start_address).await?;
    }
    let data = json!({ "module": sha256, "statement": address, "key_id": hex::encode(document.kid) });
    change.publish(None, "module.signed", data).await?;
    change.commit().await?;
    let module = state.store.get_module(&sha256).await?.unwrap_or(module);
    Ok(Json(module))
}
