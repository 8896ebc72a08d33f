//! `tern sim fleet` as operators and the rollout tests use it: 50 devices with a mix of
//! behaviours and some cellular ones, against a real server. The printed assignment, the
//! status file and the server agree on who is who; an update reaches every Wi-Fi device,
//! and each one ends as its class says (healthy ones confirm, the others roll back to the
//! application they were provisioned with); the server holds the cellular devices'
//! updates for the operator's confirmation; SIGTERM stops the fleet cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::EncodePublicKey;
use serde_json::Value;
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::cli::{tern_cmd, SimProcess};
use crate::support::{bundle, release_key, scratch, Server};

const COUNT: usize = 50;

pub(crate) fn read_status(path: &std::path::Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Waits until the status file satisfies `check`; returns it.
fn wait_status(path: &std::path::Path, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let status = read_status(path);
        if let Some(s) = status.as_ref().filter(|s| check(s)) {
            return s.clone();
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}: {}", status.unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn devices(status: &Value) -> Vec<Value> {
    status["devices"].as_array().cloned().unwrap_or_default()
}

/// The ids `tern sim fleet` printed for a line starting with `head`.
fn printed(lines: &[String], head: &str) -> Vec<String> {
    let line = lines.iter().find(|l| l.starts_with(head)).unwrap_or_else(|| panic!("no line {head:?} in {lines:?}"));
    let ids = line.rsplit_once("devices:").map_or("", |(_, ids)| ids);
    ids.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn a_mixed_fleet_updates_as_its_classes_say() {
    let dir = scratch("fleet-mix");
    let server = Server::start(&dir.join("server"));
    let key = dir.join("release.pub.pem");
    std::fs::write(&key, release_key().verifying_key().to_public_key_pem(Default::default()).unwrap()).unwrap();
    let status_file = dir.join("status.json");
    let mqtt = format!("mqtt://127.0.0.1:{}", server.mqtt_port);
    let mut child = tern_cmd(&server)
        .args(["sim", "fleet", "--server", &mqtt, "--count", &COUNT.to_string(), "--prefix", "mix"])
        .args(["--mix", "healthy=70,panic=10,hang=10,noconfirm=10", "--cellular", "10", "--quiet", "--trust"])
        .arg(&key)
        .arg("--status-file")
        .arg(&status_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tern sim fleet starts");
    let stdout = child.stdout.take().expect("piped");
    let pid = child.id().to_string();
    let mut fleet = SimProcess(child);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });

    let up = wait_status(&status_file, "every device connected and described", Duration::from_secs(60), |s| {
        let d = devices(s);
        d.len() == COUNT && d.iter().all(|d| d["connected"] == true && d["boot_reason"] == "normal")
    });
    let lines = lines.lock().unwrap().clone();

    // The classes: exact shares, the same in the printed assignment and the status file.
    let class_of = |id: &str| -> String {
        let d = devices(&up).into_iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("{id} in the status"));
        d["class"].as_str().unwrap().to_owned()
    };
    for (class, expected) in [("healthy", 35), ("panic", 5), ("hang", 5), ("noconfirm", 5)] {
        let in_status: Vec<String> =
            devices(&up).iter().filter(|d| d["class"] == class).map(|d| d["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(in_status.len(), expected, "{class}: {in_status:?}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with(&format!("mix: {class} (weight")) && l.contains(&format!(": {expected} devices"))));
        if class != "healthy" {
            assert_eq!(printed(&lines, &format!("mix: {class} ")), in_status, "{class}");
            // Spread, not bunched: not all in one half of the ids.
            let numbers: Vec<usize> = in_status.iter().map(|id| id["mix-".len()..].parse().unwrap()).collect();
            assert!(
                numbers.iter().any(|&n| n <= COUNT / 2) && numbers.iter().any(|&n| n > COUNT / 2),
                "{class}: {numbers:?}"
            );
        }
    }
    // Cellular: 10% in both views, and the server registered them so.
    let cellular = printed(&lines, "cellular:");
    assert_eq!(cellular.len(), COUNT / 10);
    for d in devices(&up) {
        let id = d["id"].as_str().unwrap();
        let expected = if cellular.iter().any(|c| c == id) { "cellular" } else { "wifi" };
        assert_eq!(d["connectivity"], expected, "{id} in the status file");
        let (code, record) = server.get(&format!("/api/devices/{id}"));
        assert_eq!(code, 200, "{record}");
        assert_eq!(record["connectivity"], expected, "{id} on the server");
        assert_eq!(record["application_version"], 1, "{id} on the server");
        assert_eq!(d["app_version"], 1, "{id}");
    }

    // One healthy application 2 for everyone. Wi-Fi devices start at once; the server
    // asks the operator to confirm a cellular device's bytes on the air first.
    let dep = [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 }];
    let app = Image::synthetic(&tern_device::STM32F2, ModuleFunction::UserPart, 1, 2, &dep, Behaviour::Healthy, 4096);
    let bundle = bundle(tern_device::STM32F2.platform_id, &[&app], 1);
    let mut attempts = Vec::new();
    for d in devices(&up) {
        let id = d["id"].as_str().unwrap().to_owned();
        let (code, body) = server.post_bytes(&format!("/api/devices/{id}/attempts"), &bundle);
        if d["connectivity"] == "cellular" {
            assert_eq!((code, body["error"]["code"].as_str()), (409, Some("confirmation_required")), "{id}: {body}");
        } else {
            assert_eq!(code, 201, "{id}: {body}");
            attempts.push((id, body["id"].as_i64().unwrap()));
        }
    }
    assert_eq!(attempts.len(), COUNT - COUNT / 10);

    // How each class ends: (class, final attempt state, device's last result, app version).
    let expected = |class: &str| match class {
        "healthy" => ("confirmed", "confirmed", 2),
        _ => ("rolled_back", "rolled_back", 1),
    };
    for (id, attempt) in &attempts {
        let a = server.wait_final(*attempt, Duration::from_secs(120));
        assert_eq!(a["state"], expected(&class_of(id)).0, "{id} ({}): {a}", class_of(id));
    }
    let done = wait_status(&status_file, "every update's result in the status file", Duration::from_secs(60), |s| {
        devices(s).iter().all(|d| d["connectivity"] == "cellular" || d["last_result"].is_object())
    });
    let mut reasons = std::collections::BTreeMap::new();
    for d in devices(&done) {
        let id = d["id"].as_str().unwrap();
        let class = d["class"].as_str().unwrap();
        if d["connectivity"] == "cellular" {
            assert!(d["last_result"].is_null() && d["blocks"] == 0 && d["app_version"] == 1, "{id}: {d}");
            continue;
        }
        let (_, result, version) = expected(class);
        assert_eq!(d["last_result"]["outcome"], result, "{id} ({class}): {d}");
        assert_eq!(d["app_version"], version, "{id} ({class}): {d}");
        assert!(d["blocks"].as_u64().unwrap() > 0, "{id}: {d}");
        // The failing classes boot the update more than once before the rollback.
        if class != "healthy" {
            assert!(d["boots"].as_u64().unwrap() >= 3, "{id} ({class}): {d}");
            reasons.entry(class.to_owned()).or_insert_with(Vec::new).push(d["last_result"]["reason"].clone());
        }
        let (_, record) = server.get(&format!("/api/devices/{id}"));
        assert_eq!(record["application_version"], version, "{id} on the server");
    }
    // Each failing class fails the way its application does.
    assert!(reasons["panic"].iter().all(|r| r == "app_failed_test_boot"), "{reasons:?}");
    assert!(reasons["hang"].iter().all(|r| r == "app_hung"), "{reasons:?}");
    assert!(reasons["noconfirm"].iter().all(|r| r == "app_not_confirmed"), "{reasons:?}");

    // SIGTERM: every device stops cleanly, and the last status says so.
    let term = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(term.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = fleet.0.try_wait().unwrap() {
            break exit;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the fleet did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "{exit:?}");
    let last = read_status(&status_file).expect("a last status");
    assert!(devices(&last).iter().all(|d| d["running"] == false && d["connected"] == false), "{last}");
}

/// Offline periods and late joiners, as the rollout tests need them: devices offline at
/// start are registered but never connect until `--online-after`; periodically offline
/// devices really disconnect (the server sees them go) and come back.
#[test]
fn offline_devices_disconnect_and_late_joiners_join() {
    let dir = scratch("fleet-offline");
    let server = Server::start(&dir.join("server"));
    let status_file = dir.join("status.json");
    let mqtt = format!("mqtt://127.0.0.1:{}", server.mqtt_port);
    let started = Instant::now();
    let child = tern_cmd(&server)
        .args(["sim", "fleet", "--server", &mqtt, "--count", "8", "--prefix", "off", "--quiet"])
        .args(["--offline", "25:3:6", "--offline-at-start", "2", "--online-after", "8"])
        .arg("--status-file")
        .arg(&status_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tern sim fleet starts");
    let mut fleet = SimProcess(child);
    let stdout = fleet.0.stdout.take().expect("piped");
    let lines: Vec<String> =
        BufReader::new(stdout).lines().map_while(Result::ok).take_while(|l| !l.contains("started")).collect();
    let late = printed(&lines, "offline at start until 8 s:");
    let periodic = printed(&lines, "offline periodically:");
    assert_eq!((late.len(), periodic.len()), (2, 2), "{lines:?}");
    assert!(late.iter().all(|id| !periodic.contains(id)), "{lines:?}");
    let online = |id: &str| server.get(&format!("/api/devices/{id}")).1["online"] == true;

    // Before 8 s: the late joiners were never connected, the server has never seen them.
    let early = wait_status(&status_file, "the others described", Duration::from_secs(30), |s| {
        devices(s).iter().filter(|d| d["describes"] != 0).count() >= 4
    });
    assert!(started.elapsed() < Duration::from_secs(8), "too slow to see the start");
    for d in devices(&early).iter().filter(|d| late.iter().any(|id| *id == d["id"])) {
        assert!(d["connects"] == 0 && d["connected"] == false, "{d}");
        assert!(!online(d["id"].as_str().unwrap()), "{d}");
    }
    // A periodically offline device is seen offline by the server at some point, and
    // comes back (a second connection).
    for id in &periodic {
        let start = Instant::now();
        while online(id) {
            assert!(start.elapsed() < Duration::from_secs(10), "{id} never went offline");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let all = wait_status(&status_file, "late joiners and periodic devices back", Duration::from_secs(30), |s| {
        let d = devices(s);
        d.iter().filter(|d| late.iter().any(|id| *id == d["id"])).all(|d| d["connected"] == true && d["describes"] != 0)
            && d.iter().filter(|d| periodic.iter().any(|id| *id == d["id"])).all(|d| d["connects"].as_u64() >= Some(2))
    });
    assert!(started.elapsed() >= Duration::from_secs(8));
    for d in devices(&all) {
        let id = d["id"].as_str().unwrap();
        let expected = if periodic.iter().any(|p| p == id) { 2 } else { 1 };
        assert!(d["connects"].as_u64().unwrap() >= expected, "{d}");
        if late.iter().any(|l| l == id) {
            assert!(online(id), "{id} joined: the server sees it");
        }
    }
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/PID/status` value in kB (or a count).
pub(crate) fn proc_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The benchmark behind `docs/fleet-sim.md`: for each fleet size in `$TERN_FLEET_BENCH`
/// (default 100,300,1000), a `tern server` process and a `tern sim fleet` process; the
/// fleet's memory, threads and CPU idle and while every device takes a small update, and
/// the server's beside it. Every device takes a 16 KiB application, at most
/// `$TERN_FLEET_BENCH_CAP` (default 50) at once. Run with
/// `cargo test --release -p tern-fleet --test it fleet_bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: minutes of CPU"]
fn fleet_bench() {
    use crate::support::free_port;
    let sizes: Vec<usize> = std::env::var("TERN_FLEET_BENCH")
        .unwrap_or_else(|_| "100,300,1000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("TERN_FLEET_BENCH: numbers separated by commas"))
        .collect();
    let profile = std::env::var("TERN_FLEET_PROFILE").unwrap_or_else(|_| "stm32f2".into());
    let cap: usize =
        std::env::var("TERN_FLEET_BENCH_CAP").map_or(50, |c| c.parse().expect("TERN_FLEET_BENCH_CAP: a number"));
    let dep = [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 }];
    let app_for = |p: &'static tern_device::profile::Profile| {
        Image::synthetic(p, ModuleFunction::UserPart, p.app_index(), 2, &dep, Behaviour::Healthy, 16 * 1024)
    };
    let tern = crate::cli::tern();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut rows = Vec::new();
    for n in sizes {
        let dir = scratch(&format!("fleet-bench-{n}"));
        let key = dir.join("release.pub.pem");
        std::fs::write(&key, release_key().verifying_key().to_public_key_pem(Default::default()).unwrap()).unwrap();
        let (http_port, mqtt_port) = (free_port(), free_port());
        let data = dir.join("server");
        let server = SimProcess(
            Command::new(&tern)
                .args(["server", "--http", &format!("127.0.0.1:{http_port}"), "--mqtt"])
                .arg(format!("127.0.0.1:{mqtt_port}"))
                .arg("--data")
                .arg(&data)
                .env("TERN_LOG", std::env::var("TERN_FLEET_BENCH_LOG").unwrap_or_else(|_| "error".into()))
                .env_remove("TERN_CONFIG")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("server.log")).expect("a log file"))
                .spawn()
                .expect("tern server starts"),
        );
        let http = format!("http://127.0.0.1:{http_port}");
        let token_file = data.join(tern_server::ADMIN_TOKEN_FILE);
        let start = Instant::now();
        while !(token_file.exists() && agent.get(&format!("{http}/api/health")).call().is_ok_and(|r| r.status() == 200))
        {
            assert!(start.elapsed() < Duration::from_secs(30), "tern server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
        let status_file = dir.join("status.json");
        let started = Instant::now();
        let fleet = SimProcess(
            Command::new(&tern)
                .args(["sim", "fleet", "--server", &format!("mqtt://127.0.0.1:{mqtt_port}"), "--count"])
                .arg(n.to_string())
                .args(["--profile", &profile, "--quiet", "--api", &http, "--token", &token, "--trust"])
                .arg(&key)
                .arg("--status-file")
                .arg(&status_file)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("fleet.log")).expect("a log file"))
                .spawn()
                .expect("tern sim fleet starts"),
        );
        let (fleet_pid, server_pid) = (fleet.0.id(), server.0.id());
        let up = wait_status(&status_file, "the whole fleet connected", Duration::from_secs(300), |s| {
            devices(s).len() == n && devices(s).iter().all(|d| d["connected"] == true && d["describes"] != 0)
        });
        let connect_s = started.elapsed().as_secs_f64();
        // Idle: settled, then 20 s of CPU.
        std::thread::sleep(Duration::from_secs(5));
        let (f0, s0) = (cpu_seconds(fleet_pid), cpu_seconds(server_pid));
        std::thread::sleep(Duration::from_secs(20));
        let idle_fleet_cpu = (cpu_seconds(fleet_pid) - f0) / 20.0;
        let idle_server_cpu = (cpu_seconds(server_pid) - s0) / 20.0;
        let idle_rss = proc_status(fleet_pid, "VmRSS");
        let idle_server_rss = proc_status(server_pid, "VmRSS");
        let threads = proc_status(fleet_pid, "Threads");

        // Update: application 2 to every device through the API, as `tern flash` does.
        let (f1, s1) = (cpu_seconds(fleet_pid), cpu_seconds(server_pid));
        let update_start = Instant::now();
        let ids: Vec<(String, String)> = devices(&up)
            .iter()
            .map(|d| (d["id"].as_str().unwrap().to_owned(), d["profile"].as_str().unwrap().to_owned()))
            .collect();
        // At most `cap` devices updating at once, as a rollout caps them: the next attempt
        // starts when one ends (read from the status file).
        let mut posted = 0;
        let mut peak_rss = 0;
        let mut peak_server_rss = 0;
        let done_at = loop {
            peak_rss = peak_rss.max(proc_status(fleet_pid, "VmRSS"));
            peak_server_rss = peak_server_rss.max(proc_status(server_pid, "VmRSS"));
            let s = read_status(&status_file).unwrap_or_default();
            let ended = devices(&s).iter().filter(|d| d["last_result"].is_object()).count();
            let confirmed = devices(&s)
                .iter()
                .filter(|d| d["app_version"] == 2 && d["last_result"]["outcome"] == "confirmed")
                .count();
            if confirmed == n {
                break update_start.elapsed().as_secs_f64();
            }
            assert_eq!(ended, confirmed, "every device confirms: {s}");
            while posted < n && posted < ended + cap {
                let (id, profile) = &ids[posted];
                let p = tern_device::profile::by_name(profile).expect("a known profile");
                let body = bundle(p.platform_id, &[&app_for(p)], 1);
                let response = agent
                    .post(&format!("{http}/api/devices/{id}/attempts"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .header("Content-Type", "application/octet-stream")
                    .send(&body[..])
                    .expect("the server answers");
                assert_eq!(response.status().as_u16(), 201, "{id}");
                posted += 1;
            }
            assert!(update_start.elapsed() < Duration::from_secs(900), "{confirmed} of {n} confirmed after 900 s");
            std::thread::sleep(Duration::from_millis(250));
        };
        let update_fleet_cpu = cpu_seconds(fleet_pid) - f1;
        let update_server_cpu = cpu_seconds(server_pid) - s1;
        let blocks: u64 =
            devices(&read_status(&status_file).unwrap()).iter().map(|d| d["blocks"].as_u64().unwrap()).sum();
        let hwm = proc_status(fleet_pid, "VmHWM");
        let row = format!(
            "| {n} | {connect_s:.1} | {:.0} | {:.0} | {:.0} | {threads} | {:.2} | {:.2} | {done_at:.1} | {update_fleet_cpu:.1} | {update_server_cpu:.1} | {} | {:.0} |",
            idle_rss as f64 / 1024.0,
            idle_rss as f64 / n as f64,
            hwm.max(peak_rss) as f64 / 1024.0,
            idle_fleet_cpu,
            idle_server_cpu,
            blocks / n as u64,
            idle_server_rss.max(peak_server_rss) as f64 / 1024.0,
        );
        println!("{row}");
        rows.push(row);
        let _ = Command::new("kill").args(["-TERM", &fleet_pid.to_string()]).status();
        drop(fleet);
        drop(server);
    }
    println!(
        "| devices | connected after s | fleet RSS idle MiB | KiB per device | fleet RSS peak MiB | threads | fleet CPU idle (cores) | server CPU idle (cores) | update to all confirmed s | fleet CPU s | server CPU s | blocks per device | server RSS peak MiB |"
    );
    for row in rows {
        println!("{row}");
    }
}
