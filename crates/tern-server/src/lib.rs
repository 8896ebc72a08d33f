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
pub mod metrics;
pub mod patches;
pub mod plans;
pub mod platform;
pub mod rollouts;
pub mod store;
pub mod tls;
pub mod transport;
pub mod updates;
pub mod uplink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tern_proto::attempt::TransferConfig;

pub use config::{Config, ServerArgs, TlsSource};

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
    /// Whether the API is served over HTTPS.
    pub https: bool,
    /// Where the plain MQTT gateway listens, if it does.
    pub mqtt: Option<SocketAddr>,
    /// Where the MQTT over TLS gateway listens, if TLS is on.
    pub mqtts: Option<SocketAddr>,
    /// The self-signed CA certificate clients should trust, when the server made its own.
    pub self_signed_ca: Option<PathBuf>,
    /// Whether this start made that self-signed certificate.
    pub self_signed_created: bool,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The admin token, when this start created it (first start on an empty data dir).
    pub created_admin_token: Option<String>,
    /// The HTTP server task; it ends only on error.
    pub http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the data directory and starts every listener.
///
/// Everything the server creates is private to its user: the process's umask becomes 077,
/// the data directory is 0700 and the database and token files 0600, also when they were
/// made by an older version.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let data = &config.data_dir;
    private_files();
    raise_file_limit();
    private_dir(data).with_context(|| format!("{}: cannot create the data directory", data.display()))?;
    let db = data.join("tern.db");
    for existing in [db.clone(), data.join(ADMIN_TOKEN_FILE), data.join("tern.db-wal"), data.join("tern.db-shm")] {
        make_private(&existing, 0o600);
    }
    private_dir(&data.join("blobs")).with_context(|| format!("{}: cannot create blobs/", data.display()))?;
    if !db.exists() {
        // SQLite gives its -wal and -shm files the database file's mode.
        write_private(&db, &[]).with_context(|| format!("{}: cannot create", db.display()))?;
    }
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db).await.with_context(|| format!("{}: cannot open the database", data.display()))?,
    );
    let fs_blobs = FsBlobStore::new(data.join("blobs"));
    match fs_blobs.remove_temporaries() {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed temporary blob files a crash left behind"),
        Err(err) => tracing::warn!("cannot clean the blob directory: {err}"),
    }
    let blobs: Arc<dyn blob::BlobStore> = Arc::new(fs_blobs);
    let created_admin_token = first_admin_token(&*store, data).await?;

    // TLS: the files named, or a self-signed certificate made on first start.
    let (tls_files, self_signed_ca, self_signed_created) = match &config.tls {
        TlsSource::Off => (None, None, false),
        TlsSource::Files(files) => (Some(files.clone()), None, false),
        TlsSource::SelfSigned { client_ca } => {
            let extra: Vec<String> = [config.http.ip(), config.mqtts.ip()]
                .into_iter()
                .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
                .map(|ip| ip.to_string())
                .collect();
            let made = tls::self_signed(data, &extra)?;
            let files = tls::TlsFiles { client_ca: client_ca.clone(), ..made.files };
            (Some(files), Some(made.ca), made.created)
        }
    };
    let tls = tls_files.map(tls::Reloading::load).transpose()?;
    if let Some(tls) = &tls {
        tls.spawn_watch(std::time::Duration::from_millis(config.tls_reload_ms));
    }

    let hub = EventHub::new(store.clone());
    let (link_tx, link_rx) = tokio::sync::mpsc::channel(1024);
    let gateway_config = GatewayConfig {
        max_packet: config.max_mqtt_packet,
        connect_timeout: config.mqtt_connect_timeout,
        max_connections: config.max_mqtt_connections,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(gateway_config, store.clone(), link_tx);
    let mqtt = match config.mqtt {
        Some(addr) => {
            Some(gateway.listen(addr, None).await.with_context(|| format!("cannot listen for MQTT on {addr}"))?)
        }
        None => None,
    };
    let mqtts = match &tls {
        Some(tls) => Some(
            gateway
                .listen(config.mqtts, Some(tls.clone()))
                .await
                .with_context(|| format!("cannot listen for MQTT over TLS on {}", config.mqtts))?,
        ),
        None => None,
    };
    let link: Arc<dyn link::DeviceLink> = Arc::new(gateway);
    // With TLS on, devices connect over TLS (a plain listener, if asked for, is loopback's):
    // estimates count each packet's TLS records.
    let transfer = TransferConfig { count_tls_records: tls.is_some(), ..config.transfer };
    let updates =
        updates::start(store.clone(), blobs.clone(), hub.clone(), link.clone(), transfer, config.limits).await?;
    let planner = plans::Planner::new(store.clone(), blobs.clone(), hub.clone(), updates.clone(), transfer);
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
    let settings = config.http_transport;
    let https = tls.is_some();
    let metrics = Arc::new(metrics::Metrics::new());
    let data_dir = config.data_dir.clone();
    let config = Arc::new(config);
    let state = api::AppState { store, blobs, hub, link, uplink, updates, planner, rollouts, config, metrics };
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    let http_task = tokio::spawn(transport::serve_http(listener, app, tls, settings));
    Ok(Running {
        http,
        https,
        mqtt,
        mqtts,
        self_signed_ca,
        self_signed_created,
        data_dir,
        created_admin_token,
        http_task,
    })
}

/// Makes every file and directory this process creates private to its user (umask 077).
fn private_files() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Raises the soft limit on open files to the hard limit: every connection is one.
fn raise_file_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if let Err(err) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!("cannot raise the open file limit: {err}");
            }
        }
    }
}

/// Creates `dir` (and its parents) and makes it 0700.
pub(crate) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Gives an existing file `mode` (a file an older version made world-readable).
fn make_private(path: &std::path::Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            if let Err(err) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!("{}: cannot make it private: {err}", path.display());
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
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
    let mut writes = store.begin().await?;
    writes.create_token(&record).await?;
    writes.commit().await?;
    Ok(Some(token))
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
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
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = start(config).await?;
        for line in listening_lines(&running) {
            say(format_args!("{line}"));
        }
        if let Some(token) = &running.created_admin_token {
            let path = running.data_dir.join(ADMIN_TOKEN_FILE);
            say(format_args!("tern server: created the first admin token (saved to {}):", path.display()));
            say(format_args!("{token}"));
        }
        wait_for_shutdown(running.http_task).await
    })
}

/// Sends log lines to stderr, at the levels `TERN_LOG` names (default `info`), in `format`.
fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second start in one process (tests) keeps the first subscriber.
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        // One object a line; the event's message and fields at the top level, beside
        // `timestamp`, `level` and `target`, as log collectors expect.
        config::LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

/// What a started server says about itself: where it listens and how to trust it.
pub fn listening_lines(running: &Running) -> Vec<String> {
    let mut lines = vec![format!("tern server: data directory {}", running.data_dir.display())];
    let scheme = if running.https { "https" } else { "http" };
    // The API's line comes last of the listeners: a supervisor reading them knows all are up.
    if let Some(addr) = running.mqtts {
        lines.push(format!("tern server: MQTT device gateway on mqtts://{addr}"));
    }
    if let Some(addr) = running.mqtt {
        lines.push(format!("tern server: MQTT device gateway on mqtt://{addr}"));
    }
    lines.push(format!("tern server: HTTP API on {scheme}://{} (OpenAPI at /api/openapi.json)", running.http));
    if !running.https {
        lines.push("tern server: no TLS: plain listeners on loopback only (see docs/server.md to turn TLS on)".into());
    }
    if let Some(ca) = &running.self_signed_ca {
        let made = if running.self_signed_created { "made" } else { "uses" };
        lines.push(format!("tern server: {made} a self-signed certificate; clients trust its CA, {}:", ca.display()));
        lines.push(format!("  tern --ca-file {} ...   (or TERN_CA_FILE)", ca.display()));
        lines.push(format!("  curl --cacert {} {scheme}://{}/api/health", ca.display(), running.http));
        if let Some(addr) = running.mqtts {
            lines.push(format!("  mosquitto_pub --cafile {} -h {} -p {} ...", ca.display(), addr.ip(), addr.port()));
        }
    }
    lines
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
