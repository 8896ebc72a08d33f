//! `tern up --demo`: the server with embedded defaults, a small simulated fleet of both
//! profiles, and updates shown live — a confirmed application update, a safe-mode heal the
//! server plans and sends by itself (missing system parts in order), an automatic rollback
//! of a bad application, and a cellular update whose plan and cost are shown before it is
//! sent. Every plan is made by the server from its catalog. Then it keeps serving.
//!
//! The Device OS modules are Particle modules Tern makes itself (`tern_fleet::device_os`),
//! or, with `--corpus DIR` or `$TERN_CORPUS`, real Device OS releases from that corpus. The
//! applications are Particle modules made for the demo in both cases.
//!
//! Secure first: the API is served over HTTPS and devices may connect over MQTT/TLS, with
//! the certificate named by `--tls-cert`/`--tls-key` or, by default, a self-signed one the
//! server makes in `DATA/tls/` on the first start (clients trust `DATA/tls/ca.pem`). The
//! simulated devices run in this process and connect over plain MQTT on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tern_device::Profile;
use tern_fleet::{device_os, provision, MqttLink, MqttTarget, Settings, SimRuntime};
use tern_image::manifest::build::Document;
use tern_image::manifest::Kind;
use tern_image::model::{Dependency, ModuleFunction};
use tern_server::api::types::{AddedDevice, DeviceDetail};
use tern_server::store::{AttemptRecord, Inventory, ModuleRecord, PlanRecord};
use tern_sim::device::{Behaviour, Image};

/// `tern up`.
#[derive(Args)]
pub struct UpArgs {
    /// Start a simulated fleet and show updates live (the only mode so far).
    #[arg(long)]
    demo: bool,
    /// Data directory.
    #[arg(long, default_value = "tern-demo")]
    data: PathBuf,
    /// HTTPS API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Plain MQTT address, for the simulated devices (loopback only).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// MQTT over TLS address, for devices elsewhere.
    #[arg(long, default_value = "127.0.0.1:8883")]
    mqtts: SocketAddr,
    /// The server's certificate chain (PEM) [default: a self-signed certificate made in
    /// DATA/tls/ on the first start].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) the demo trusts for its own API calls [default: the
    /// self-signed CA, or the public roots with --tls-cert].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Run real Device OS modules from this firmware corpus (its particle/releases
    /// directory) instead of the synthetic Device OS Tern makes
    #[arg(long, env = "TERN_CORPUS")]
    corpus: Option<PathBuf>,
}

struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut r = response.map_err(|e| anyhow!("{}: {e}", self.base))?;
        let status = r.status().as_u16();
        let body: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        if status >= 300 {
            bail!("HTTP {status}: {}", body["error"]["message"]);
        }
        Ok(body)
    }
    fn get(&self, path: &str) -> Result<Value> {
        self.call(
            self.agent
                .get(&format!("{}{path}", self.base))
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
        )
    }
    /// A GET read as the server's response type `T`.
    fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        crate::ops::typed(self.get(path)?)
    }

    /// A JSON POST whose answer is read as the server's response type `T`.
    fn post_as<T: serde::de::DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        crate::ops::typed(self.post_json(path, body)?)
    }

    fn post_json(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.call(self.agent.post(&url).header("Authorization", &format!("Bearer {}", self.token)).send_json(body))
    }
    fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        self.call(
            self.agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/octet-stream")
                .send(body),
        )
    }
}

/// Runs `tern up`.
pub fn run(args: UpArgs) -> Result<ExitCode> {
    if !args.demo {
        bail!("tern up: only --demo exists so far (for the server alone: tern server)");
    }
    let photon = profile("photon", "stm32f2")?;
    let argon = profile("argon", "nrf52840")?;
    let firmware = match &args.corpus {
        Some(dir) => corpus_firmware(dir, photon, argon)?,
        None => generated_firmware(photon, argon)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The release key the simulated devices trust; kept in the data directory so that
    // statements in the catalog stay valid when the demo runs again. The server trusts its
    // public half too, so a statement signed with another key would be refused at upload.
    std::fs::create_dir_all(&args.data).with_context(|| format!("{}: cannot create", args.data.display()))?;
    let key = demo_key(&args.data)?;
    if !args.mqtt.ip().is_loopback() {
        bail!("--mqtt {}: the demo's plain MQTT listener must be on a loopback address", args.mqtt);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => tern_server::TlsSource::Files(tern_server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        }),
        _ => tern_server::TlsSource::SelfSigned { client_ca: None },
    };
    let config = tern_server::Config {
        data_dir: args.data.clone(),
        http: args.http,
        mqtt: Some(args.mqtt),
        mqtts: args.mqtts,
        tls,
        trusted_keys: vec![key.verifying_key()],
        ..Default::default()
    };
    let running = runtime.block_on(tern_server::start(config))?;
    let mqtt = running.mqtt.ok_or_else(|| anyhow!("the server has no plain MQTT listener for the demo's devices"))?;
    let token = std::fs::read_to_string(args.data.join(tern_server::ADMIN_TOKEN_FILE))
        .with_context(|| format!("{}: no admin token", args.data.display()))?;
    // The demo's own calls, and the line it prints for the operator, use this CA file.
    let ca_file = args.ca_file.clone().or(running.self_signed_ca.clone()).map(|p| std::path::absolute(&p).unwrap_or(p));
    // An unspecified listen address is reached on loopback, which the certificate names.
    let host = if running.http.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], running.http.port()))
    } else {
        running.http
    };
    let api = Api {
        base: format!("https://{host}"),
        token: token.trim().to_owned(),
        agent: crate::tls::agent(Some(Duration::from_secs(30)), ca_file.as_deref())?,
    };
    for line in tern_server::listening_lines(&running) {
        println!("{}", line.replacen("tern server", "tern up", 1));
    }

    let demo_start = tern_server::auth::now_millis();

    println!("tern up: firmware: {}", firmware.label);
    // The catalog: Device OS modules, each with a statement signed by that key.
    for (platform, image) in &firmware.catalog {
        upload_signed(&api, &key, *platform, image, &image.name)?;
    }
    println!("tern up: uploaded {} Device OS modules with signed statements to the catalog", firmware.catalog.len());

    let photon_sys = firmware.photon_app_needs;
    let (argon_old, argon_new) = (firmware.argon_app_needs_old, firmware.argon_app_needs_new);
    let papp = |v, b| app(photon, v, photon_sys, b, 8 * 1024);
    let aapp = |v, dep| app(argon, v, dep, Behaviour::Healthy, 6 * 1024);

    // The fleet: two Photons on Wi-Fi running application 1; argon-1 on Wi-Fi whose
    // application needs a newer system part than it has (it boots safe mode); argon-2 on
    // cellular, healthy.
    let stop = Arc::new(AtomicBool::new(false));
    let fleet = [
        ("photon-1", "photon", "wifi"),
        ("photon-2", "photon", "wifi"),
        ("argon-1", "argon", "wifi"),
        ("argon-2", "argon", "cellular"),
    ];
    for (id, platform, connectivity) in fleet {
        let existing = api.get(&format!("/api/devices/{id}")).is_ok();
        let secret_file = args.data.join(format!("sim-{id}.secret"));
        let secret = if existing && secret_file.exists() {
            std::fs::read_to_string(&secret_file)?
        } else {
            let body = json!({ "id": id, "platform": platform, "connectivity": connectivity });
            let s = api.post_as::<AddedDevice>("/api/devices", body)?.secret;
            std::fs::write(&secret_file, &s)?;
            s
        };
        let target =
            MqttTarget { host: mqtt.ip().to_string(), port: mqtt.port(), device: id.to_string(), secret, tls: None };
        let (keys, stop) = (vec![key.verifying_key()], stop.clone());
        let id = id.to_owned();
        let (app, factory) = match id.as_str() {
            "argon-1" => (aapp(1, argon_new)?, aapp(0, argon_new)?),
            "argon-2" => (aapp(1, argon_old)?, aapp(0, argon_old)?),
            _ => (papp(1, Behaviour::Healthy)?, papp(0, Behaviour::Healthy)?),
        };
        let (profile, system) =
            if id.starts_with("photon") { (photon, firmware.photon.clone()) } else { (argon, firmware.argon.clone()) };
        std::thread::spawn(move || match provision::with_images(profile, keys, &system, app, factory) {
            Ok(device) => {
                let settings = Settings { describe_every: Duration::from_secs(5), ..Settings::default() };
                let mut rt = SimRuntime::new(device, settings);
                if let Err(e) = rt.run(&mut MqttLink::new(&target), &stop) {
                    eprintln!("{id}: {e}");
                }
            }
            Err(e) => eprintln!("{id}: {e}"),
        });
    }
    for (id, _, _) in fleet {
        wait(&api, &format!("{id} to connect"), |a| {
            Ok(a.get_as::<DeviceDetail>(&format!("/api/devices/{id}"))?.inventory.is_some())
        })?;
    }
    println!(
        "tern up: 4 simulated devices online (photon-1, photon-2, argon-1 on Wi-Fi; argon-2 on cellular; \
         argon-1 boots safe mode: its application needs a newer system part)"
    );

    // 1. A confirmed application update.
    println!("\n== 1. application update on photon-1 ==");
    let v2 = upload_image(&api, &key, photon, &papp(2, Behaviour::Healthy)?)?;
    let plan = make_plan(&api, "photon-1", &[v2])?;
    follow(&api, &start_plan(&api, &plan, false)?)?;

    // 2. The safe-mode heal: the server planned it when argon-1 described itself in safe
    // mode, and sent it because argon-1's policy (Wi-Fi) heals automatically.
    println!("\n== 2. safe-mode heal of argon-1 (automatic: Wi-Fi policy) ==");
    let described = wait_value(&api, "argon-1 to describe safe mode", |a| {
        let d: DeviceDetail = a.get_as("/api/devices/argon-1")?;
        Ok(d.history
            .into_iter()
            .filter(|e| e.kind == "device.described" && e.at >= demo_start)
            .filter_map(|e| serde_json::from_value::<Inventory>(e.data).ok())
            .find(|i| i.boot_reason == "safe_mode"))
    })?;
    let unmet = described.unmet.as_ref();
    println!(
        "argon-1 described: {} ({}), unmet {} {} >= v{}",
        described.boot_reason,
        described.safe_mode.as_deref().unwrap_or("?"),
        unmet.map_or("?", |u| u.function_name.as_str()),
        unmet.map_or(0, |u| u.index),
        unmet.map_or(0, |u| u.version),
    );
    let attempt = wait_value(&api, "the automatic heal", |a| {
        let d: DeviceDetail = a.get_as("/api/devices/argon-1")?;
        Ok(d.attempts.into_iter().find(|a| a.plan_id.is_some() && a.created_at >= demo_start))
    })?;
    let plan: PlanRecord = api.get_as(&format!("/api/plans/{}", attempt.plan_id.unwrap_or_default()))?;
    print_plan(&plan);
    follow(&api, &attempt)?;
    let d: DeviceDetail = api.get_as("/api/devices/argon-1")?;
    println!("argon-1 now: {} (status {})", boot_reason(&d), d.summary.status);

    // 3. An automatic rollback.
    println!("\n== 3. a bad application (panics at boot) on photon-2 ==");
    let bad = upload_image(&api, &key, photon, &papp(3, Behaviour::Panic)?)?;
    let plan = make_plan(&api, "photon-2", &[bad])?;
    follow(&api, &start_plan(&api, &plan, false)?)?;
    let d: DeviceDetail = api.get_as("/api/devices/photon-2")?;
    println!(
        "photon-2 runs application version {} again (boot reason {})",
        d.summary.application_version.map_or("-".to_owned(), |v| v.to_string()),
        boot_reason(&d)
    );

    // 4. A cellular device: the plan heals what the new application needs, and its cost
    // is confirmed before anything is sent.
    println!("\n== 4. application needing a newer system part on argon-2 (cellular) ==");
    let app2 = upload_image(&api, &key, argon, &aapp(2, argon_new)?)?;
    let plan = make_plan(&api, "argon-2", &[app2])?;
    println!(
        "argon-2 is cellular: an operator confirms the {} bytes (`tern flash` asks them to type it); the demo confirms",
        plan.air_bytes
    );
    follow(&api, &start_plan(&api, &plan, true)?)?;

    println!(
        "\ntern up: serving. API: {} (token in {}), OpenAPI at /api/openapi.json; events: tern events",
        api.base,
        args.data.join(tern_server::ADMIN_TOKEN_FILE).display()
    );
    match &ca_file {
        Some(ca) => {
            println!("  export TERN_SERVER={} TERN_TOKEN={} TERN_CA_FILE={}", api.base, api.token, ca.display())
        }
        None => println!("  export TERN_SERVER={} TERN_TOKEN={}", api.base, api.token),
    }
    println!("  tern device list");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The profile Particle's platform `name` has, or the generic profile `alias` where the
/// platform names are not known yet.
fn profile(name: &str, alias: &str) -> Result<&'static Profile> {
    tern_device::profile::by_name(name)
        .or_else(|| tern_device::profile::by_name(alias))
        .ok_or_else(|| anyhow!("no device profile named {name} or {alias}"))
}

/// The Device OS the demo runs: what goes in the catalog, what the devices leave the
/// factory with, and the system parts the applications need.
struct Firmware {
    /// Which firmware this is, said once at the start.
    label: String,
    /// Modules for the catalog, with their platform ids.
    catalog: Vec<(u16, Image)>,
    /// Installed on the Photons (bootloader, system parts), in install order.
    photon: Vec<Image>,
    /// Installed on the Argons (radio stack, bootloader, system part), in install order.
    argon: Vec<Image>,
    /// What the Photons' applications need (the installed system part 2).
    photon_app_needs: Dependency,
    /// What an Argon application built for the installed Device OS needs.
    argon_app_needs_old: Dependency,
    /// What an Argon application built for the newer Device OS needs (in the catalog, not
    /// installed).
    argon_app_needs_new: Dependency,
}

/// The synthetic Device OS: both releases of each platform in the catalog, the older one
/// installed.
fn generated_firmware(photon: &'static Profile, argon: &'static Profile) -> Result<Firmware> {
    let photon_releases = device_os::releases(photon).map_err(anyhow::Error::msg)?;
    let argon_releases = device_os::releases(argon).map_err(anyhow::Error::msg)?;
    let (old, new) = (&argon_releases[0], &argon_releases[argon_releases.len() - 1]);
    let needs =
        |r: &device_os::Release| r.application_dependency().ok_or_else(|| anyhow!("{}: no system part", r.name));
    let mut catalog: Vec<(u16, Image)> = Vec::new();
    for (profile, releases) in [(photon, &photon_releases), (argon, &argon_releases)] {
        for image in releases.iter().flat_map(|r| &r.modules) {
            if !catalog.iter().any(|(_, known)| known.entry.sha256 == image.entry.sha256) {
                catalog.push((profile.platform_id, image.clone()));
            }
        }
    }
    Ok(Firmware {
        label: format!(
            "synthetic Device OS {} and {} made by Tern (Particle-format modules at the real addresses; \
             tern up --demo --corpus DIR runs real Device OS modules instead)",
            old.name, new.name
        ),
        catalog,
        photon: photon_releases[0].modules.clone(),
        argon: old.modules.clone(),
        photon_app_needs: needs(&photon_releases[0])?,
        argon_app_needs_old: needs(old)?,
        argon_app_needs_new: needs(new)?,
    })
}

/// Real Device OS modules from the corpus: Photons run bootloader 2.3.1, system part 1
/// 2.3.1 and part 2 2.3.0; Argons SoftDevice 4.1.0, bootloader 4.0.2 and system part 1
/// 4.0.1; the catalog adds Argon's 4.1.0 bootloader and system part.
fn corpus_firmware(dir: &Path, photon: &'static Profile, argon: &'static Profile) -> Result<Firmware> {
    let rel = dir.join("particle/releases");
    if !rel.is_dir() {
        bail!("{}: not a firmware corpus (no particle/releases directory)", dir.display());
    }
    let load = |f: &str, p: &Profile| tern_sim::corpus::module(&rel.join(f), p.platform_id).map_err(anyhow::Error::msg);
    let photon_set: Vec<Image> =
        ["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.0.bin"]
            .iter()
            .map(|f| load(f, photon))
            .collect::<Result<_>>()?;
    let argon_set: Vec<Image> =
        ["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", "argon-system-part1@4.0.1.bin"]
            .iter()
            .map(|f| load(f, argon))
            .collect::<Result<_>>()?;
    let argon_boot = load("argon-bootloader@4.1.0.bin", argon)?;
    let argon_part1 = load("argon-system-part1@4.1.0.bin", argon)?;
    let part = |image: &Image| Dependency {
        function: ModuleFunction::SystemPart,
        index: image.entry.index,
        version: image.entry.version,
    };
    let mut catalog: Vec<(u16, Image)> = argon_set.iter().map(|i| (argon.platform_id, i.clone())).collect();
    catalog.push((argon.platform_id, argon_boot));
    catalog.push((argon.platform_id, argon_part1.clone()));
    catalog.extend(photon_set[1..].iter().map(|i| (photon.platform_id, i.clone())));
    Ok(Firmware {
        label: format!("real Device OS modules from {}", rel.display()),
        catalog,
        photon_app_needs: part(&photon_set[2]),
        argon_app_needs_old: part(&argon_set[2]),
        argon_app_needs_new: part(&argon_part1),
        photon: photon_set,
        argon: argon_set,
    })
}

/// A demo application: a Particle module with the given behaviour.
fn app(profile: &Profile, version: u32, needs: Dependency, behaviour: Behaviour, size: usize) -> Result<Image> {
    device_os::application(profile, version, &[needs], behaviour, size).map_err(anyhow::Error::msg)
}

/// Uploads `image` for `profile`'s platform with a signed statement; returns its catalog hash.
fn upload_image(api: &Api, key: &SigningKey, profile: &Profile, image: &Image) -> Result<String> {
    upload_signed(api, key, profile.platform_id, image, &image.name)
}

/// The demo's release key: `DATA/demo-release.key` (32 raw bytes), made on first run.
fn demo_key(data: &std::path::Path) -> Result<SigningKey> {
    let path = data.join("demo-release.key");
    if let Ok(bytes) = std::fs::read(&path) {
        let seed: [u8; 32] = bytes.try_into().map_err(|_| anyhow!("{}: not a 32-byte key", path.display()))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // A signing key: only its owner may read it.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(&path)?, &key.to_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(key)
}

/// Uploads `image` with a statement signed by `key`; returns its catalog hash.
fn upload_signed(api: &Api, key: &SigningKey, platform: u16, image: &Image, name: &str) -> Result<String> {
    let statement = Document {
        kind: Kind::ModuleStatement,
        platform_id: platform,
        product_id: 0,
        security_counter: 1,
        created: 1_790_000_000,
        modules: vec![image.entry],
        name: String::new(),
    }
    .sign(key)
    .map_err(|e| anyhow!("signing {name}: {e:?}"))?;
    let body = tern_image::bundle::write_signed_module(&statement, &image.bytes).map_err(|e| anyhow!("{name}: {e}"))?;
    let module =
        api.post_bytes(&format!("/api/modules?filename={name}"), &body).with_context(|| format!("uploading {name}"))?;
    Ok(crate::ops::typed::<ModuleRecord>(module)?.sha256)
}

fn make_plan(api: &Api, device: &str, modules: &[String]) -> Result<PlanRecord> {
    let plan = api.post_as(&format!("/api/devices/{device}/plans"), json!({ "modules": modules }))?;
    print_plan(&plan);
    Ok(plan)
}

fn print_plan(plan: &PlanRecord) {
    println!("plan {} for {} ({}):", plan.id, plan.device, plan.origin);
    for (i, m) in plan.steps.iter().enumerate() {
        println!(
            "  {}. {} {} v{} ({} bytes)  {}",
            i + 1,
            m.function_name,
            m.index,
            m.version,
            m.size,
            m.reason.as_deref().unwrap_or("")
        );
    }
    println!("  about {} bytes on the air over {}", plan.air_bytes, plan.connectivity.name());
}

fn start_plan(api: &Api, plan: &PlanRecord, confirm: bool) -> Result<AttemptRecord> {
    let body = if confirm { json!({ "confirm_air_bytes": plan.air_bytes }) } else { json!({}) };
    api.post_as(&format!("/api/plans/{}/start", plan.id), body)
}

/// The boot reason a device last described.
fn boot_reason(d: &DeviceDetail) -> &str {
    d.inventory.as_ref().map_or("?", |i| i.boot_reason.as_str())
}

fn wait_value<T>(api: &Api, what: &str, f: impl Fn(&Api) -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Ok(Some(value)) = f(api) {
            return Ok(value);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait(api: &Api, what: &str, f: impl Fn(&Api) -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !f(api).unwrap_or(false) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Prints attempt `a`'s states as they change, until it ends.
fn follow(api: &Api, a: &AttemptRecord) -> Result<AttemptRecord> {
    let id = a.id;
    println!("attempt {id} on {}:", a.device);
    let mut last = String::new();
    let start = Instant::now();
    loop {
        let a: AttemptRecord = api.get_as(&format!("/api/attempts/{id}"))?;
        let state = a.state;
        let line = format!("  {state} ({} / {} bytes)", a.bytes_done, a.bytes_total);
        if line != last {
            println!("{line}");
            last = line;
        }
        if a.finished {
            if let Some(reason) = &a.reason {
                println!("  reason: {reason}");
            }
            return Ok(a);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("attempt {id} still {state}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
