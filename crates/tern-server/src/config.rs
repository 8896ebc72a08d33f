//! Server configuration: built-in defaults, then a TOML file, then environment variables,
//! then command-line flags, each overriding the one before.
//!
//! | setting | default | file key | environment | flag |
//! |---|---|---|---|---|
//! | data directory | `./tern-data` | `data_dir` | `TERN_DATA` | `--data` |
//! | HTTP listen address | `127.0.0.1:8080` | `http` | `TERN_HTTP` | `--http` |
//! | MQTT listen address | `127.0.0.1:1883` | `mqtt` | `TERN_MQTT` | `--mqtt` |
//! | largest module upload (bytes) | 16 MiB | `max_module_size` | — | — |
//! | largest MQTT packet (bytes) | 64 KiB | `max_mqtt_packet` | — | — |
//! | first re-offer of an attempt without progress after (ms) | 5000 | `offer_retry_ms` | — | — |
//! | longest wait between re-offers (ms; the wait doubles from `offer_retry_ms`) | 60000 | `reoffer_max_ms` | — | — |
//! | attempt times out after this long without progress (ms) | 900000 | `give_up_after_ms` | — | — |
//! | attempt times out this long after its creation, progress or not (ms) | 21600000 (6 h) | `attempt_deadline_ms` | — | — |
//! | public keys statements must be signed with | none | `trusted_keys` | — | `--trusted-key` |
//! | per-device message rates, event retention | see [`crate::uplink::Bounds`] | `[bounds]` table | — | — |
//!
//! `trusted_keys` are PEM files (relative paths are relative to the file's directory);
//! `--trusted-key` adds to them. With none, the server accepts any well-formed statement
//! and leaves the signature to the devices; with some, it refuses a statement no trusted
//! key signed, at upload, so an operator learns of a wrong key before any device does.
//!
//! The file is the one named by `--config` or `TERN_CONFIG`, else `tern.toml` in the data
//! directory if it exists. Unknown keys in the file are an error, so a typo is not silently
//! ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the database, blobs and the first admin token live.
    pub data_dir: PathBuf,
    /// HTTP API address.
    pub http: SocketAddr,
    /// MQTT gateway address.
    pub mqtt: SocketAddr,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tern-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_module_size: 16 << 20,
            max_mqtt_packet: 64 << 10,
            transfer: tern_proto::attempt::TransferConfig::default(),
            trusted_keys: Vec::new(),
            rollout_tick_ms: 1000,
            limits: crate::updates::AttemptLimits::default(),
            bounds: crate::uplink::Bounds::default(),
        }
    }
}

/// The file's contents; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    max_module_size: Option<usize>,
    max_mqtt_packet: Option<usize>,
    offer_retry_ms: Option<u64>,
    give_up_after_ms: Option<u64>,
    reoffer_max_ms: Option<u64>,
    attempt_deadline_ms: Option<u64>,
    trusted_keys: Option<Vec<PathBuf>>,
    rollout_tick_ms: Option<u64>,
    bounds: Option<crate::uplink::Bounds>,
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
    /// HTTP API listen address [env: TERN_HTTP; default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// MQTT device gateway listen address [env: TERN_MQTT; default: 127.0.0.1:1883].
    #[arg(long, value_name = "ADDR")]
    pub mqtt: Option<SocketAddr>,
    /// A public key (PEM) module statements must be signed with to enter the catalog;
    /// repeat for several [default: any key; devices judge signatures].
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Vec<PathBuf>,
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
        config.mqtt = file.mqtt.unwrap_or(config.mqtt);
        config.max_module_size = file.max_module_size.unwrap_or(config.max_module_size);
        config.max_mqtt_packet = file.max_mqtt_packet.unwrap_or(config.max_mqtt_packet);
        config.transfer.offer_retry_ms = file.offer_retry_ms.unwrap_or(config.transfer.offer_retry_ms);
        config.transfer.give_up_after_ms = file.give_up_after_ms.unwrap_or(config.transfer.give_up_after_ms);
        config.limits.reoffer_max_ms = file.reoffer_max_ms.unwrap_or(config.limits.reoffer_max_ms);
        config.limits.deadline_ms = file.attempt_deadline_ms.unwrap_or(config.limits.deadline_ms);
        config.rollout_tick_ms = file.rollout_tick_ms.unwrap_or(config.rollout_tick_ms).max(10);
        config.bounds = file.bounds.unwrap_or(config.bounds);
        for key in file.trusted_keys.iter().flatten() {
            config.trusted_keys.push(load_public_key(&file_dir.join(key))?);
        }
        for key in &args.trusted_key {
            config.trusted_keys.push(load_public_key(key)?);
        }

        config.data_dir = env_data.unwrap_or(config.data_dir);
        config.http = env_addr("TERN_HTTP")?.unwrap_or(config.http);
        config.mqtt = env_addr("TERN_MQTT")?.unwrap_or(config.mqtt);

        config.data_dir = args.data.clone().unwrap_or(config.data_dir);
        config.http = args.http.unwrap_or(config.http);
        config.mqtt = args.mqtt.unwrap_or(config.mqtt);
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
