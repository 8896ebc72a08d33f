//! The Tern server: one process with the HTTP API, the server-sent event stream, the
//! built-in MQTT device gateway and storage (SQLite + content-addressed blobs on disk).
//!
//! Seams for scaling out (each a narrow trait the core depends on):
//! - [`store::Store`]: durable state (SQLite now; PostgreSQL next);
//! - [`blob::BlobStore`]: module files (a directory now; S3-compatible next);
//! - [`link::DeviceLink`]: the device link (the built-in gateway now; an external broker
//!   cluster with shared subscriptions next).
//!
//! Only this crate knows SQL and HTTP. See `docs/server.md`.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod blob;
pub mod config;
pub mod events;
pub mod fleet;
pub mod gateway;
pub mod link;
pub mod patches;
pub mod plans;
pub mod platform;
pub mod rollouts;
pub mod store;
pub mod updates;
pub mod uplink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

pub use config::{Config, ServerArgs};

use crate::blob::FsBlobStore;
use crate::events::EventHub;
use crate::gateway::{Gateway, GatewayConfig};
use crate::store::{SqliteStore, Store, TokenRecord};

/// The name of the file holding the first admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// A started server.
pub struct Running {
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    /// Where the MQTT gateway listens.
    pub mqtt: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The admin token, when this start created it (first start on an empty data dir).
    pub created_admin_token: Option<String>,
    /// The HTTP server task; it ends only on error.
    pub http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the data directory and starts every listener.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("{}: cannot create the data directory", data.display()))?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&data.join("tern.db"))
            .await
            .with_context(|| format!("{}: cannot open the database", data.display()))?,
    );
    let fs_blobs = FsBlobStore::new(data.join("blobs"));
    match fs_blobs.remove_temporaries() {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed temporary blob files a crash left behind"),
        Err(err) => tracing::warn!("cannot clean the blob directory: {err}"),
    }
    let blobs: Arc<dyn blob::BlobStore> = Arc::new(fs_blobs);
    let created_admin_token = first_admin_token(&*store, data).await?;

    let hub = EventHub::new(store.clone());
    let (link_tx, link_rx) = tokio::sync::mpsc::channel(1024);
    let gateway_config = GatewayConfig { max_packet: config.max_mqtt_packet, ..GatewayConfig::default() };
    let (gateway, mqtt) = Gateway::start(config.mqtt, gateway_config, store.clone(), link_tx)
        .await
        .with_context(|| format!("cannot listen for MQTT on {}", config.mqtt))?;
    let link: Arc<dyn link::DeviceLink> = Arc::new(gateway);
    let updates =
        updates::start(store.clone(), blobs.clone(), hub.clone(), link.clone(), config.transfer, config.limits).await?;
    let planner = plans::Planner::new(store.clone(), blobs.clone(), hub.clone(), updates.clone(), config.transfer);
    let uplink = Arc::new(uplink::UplinkCounters::default());
    tokio::spawn(uplink::run(
        link_rx,
        hub.clone(),
        uplink.clone(),
        updates.clone(),
        planner.clone(),
        config.bounds.clone(),
    ));
    uplink::spawn_retention(store.clone(), &config.bounds);

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let http = listener.local_addr()?;
    let rollouts = rollouts::Rollouts::new(store.clone(), planner.clone(), hub.clone(), link.clone());
    rollouts.spawn(std::time::Duration::from_millis(config.rollout_tick_ms));
    let state =
        api::AppState { store, blobs, hub, link, uplink, updates, planner, rollouts, config: Arc::new(config.clone()) };
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    let http_task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running { http, mqtt, data_dir: config.data_dir, created_admin_token, http_task })
}

/// On first start (no token at all), creates an admin token and saves it to the data dir.
async fn first_admin_token(store: &dyn Store, data: &std::path::Path) -> anyhow::Result<Option<String>> {
    if store.token_count().await? > 0 {
        return Ok(None);
    }
    let token = auth::new_token();
    let path = data.join(ADMIN_TOKEN_FILE);
    write_private(&path, format!("{token}\n").as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    let record = TokenRecord {
        name: "admin".into(),
        token_hash: auth::hash_secret(&token),
        role: "admin".into(),
        created_at: auth::now_millis(),
        expires_at: None,
        revoked_at: None,
    };
    store.create_token(&record).await?;
    Ok(Some(token))
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Runs the server until Ctrl-C (or SIGTERM): what `tern server` and `tern-server` do.
pub fn run_blocking(args: ServerArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args, |name| std::env::var(name).ok())?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = start(config).await?;
        say(format_args!("tern server: data directory {}", running.data_dir.display()));
        say(format_args!("tern server: HTTP API on http://{} (OpenAPI at /api/openapi.json)", running.http));
        say(format_args!("tern server: MQTT device gateway on mqtt://{}", running.mqtt));
        if let Some(token) = &running.created_admin_token {
            let path = running.data_dir.join(ADMIN_TOKEN_FILE);
            say(format_args!("tern server: created the first admin token (saved to {}):", path.display()));
            say(format_args!("{token}"));
        }
        wait_for_shutdown(running.http_task).await
    })
}

/// Prints a line on stdout; a closed stdout (a supervisor that stopped reading) must not
/// bring the server down, so write errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn wait_for_shutdown(http_task: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        result = http_task => {
            result.context("the HTTP server stopped")?.context("the HTTP server failed")?;
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = terminate => Ok(()),
    }
}
