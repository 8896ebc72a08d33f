//! Operator commands that talk to a Tern server: `tern login`, `tern device …` (its
//! commands to devices are in `crate::command`),
//! `tern events`, and the handlers of `tern module upload` / `tern module list`.
//!
//! The server and token come from, in order: `TERN_SERVER` / `TERN_TOKEN`, then the file
//! `tern login` writes (`$XDG_CONFIG_HOME/tern/config.toml`, else `~/.config/tern/config.toml`).
//! The CA certificates an `https://` server is checked against: `TERN_CA_FILE`, else the
//! `--ca-file` given to `tern login`, else the public roots (see `crate::tls`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;
/// Percent-encodes a query value (the server's own encoder).
pub(crate) use tern_server::api::percent_encode as query_value;
use tern_server::api::types::{AddedDevice, DeviceDetail, DeviceSummary, PolicyView, RotatedSecret};
use tern_server::store::{Event, ModuleRecord, PlanOrigin, PlanStatus};

use crate::command::Action;

/// Where the CLI keeps the server it logged in to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Remote {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    server: String,
    /// Operator API token.
    token: String,
    /// PEM CA certificates to trust for an `https://` server instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

fn config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?)
                .join(".config")
        }
    };
    Ok(base.join("tern").join("config.toml"))
}

fn load_remote() -> anyhow::Result<Remote> {
    let from_env = (std::env::var("TERN_SERVER").ok(), std::env::var("TERN_TOKEN").ok());
    if let (Some(server), Some(token)) = from_env {
        return Ok(Remote { server, token, ca_file: crate::tls::ca_file_from_env() });
    }
    let path = config_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `tern login URL --token TOKEN` (or set TERN_SERVER and TERN_TOKEN)")
        }
        Err(err) => bail!("{}: cannot read: {err}", path.display()),
    };
    let mut remote: Remote = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
    remote.ca_file = crate::tls::ca_file_from_env().or(remote.ca_file);
    Ok(remote)
}

fn save_remote(remote: &Remote) -> anyhow::Result<PathBuf> {
    let path = config_path()?;
    let dir = path.parent().expect("the config path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let text = toml::to_string(remote).context("cannot encode the configuration")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // The token is a credential: only its owner may read the file.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = |options: &std::fs::OpenOptions| -> std::io::Result<()> {
        use std::io::Write;
        options.open(&path)?.write_all(text.as_bytes())
    };
    write(&options).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

/// The server could not be reached, or the connection broke before its answer arrived:
/// whether the request took effect is unknown. (An error the server answered with is not
/// this.)
#[derive(Debug)]
pub(crate) struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Whether `err` says the server could not be reached (see [`Unreachable`]).
pub(crate) fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<Unreachable>().is_some())
}

/// A blocking JSON client for one server.
pub(crate) struct Client {
    remote: Remote,
    agent: ureq::Agent,
}

impl Client {
    fn new(remote: Remote, timeout: Option<Duration>) -> anyhow::Result<Client> {
        let agent = crate::tls::agent(timeout, remote.ca_file.as_deref())?;
        Ok(Client { remote, agent })
    }

    pub(crate) fn connect() -> anyhow::Result<Client> {
        Client::new(load_remote()?, Some(Duration::from_secs(60)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.remote.server.trim_end_matches('/'))
    }

    fn finish(&self, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Value> {
        self.finish_status(response).map(|(_, json)| json)
    }

    /// The HTTP status (a success) and the JSON of an answer.
    fn finish_status(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<(u16, Value)> {
        let unreachable = |e: ureq::Error| anyhow::Error::new(Unreachable(format!("{}: {e}", self.remote.server)));
        let mut response = response.map_err(unreachable)?;
        let status = response.status();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok((status.as_u16(), json));
        }
        match json["error"]["message"].as_str() {
            Some(message) => bail!("{message} (HTTP {})", status.as_u16()),
            None => bail!("the server answered HTTP {}", status.as_u16()),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.remote.token)
    }

    pub(crate) fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(self.agent.get(&self.url(path)).header("Authorization", &self.bearer()).call())
    }

    /// Every item of a list route: follows the `Link: <…>; rel="next"` header of each page
    /// and returns the pages' items as one JSON array.
    pub(crate) fn get_all(&self, path: &str) -> anyhow::Result<Value> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(path) = next.take() {
            let response = self.agent.get(&self.url(&path)).header("Authorization", &self.bearer()).call();
            let link = response.as_ref().ok().and_then(|r| r.headers().get("link")).and_then(|v| v.to_str().ok());
            next = link.and_then(next_page).map(str::to_owned);
            match self.finish(response)? {
                Value::Array(page) => items.extend(page),
                other => bail!("the server's answer to {path} is not a list: {other}"),
            }
        }
        Ok(Value::Array(items))
    }

    pub(crate) fn post_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.finish(self.agent.post(&self.url(path)).header("Authorization", &self.bearer()).send_json(body))
    }

    /// POST JSON with an `Idempotency-Key` (repeating it after a lost answer is safe);
    /// returns the HTTP status with the answer.
    pub(crate) fn post_json_keyed(&self, path: &str, body: Value, key: &str) -> anyhow::Result<(u16, Value)> {
        let request = self.agent.post(&self.url(path)).header("Authorization", &self.bearer());
        self.finish_status(request.header("Idempotency-Key", key).send_json(body))
    }

    /// The server's address, as configured.
    pub(crate) fn server(&self) -> &str {
        &self.remote.server
    }

    pub(crate) fn post_bytes(&self, path: &str, bytes: &[u8]) -> anyhow::Result<Value> {
        let request = self
            .agent
            .post(&self.url(path))
            .header("Authorization", &self.bearer())
            .header("Content-Type", "application/octet-stream");
        self.finish(request.send(bytes))
    }

    pub(crate) fn put_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.finish(self.agent.put(&self.url(path)).header("Authorization", &self.bearer()).send_json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(self.agent.delete(&self.url(path)).header("Authorization", &self.bearer()).call())
    }

    pub(crate) fn patch_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.finish(self.agent.patch(&self.url(path)).header("Authorization", &self.bearer()).send_json(body))
    }

    /// Opens the server's event stream (server-sent events): stored events of `device`
    /// (all devices when `None`) after event `since`, then live ones. The reader blocks
    /// until the next event; it never times out.
    pub(crate) fn event_stream(
        &self,
        device: Option<&str>,
        since: Option<i64>,
    ) -> anyhow::Result<impl std::io::Read + Send + 'static> {
        // No overall timeout: the stream is meant to stay open.
        let client = Client::new(self.remote.clone(), None)?;
        let mut query = Vec::new();
        if let Some(device) = device {
            query.push(format!("device={}", query_value(device)));
        }
        if let Some(since) = since {
            query.push(format!("since={since}"));
        }
        let path = if query.is_empty() { "/api/events".to_owned() } else { format!("/api/events?{}", query.join("&")) };
        let response = client
            .agent
            .get(&client.url(&path))
            .header("Authorization", &client.bearer())
            .header("Accept", "text/event-stream")
            .call()
            .map_err(|e| anyhow!("{}: {e}", client.remote.server))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            client.finish(Ok(response))?;
            bail!("the server answered HTTP {status}");
        }
        Ok(response.into_body().into_reader())
    }
}

/// The target of the `rel="next"` link of a `Link` header (RFC 8288), if any.
fn next_page(header: &str) -> Option<&str> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params.split(';').any(|p| p.trim() == "rel=\"next\"").then_some(target)
    })
}

/// Reads an answer as the server's response type `T`.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).map_err(|e| anyhow!("the server's answer is not what this tern expects: {e}"))
}

pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `tern login URL --token T`.
#[derive(Args)]
pub struct LoginArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    url: String,
    /// An operator API token (the first one is printed by `tern server` on its first start).
    #[arg(long)]
    token: String,
    /// CA certificates (PEM) to trust for an https:// server instead of the public roots,
    /// e.g. DATA/tls/ca.pem of a server with a self-signed certificate [env: TERN_CA_FILE].
    #[arg(long, value_name = "FILE", env = "TERN_CA_FILE")]
    ca_file: Option<PathBuf>,
}

/// Checks the token against the server, then remembers both.
pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    // Saved absolute, so the CLI finds it from any directory.
    let ca_file = args.ca_file.map(|p| std::path::absolute(&p).unwrap_or(p));
    let remote = Remote { server: args.url.trim_end_matches('/').to_owned(), token: args.token, ca_file };
    let client = Client::new(remote.clone(), Some(Duration::from_secs(15)))?;
    client.get("/api/devices").with_context(|| format!("cannot log in to {}", remote.server))?;
    let path = save_remote(&remote)?;
    println!("logged in to {} (saved to {})", remote.server, path.display());
    Ok(ExitCode::SUCCESS)
}

/// `tern module upload FILE... [--key KEY]`: adds module files to the server's catalog,
/// each with a signed statement: `FILE.stmt` beside it if present (`tern module sign`),
/// else one signed now with `key`. Every file is tried; each failure is one `error:` line
/// naming the file, and the exit status is 1 if any failed.
pub fn module_upload(
    files: &[PathBuf],
    key: Option<&Path>,
    target: &crate::release::SigningTarget,
) -> anyhow::Result<ExitCode> {
    let client = Client::connect()?;
    let key = key.map(crate::key::load_signing_key).transpose()?;
    let mut failed = false;
    for file in files {
        match upload_module_with(&client, file, key.as_ref(), target) {
            Ok(module) => println!("{}: {}", file.display(), module_line(&module)),
            Err(err) => {
                eprintln!("error: {}: {err:#}", file.display());
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Uploads one module file and attaches its statement (from `FILE.stmt`, or signed with
/// `key` for `target`: platform, product, counter); returns the catalog record. A module
/// uploaded without either stays in the catalog but cannot be offered to devices until it
/// is signed.
pub(crate) fn upload_module_with(
    client: &Client,
    file: &Path,
    key: Option<&ed25519_dalek::SigningKey>,
    target: &crate::release::SigningTarget,
) -> anyhow::Result<ModuleRecord> {
    let bytes = std::fs::read(file).map_err(|e| anyhow!("cannot read: {e}"))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = crate::statement::default_path(file);
    let statement = if beside.exists() {
        Some(std::fs::read(&beside).with_context(|| format!("{}: cannot read", beside.display()))?)
    } else if let Some(key) = key {
        let spec = file.to_str().ok_or_else(|| anyhow!("the file name is not UTF-8"))?;
        Some(crate::statement::sign(spec, key, target)?.1)
    } else {
        None
    };
    // With a statement, module and statement travel together as one signed module, so
    // that the server also takes modules it cannot read itself (described by the statement).
    let body = match &statement {
        Some(statement) => tern_image::bundle::write_signed_module(statement, &bytes)
            .map_err(|e| anyhow!("the statement does not fit the module: {e}"))?,
        None => bytes,
    };
    typed(client.post_bytes(&format!("/api/modules?filename={}", query_value(&name)), &body)?)
}

/// "Device OS 2.3.1 (v2302)" for a system part: the release its version belongs to (system
/// parts of one release share their module version).
fn release_of(module: &ModuleRecord) -> Option<String> {
    (module.function_name == "system_part")
        .then(|| format!("Device OS {}", tern_plan::device_os::label(module.version)))
}

/// One line about a catalog module.
pub(crate) fn module_line(module: &ModuleRecord) -> String {
    format!(
        "in catalog: platform {} {} {} version {}{} ({} bytes) file sha256 {}{}",
        module.platform_id,
        module.function_name,
        module.index,
        module.version,
        release_of(module).map(|r| format!(" — {r}")).unwrap_or_default(),
        module.size,
        module.sha256,
        match (module.statement.is_some(), module.security_counter) {
            (true, 0) => ", signed".to_owned(),
            (true, counter) => format!(", signed (security counter {counter})"),
            (false, _) => ", UNSIGNED (pass --key to sign it)".to_owned(),
        },
    )
}

/// `tern module list [--json]`: the server's module catalog.
pub fn module_list(json: bool) -> anyhow::Result<ExitCode> {
    let answer = Client::connect()?.get_all("/api/modules")?;
    if json {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    let modules: Vec<ModuleRecord> = typed(answer)?;
    println!(
        "{:<8} {:<13} {:>5} {:>8} {:>8}  {:<16}  {:<6} {:>7}  {:<24}  FILE",
        "PLATFORM", "FUNCTION", "INDEX", "VERSION", "SIZE", "FILE SHA256", "SIGNED", "COUNTER", "RELEASE"
    );
    for m in &modules {
        println!(
            "{:<8} {:<13} {:>5} {:>8} {:>8}  {:<16}  {:<6} {:>7}  {:<24}  {}",
            m.platform_id,
            m.function_name,
            m.index,
            m.version,
            m.size,
            m.sha256.get(..16).unwrap_or("?"),
            if m.statement.is_some() { "yes" } else { "no" },
            m.security_counter,
            release_of(m).unwrap_or_else(|| "-".to_owned()),
            m.filename.as_deref().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tern device …`.
#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Register a device; prints its MQTT secret (shown only this once).
    Add {
        /// Device id: 1 to 64 of A-Z a-z 0-9 - _ .
        id: String,
        /// Platform name or Device OS platform id: photon (6), p1 (8), electron (10,
        /// also E-Series), argon (12), boron (13), esomx (15), bsom (23), tracker (26).
        #[arg(long)]
        platform: String,
        /// How the device reaches the server; cellular devices ask the operator to
        /// confirm the bytes of every update and do not heal automatically by default.
        #[arg(long, value_enum, default_value_t = Connectivity::Wifi)]
        connectivity: Connectivity,
        /// Whether the server heals the device (sends missing system modules when it
        /// reports safe mode) without asking [default: on, off for cellular].
        #[arg(long, value_enum)]
        auto_heal: Option<Switch>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Change a device's update policy.
    Set {
        /// Device id.
        id: String,
        /// How the device reaches the server.
        #[arg(long, value_enum)]
        connectivity: Option<Connectivity>,
        /// Heal automatically: on, off, or default (on unless cellular).
        #[arg(long, value_enum)]
        auto_heal: Option<Switch>,
    },
    /// List devices: id, platform, status, application version, last seen.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one device: the modules it last described as installed, and its history.
    Show {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reboot a device (it must be connected); --wait reports how it came back.
    #[command(after_help = "With --wait: exit 0 when the device described itself running its application \
                            after the reboot; 1 when it came back in safe mode or did not answer in time.")]
    Reboot(crate::command::CommandArgs),
    /// Boot a device into safe mode once (system only, able to take updates; the next reset
    /// returns to the application).
    #[command(after_help = "With --wait: exit 0 when the device described itself in safe mode (requested); \
                            1 otherwise or when it did not answer in time.")]
    SafeMode(crate::command::CommandArgs),
    /// Restore a device's factory (backup) application: the device copies the factory
    /// image into its application slot, reboots and runs it on test.
    #[command(after_help = "With --wait: exit 0 when the device described itself booted from the restored \
                            factory image; 1 when it rebooted without restoring one (e.g. it holds no \
                            factory image) or did not answer in time.")]
    FactoryRestore(crate::command::CommandArgs),
    /// Cancel the device's update attempt in flight: the server stops offering it and tells
    /// the device to drop what it received (an install that already started finishes).
    #[command(after_help = "Exit status: 0 the attempt is cancelled (with --wait: and the device \
                            acknowledged); 1 no attempt in flight, or with --wait the device did not \
                            acknowledge in time or reported another outcome.")]
    Cancel(crate::command::CancelArgs),
    /// Remove a device (admin): its secret is erased and its connection closed, an update in
    /// flight is cancelled; its history stays, and the id may be registered again.
    Remove {
        /// Device id.
        id: String,
    },
    /// Issue a device a new MQTT secret (shown only this once): the old one stops working and
    /// a connection made with it is closed. Also recovers a registration whose secret was
    /// never received.
    RotateSecret {
        /// Device id.
        id: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Disable a device: it cannot connect (its connection is closed) until enabled.
    Disable {
        /// Device id.
        id: String,
    },
    /// Enable a disabled device: its secret works again.
    Enable {
        /// Device id.
        id: String,
    },
    /// A device's place in the fleet: product, tags, pin, data budget, development flag.
    #[command(flatten)]
    Fleet(crate::products::MembershipCommand),
}

/// How a device reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Connectivity {
    /// Wi-Fi.
    Wifi,
    /// Ethernet.
    Ethernet,
    /// Cellular (paid per byte).
    Cellular,
}

impl Connectivity {
    fn name(self) -> &'static str {
        match self {
            Connectivity::Wifi => "wifi",
            Connectivity::Ethernet => "ethernet",
            Connectivity::Cellular => "cellular",
        }
    }
}

/// On, off, or the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
    /// The default for the device's connectivity.
    Default,
}

impl Switch {
    fn json(self) -> Value {
        match self {
            Switch::On => Value::Bool(true),
            Switch::Off => Value::Bool(false),
            Switch::Default => Value::Null,
        }
    }
}

/// Runs a `tern device` command.
pub fn device(cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    let client = Client::connect()?;
    match cmd {
        DeviceCommand::Add { id, platform, connectivity, auto_heal, json } => {
            let Some(known) = tern_image::platform::parse(&platform) else {
                let names: Vec<String> =
                    tern_image::platform::PLATFORMS.iter().map(|p| format!("{} ({})", p.name, p.id)).collect();
                bail!("--platform {platform}: unknown platform; Tern serves {}", names.join(", "));
            };
            let platform = Value::from(known.id);
            let mut body = serde_json::json!({ "id": id, "platform": platform, "connectivity": connectivity.name() });
            if let Some(switch) = auto_heal {
                body["auto_heal"] = switch.json();
            }
            let answer = client.post_json("/api/devices", body).with_context(|| format!("device {id}"))?;
            if json {
                print_json(&answer)?;
            } else {
                let added: AddedDevice = typed(answer)?;
                println!(
                    "device {} registered (platform {}, {}, auto-heal {})",
                    added.id,
                    added.platform_id,
                    added.connectivity,
                    if added.auto_heal { "on" } else { "off" }
                );
                println!("MQTT username: {}", added.id);
                println!("MQTT password (shown only now): {}", added.secret);
            }
        }
        DeviceCommand::Set { id, connectivity, auto_heal } => {
            let mut body = serde_json::json!({});
            if let Some(connectivity) = connectivity {
                body["connectivity"] = Value::from(connectivity.name());
            }
            if let Some(switch) = auto_heal {
                body["auto_heal"] = switch.json();
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                bail!("nothing to change: pass --connectivity and/or --auto-heal");
            }
            let answer = client
                .patch_json(&format!("/api/devices/{}", query_value(&id)), body)
                .with_context(|| format!("device {id}"))?;
            let policy: PolicyView = typed(answer)?;
            println!("device {id}: {}, auto-heal {}", policy.connectivity, if policy.auto_heal { "on" } else { "off" });
        }
        DeviceCommand::List { json } => {
            let answer = client.get_all("/api/devices")?;
            if json {
                print_json(&answer)?;
            } else {
                let devices: Vec<DeviceSummary> = typed(answer)?;
                println!(
                    "{:<24} {:<9} {:<10} {:>8}  {:<8} {:<4}  LAST SEEN",
                    "ID", "PLATFORM", "STATUS", "APP", "LINK", "HEAL"
                );
                for d in &devices {
                    println!(
                        "{:<24} {:<9} {:<10} {:>8}  {:<8} {:<4}  {}",
                        d.id,
                        d.platform.clone().unwrap_or_else(|| d.platform_id.to_string()),
                        d.status,
                        d.application_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        d.connectivity,
                        if d.auto_heal { "auto" } else { "ask" },
                        when(d.last_seen),
                    );
                }
            }
        }
        DeviceCommand::Reboot(args) => return crate::command::run(&client, Action::Reboot, args),
        DeviceCommand::SafeMode(args) => return crate::command::run(&client, Action::SafeMode, args),
        DeviceCommand::FactoryRestore(args) => return crate::command::run(&client, Action::FactoryRestore, args),
        DeviceCommand::Cancel(args) => return crate::command::cancel(&client, args),
        DeviceCommand::Fleet(cmd) => return crate::products::membership(cmd),
        DeviceCommand::Remove { id } => {
            let answer =
                client.delete(&format!("/api/devices/{}", query_value(&id))).with_context(|| format!("device {id}"))?;
            let cancelled = answer["cancelled_attempts"].as_array().map(Vec::len).unwrap_or(0);
            println!("device {id} removed (its secret erased; {cancelled} update attempt(s) cancelled)");
        }
        DeviceCommand::RotateSecret { id, json } => {
            let path = format!("/api/devices/{}/secret", query_value(&id));
            let answer = client.post_json(&path, serde_json::json!({})).with_context(|| format!("device {id}"))?;
            if json {
                print_json(&answer)?;
            } else {
                let rotated: RotatedSecret = typed(answer)?;
                println!("device {}: new secret issued; the old one no longer works", rotated.id);
                println!("MQTT username: {}", rotated.id);
                println!("MQTT password (shown only now): {}", rotated.secret);
            }
        }
        DeviceCommand::Disable { id } => switch_device(&client, &id, "disable")?,
        DeviceCommand::Enable { id } => switch_device(&client, &id, "enable")?,
        DeviceCommand::Show { id, json } => {
            let device =
                client.get(&format!("/api/devices/{}", query_value(&id))).with_context(|| format!("device {id}"))?;
            if json {
                print_json(&device)?;
            } else {
                show_device(&typed(device)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tern device disable|enable ID`: `verb` is the route's last segment.
fn switch_device(client: &Client, id: &str, verb: &str) -> anyhow::Result<()> {
    let path = format!("/api/devices/{}/{verb}", query_value(id));
    client.post_json(&path, serde_json::json!({})).with_context(|| format!("device {id}"))?;
    println!("device {id} {verb}d");
    Ok(())
}

/// A stored time (Unix milliseconds) for people: seconds since the epoch in UTC is exact but
/// unreadable, so print `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn when(millis: Option<i64>) -> String {
    let Some(ms) = millis else { return "never".into() };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

fn show_device(d: &DeviceDetail) {
    let summary = &d.summary;
    println!("device    {}", summary.id);
    println!("platform  {} ({})", summary.platform.as_deref().unwrap_or("-"), summary.platform_id);
    println!("status    {}", summary.status);
    println!("policy    {}, auto-heal {}", summary.connectivity, if summary.auto_heal { "on" } else { "off" });
    println!("last seen {}", when(summary.last_seen));
    match &d.inventory {
        None => println!("modules   (the device has not described itself yet)"),
        Some(inventory) => {
            println!("described {}", when(Some(inventory.described_at)));
            let mut boot = inventory.boot_reason.clone();
            if let Some(cause) = &inventory.safe_mode {
                boot.push_str(&format!(" ({cause})"));
            }
            println!("boot      {boot}, {}", if inventory.confirmed { "confirmed" } else { "not confirmed" });
            if let Some(u) = &inventory.unmet {
                println!("unmet     {} {} version {}", u.function_name, u.index, u.version);
            }
            if let Some(counter) = inventory.security_counter {
                println!("security  counter {counter} (modules signed with a lower one are refused)");
            }
            if let Some(capacity) = &inventory.capacity {
                println!(
                    "staging   {} bytes per update offer (larger updates go in stages, one reboot each)",
                    capacity.staging_bytes
                );
            }
            println!(
                "modules   {:<13} {:>5} {:>8} {:>8}  {:<9} FILE SHA256",
                "FUNCTION", "INDEX", "VERSION", "SIZE", "INTEGRITY"
            );
            for m in &inventory.modules {
                println!(
                    "          {:<13} {:>5} {:>8} {:>8}  {:<9} {}{}",
                    m.function_name,
                    m.index,
                    m.version,
                    m.size,
                    m.integrity,
                    m.sha256,
                    if m.dependencies_met { "" } else { "  (dependencies unmet)" },
                );
            }
            if let Some(r) = &inventory.last_result {
                println!("last update attempt {}: {} ({})", r.attempt, r.outcome, r.reason);
            }
        }
    }
    for plan in d.plans.iter().filter(|p| p.status == PlanStatus::Proposed) {
        let modules: Vec<String> =
            plan.steps.iter().map(|m| format!("{} {} v{}", m.function_name, m.index, m.version)).collect();
        let id = &summary.id;
        let send = if plan.origin == PlanOrigin::Heal {
            format!("tern flash {id} --heal")
        } else {
            format!("tern flash {id} FILE...")
        };
        println!(
            "proposed  plan {} ({}): {}; about {} bytes on the air (send: {send})",
            plan.id,
            plan.origin,
            modules.join(", "),
            plan.air_bytes
        );
    }
    if !d.attempts.is_empty() {
        println!("attempts");
        for a in d.attempts.iter().take(5) {
            let reason = a.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let stages = a.stages.len();
            let stage = match (stages > 1, a.finished) {
                (true, false) => format!(" at stage {} of {stages}", a.stage + 1),
                (true, true) => format!(" ({stages} stages)"),
                _ => String::new(),
            };
            println!(
                "  {}  #{:<5} {}{reason}{stage}, {} module(s), {} of {} bytes",
                when(Some(a.created_at)),
                a.id,
                a.state,
                a.plan.len(),
                a.bytes_done,
                a.bytes_total
            );
        }
    }
    if !d.history.is_empty() {
        println!("history");
        for e in &d.history {
            println!("  {}  {}", when(Some(e.at)), e.kind);
        }
    }
}

/// `tern events [--device ID]`.
#[derive(Args)]
pub struct EventsArgs {
    /// Only this device's events.
    #[arg(long)]
    device: Option<String>,
    /// First replay stored events after this event id (0: all of them).
    #[arg(long)]
    since: Option<i64>,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Follows the server's event stream until interrupted or the server goes away.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect()?;
    let stream = client.event_stream(args.device.as_deref(), args.since)?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| anyhow!("{}: event stream: {e}", client.remote.server))?;
        let Some(data) = line.strip_prefix("data:") else { continue };
        if args.json {
            let event: Value =
                serde_json::from_str(data.trim()).map_err(|e| anyhow!("event stream: bad event: {e}"))?;
            println!("{}", serde_json::to_string(&event)?);
        } else {
            let event: Event =
                serde_json::from_str(data.trim()).map_err(|e| anyhow!("event stream: bad event: {e}"))?;
            println!(
                "{}  #{:<6} {:<26} {:<16} {}",
                when(Some(event.at)),
                event.id,
                event.kind,
                event.device.as_deref().unwrap_or("-"),
                event.data
            );
        }
    }
    bail!("{}: the event stream ended", client.remote.server)
}
