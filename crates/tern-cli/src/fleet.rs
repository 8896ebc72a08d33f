//! `tern sim device` and `tern sim fleet`: simulated devices — the real device crate on
//! simulated flash — connected to a Tern server's MQTT gateway like real devices
//! (`crates/tern-fleet`).
//!
//! A fleet is one thread per device (the device's boot manager, agent and MQTT client;
//! the client's runtime lives on that thread) plus one reporter for all of them, which
//! prints a summary line, or each device's changes, and rewrites the status file. Flash
//! stays in memory unless `--state` is given; which devices misbehave on an update, are
//! cellular or go offline is decided from their index (`tern_fleet::fleet`). See
//! `docs/fleet-sim.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use tern_device::profile::Profile;
use tern_fleet::fleet::{self, Mix, Offline, OfflineRule};
use tern_fleet::{provision, Intermittent, Link, MqttLink, MqttTarget, ReceivedApps, Settings, SimRuntime, Stats};
use tern_sim::device::Behaviour;

/// The simulated-device commands, flattened into `tern sim`.
#[derive(Subcommand)]
pub enum SimCommand {
    /// Run one simulated device connected to a server over MQTT.
    Device(DeviceArgs),
    /// Run several simulated devices (ids PREFIX-1 … PREFIX-N) connected to a server: a
    /// summary line per second, a status file, a mix of behaviours, cellular devices and
    /// offline periods. Stops cleanly on Ctrl-C or SIGTERM.
    Fleet(FleetArgs),
}

/// What every simulated device needs.
#[derive(Args, Clone)]
pub struct Common {
    /// The server's MQTT gateway: `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for MQTT over
    /// TLS (port 8883 by default on the server), checked against --ca-file.
    #[arg(long, value_name = "URL")]
    server: String,
    /// CA certificate(s) (PEM) an mqtts:// server's certificate must chain to (a server
    /// started with --self-signed: its DATA/tls/ca.pem); default $TERN_CA_FILE. An
    /// https:// --api is checked against it too.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Platform profile: photon, p1, electron (also e-series), argon, boron, esomx, bsom,
    /// tracker, or the generic stm32f2 (= photon) and nrf52840 (= argon); `tern sim fleet`
    /// also takes `both` (alternating stm32f2 and nrf52840). stm32f2 is the lightest (1 MiB
    /// of flash per device; nrf52840 has 9 MiB).
    #[arg(long, default_value = "stm32f2")]
    profile: String,
    /// Behaviour of the application a new device starts with: healthy, panic, hang,
    /// noconfirm.
    #[arg(long, default_value = "healthy")]
    behaviour: String,
    /// A public key (PEM) the device trusts for updates; repeat for several.
    #[arg(long = "trust", value_name = "KEY")]
    trust: Vec<PathBuf>,
    /// Register new devices on this server's HTTP API (with --token, or $TERN_SERVER and
    /// $TERN_TOKEN); with a state directory their secrets are kept there. An https:// server
    /// is checked against --ca-file (or $TERN_CA_FILE) when set.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Operator token for --api.
    #[arg(long)]
    token: Option<String>,
}

impl Common {
    /// --ca-file, else $TERN_CA_FILE.
    fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone().or_else(crate::tls::ca_file_from_env)
    }
}

/// `tern sim device`.
#[derive(Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    common: Common,
    /// Device id.
    #[arg(long)]
    id: String,
    /// The device's MQTT secret (default: DIR/secret, or registered with --api).
    #[arg(long)]
    secret: Option<String>,
    /// State directory: flash image (which also records the attempt in progress) and secret
    /// (default ./tern-sim/ID).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

/// `tern sim fleet`.
#[derive(Args)]
pub struct FleetArgs {
    #[command(flatten)]
    common: Common,
    /// Number of devices.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Device id prefix.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Keep each device's flash and secret in DIR/ID, so the fleet survives restarts
    /// (default: flash in memory only, devices registered anew with --api).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// How applications the devices receive behave, by share of devices, e.g.
    /// healthy=90,panic=5,hang=5 (classes: healthy, panic, hang, noconfirm). The
    /// application a device starts with (and its factory copy) runs as --behaviour says;
    /// any later one as the device's class says (healthy: as its image says). Devices are
    /// assigned by index, spread evenly, and listed at start.
    #[arg(long, value_name = "CLASS=PERCENT,…")]
    mix: Option<String>,
    /// Share of devices registered as cellular (0–100), spread evenly.
    #[arg(long, value_name = "PERCENT", default_value_t = 0)]
    cellular: u32,
    /// A share of devices goes offline (disconnected) for SECONDS every EVERY seconds
    /// (default 4 × SECONDS), staggered over the cycle.
    #[arg(long, value_name = "PERCENT:SECONDS[:EVERY]")]
    offline: Option<String>,
    /// This many devices are offline from the start (registered, never connected) until
    /// --online-after.
    #[arg(long, value_name = "N", default_value_t = 0)]
    offline_at_start: u32,
    /// When the devices offline at start join.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    online_after: u64,
    /// Rewrite this file every second with the fleet's state as JSON (per device: id,
    /// class, connectivity, app version, boot reason, last result, boots, blocks,
    /// connected).
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// Print no summary lines (only the assignment at start and errors).
    #[arg(long, conflicts_with = "each")]
    quiet: bool,
    /// Print each device's changes instead of a summary line per second.
    #[arg(long)]
    each: bool,
}

/// Runs a simulated-device command.
pub fn run(cmd: SimCommand) -> Result<ExitCode> {
    match cmd {
        SimCommand::Device(args) => {
            let dir = args.state.clone().unwrap_or_else(|| PathBuf::from("tern-sim").join(&args.id));
            let kind = Kind::new(&args.common, profile(&args.common.profile)?)?;
            let keys = keys(&args.common)?;
            let secret = match args.secret.clone() {
                Some(s) => s,
                None => stored_or_register(&args.common, &args.id, kind.profile, &dir, false)?,
            };
            let target = MqttTarget::parse(&args.common.server, &args.id, &secret, args.common.ca_file().as_deref())
                .map_err(|e| anyhow!("--server {e}"))?;
            println!("{}: {} device connecting to {}:{}", args.id, kind.profile.name, target.host, target.port);
            let plan = Plan { id: args.id, dir: Some(dir), target, kind, keys, ..Plan::default() };
            let report = Report { each: true, summary: false, status_file: None };
            run_devices(vec![plan], Settings::default(), report)
        }
        SimCommand::Fleet(args) => fleet(args),
    }
}

fn fleet(args: FleetArgs) -> Result<ExitCode> {
    let count = args.count as usize;
    let mix = match &args.mix {
        Some(text) => Mix::parse(text).map_err(|e| anyhow!("--mix {e}"))?,
        None => Mix::healthy(),
    };
    if args.cellular > 100 {
        bail!("--cellular {}: a percentage from 0 to 100", args.cellular);
    }
    let mut offline = OfflineRule {
        at_start: args.offline_at_start as usize,
        online_after: Duration::from_secs(args.online_after),
        ..OfflineRule::default()
    };
    if let Some(text) = &args.offline {
        offline.parse_periodic(text).map_err(|e| anyhow!("--offline {e}"))?;
    }
    let kinds = match args.common.profile.as_str() {
        "both" => [Kind::new(&args.common, profile("stm32f2")?)?, Kind::new(&args.common, profile("nrf52840")?)?],
        name => {
            let k = Kind::new(&args.common, profile(name)?)?;
            [k.clone(), k]
        }
    };
    let keys = keys(&args.common)?;
    let classes = mix.assign(count);
    let cellular = fleet::cellular(count, args.cellular);
    let offline = offline.assign(count);
    let ids: Vec<String> = (1..=count).map(|n| format!("{}-{n}", args.prefix)).collect();
    print_assignment(&ids, &mix, &classes, &cellular, &offline);

    let dirs: Vec<Option<PathBuf>> = ids.iter().map(|id| args.state.as_ref().map(|p| p.join(id))).collect();
    let secrets = secrets(&args.common, &ids, &kinds, &dirs, &cellular)?;
    let ca_file = args.common.ca_file();
    let mut plans = Vec::with_capacity(count);
    for (i, secret) in secrets.into_iter().enumerate() {
        let target = MqttTarget::parse(&args.common.server, &ids[i], &secret, ca_file.as_deref())
            .map_err(|e| anyhow!("--server {e}"))?;
        plans.push(Plan {
            id: ids[i].clone(),
            dir: dirs[i].clone(),
            target,
            kind: kinds[i % 2].clone(),
            keys: keys.clone(),
            class: classes[i],
            cellular: cellular[i],
            offline: offline[i],
        });
    }
    // A fleet idles most of the time: a longer idle wait costs 1,000 devices far less CPU.
    let settings = Settings { idle_wait: Duration::from_secs(1), ..Settings::default() };
    let report = Report { each: args.each, summary: !args.quiet && !args.each, status_file: args.status_file };
    run_devices(plans, settings, report)
}

fn print_assignment(ids: &[String], mix: &Mix, classes: &[Behaviour], cellular: &[bool], offline: &[Offline]) {
    let list = |pick: &dyn Fn(usize) -> bool| -> (usize, String) {
        let chosen: Vec<&str> = (0..ids.len()).filter(|&i| pick(i)).map(|i| ids[i].as_str()).collect();
        (chosen.len(), chosen.join(" "))
    };
    for (behaviour, weight) in &mix.classes {
        let (n, names) = list(&|i| classes[i] == *behaviour);
        if *behaviour == Behaviour::Healthy {
            println!("mix: {} (weight {weight}): {n} devices", behaviour.name());
        } else {
            println!("mix: {} (weight {weight}): {n} devices: {names}", behaviour.name());
        }
    }
    let (n, names) = list(&|i| cellular[i]);
    if n > 0 {
        println!("cellular: {n} devices: {names}");
    }
    let (n, names) = list(&|i| offline[i].periodic.is_some());
    if n > 0 {
        println!("offline periodically: {n} devices: {names}");
    }
    let (n, names) = list(&|i| offline[i].at_start.is_some());
    if let Some(after) = offline.iter().find_map(|o| o.at_start) {
        println!("offline at start until {} s: {n} devices: {names}", after.as_secs());
    }
}

fn profile(name: &str) -> Result<&'static Profile> {
    tern_device::profile::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = tern_device::profile::names().collect();
        anyhow!("--profile {name}: unknown profile (known: {})", known.join(", "))
    })
}

fn keys(common: &Common) -> Result<Vec<VerifyingKey>> {
    common.trust.iter().map(|p| crate::key::load_verifying_key(p)).collect()
}

/// A kind of device: its profile and the behaviour of the application it starts with.
#[derive(Clone)]
struct Kind {
    profile: &'static Profile,
    behaviour: Behaviour,
}

impl Kind {
    fn new(common: &Common, profile: &'static Profile) -> Result<Kind> {
        let behaviour = Behaviour::from_name(&common.behaviour)
            .ok_or_else(|| anyhow!("--behaviour {}: unknown (healthy, panic, hang, noconfirm)", common.behaviour))?;
        Ok(Kind { profile, behaviour })
    }
}

/// Everything one device thread needs.
struct Plan {
    id: String,
    dir: Option<PathBuf>,
    target: MqttTarget,
    kind: Kind,
    keys: Vec<VerifyingKey>,
    /// How applications it receives behave.
    class: Behaviour,
    cellular: bool,
    offline: Offline,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            id: String::new(),
            dir: None,
            target: MqttTarget {
                host: String::new(),
                port: 0,
                device: String::new(),
                secret: String::new(),
                tls: None,
            },
            kind: Kind { profile: &tern_device::profile::STM32F2, behaviour: Behaviour::Healthy },
            keys: Vec::new(),
            class: Behaviour::Healthy,
            cellular: false,
            offline: Offline::default(),
        }
    }
}

/// The secret in `dir`, or a new registration (kept in `dir` when there is one).
fn stored_or_register(common: &Common, id: &str, profile: &Profile, dir: &Path, cellular: bool) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let secret_file = dir.join("secret");
    if secret_file.exists() {
        let s =
            std::fs::read_to_string(&secret_file).with_context(|| format!("{}: cannot read", secret_file.display()))?;
        return Ok(s.trim().to_owned());
    }
    let s = Registrar::new(common, id)?.register(id, profile, cellular, true)?;
    std::fs::write(&secret_file, &s).with_context(|| format!("{}: cannot write", secret_file.display()))?;
    Ok(s)
}

/// The secret of every device of a fleet: kept ones from their state directories, the
/// others registered in parallel over one HTTP agent.
fn secrets(
    common: &Common,
    ids: &[String],
    kinds: &[Kind; 2],
    dirs: &[Option<PathBuf>],
    cellular: &[bool],
) -> Result<Vec<String>> {
    let mut secrets: Vec<Option<String>> = vec![None; ids.len()];
    let mut missing = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let kept = dir.as_ref().map(|d| d.join("secret")).filter(|f| f.exists());
        match kept {
            Some(file) => {
                let s = std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?;
                secrets[i] = Some(s.trim().to_owned());
            }
            None => missing.push(i),
        }
    }
    if !missing.is_empty() {
        let registrar = Registrar::new(common, &ids[missing[0]])?;
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, Result<String>)>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..missing.len().min(8) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = missing.get(k) else { return };
                    let profile = kinds[i % 2].profile;
                    let result = registrar.register(&ids[i], profile, cellular[i], dirs[i].is_some());
                    results.lock().expect("no registration thread panics").push((i, result));
                });
            }
        });
        let mut results = results.into_inner().expect("no registration thread panics");
        results.sort_by_key(|(i, _)| *i);
        for (i, result) in results {
            let secret = result?;
            if let Some(dir) = &dirs[i] {
                std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
                let file = dir.join("secret");
                std::fs::write(&file, &secret).with_context(|| format!("{}: cannot write", file.display()))?;
            }
            secrets[i] = Some(secret);
        }
        println!("registered {} devices in {:.1} s", missing.len(), started.elapsed().as_secs_f64());
    }
    Ok(secrets.into_iter().map(|s| s.expect("every device has a kept or a new secret")).collect())
}

/// Registers devices on the server's API, over one HTTP agent (its connections reused).
struct Registrar {
    agent: ureq::Agent,
    api: String,
    token: String,
}

impl Registrar {
    fn new(common: &Common, first: &str) -> Result<Registrar> {
        let api = common.api.clone().or_else(|| std::env::var("TERN_SERVER").ok());
        let token = common.token.clone().or_else(|| std::env::var("TERN_TOKEN").ok());
        let (Some(api), Some(token)) = (api, token) else {
            bail!("device {first} has no secret: pass --secret, or --api URL --token T to register it")
        };
        let agent = crate::tls::agent(Some(Duration::from_secs(30)), common.ca_file().as_deref())?;
        Ok(Registrar { agent, api: api.trim_end_matches('/').to_owned(), token })
    }

    /// Registers `id` and returns its secret.
    fn register(&self, id: &str, profile: &Profile, cellular: bool, kept: bool) -> Result<String> {
        let api = &self.api;
        let mut body = serde_json::json!({ "id": id, "platform": profile.platform_id.to_string() });
        if cellular {
            body["connectivity"] = "cellular".into();
        }
        let mut response = self
            .agent
            .post(&format!("{api}/api/devices"))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body)
            .map_err(|e| anyhow!("{api}: {e}"))?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
        match body["secret"].as_str() {
            Some(secret) if status == 201 => Ok(secret.to_owned()),
            _ if status == 409 && !kept => bail!(
                "{api}: device {id} is registered already and its secret was not kept: run the fleet with \
                 --state DIR (which keeps secrets) or another --prefix"
            ),
            _ => bail!("{api}: registering device {id} failed (HTTP {status}): {}", body["error"]["message"]),
        }
    }
}

/// How a run reports.
struct Report {
    /// A line per device change.
    each: bool,
    /// A summary line per second, when something changed.
    summary: bool,
    status_file: Option<PathBuf>,
}

/// One device's line in the status file.
#[derive(Serialize)]
struct DeviceStatus<'a> {
    id: &'a str,
    profile: &'static str,
    /// How applications it receives behave (`healthy`: as their image says).
    class: &'static str,
    connectivity: &'static str,
    connected: bool,
    /// The running application's version (0 in safe mode or before the first boot).
    app_version: u32,
    /// As last described; `null` before the first Describe.
    boot_reason: Option<&'a str>,
    last_result: Option<ResultStatus<'a>>,
    boots: u64,
    /// Blocks stored since the fleet started.
    blocks: u64,
    connects: u64,
    describes: u64,
    /// Whether the device is still running (`false`: it stopped with an error).
    running: bool,
}

#[derive(Serialize)]
struct ResultStatus<'a> {
    outcome: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct FleetStatus<'a> {
    /// Milliseconds since the fleet started.
    elapsed_ms: u64,
    /// Milliseconds since the Unix epoch when this was written.
    written_at_ms: u64,
    count: usize,
    connected: usize,
    devices: Vec<DeviceStatus<'a>>,
}

/// A device as the reporter sees it.
struct Watched {
    plan_id: String,
    profile: &'static str,
    class: Behaviour,
    cellular: bool,
    stats: Arc<Mutex<Stats>>,
    running: Arc<AtomicBool>,
    last_line: String,
}

fn run_devices(plans: Vec<Plan>, settings: Settings, report: Report) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone());
    let start = Instant::now();
    let mut threads = Vec::new();
    let mut watched = Vec::new();
    let count = plans.len();
    for plan in plans {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let running = Arc::new(AtomicBool::new(true));
        watched.push(Watched {
            plan_id: plan.id.clone(),
            profile: plan.kind.profile.name,
            class: plan.class,
            cellular: plan.cellular,
            stats: stats.clone(),
            running: running.clone(),
            last_line: String::new(),
        });
        let (stop, mut settings) = (stop.clone(), settings.clone());
        let thread = std::thread::Builder::new().name(plan.id.clone()).stack_size(1 << 20).spawn(move || {
            let result = run_device(plan, &mut settings, stats, &stop, start);
            running.store(false, Ordering::Relaxed);
            result
        });
        threads.push(thread.context("starting a device thread")?);
    }
    if count > 1 {
        println!("{count} devices started in {:.1} s", start.elapsed().as_secs_f64());
    }
    // The reporter: this thread, until every device has stopped.
    let tick = if report.each { Duration::from_millis(200) } else { Duration::from_secs(1) };
    let mut last_summary = String::new();
    loop {
        let done = threads.iter().all(|t| t.is_finished());
        let snapshot: Vec<Stats> =
            watched.iter().map(|w| w.stats.lock().map(|s| s.clone()).unwrap_or_default()).collect();
        if report.each {
            for (w, s) in watched.iter_mut().zip(&snapshot) {
                let line = device_line(&w.plan_id, s);
                if line != w.last_line && s.describes > 0 {
                    println!("{line}");
                    w.last_line = line;
                }
            }
        }
        if report.summary {
            let line = summary(&snapshot);
            if line != last_summary {
                println!("[{:>5.0}s] {line}", start.elapsed().as_secs_f64());
                last_summary = line;
            }
        }
        if let Some(path) = &report.status_file {
            write_status(path, start, &watched, &snapshot)?;
        }
        if done {
            break;
        }
        std::thread::sleep(tick);
    }
    let mut failed = false;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Runs one device on this thread until `stop`.
fn run_device(
    plan: Plan,
    settings: &mut Settings,
    stats: Arc<Mutex<Stats>>,
    stop: &AtomicBool,
    start: Instant,
) -> Result<()> {
    let profile = plan.kind.profile;
    let loaded = match &plan.dir {
        Some(dir) => SimRuntime::load(dir, plan.keys.clone()).map_err(anyhow::Error::msg)?,
        None => None,
    };
    let device = match loaded {
        Some(d) if d.profile.name == profile.name => d,
        Some(d) => bail!("{}: holds a {} device, not {}", plan.id, d.profile.name, profile.name),
        None => provision::synthetic(profile, plan.keys.clone(), plan.kind.behaviour).map_err(anyhow::Error::msg)?,
    };
    settings.state_dir = plan.dir.clone();
    if plan.class != Behaviour::Healthy {
        // The applications a device can have been provisioned with, whatever --behaviour was
        // when its state directory was made.
        let provisioned = [Behaviour::Healthy, Behaviour::Panic, Behaviour::Hang, Behaviour::NeverConfirms]
            .into_iter()
            .flat_map(|b| {
                let (set, factory) = provision::synthetic_images(profile, b);
                let app = set.into_iter().rfind(|i| i.entry.function == tern_image::model::ModuleFunction::UserPart);
                app.into_iter().chain([factory]).map(|i| i.entry.sha256)
            })
            .collect();
        settings.received_apps = Some(ReceivedApps { behaviour: plan.class, provisioned });
    }
    let mut runtime = SimRuntime::new(device, settings.clone()).with_stats(stats);
    let target = plan.target.clone();
    let mut link: Box<dyn Link> = if plan.offline.ever() {
        Box::new(Intermittent::new(plan.offline, start, Box::new(move || MqttLink::new(&target))))
    } else {
        Box::new(MqttLink::new(&target))
    };
    let result = runtime.run(link.as_mut(), stop).map_err(|e| anyhow!("{}: {e}", plan.id));
    drop(link);
    if let Ok(mut s) = runtime.stats().lock() {
        s.connected = false;
    }
    result
}

/// Sets `stop` on Ctrl-C or SIGTERM: the devices save their flash (with --state) and the
/// reporter writes the status file a last time.
fn stop_on_signals(stop: Arc<AtomicBool>) {
    let watcher = move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        stop.store(true, Ordering::Relaxed);
    };
    // Without the watcher the default handlers end the process, as before.
    let _ = std::thread::Builder::new().name("signals".into()).spawn(watcher);
}

fn device_line(id: &str, s: &Stats) -> String {
    format!(
        "{id}: {} app v{} boots {} blocks {}{}",
        if s.boot_reason.is_empty() { "booting" } else { &s.boot_reason },
        s.app_version,
        s.boots,
        s.blocks_stored,
        s.last_result.as_ref().map(|(o, r)| format!(" last result {o} ({r})")).unwrap_or_default()
    )
}

/// Counts by state: connected, applications by version, safe mode, last results.
fn summary(all: &[Stats]) -> String {
    let connected = all.iter().filter(|s| s.connected).count();
    let mut apps: BTreeMap<u32, usize> = BTreeMap::new();
    let mut results: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut safe, mut booting, mut blocks) = (0, 0, 0);
    for s in all {
        blocks += s.blocks_stored;
        match s.boot_reason.as_str() {
            "" => booting += 1,
            "safe_mode" => safe += 1,
            _ => *apps.entry(s.app_version).or_default() += 1,
        }
        if let Some((outcome, _)) = &s.last_result {
            *results.entry(outcome.as_str()).or_default() += 1;
        }
    }
    let mut line = format!("{connected}/{} connected; app", all.len());
    for (v, n) in &apps {
        let _ = write!(line, " v{v}:{n}");
    }
    if safe > 0 {
        let _ = write!(line, "; safe mode {safe}");
    }
    if booting > 0 {
        let _ = write!(line, "; not described yet {booting}");
    }
    if !results.is_empty() {
        line.push_str("; results");
        for (o, n) in &results {
            let _ = write!(line, " {o}:{n}");
        }
    }
    let _ = write!(line, "; blocks {blocks}");
    line
}

fn write_status(path: &Path, start: Instant, watched: &[Watched], snapshot: &[Stats]) -> Result<()> {
    let devices: Vec<DeviceStatus> = watched
        .iter()
        .zip(snapshot)
        .map(|(w, s)| DeviceStatus {
            id: &w.plan_id,
            profile: w.profile,
            class: w.class.name(),
            connectivity: if w.cellular { "cellular" } else { "wifi" },
            connected: s.connected,
            app_version: s.app_version,
            boot_reason: (!s.boot_reason.is_empty()).then_some(s.boot_reason.as_str()),
            last_result: s.last_result.as_ref().map(|(o, r)| ResultStatus { outcome: o, reason: r }),
            boots: s.boots,
            blocks: s.blocks_stored,
            connects: s.connects,
            describes: s.describes,
            running: w.running.load(Ordering::Relaxed),
        })
        .collect();
    let status = FleetStatus {
        elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        written_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        count: devices.len(),
        connected: devices.iter().filter(|d| d.connected).count(),
        devices,
    };
    // Written beside and renamed, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(&status).context("status as JSON")?;
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}
