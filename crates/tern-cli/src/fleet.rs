//! `tern sim device` and `tern sim fleet`: simulated devices — the real device crate on
//! simulated flash — connected to a Tern server's MQTT gateway like real devices
//! (`crates/tern-fleet`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use tern_device::profile::Profile;
use tern_fleet::{provision, MqttLink, MqttTarget, Settings, SimRuntime};
use tern_sim::device::Behaviour;

/// The simulated-device commands, flattened into `tern sim`.
#[derive(Subcommand)]
pub enum SimCommand {
    /// Run one simulated device connected to a server over MQTT.
    Device(DeviceArgs),
    /// Run several simulated devices (ids PREFIX-1 … PREFIX-N) connected to a server.
    Fleet(FleetArgs),
}

/// What every simulated device needs.
#[derive(Args, Clone)]
pub struct Common {
    /// The server's MQTT gateway, `mqtt://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    server: String,
    /// Platform profile: photon, p1, electron (also e-series), argon, boron, esomx, bsom,
    /// tracker, or the generic stm32f2 (= photon) and nrf52840 (= argon); `tern sim fleet`
    /// also takes `both` (alternating stm32f2 and nrf52840).
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
    /// $TERN_TOKEN) and keep their secrets in their state directories.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Operator token for --api.
    #[arg(long)]
    token: Option<String>,
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
    /// Parent of the devices' state directories (default ./tern-sim).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

/// Runs a simulated-device command.
pub fn run(cmd: SimCommand) -> Result<ExitCode> {
    match cmd {
        SimCommand::Device(args) => {
            let dir = args.state.clone().unwrap_or_else(|| PathBuf::from("tern-sim").join(&args.id));
            let profile = profile(&args.common.profile)?;
            let plan = prepare(&args.common, &args.id, profile, &dir, args.secret.clone())?;
            run_devices(vec![plan])
        }
        SimCommand::Fleet(args) => {
            let parent = args.state.clone().unwrap_or_else(|| PathBuf::from("tern-sim"));
            let mut plans = Vec::new();
            for n in 1..=args.count {
                let id = format!("{}-{n}", args.prefix);
                let name = match args.common.profile.as_str() {
                    "both" if n % 2 == 0 => "nrf52840",
                    "both" => "stm32f2",
                    other => other,
                };
                plans.push(prepare(&args.common, &id, profile(name)?, &parent.join(&id), None)?);
            }
            run_devices(plans)
        }
    }
}

fn profile(name: &str) -> Result<&'static Profile> {
    tern_device::profile::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = tern_device::profile::names().collect();
        anyhow!("--profile {name}: unknown profile (known: {})", known.join(", "))
    })
}

/// Everything one device thread needs.
struct Plan {
    id: String,
    dir: PathBuf,
    target: MqttTarget,
    profile: &'static Profile,
    behaviour: Behaviour,
    keys: Vec<VerifyingKey>,
}

fn prepare(common: &Common, id: &str, profile: &'static Profile, dir: &Path, secret: Option<String>) -> Result<Plan> {
    let behaviour = Behaviour::from_name(&common.behaviour)
        .ok_or_else(|| anyhow!("--behaviour {}: unknown (healthy, panic, hang, noconfirm)", common.behaviour))?;
    let keys = common.trust.iter().map(|p| crate::key::load_verifying_key(p)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let secret_file = dir.join("secret");
    let secret = match secret {
        Some(s) => s,
        None if secret_file.exists() => std::fs::read_to_string(&secret_file)
            .with_context(|| format!("{}: cannot read", secret_file.display()))?
            .trim()
            .to_owned(),
        None => {
            let s = register(common, id, profile)?;
            std::fs::write(&secret_file, &s).with_context(|| format!("{}: cannot write", secret_file.display()))?;
            s
        }
    };
    let target = MqttTarget::parse(&common.server, id, &secret).map_err(|e| anyhow!("--server {e}"))?;
    Ok(Plan { id: id.to_owned(), dir: dir.to_path_buf(), target, profile, behaviour, keys })
}

/// Registers `id` on the server's API and returns its secret.
fn register(common: &Common, id: &str, profile: &Profile) -> Result<String> {
    let api = common.api.clone().or_else(|| std::env::var("TERN_SERVER").ok());
    let token = common.token.clone().or_else(|| std::env::var("TERN_TOKEN").ok());
    let (Some(api), Some(token)) = (api, token) else {
        bail!("device {id} has no secret: pass --secret, or --api URL --token T to register it")
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = agent
        .post(&format!("{}/api/devices", api.trim_end_matches('/')))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({ "id": id, "platform": profile.platform_id.to_string() }))
        .map_err(|e| anyhow!("{api}: {e}"))?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
    match body["secret"].as_str() {
        Some(secret) if status == 201 => Ok(secret.to_owned()),
        _ => bail!("{api}: registering device {id} failed (HTTP {status}): {}", body["error"]["message"]),
    }
}

fn run_devices(plans: Vec<Plan>) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for plan in plans {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> Result<()> {
            let device = match SimRuntime::load(&plan.dir, plan.keys.clone()).map_err(anyhow::Error::msg)? {
                Some(d) if d.profile.name == plan.profile.name => d,
                Some(d) => {
                    bail!("{}: holds a {} device, not {}", plan.dir.display(), d.profile.name, plan.profile.name)
                }
                None => {
                    provision::synthetic(plan.profile, plan.keys.clone(), plan.behaviour).map_err(anyhow::Error::msg)?
                }
            };
            let settings = Settings { state_dir: Some(plan.dir.clone()), ..Settings::default() };
            let mut runtime = SimRuntime::new(device, settings);
            let stats = runtime.stats();
            let id = plan.id.clone();
            // Report what the device does as it changes.
            std::thread::spawn(move || {
                let mut last = String::new();
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let Ok(s) = stats.lock().map(|s| s.clone()) else { return };
                    let line = format!(
                        "{id}: {} app v{} boots {} blocks {}{}",
                        if s.boot_reason.is_empty() { "booting" } else { &s.boot_reason },
                        s.app_version,
                        s.boots,
                        s.blocks_stored,
                        s.last_result.as_ref().map(|(o, r)| format!(" last result {o} ({r})")).unwrap_or_default()
                    );
                    if line != last && s.describes > 0 {
                        println!("{line}");
                        last = line;
                    }
                }
            });
            println!(
                "{}: {} device connecting to {}:{}",
                plan.id, plan.profile.name, plan.target.host, plan.target.port
            );
            runtime.run(&mut MqttLink::new(&plan.target), &stop).map_err(|e| anyhow!("{}: {e}", plan.id))
        }));
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
