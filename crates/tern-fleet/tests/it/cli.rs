//! The operator's view, with the real `tern` binary: `tern sim device` processes connect to
//! the server; `tern flash --wait` exits 0 only for a confirmed attempt and non-zero with
//! the reason otherwise (acceptance 9); `tern device show --json` lists the new module
//! hashes (acceptance 1); a simulated device killed with SIGKILL comes back from its state
//! directory with what it had installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::EncodePublicKey;
use serde_json::Value;
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::support::{bundle, release_key, scratch, Server};

/// The `tern` binary next to this test binary (cargo builds it for the workspace's
/// tests); built on demand when this crate's tests run alone.
pub fn tern() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe.parent().and_then(Path::parent).expect("target/PROFILE/deps");
    let bin = dir.join("tern");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if dir.ends_with("release") { vec!["--release"] } else { vec![] };
        let status = Command::new(cargo)
            .args(["build", "-p", "tern-cli", "--bin", "tern"])
            .args(profile)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the tern binary failed");
    }
    bin
}

pub fn tern_cmd(server: &Server) -> Command {
    let mut c = Command::new(tern());
    c.env("TERN_SERVER", &server.http).env("TERN_TOKEN", &server.token).env("HOME", scratch("fleet-cli-home"));
    c
}

pub fn run(server: &Server, args: &[&str]) -> Output {
    tern_cmd(server).args(args).stdin(Stdio::null()).output().expect("tern runs")
}

/// A `tern sim device` process; killed with SIGKILL when dropped.
pub struct SimProcess(pub Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tern sim device` as a separate process: device `id` on `profile`, state in `state`,
/// trusting the public key at `key`.
pub fn sim_device(server: &Server, id: &str, profile: &str, state: &Path, key: &Path) -> SimProcess {
    let mqtt = format!("mqtt://127.0.0.1:{}", server.mqtt_port);
    let child = tern_cmd(server)
        .args(["sim", "device", "--server", &mqtt, "--id", id, "--profile", profile, "--trust"])
        .arg(key)
        .arg("--state")
        .arg(state)
        .args(["--api", &server.http, "--token", &server.token])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tern sim device starts");
    SimProcess(child)
}

pub fn device_json(server: &Server, id: &str) -> Value {
    let out = run(server, &["device", "show", id, "--json"]);
    assert!(out.status.success(), "tern device show: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("tern device show --json prints JSON")
}

pub fn wait_device(server: &Server, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, d) = server.get(&format!("/api/devices/{id}"));
        if status == 200 && check(&d) {
            return d;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn has_hash(device: &Value, sha: &str) -> bool {
    device["inventory"]["modules"].as_array().into_iter().flatten().any(|m| m["sha256"] == sha)
}

#[test]
fn tern_flash_wait_exit_codes_and_device_show() {
    let dir = scratch("fleet-cli");
    let server = Server::start(&dir.join("server"));
    let key = dir.join("release.pub.pem");
    let pem = release_key().verifying_key().to_public_key_pem(Default::default()).expect("PEM");
    std::fs::write(&key, pem).unwrap();
    let state = dir.join("sim-1");
    let id = "cli-1";
    let mut device = sim_device(&server, id, "stm32f2", &state, &key);
    wait_device(&server, id, "the first describe", |d| d["inventory"]["modules"].is_array());

    let profile = &tern_device::STM32F2;
    let dep = [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 }];
    let app = |v, b| Image::synthetic(profile, ModuleFunction::UserPart, 1, v, &dep, b, 20 * 1024 + 1);
    // (case, application, expected exit success, expected final state, reason)
    let cases = [
        ("good", app(2, Behaviour::Healthy), true, "confirmed", None),
        ("panics", app(3, Behaviour::Panic), false, "rolled_back", Some("app_failed_test_boot")),
        ("never-confirms", app(4, Behaviour::NeverConfirms), false, "rolled_back", Some("app_not_confirmed")),
    ];
    for (case, image, ok, state, reason) in cases {
        let file = dir.join(format!("{case}.bundle"));
        std::fs::write(&file, bundle(profile.platform_id, &[&image], 1)).unwrap();
        let out = run(&server, &["flash", id, file.to_str().unwrap(), "--wait", "--json", "--timeout", "120"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{case}: exit {:?}, stderr {stderr}", out.status);
        let attempt: Value = serde_json::from_slice(&out.stdout).expect("--json prints the attempt");
        assert_eq!(attempt["state"], state, "{case}: {attempt}");
        assert_eq!(attempt["device"], id, "{case}");
        assert!(attempt["plan"].as_array().is_some_and(|p| p.len() == 1), "{case}: {attempt}");
        if let Some(reason) = reason {
            assert_eq!(attempt["reason"], reason, "{case}: {attempt}");
            assert!(stderr.contains(state) && stderr.contains(reason), "{case}: {stderr}");
        }
        if !ok {
            // The Result can reach the server before the Describe that follows the rollback.
            wait_device(&server, id, "the rollback describe", |d| d["inventory"]["boot_reason"] == "rollback");
        }
        let shown = device_json(&server, id);
        assert_eq!(has_hash(&shown, &hex(&image.entry.sha256)), ok, "{case}: {shown}");
    }

    // Killed and restarted from its state directory, the device still runs the good update.
    let good = hex(&app(2, Behaviour::Healthy).entry.sha256);
    let _ = device.0.kill();
    let _ = device.0.wait();
    let before = device_json(&server, id)["inventory"]["described_at"].as_i64();
    device = sim_device(&server, id, "stm32f2", &state, &key);
    let d = wait_device(&server, id, "a describe after the restart", |d| {
        d["inventory"]["described_at"].as_i64() != before && d["online"] == true
    });
    assert!(has_hash(&d, &good), "{d}");
    drop(device);
}

/// `tern up --demo`, to which a test adds its options.
fn demo_command() -> Command {
    let mut command = Command::new(tern());
    command.args(["up", "--demo"]);
    command
}

/// Runs a [`demo_command`] on ephemeral ports until it serves and has said how to reach it;
/// returns what it printed.
fn demo_output(mut command: Command) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--mqtts", "127.0.0.1:0"])
        .env("TERN_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tern up starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let start = Instant::now();
    while !lines.iter().any(|l: &String| l.starts_with("  tern device list")) {
        let remaining = Duration::from_secs(120).saturating_sub(start.elapsed());
        match rx.recv_timeout(remaining) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("tern up did not reach serving: {lines:#?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.join("\n")
}

/// Checks every section of the demo's story: a confirmed application update, a safe-mode
/// heal the server plans and sends itself (missing system modules in order), an automatic
/// rollback, a cellular update whose plan heals its dependencies.
fn check_demo_story(text: &str) {
    let section =
        |n: &str| text.split(n).nth(1).unwrap_or_default().split("\n== ").next().unwrap_or_default().to_owned();
    assert!(text.contains("4 simulated devices online"), "{text}");
    assert!(section("== 1.").contains("  confirmed ("), "{text}");
    let heal = section("== 2.");
    assert!(heal.contains("1. bootloader") && heal.contains("2. system_part 1"), "{text}");
    assert!(heal.contains("  confirmed ("), "{text}");
    assert!(heal.contains("(heal)") && heal.contains("needed by"), "the server made the heal plan: {text}");
    assert!(heal.contains("argon-1 now: normal"), "{text}");
    let rollback = section("== 3.");
    assert!(rollback.contains("rolled_back") && rollback.contains("reason: app_failed_test_boot"), "{text}");
    assert!(rollback.contains("runs application version 1 again"), "{text}");
    let cellular = section("== 4.");
    assert!(cellular.contains("over cellular") && cellular.contains("system_part 1"), "{text}");
    assert!(cellular.contains("  confirmed ("), "{text}");
}

/// `tern up --demo --corpus DIR`: the story with real Device OS modules.
#[test]
fn tern_up_demo_shows_update_heal_and_rollback() {
    let dir = scratch("fleet-up-demo");
    let mut command = demo_command();
    command.arg("--data").arg(dir.join("data")).arg("--corpus").arg(tern_testkit::corpus());
    let text = demo_output(command);
    assert!(text.contains("firmware: real Device OS modules from"), "{text}");
    check_demo_story(&text);
    // The real modules are in the catalog: the heal sends Argon's 4.1.0 system part.
    assert!(text.contains("system_part 1 v4100"), "{text}");
}

/// `tern up --demo` where a user who installed Tern runs it: in a fresh directory, without
/// `$TERN_CORPUS` and with no corpus anywhere near, on the synthetic Device OS; the data
/// directory and the admin token land where the demo says.
#[test]
fn tern_up_demo_runs_anywhere_on_its_own_firmware() {
    let dir = scratch("fleet-up-demo-anywhere");
    let mut command = demo_command();
    command.current_dir(&dir).env_remove("TERN_CORPUS");
    let text = demo_output(command);
    assert!(text.contains("firmware: synthetic Device OS 9.0.0-sim and 9.1.0-sim made by Tern"), "{text}");
    check_demo_story(&text);
    // The heals send the newer synthetic release's bootloader and system part.
    assert!(text.contains("bootloader 0 v3100") && text.contains("system_part 1 v9100"), "{text}");
    assert!(text.contains("(token in tern-demo/admin-token)"), "{text}");
    let token = std::fs::read_to_string(dir.join("tern-demo/admin-token")).expect("the admin token is in ./tern-demo");
    assert!(text.contains(&format!("TERN_TOKEN={}", token.trim())), "{text}");
    // Secure first: HTTPS and MQTT over TLS with a self-signed certificate made on this
    // first start, and the line to trust it.
    assert!(text.contains("HTTP API on https://") && text.contains("MQTT device gateway on mqtts://"), "{text}");
    assert!(text.contains("made a self-signed certificate"), "{text}");
    assert!(dir.join("tern-demo/tls/ca.pem").is_file(), "the CA is in ./tern-demo/tls");
    assert!(text.contains("TERN_CA_FILE=/") && text.contains("tern-demo/tls/ca.pem"), "{text}");

    // A corpus that is not there is refused before anything starts, in one line.
    let out = demo_command().current_dir(&dir).args(["--corpus", "no-such-corpus"]).output().expect("tern runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-corpus: not a firmware corpus") && stderr.trim().lines().count() == 1, "{stderr}");
}
