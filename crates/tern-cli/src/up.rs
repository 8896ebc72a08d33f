//! `tern up --demo`: the server with embedded defaults, a small simulated fleet of both
//! profiles, and three updates shown live — a confirmed application update, a safe-mode
//! heal that installs missing system parts in order, and an automatic rollback of a bad
//! application. Then it keeps serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use tern_fleet::{provision, MqttLink, MqttTarget, Settings, SimRuntime};
use tern_image::manifest::build::Document;
use tern_image::manifest::Kind;
use tern_image::model::{Dependency, ModuleFunction};
use tern_plan::{Candidate, Installed, Slot};
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
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// MQTT gateway address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// The firmware corpus (default: $TERN_CORPUS, else ../shared/corpus).
    #[arg(long)]
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
    let corpus = args
        .corpus
        .clone()
        .or_else(|| std::env::var_os("TERN_CORPUS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/corpus"));
    let rel = corpus.join("particle/releases");
    if !rel.is_dir() {
        bail!("{}: the firmware corpus is missing (pass --corpus DIR)", rel.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let config =
        tern_server::Config { data_dir: args.data.clone(), http: args.http, mqtt: args.mqtt, ..Default::default() };
    let running = runtime.block_on(tern_server::start(config))?;
    let token = std::fs::read_to_string(args.data.join(tern_server::ADMIN_TOKEN_FILE))
        .with_context(|| format!("{}: no admin token", args.data.display()))?;
    let api = Api {
        base: format!("http://{}", running.http),
        token: token.trim().to_owned(),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into(),
    };
    println!(
        "tern up: server on http://{} and mqtt://{} (data in {})",
        running.http,
        running.mqtt,
        args.data.display()
    );

    // The catalog: real Device OS modules.
    let catalog_files = [
        "argon-softdevice@4.1.0.bin",
        "argon-bootloader@4.0.2.bin",
        "argon-bootloader@4.1.0.bin",
        "argon-system-part1@4.0.1.bin",
        "argon-system-part1@4.1.0.bin",
        "photon-system-part1@2.3.1.bin",
        "photon-system-part2@2.3.0.bin",
    ];
    let mut by_hash: HashMap<String, Image> = HashMap::new();
    for f in catalog_files {
        let bytes = std::fs::read(rel.join(f)).with_context(|| format!("{}: cannot read", rel.join(f).display()))?;
        api.post_bytes(&format!("/api/modules?filename={f}"), &bytes).with_context(|| format!("uploading {f}"))?;
        let platform = if f.starts_with("argon") { 12 } else { 6 };
        let image = tern_sim::corpus::module(&rel.join(f), platform).map_err(anyhow::Error::msg)?;
        by_hash.insert(hex::encode(image.entry.sha256), image);
    }
    println!("tern up: uploaded {} corpus modules to the catalog", catalog_files.len());

    let key = SigningKey::generate(&mut rand_core::OsRng);
    let version = |f: &str, p: u16| {
        tern_sim::corpus::module(&rel.join(f), p).map(|i| i.entry.version).map_err(anyhow::Error::msg)
    };
    let photon_sys = Dependency {
        function: ModuleFunction::SystemPart,
        index: 2,
        version: version("photon-system-part2@2.3.0.bin", 6)?,
    };
    let argon_new = Dependency {
        function: ModuleFunction::SystemPart,
        index: 1,
        version: version("argon-system-part1@4.1.0.bin", 12)?,
    };
    let photon = &tern_device::STM32F2;
    let argon = &tern_device::NRF52840;
    let papp = |v, b| Image::synthetic(photon, ModuleFunction::UserPart, 1, v, &[photon_sys], b, 8 * 1024);
    let aapp = |v| Image::synthetic(argon, ModuleFunction::UserPart, 1, v, &[argon_new], Behaviour::Healthy, 8 * 1024);

    // The fleet: two Photons running application 1, one Argon whose application needs a
    // newer system part than it has (so it boots safe mode), one healthy Argon.
    let stop = Arc::new(AtomicBool::new(false));
    let fleet: Vec<(&str, &str)> =
        vec![("photon-1", "photon"), ("photon-2", "photon"), ("argon-1", "argon"), ("argon-2", "argon")];
    for (id, platform) in &fleet {
        let existing = api.get(&format!("/api/devices/{id}")).is_ok();
        let secret_file = args.data.join(format!("sim-{id}.secret"));
        let secret = if existing && secret_file.exists() {
            std::fs::read_to_string(&secret_file)?
        } else {
            let d = api.post_json("/api/devices", json!({ "id": id, "platform": platform }))?;
            let s = d["secret"].as_str().ok_or_else(|| anyhow!("no secret for {id}"))?.to_owned();
            std::fs::write(&secret_file, &s)?;
            s
        };
        let target = MqttTarget {
            host: running.mqtt.ip().to_string(),
            port: running.mqtt.port(),
            device: id.to_string(),
            secret,
        };
        let (corpus, keys, stop) = (corpus.clone(), vec![key.verifying_key()], stop.clone());
        let (id, safe) = (id.to_string(), *id == "argon-1");
        let (app1p, app1a, fac_p, fac_a) = (papp(1, Behaviour::Healthy), aapp(1), papp(0, Behaviour::Healthy), aapp(0));
        let old_argon = Dependency { function: ModuleFunction::SystemPart, index: 1, version: 0 };
        std::thread::spawn(move || {
            let device = if id.starts_with("photon") {
                provision::corpus_photon(keys, &corpus, "2.3.0", app1p, fac_p)
            } else if safe {
                provision::corpus_argon(keys, &corpus, "4.0.1", app1a, fac_a)
            } else {
                let app = Image::synthetic(
                    &tern_device::NRF52840,
                    ModuleFunction::UserPart,
                    1,
                    1,
                    &[old_argon],
                    Behaviour::Healthy,
                    8 * 1024,
                );
                provision::corpus_argon(keys, &corpus, "4.0.1", app, fac_a)
            };
            match device {
                Ok((device, _)) => {
                    let mut rt = SimRuntime::new(
                        device,
                        Settings { describe_every: Duration::from_secs(5), ..Settings::default() },
                    );
                    if let Err(e) = rt.run(&mut MqttLink::new(&target), &stop) {
                        eprintln!("{id}: {e}");
                    }
                }
                Err(e) => eprintln!("{id}: {e}"),
            }
        });
    }
    for (id, _) in &fleet {
        wait(&api, &format!("{id} to connect"), |a| {
            Ok(a.get(&format!("/api/devices/{id}"))?["inventory"]["modules"].is_array())
        })?;
    }
    println!("tern up: 4 simulated devices online (2 Photon, 2 Argon; argon-1 in safe mode: its application needs a newer system part)");

    // 1. A confirmed application update.
    println!("\n== 1. application update on photon-1 ==");
    let v2 = papp(2, Behaviour::Healthy);
    follow(&api, "photon-1", &bundle(&key, 6, &[&v2])?)?;

    // 2. The safe-mode heal.
    println!("\n== 2. safe-mode heal of argon-1 ==");
    let d = api.get("/api/devices/argon-1")?;
    println!(
        "argon-1: {} ({}), unmet {}",
        d["inventory"]["boot_reason"], d["inventory"]["safe_mode"], d["inventory"]["unmet"]
    );
    let catalog = api.get("/api/modules")?;
    let catalog: Vec<Value> = catalog.as_array().cloned().unwrap_or_default();
    let deps = |v: &Value| -> Vec<Dependency> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|d| Dependency {
                function: ModuleFunction::from_code(d["function"].as_u64().unwrap_or(0) as u8),
                index: d["index"].as_u64().unwrap_or(0) as u8,
                version: d["version"].as_u64().unwrap_or(0) as u32,
            })
            .collect()
    };
    let slot = |m: &Value| Slot {
        function: ModuleFunction::from_code(m["function"].as_u64().unwrap_or(0) as u8),
        index: m["index"].as_u64().unwrap_or(0) as u8,
    };
    let installed: Vec<Installed> = d["inventory"]["modules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| Installed {
            slot: slot(m),
            version: m["version"].as_u64().unwrap_or(0) as u32,
            dependencies: catalog
                .iter()
                .find(|c| c["sha256"] == m["sha256"])
                .map(|c| deps(&c["dependencies"]))
                .unwrap_or_else(|| if slot(m).function == ModuleFunction::UserPart { vec![argon_new] } else { vec![] }),
        })
        .collect();
    let candidates: Vec<Candidate> = catalog
        .iter()
        .filter_map(|m| {
            let mut sha = [0u8; 32];
            hex::decode_to_slice(m["sha256"].as_str()?, &mut sha).ok()?;
            Some(Candidate {
                sha256: sha,
                platform_id: m["platform_id"].as_u64()? as u16,
                slot: slot(m),
                version: m["version"].as_u64()? as u32,
                size: m["size"].as_u64()?,
                dependencies: deps(&m["dependencies"]),
            })
        })
        .collect();
    let plan = tern_plan::heal(12, &installed, &candidates).map_err(|e| anyhow!("no healing plan: {e:?}"))?;
    println!("healing plan ({} bytes of modules):", plan.module_bytes());
    for (i, s) in plan.steps.iter().enumerate() {
        println!("  {}. {} version {}", i + 1, s.module.slot, s.module.version);
    }
    let images: Vec<&Image> = plan.steps.iter().filter_map(|s| by_hash.get(&hex::encode(s.module.sha256))).collect();
    follow(&api, "argon-1", &bundle(&key, 12, &images)?)?;
    let d = api.get("/api/devices/argon-1")?;
    println!("argon-1 now: {} (status {})", d["inventory"]["boot_reason"], d["status"]);

    // 3. An automatic rollback.
    println!("\n== 3. a bad application (panics at boot) on photon-2 ==");
    let bad = papp(3, Behaviour::Panic);
    follow(&api, "photon-2", &bundle(&key, 6, &[&bad])?)?;
    let d = api.get("/api/devices/photon-2")?;
    println!(
        "photon-2 runs application version {} again (boot reason {})",
        d["application_version"], d["inventory"]["boot_reason"]
    );

    println!(
        "\ntern up: serving. API: http://{} (token in {}), OpenAPI at /api/openapi.json; events: tern events",
        running.http,
        args.data.join(tern_server::ADMIN_TOKEN_FILE).display()
    );
    println!("  export TERN_SERVER=http://{} TERN_TOKEN={}", running.http, api.token);
    println!("  tern device list");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
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

fn bundle(key: &SigningKey, platform: u16, modules: &[&Image]) -> Result<Vec<u8>> {
    let signed = Document {
        kind: Kind::Release,
        platform_id: platform,
        product_id: 0,
        security_counter: 1,
        created: 1_790_000_000,
        modules: modules.iter().map(|m| m.entry).collect(),
        name: "tern up demo".into(),
    }
    .sign(key)
    .map_err(|e| anyhow!("signing: {e:?}"))?;
    let slices: Vec<&[u8]> = modules.iter().map(|m| m.bytes.as_slice()).collect();
    tern_image::bundle::write(&signed, &slices).map_err(|e| anyhow!("bundle: {e:?}"))
}

/// Starts an attempt and prints its states as they change, until it ends.
fn follow(api: &Api, device: &str, bundle: &[u8]) -> Result<Value> {
    let a = api.post_bytes(&format!("/api/devices/{device}/attempts"), bundle)?;
    let id = a["id"].as_i64().ok_or_else(|| anyhow!("no attempt id"))?;
    println!(
        "attempt {id} on {device}: {} module(s), about {} bytes on the air",
        a["plan"].as_array().map_or(0, Vec::len),
        a["air_bytes"]
    );
    let mut last = String::new();
    let start = Instant::now();
    loop {
        let a = api.get(&format!("/api/attempts/{id}"))?;
        let state = a["state"].as_str().unwrap_or("?").to_owned();
        let line = format!("  {state} ({} / {} bytes)", a["bytes_done"], a["bytes_total"]);
        if line != last {
            println!("{line}");
            last = line;
        }
        if a["finished"] == true {
            if let Some(reason) = a["reason"].as_str() {
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
