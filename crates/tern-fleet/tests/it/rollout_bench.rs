//! The benchmark behind `docs/rollouts.md` ("Benchmark"): for each fleet size, a `tern
//! server` process and one `tern sim fleet` process of Photons; a product, a release of one
//! small application, a rollout in phases to every device. It prints how long the rollout
//! took to reach 100% confirmed and 100% healthy, the CPU and peak memory of both processes
//! during it, the MQTT traffic per device (the server's link counters) and the attempts per
//! device, which must be exactly one: the table is printed even when a size fails, and the
//! test fails after it.
//!
//! Run with `cargo test --release -p tern-fleet --test it rollout_bench -- --ignored --nocapture`.
//! Knobs: `TERN_ROLLOUT_BENCH` (sizes, default `100,300,1000`), `TERN_ROLLOUT_BENCH_CAP`
//! (`max_concurrent`, default 50), `TERN_ROLLOUT_BENCH_PHASES` (default `1%,10%,100%`),
//! `TERN_ROLLOUT_BENCH_SOAK` (seconds, default 2), `TERN_ROLLOUT_BENCH_TIMEOUT` (seconds
//! per size, default 900), `TERN_ROLLOUT_BENCH_LOG` (the server's `TERN_LOG`, default
//! `error`; its log is in the size's scratch directory).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::cli::SimProcess;
use crate::fleet_sim::{cpu_seconds, devices, proc_status, read_status};
use crate::support::{agent, finish, free_port, release_key, scratch, statement_signed_by};

const PRODUCT: u32 = 5001;
/// How often the benchmark reads the rollout and samples memory. Reading the rollout costs
/// the server a little CPU, counted in its CPU seconds.
const POLL: Duration = Duration::from_millis(500);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.trim().parse().unwrap_or_else(|_| panic!("{name}: a number")))
}

/// The machine's 1-minute load average (other work on the shared machine shows here).
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0)
}

/// The server's HTTP API with its admin token.
struct Api {
    http: String,
    token: String,
}

impl Api {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        finish(agent().get(&format!("{}{path}", self.http)).header("Authorization", &self.bearer()).call())
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        finish(agent().post(&format!("{}{path}", self.http)).header("Authorization", &self.bearer()).send_json(body))
    }

    fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        finish(agent().patch(&format!("{}{path}", self.http)).header("Authorization", &self.bearer()).send_json(body))
    }

    fn post_bytes(&self, path: &str, body: &[u8]) -> (u16, Value) {
        finish(
            agent()
                .post(&format!("{}{path}", self.http))
                .header("Authorization", &self.bearer())
                .header("Content-Type", "application/octet-stream")
                .send(body),
        )
    }

    /// The link counters of `/api/stats`: messages in, messages out, bytes in, bytes out.
    fn link(&self) -> [u64; 4] {
        let (status, stats) = self.get("/api/stats");
        assert_eq!(status, 200, "{stats}");
        ["messages_in", "messages_out", "bytes_in", "bytes_out"]
            .map(|k| stats["link"][k].as_u64().unwrap_or_else(|| panic!("/api/stats has link.{k}: {stats}")))
    }
}

fn ok(status: u16, body: &Value, what: &str) -> Result<(), String> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {status} {body}"))
    }
}

/// `tern server` as its own process on fixed ports; waits until it answers.
fn server(tern: &Path, dir: &Path) -> (SimProcess, Api, u16) {
    let (http_port, mqtt_port) = (free_port(), free_port());
    let data = dir.join("server");
    let child = Command::new(tern)
        .args(["server", "--http", &format!("127.0.0.1:{http_port}"), "--mqtt"])
        .arg(format!("127.0.0.1:{mqtt_port}"))
        .arg("--data")
        .arg(&data)
        .env("TERN_LOG", env_or("TERN_ROLLOUT_BENCH_LOG", "error"))
        .env_remove("TERN_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).expect("a log file"))
        .spawn()
        .expect("tern server starts");
    let process = SimProcess(child);
    let http = format!("http://127.0.0.1:{http_port}");
    let token_file = data.join(tern_server::ADMIN_TOKEN_FILE);
    let start = Instant::now();
    while !(token_file.exists() && agent().get(&format!("{http}/api/health")).call().is_ok_and(|r| r.status() == 200)) {
        assert!(start.elapsed() < Duration::from_secs(30), "tern server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file).expect("admin token").trim().to_owned();
    (process, Api { http, token }, mqtt_port)
}

/// One size's measurements.
struct Row {
    n: usize,
    connect_s: f64,
    confirmed_s: f64,
    healthy_s: f64,
    server_cpu_s: f64,
    server_rss_kib: u64,
    fleet_cpu_s: f64,
    fleet_rss_kib: u64,
    /// Link counters during the rollout: messages in, out, bytes in, out.
    link: [u64; 4],
    /// Link counters over the idle window before the rollout, per second.
    idle_link_per_s: [f64; 4],
    idle_s: f64,
    /// The machine's 1-minute load average when the rollout started and when it ended.
    load: [f64; 2],
    air_bytes: u64,
    attempts_min: usize,
    attempts_max: usize,
}

impl Row {
    fn line(&self) -> String {
        let per = |v: u64| v as f64 / self.n as f64;
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            self.n,
            self.connect_s,
            self.confirmed_s,
            self.healthy_s,
            self.server_cpu_s,
            mib(self.server_rss_kib),
            self.fleet_cpu_s,
            mib(self.fleet_rss_kib),
            per(self.link[0]),
            per(self.link[1]),
            per(self.link[2]) / 1024.0,
            per(self.link[3]) / 1024.0,
            per(self.air_bytes) / 1024.0,
            if self.attempts_min == self.attempts_max {
                self.attempts_min.to_string()
            } else {
                format!("{}–{}", self.attempts_min, self.attempts_max)
            },
        )
    }
}

const HEADER: &str = "| devices | fleet connected after s | 100% confirmed after s | 100% healthy after s | server CPU s | server RSS peak MiB | fleet CPU s | fleet RSS peak MiB | messages in per device | messages out per device | KiB in per device | KiB out per device | KiB on the air per device (attempts) | attempts per device |";

/// Everything measured for `n` devices, or what went wrong (with what was seen).
fn run_size(n: usize, cap: u64, phases: &[String], soak: u64, timeout: Duration) -> Result<Row, String> {
    let tern = crate::cli::tern();
    let dir = scratch(&format!("rollout-bench-{n}"));
    let key = dir.join("release.pub.pem");
    std::fs::write(&key, release_key().verifying_key().to_public_key_pem(Default::default()).unwrap()).unwrap();
    let (server, api, mqtt_port) = server(&tern, &dir);

    // The product, and a release of one 16 KiB application (16 blocks), version 2.
    let profile = &tern_device::profile::PHOTON;
    let dep = [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 }];
    let app = Image::synthetic(
        profile,
        ModuleFunction::UserPart,
        profile.app_index(),
        2,
        &dep,
        Behaviour::Healthy,
        16 * 1024,
    );
    let statement = statement_signed_by(&app, profile.platform_id, &release_key());
    let body = tern_image::bundle::write_signed_module(&statement, &app.bytes).expect("a signed module");
    let (s, module) = api.post_bytes(&format!("/api/modules?filename={}", app.name), &body);
    ok(s, &module, "module upload")?;
    let (s, body) = api.post("/api/products", json!({ "id": PRODUCT, "platform": "photon", "name": "bench" }));
    ok(s, &body, "product")?;
    let (s, release) = api.post(&format!("/api/products/{PRODUCT}/releases"), json!({ "modules": [module["sha256"]] }));
    ok(s, &release, "release")?;

    // The fleet: every device registered, connected and described.
    let status_file = dir.join("status.json");
    let started = Instant::now();
    let fleet = SimProcess(
        Command::new(&tern)
            .args(["sim", "fleet", "--server", &format!("mqtt://127.0.0.1:{mqtt_port}"), "--count"])
            .arg(n.to_string())
            .args(["--profile", "photon", "--prefix", "rb", "--quiet", "--api", &api.http, "--token", &api.token])
            .arg("--trust")
            .arg(&key)
            .arg("--status-file")
            .arg(&status_file)
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("fleet.log")).expect("a log file"))
            .spawn()
            .expect("tern sim fleet starts"),
    );
    let (fleet_pid, server_pid) = (fleet.0.id(), server.0.id());
    loop {
        let s = read_status(&status_file).unwrap_or_default();
        let d = devices(&s);
        if d.len() == n && d.iter().all(|d| d["connected"] == true && d["describes"] != 0) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let connected = d.iter().filter(|d| d["connected"] == true).count();
            return Err(format!("only {connected} of {n} devices connected after 300 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let connect_s = started.elapsed().as_secs_f64();
    let ids: Vec<String> = (1..=n).map(|i| format!("rb-{i}")).collect();
    for id in &ids {
        let (s, body) = api.patch(&format!("/api/devices/{id}/fleet"), json!({ "product": PRODUCT }));
        ok(s, &body, &format!("product of {id}"))?;
    }

    // Idle traffic before the rollout, to tell it apart from the update's.
    std::thread::sleep(Duration::from_secs(3));
    let idle_s = 10.0;
    let before = api.link();
    std::thread::sleep(Duration::from_secs_f64(idle_s));
    let after = api.link();
    let idle_link_per_s = std::array::from_fn(|i| (after[i] - before[i]) as f64 / idle_s);

    // The rollout.
    let (link0, server0, fleet0) = (api.link(), cpu_seconds(server_pid), cpu_seconds(fleet_pid));
    let load0 = load_average();
    let start = Instant::now();
    let (s, rollout) = api.post(
        "/api/rollouts",
        json!({ "product": PRODUCT, "release": release["number"], "phases": phases,
                "max_concurrent": cap, "soak_seconds": soak }),
    );
    ok(s, &rollout, "rollout")?;
    let id = rollout["id"].as_i64().ok_or_else(|| format!("a rollout id in {rollout}"))?;
    let (mut confirmed_s, mut healthy_s) = (None, None);
    let (mut server_rss, mut fleet_rss) = (0, 0);
    let view = loop {
        server_rss = server_rss.max(proc_status(server_pid, "VmRSS"));
        fleet_rss = fleet_rss.max(proc_status(fleet_pid, "VmRSS"));
        let (s, view) = api.get(&format!("/api/rollouts/{id}"));
        ok(s, &view, "rollout status")?;
        let total = &view["summary"]["total"];
        let count = |k: &str| total[k].as_u64().unwrap_or(0) as usize;
        if confirmed_s.is_none() && count("soaking") + count("healthy") == n {
            confirmed_s = Some(start.elapsed().as_secs_f64());
        }
        if count("healthy") == n {
            healthy_s.get_or_insert(start.elapsed().as_secs_f64());
            if view["status"] == "completed" {
                break view;
            }
        }
        if count("failed") + count("expired") + count("excluded") > 0 || view["status"] == "paused" {
            return Err(format!("the rollout went wrong after {:.0} s: {}", start.elapsed().as_secs_f64(), view));
        }
        if start.elapsed() > timeout {
            return Err(format!("not healthy after {timeout:?}; last summary: {}", view["summary"]["total"]));
        }
        std::thread::sleep(POLL);
    };
    let (server_cpu_s, fleet_cpu_s) = (cpu_seconds(server_pid) - server0, cpu_seconds(fleet_pid) - fleet0);
    let link1 = api.link();
    let link = std::array::from_fn(|i| link1[i] - link0[i]);

    // Every device: one attempt, confirmed; its flash runs application 2.
    let mut attempts = Vec::with_capacity(n);
    for id in &ids {
        let (s, d) = api.get(&format!("/api/devices/{id}"));
        ok(s, &d, id)?;
        let list = d["attempts"].as_array().cloned().unwrap_or_default();
        if list.iter().any(|a| a["state"] != "confirmed") {
            return Err(format!("{id}: an attempt not confirmed: {list:?}"));
        }
        attempts.push(list.len());
    }
    let flash_done = Instant::now();
    loop {
        let s = read_status(&status_file).unwrap_or_default();
        let behind: Vec<String> = devices(&s)
            .iter()
            .filter(|d| d["app_version"] != 2)
            .filter_map(|d| d["id"].as_str().map(str::to_owned))
            .collect();
        if behind.is_empty() && devices(&s).len() == n {
            break;
        }
        if flash_done.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "healthy on the server, but the fleet's flash of {behind:?} does not run application 2"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let row = Row {
        n,
        connect_s,
        confirmed_s: confirmed_s.expect("confirmed before healthy"),
        healthy_s: healthy_s.expect("the loop ends healthy"),
        server_cpu_s,
        server_rss_kib: server_rss,
        fleet_cpu_s,
        fleet_rss_kib: fleet_rss.max(proc_status(fleet_pid, "VmHWM")),
        link,
        idle_link_per_s,
        idle_s,
        load: [load0, load_average()],
        air_bytes: view["air_bytes_so_far"].as_u64().unwrap_or(0),
        attempts_min: attempts.iter().copied().min().unwrap_or(0),
        attempts_max: attempts.iter().copied().max().unwrap_or(0),
    };
    let _ = Command::new("kill").args(["-TERM", &fleet_pid.to_string()]).status();
    drop(fleet);
    drop(server);
    Ok(row)
}

#[test]
#[ignore = "a benchmark: minutes of CPU"]
fn rollout_bench() {
    let sizes: Vec<usize> = env_or("TERN_ROLLOUT_BENCH", "100,300,1000")
        .split(',')
        .map(|n| n.trim().parse().expect("TERN_ROLLOUT_BENCH: numbers separated by commas"))
        .collect();
    let cap = env_number("TERN_ROLLOUT_BENCH_CAP", 50);
    let phases: Vec<String> =
        env_or("TERN_ROLLOUT_BENCH_PHASES", "1%,10%,100%").split(',').map(|p| p.trim().to_owned()).collect();
    let soak = env_number("TERN_ROLLOUT_BENCH_SOAK", 2);
    let timeout = Duration::from_secs(env_number("TERN_ROLLOUT_BENCH_TIMEOUT", 900));
    println!("phases {phases:?}, max_concurrent {cap}, soak {soak} s");
    let mut rows = Vec::new();
    for n in sizes {
        let result = run_size(n, cap, &phases, soak, timeout);
        match &result {
            Ok(row) => {
                println!("{HEADER}\n{}", row.line());
                let idle = row.idle_link_per_s.map(|v| v / row.n as f64 * 60.0);
                println!(
                    "{n}: idle before the rollout ({:.0} s), per device per minute: {:.2} messages in, {:.2} out, {:.0} bytes in, {:.0} out; load average {:.1} at the start, {:.1} at the end",
                    row.idle_s, idle[0], idle[1], idle[2], idle[3], row.load[0], row.load[1]
                );
            }
            Err(e) => println!("{n}: FAILED: {e}"),
        }
        rows.push((n, result));
    }
    println!("{HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, result) in &rows {
        match result {
            Ok(row) => println!("{}", row.line()),
            Err(e) => println!("| {n} | failed: {e} |"),
        }
    }
    let failed: Vec<usize> = rows.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| *n).collect();
    assert!(failed.is_empty(), "sizes that failed: {failed:?}");
    for (n, row) in rows.iter().filter_map(|(n, r)| Some((n, r.as_ref().ok()?))) {
        assert_eq!((row.attempts_min, row.attempts_max), (1, 1), "{n} devices: attempts per device");
    }
}
