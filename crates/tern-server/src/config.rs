//! Server configuration: built-in defaults, then a TOML file, then environment variables,
//! then command-line flags, each overriding the one before.
//!
//! | setting | default | file key | environment | flag |
//! |---|---|---|---|---|
//! | data directory | `./tern-data` | `data_dir` | `TERN_DATA` | `--data` |
//! | HTTP API listen address (HTTPS with TLS) | `127.0.0.1:8080` | `http` | `TERN_HTTP` | `--http` |
//! | plain MQTT listen address | `127.0.0.1:1883` without TLS; none with TLS | `mqtt` | `TERN_MQTT` | `--mqtt` |
//! | MQTT over TLS listen address (with TLS) | `127.0.0.1:8883` | `mqtts` | `TERN_MQTTS` | `--mqtts` |
//! | server certificate chain and key (PEM) | none | `tls_cert`, `tls_key` | — | `--tls-cert`, `--tls-key` |
//! | a self-signed certificate made in `DATA/tls/` | off | `self_signed` | — | `--self-signed` |
//! | CA of device client certificates (PEM; mutual TLS) | none | `tls_client_ca` | — | `--tls-client-ca` |
//! | how often certificate files are checked for changes (ms) | 10000 | `tls_reload_ms` | — | — |
//! | plain listeners allowed on addresses other than loopback | false | `allow_plain_public` | — | — |
//! | HTTP connections at once, in total / per source address | 1024 / 64 | `max_http_connections` / `max_connections_per_source` | — | — |
//! | an HTTP request head (and TLS handshake) must arrive within (ms) | 10000 | `http_header_timeout_ms` | — | — |
//! | an HTTP connection without traffic is closed after (ms) | 60000 | `http_idle_timeout_ms` | — | — |
//! | MQTT connections at once (both listeners) | 10000 | `max_mqtt_connections` | — | — |
//! | a device must finish TLS and CONNECT within (ms) | 10000 | `mqtt_connect_timeout_ms` | — | — |
//! | largest module upload (bytes) | 16 MiB | `max_module_size` | — | — |
//! | largest MQTT packet (bytes) | 64 KiB | `max_mqtt_packet` | — | — |
//! | first re-offer of an attempt without progress after (ms) | 5000 | `offer_retry_ms` | — | — |
//! | longest wait between re-offers (ms; the wait doubles from `offer_retry_ms`) | 60000 | `reoffer_max_ms` | — | — |
//! | attempt times out after this long without progress (ms) | 900000 | `give_up_after_ms` | — | — |
//! | attempt times out this long after its creation, progress or not (ms) | 21600000 (6 h) | `attempt_deadline_ms` | — | — |
//! | public keys statements must be signed with | none | `trusted_keys` | — | `--trusted-key` |
//! | per-device message rates, event retention | see [`crate::uplink::Bounds`] | `[bounds]` table | — | — |
//! | `/metrics` without a token (HTTP listener on loopback only) | false | `[metrics]` `public` | — | — |
//! | log format: `text` (for people) or `json` (one object a line) | `text` | `[log]` `format` | `TERN_LOG_FORMAT` | `--log-format` |
//!
//! `trusted_keys` are PEM files (relative paths are relative to the file's directory);
//! `--trusted-key` adds to them. With none, the server accepts any well-formed statement
//! and leaves the signature to the devices; with some, it refuses a statement no trusted
//! key signed, at upload, so an operator learns of a wrong key before any device does.
//!
//! TLS: with `tls_cert` and `tls_key` (or `self_signed`), the API is served over HTTPS on
//! `http` and devices connect over TLS on `mqtts`; a plain MQTT listener runs only when
//! `mqtt` is given explicitly. Without TLS both listeners are plain. A plain listener must be
//! on a loopback address unless `allow_plain_public` is set, so tokens and device secrets
//! never cross a network in cleartext by accident. Certificate files are reloaded when they
//! change (and on SIGHUP) without a restart. See [`crate::tls`].
//!
//! The file is the one named by `--config` or `TERN_CONFIG`, else `tern.toml` in the data
//! directory if it exists. Unknown keys in the file are an error, so a typo is not silently
//! ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the database, blobs and the first admin token live.
    pub data_dir: PathBuf,
    /// HTTP API address (HTTPS when [`Config::tls`] is on).
    pub http: SocketAddr,
    /// Plain MQTT gateway address, if any.
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS address (used when [`Config::tls`] is on).
    pub mqtts: SocketAddr,
    /// Where the certificates come from, if TLS is on.
    pub tls: TlsSource,
    /// How often certificate files are checked for changes, in milliseconds.
    pub tls_reload_ms: u64,
    /// HTTP connection limits and timeouts.
    pub http_transport: crate::transport::HttpSettings,
    /// MQTT connections at once, on both MQTT listeners together.
    pub max_mqtt_connections: usize,
    /// How long a device has to finish the TLS handshake and send CONNECT.
    pub mqtt_connect_timeout: Duration,
    /// The largest module file accepted by upload, in bytes.
    pub max_module_size: usize,
    /// The largest MQTT packet accepted from a device, in bytes.
    pub max_mqtt_packet: usize,
    /// Block transfer settings (window, block size, offer retry, give-up time).
    pub transfer: tern_proto::attempt::TransferConfig,
    /// Keys a module statement must be signed with to enter the catalog (none: any).
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// How often the rollout pump steps every live rollout, in milliseconds.
    pub rollout_tick_ms: u64,
    /// Re-offer back-off cap and the deadline of every attempt.
    pub limits: crate::updates::AttemptLimits,
    /// Per-device message rates and event retention (`[bounds]`).
    pub bounds: crate::uplink::Bounds,
    /// Who may scrape `/metrics` (`[metrics]`).
    pub metrics: MetricsConfig,
    /// How log lines are written (`[log]`).
    pub log_format: LogFormat,
}

/// The `[metrics]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `/metrics` needs no token. Allowed only when the HTTP listener is on a loopback
    /// address, so only a scraper on the same host can use it.
    pub public: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with `timestamp`, `level`, `target`, `message` and the
    /// event's fields.
    Json,
}

impl LogFormat {
    fn parse(text: &str) -> Option<LogFormat> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LogFile {
    format: Option<LogFormat>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tern-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            mqtts: SocketAddr::from(([127, 0, 0, 1], 8883)),
            tls: TlsSource::Off,
            tls_reload_ms: 10_000,
            http_transport: crate::transport::HttpSettings {
                limits: crate::transport::Limits { max_connections: 1024, per_source: 64 },
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
            },
            max_mqtt_connections: 10_000,
            mqtt_connect_timeout: Duration::from_secs(10),
            max_module_size: 16 << 20,
            max_mqtt_packet: 64 << 10,
            transfer: tern_proto::attempt::TransferConfig::default(),
            trusted_keys: Vec::new(),
            rollout_tick_ms: 1000,
            limits: crate::updates::AttemptLimits::default(),
            bounds: crate::uplink::Bounds::default(),
            metrics: MetricsConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

/// Where the server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// No TLS: plain listeners (loopback only unless `allow_plain_public`).
    Off,
    /// Certificate, key and optional client CA from these files.
    Files(crate::tls::TlsFiles),
    /// A self-signed certificate in `DATA/tls/`, made on first start; with an optional
    /// client CA for devices.
    SelfSigned {
        /// CA certificates device client certificates must chain to.
        client_ca: Option<PathBuf>,
    },
}

impl TlsSource {
    /// Whether TLS is on.
    pub fn is_on(&self) -> bool {
        !matches!(self, TlsSource::Off)
    }
}

/// The file's contents; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    mqtts: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    self_signed: Option<bool>,
    tls_reload_ms: Option<u64>,
    allow_plain_public: Option<bool>,
    max_http_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    http_header_timeout_ms: Option<u64>,
    http_idle_timeout_ms: Option<u64>,
    max_mqtt_connections: Option<usize>,
    mqtt_connect_timeout_ms: Option<u64>,
    max_module_size: Option<usize>,
    max_mqtt_packet: Option<usize>,
    offer_retry_ms: Option<u64>,
    give_up_after_ms: Option<u64>,
    reoffer_max_ms: Option<u64>,
    attempt_deadline_ms: Option<u64>,
    trusted_keys: Option<Vec<PathBuf>>,
    rollout_tick_ms: Option<u64>,
    bounds: Option<crate::uplink::Bounds>,
    metrics: Option<MetricsConfig>,
    log: Option<LogFile>,
}

/// Command-line flags of `tern server` (and `tern-server`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerArgs {
    /// Configuration file (TOML) [env: TERN_CONFIG; default: DATA/tern.toml if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [env: TERN_DATA; default: ./tern-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// HTTP API listen address, HTTPS when TLS is on [env: TERN_HTTP; default:
    /// 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Plain MQTT device gateway listen address [env: TERN_MQTT; default: 127.0.0.1:1883
    /// without TLS, none with TLS]. Plain listeners must be on loopback unless the file
    /// says `allow_plain_public = true`.
    #[arg(long, value_name = "ADDR")]
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS listen address, used when TLS is on [env: TERN_MQTTS; default:
    /// 127.0.0.1:8883].
    #[arg(long, value_name = "ADDR")]
    pub mqtts: Option<SocketAddr>,
    /// The server's certificate chain (PEM); with --tls-key, serves HTTPS and MQTT over
    /// TLS. Reloaded when the file changes or on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Without --tls-cert: make a self-signed certificate in DATA/tls/ on first start
    /// (clients trust DATA/tls/ca.pem).
    #[arg(long, conflicts_with = "tls_cert")]
    pub self_signed: bool,
    /// CA certificates (PEM) of device client certificates: a device whose certificate
    /// chains to one and names its device id (subject CN or a DNS SAN) connects without
    /// its secret.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// A public key (PEM) module statements must be signed with to enter the catalog;
    /// repeat for several [default: any key; devices judge signatures].
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Vec<PathBuf>,
    /// Log format: `text` for people, `json` for log collectors (one object a line)
    /// [env: TERN_LOG_FORMAT; default: text]. Log levels come from TERN_LOG.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Resolves the configuration from `args` and the environment variables `env` reads.
    pub fn resolve(args: &ServerArgs, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let env_addr = |name: &str| -> anyhow::Result<Option<SocketAddr>> {
            env(name).map(|v| v.parse().with_context(|| format!("{name}={v}: not a socket address"))).transpose()
        };
        let env_data = env("TERN_DATA").map(PathBuf::from);

        // Where to look for the file depends on the data directory as known without it.
        let explicit = args.config.clone().or_else(|| env("TERN_CONFIG").map(PathBuf::from));
        let path = match explicit {
            Some(path) => Some(path),
            None => {
                let data = args.data.clone().or_else(|| env_data.clone()).unwrap_or_else(|| Config::default().data_dir);
                Some(data.join("tern.toml")).filter(|path| path.is_file())
            }
        };
        let file = path.as_deref().map(read_file).transpose()?.unwrap_or_default();
        let file_dir = path.as_deref().and_then(Path::parent).unwrap_or(Path::new("."));

        let mut config = Config::default();
        config.data_dir = file.data_dir.unwrap_or(config.data_dir);
        config.http = file.http.unwrap_or(config.http);
        config.mqtts = file.mqtts.unwrap_or(config.mqtts);
        config.tls_reload_ms = file.tls_reload_ms.unwrap_or(config.tls_reload_ms).max(10);
        let transport = &mut config.http_transport;
        transport.limits.max_connections = file.max_http_connections.unwrap_or(transport.limits.max_connections);
        transport.limits.per_source = file.max_connections_per_source.unwrap_or(transport.limits.per_source);
        if let Some(ms) = file.http_header_timeout_ms {
            transport.header_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = file.http_idle_timeout_ms {
            transport.idle_timeout = Duration::from_millis(ms.max(1));
        }
        config.max_mqtt_connections = file.max_mqtt_connections.unwrap_or(config.max_mqtt_connections);
        if let Some(ms) = file.mqtt_connect_timeout_ms {
            config.mqtt_connect_timeout = Duration::from_millis(ms.max(1));
        }
        config.max_module_size = file.max_module_size.unwrap_or(config.max_module_size);
        config.max_mqtt_packet = file.max_mqtt_packet.unwrap_or(config.max_mqtt_packet);
        config.transfer.offer_retry_ms = file.offer_retry_ms.unwrap_or(config.transfer.offer_retry_ms);
        config.transfer.give_up_after_ms = file.give_up_after_ms.unwrap_or(config.transfer.give_up_after_ms);
        config.limits.reoffer_max_ms = file.reoffer_max_ms.unwrap_or(config.limits.reoffer_max_ms);
        config.limits.deadline_ms = file.attempt_deadline_ms.unwrap_or(config.limits.deadline_ms);
        config.rollout_tick_ms = file.rollout_tick_ms.unwrap_or(config.rollout_tick_ms).max(10);
        config.bounds = file.bounds.unwrap_or(config.bounds);
        config.metrics = file.metrics.unwrap_or(config.metrics);
        config.log_format = file.log.and_then(|log| log.format).unwrap_or(config.log_format);
        if let Some(text) = env("TERN_LOG_FORMAT") {
            config.log_format = LogFormat::parse(&text)
                .with_context(|| format!("TERN_LOG_FORMAT={text}: not a log format (text or json)"))?;
        }
        config.log_format = args.log_format.unwrap_or(config.log_format);
        for key in file.trusted_keys.iter().flatten() {
            config.trusted_keys.push(load_public_key(&file_dir.join(key))?);
        }
        for key in &args.trusted_key {
            config.trusted_keys.push(load_public_key(key)?);
        }

        config.data_dir = env_data.unwrap_or(config.data_dir);
        config.http = env_addr("TERN_HTTP")?.unwrap_or(config.http);
        config.mqtts = env_addr("TERN_MQTTS")?.unwrap_or(config.mqtts);
        config.data_dir = args.data.clone().unwrap_or(config.data_dir);
        config.http = args.http.unwrap_or(config.http);
        config.mqtts = args.mqtts.unwrap_or(config.mqtts);

        // TLS: flags name both files or neither; the file's paths are relative to it.
        let in_file = |p: &Option<PathBuf>| p.as_ref().map(|p| file_dir.join(p));
        let cert = args.tls_cert.clone().or_else(|| in_file(&file.tls_cert));
        let key = args.tls_key.clone().or_else(|| in_file(&file.tls_key));
        let client_ca = args.tls_client_ca.clone().or_else(|| in_file(&file.tls_client_ca));
        let self_signed = args.self_signed || file.self_signed.unwrap_or(false);
        config.tls = match (cert, key) {
            (Some(cert), Some(key)) => TlsSource::Files(crate::tls::TlsFiles { cert, key, client_ca }),
            (None, None) if self_signed => TlsSource::SelfSigned { client_ca },
            (None, None) if client_ca.is_some() => {
                anyhow::bail!("tls_client_ca needs TLS: set tls_cert and tls_key, or self_signed")
            }
            (None, None) => TlsSource::Off,
            (Some(_), None) => anyhow::bail!("tls_cert is set but tls_key is not"),
            (None, Some(_)) => anyhow::bail!("tls_key is set but tls_cert is not"),
        };

        // Plain MQTT: by default only without TLS; explicit anywhere.
        let explicit_mqtt = args.mqtt.or(env_addr("TERN_MQTT")?).or(file.mqtt);
        config.mqtt = match explicit_mqtt {
            Some(addr) => Some(addr),
            None if config.tls.is_on() => None,
            None => config.mqtt,
        };
        if !file.allow_plain_public.unwrap_or(false) {
            let plain_http = (!config.tls.is_on()).then_some(("HTTP", config.http));
            let plain_mqtt = config.mqtt.map(|addr| ("MQTT", addr));
            for (what, addr) in plain_http.into_iter().chain(plain_mqtt) {
                if !addr.ip().is_loopback() {
                    anyhow::bail!(
                        "plain {what} on {addr} would carry tokens or device secrets in cleartext: turn TLS on \
                         (tls_cert and tls_key, or --self-signed), listen on a loopback address, or set \
                         allow_plain_public = true in the configuration file"
                    );
                }
            }
        }
        if config.metrics.public && !config.http.ip().is_loopback() {
            anyhow::bail!(
                "[metrics] public = true serves /metrics without a token, which is allowed only when the HTTP \
                 listener is on a loopback address (it is {}); give the scraper a viewer token instead",
                config.http
            );
        }
        Ok(config)
    }
}

/// Reads an ED25519 public key (SubjectPublicKeyInfo PEM, as `tern key generate` writes).
fn load_public_key(path: &Path) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    ed25519_dalek::VerifyingKey::from_public_key_pem(&text)
        .map_err(|_| anyhow::anyhow!("{}: not an ED25519 public key in PEM", path.display()))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}
