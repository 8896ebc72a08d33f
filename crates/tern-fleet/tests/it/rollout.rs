//! Fleet releases and staged rollouts end to end (issue 9's acceptance), over loopback MQTT
//! with 300 simulated devices in two `tern sim fleet` processes and a `tern server` process
//! that is SIGKILLed and restarted in the middle:
//!
//! - product A (200 Photons): a good release rolls out in phases to 100% healthy; a
//!   development device and a pinned device are untouched; devices offline at the start
//!   converge when they come online; a cellular device over its data budget waits with
//!   `budget_exceeded` until the operator approves it; devices in a group whose
//!   maintenance window is closed wait until it opens; the server is killed after the
//!   canary and the rollout continues with exact counts (one attempt per device);
//! - product B (100 Photons, 30% of which crash on any new application): the release
//!   pauses itself during its canary with the reason and the failing devices, and no
//!   device outside the canary receives it.
//!
//! The devices' truth comes from the fleets' status files (their flash), not the server.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::{json, Value};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::cli::{run, tern, tern_cmd};
use crate::support::{free_port, release_key, scratch, statement_signed_by, Server};

const A: u32 = 4001;
const B: u32 = 4002;
const A_COUNT: u32 = 200;
const B_COUNT: u32 = 100;

/// A `tern sim fleet` process, killed when dropped.
struct Fleet(Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fleet(server: &Server, key: &Path, prefix: &str, count: u32, status: &Path, extra: &[&str]) -> Fleet {
    let mqtt = format!("mqtt://127.0.0.1:{}", server.mqtt_port);
    let child = tern_cmd(server)
        .args(["sim", "fleet", "--server", &mqtt, "--profile", "photon", "--prefix", prefix, "--quiet"])
        .args(["--count", &count.to_string(), "--api", &server.http, "--token", &server.token, "--trust"])
        .arg(key)
        .arg("--status-file")
        .arg(status)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tern sim fleet starts");
    Fleet(child)
}

/// The devices of a fleet's status file, by id.
fn fleet_status(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    status["devices"].as_array().cloned().unwrap_or_default()
}

fn app_version_of(status: &[Value], id: &str) -> u64 {
    status.iter().find(|d| d["id"] == id).and_then(|d| d["app_version"].as_u64()).unwrap_or(0)
}

fn upload(server: &Server, image: &Image, platform: u16) -> String {
    let statement = statement_signed_by(image, platform, &release_key());
    let body = tern_image::bundle::write_signed_module(&statement, &image.bytes).expect("signed module");
    let (status, module) = server.post_bytes(&format!("/api/modules?filename={}", image.name), &body);
    assert!(status == 201 || status == 200, "{status} {module}");
    module["sha256"].as_str().expect("sha256").to_owned()
}

fn ok(status: u16, body: &Value, what: &str) {
    assert!((200..300).contains(&status), "{what}: HTTP {status} {body}");
}

fn patch_fleet(server: &Server, id: &str, body: Value) {
    let response = crate::support::agent()
        .patch(&format!("{}/api/devices/{id}/fleet", server.http))
        .header("Authorization", &format!("Bearer {}", server.token))
        .send_json(body);
    let (status, body) = crate::support::finish(response);
    ok(status, &body, &format!("fleet of {id}"));
}

fn put_group(server: &Server, name: &str, body: Value) {
    let response = crate::support::agent()
        .put(&format!("{}/api/groups/{name}", server.http))
        .header("Authorization", &format!("Bearer {}", server.token))
        .send_json(body);
    let (status, body) = crate::support::finish(response);
    ok(status, &body, &format!("group {name}"));
}

/// A window closed now: one minute, twelve hours away.
fn closed_window() -> String {
    let hour = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600 + 12) % 24;
    format!("daily {hour:02}:00-{hour:02}:01")
}

fn waiting_devices(view: &Value, reason: &str) -> Vec<String> {
    view["attention"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"].as_str().is_some_and(|s| s.contains(reason)))
        .filter_map(|m| m["device"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_product_converges_in_phases_and_a_bad_release_stops_in_its_canary() {
    let dir = scratch("fleet-rollout");
    let data = dir.join("server");
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut server = Server::spawn(&tern(), &data, http_port, mqtt_port);
    let key = dir.join("release.pub.pem");
    std::fs::write(&key, release_key().verifying_key().to_public_key_pem(Default::default()).unwrap()).unwrap();

    let profile = &tern_device::profile::PHOTON;
    let platform = profile.platform_id;
    let dep = [Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 }];
    let app =
        |v| Image::synthetic(profile, ModuleFunction::UserPart, profile.app_index(), v, &dep, Behaviour::Healthy, 6000);
    let (a1, a2, b1) =
        (upload(&server, &app(2), platform), upload(&server, &app(3), platform), upload(&server, &app(4), platform));

    for (id, name) in [(A, "product A"), (B, "product B")] {
        let (s, body) = server.post_json("/api/products", json!({ "id": id, "platform": "photon", "name": name }));
        ok(s, &body, name);
    }
    // Bad input leaves nothing changed.
    let (s, body) = server.post_json("/api/products", json!({ "id": A, "platform": "photon" }));
    assert_eq!(s, 409, "{body}");
    let (s, body) = server.post_json(&format!("/api/products/{A}/releases"), json!({ "modules": ["00".repeat(32)] }));
    assert_eq!((s, body["error"]["code"].as_str()), (422, Some("unknown_module")), "{body}");
    let (s, body) = server.post_json(&format!("/api/products/{A}/releases"), json!({ "modules": [a1] }));
    ok(s, &body, "release A1");
    assert_eq!(body["number"], 1);
    let (s, body) =
        server.post_json(&format!("/api/products/{A}/releases"), json!({ "modules": [a2], "note": "good" }));
    ok(s, &body, "release A2");
    assert_eq!(body["number"], 2);
    let (s, body) = server.post_json(&format!("/api/products/{B}/releases"), json!({ "modules": [b1] }));
    ok(s, &body, "release B1");

    let (status_a, status_b) = (dir.join("fleet-a.json"), dir.join("fleet-b.json"));
    let _fleet_a = fleet(&server, &key, "ga", A_COUNT, &status_a, &["--offline-at-start", "4", "--online-after", "30"]);
    let _fleet_b = fleet(&server, &key, "bb", B_COUNT, &status_b, &["--mix", "healthy=70,panic=30"]);

    // Every device registered; the ones online described themselves.
    let start = Instant::now();
    loop {
        let (_, devices) = server.get("/api/devices");
        let n = devices.as_array().map_or(0, Vec::len);
        if n == (A_COUNT + B_COUNT) as usize {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "only {n} devices registered");
        std::thread::sleep(Duration::from_millis(500));
    }
    let a_ids: Vec<String> = (1..=A_COUNT).map(|n| format!("ga-{n}")).collect();
    for id in &a_ids {
        patch_fleet(&server, id, json!({ "product": A }));
    }
    for n in 1..=B_COUNT {
        patch_fleet(&server, &format!("bb-{n}"), json!({ "product": B }));
    }
    // Conflicting pin: a release the product does not have.
    let response = crate::support::agent()
        .patch(&format!("{}/api/devices/ga-2/fleet", server.http))
        .header("Authorization", &format!("Bearer {}", server.token))
        .send_json(json!({ "pinned_release": 9 }));
    let (s, body) = crate::support::finish(response);
    assert_eq!((s, body["error"]["code"].as_str()), (422, Some("unknown_release")), "{body}");
    patch_fleet(&server, "ga-1", json!({ "development": true }));
    patch_fleet(&server, "ga-2", json!({ "pinned_release": 1 }));
    patch_fleet(&server, "ga-7", json!({ "budget_bytes": 1000 }));
    let night = ["ga-3", "ga-5", "ga-8", "ga-13"];
    for id in night {
        patch_fleet(&server, id, json!({ "add_tags": ["night"] }));
    }
    let window = closed_window();
    put_group(&server, "night", json!({ "name": "night", "product": A, "filter": ["tag=night"], "windows": [window] }));

    // A phase plan that does not add up, a threshold out of range, an unknown release.
    for (body, code) in [
        (json!({ "product": A, "release": 2, "phases": ["10", "50%"] }), "bad_rollout"),
        (json!({ "product": A, "release": 2, "failure_threshold_percent": 150 }), "bad_rollout"),
        (json!({ "product": A, "release": 7 }), "not_found"),
    ] {
        let (s, answer) = server.post_json("/api/rollouts", body.clone());
        assert!(s == 422 || s == 404, "{body}: {s} {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    assert_eq!(server.get("/api/rollouts").1.as_array().map(Vec::len), Some(0), "refused rollouts stored nothing");

    let (s, ra) = server.post_json(
        "/api/rollouts",
        json!({ "product": A, "release": 2, "phases": ["10", "50%", "100%"], "failure_threshold_percent": 10,
                "min_finished": 5, "max_concurrent": 40, "soak_seconds": 2 }),
    );
    ok(s, &ra, "rollout A");
    let (s, rb) = server.post_json(
        "/api/rollouts",
        json!({ "product": B, "release": 1, "phases": ["20", "100%"], "failure_threshold_percent": 10,
                "min_finished": 5, "max_concurrent": 40, "soak_seconds": 2 }),
    );
    ok(s, &rb, "rollout B");
    let (ra, rb) = (ra["id"].as_i64().unwrap(), rb["id"].as_i64().unwrap());

    let (mut opened, mut approved, mut killed) = (false, false, false);
    let (mut a_done, mut b_paused) = (None::<Value>, None::<Value>);
    let start = Instant::now();
    while a_done.is_none() || b_paused.is_none() {
        assert!(start.elapsed() < Duration::from_secs(600), "rollouts did not finish: A {a_done:?} B {b_paused:?}");
        std::thread::sleep(Duration::from_millis(500));
        let (s, a) = server.get(&format!("/api/rollouts/{ra}"));
        if s != 200 {
            continue;
        }
        let (_, b) = server.get(&format!("/api/rollouts/{rb}"));
        if a["status"] == "completed" {
            a_done = Some(a.clone());
        }
        if b["status"] == "paused" && b_paused.is_none() {
            b_paused = Some(b.clone());
        }
        assert_ne!(a["status"], "paused", "the good rollout paused: {a}");
        assert_ne!(b["status"], "completed", "the bad rollout completed: {b}");
        // The window holds its devices back until it opens.
        let held = waiting_devices(&a, "window");
        if !opened && !held.is_empty() {
            for id in &held {
                assert!(night.contains(&id.as_str()), "{id} waits for a window it is not in");
                let (_, d) = server.get(&format!("/api/devices/{id}"));
                assert_eq!(d["attempts"].as_array().map(Vec::len), Some(0), "{id} got an update outside its window");
            }
            put_group(
                &server,
                "night",
                json!({ "name": "night", "product": A, "filter": ["tag=night"],
                                                  "windows": ["daily 00:00-24:00"] }),
            );
            opened = true;
        }
        // The device over budget waits with budget_exceeded until approved.
        let over = waiting_devices(&a, "budget_exceeded");
        if !approved && !over.is_empty() {
            assert_eq!(over, ["ga-7"], "{a}");
            let (_, d) = server.get("/api/devices/ga-7");
            assert_eq!(d["attempts"].as_array().map(Vec::len), Some(0), "ga-7 got an update over budget");
            let (s, body) = server.post_json(&format!("/api/rollouts/{ra}/approve"), json!({ "device": "ga-7" }));
            ok(s, &body, "approve ga-7");
            approved = true;
        }
        // SIGKILL once the canary is done; the rollout continues after the restart.
        if !killed && a["summary"]["phase"].as_u64().unwrap_or(0) >= 1 {
            server.kill();
            std::thread::sleep(Duration::from_millis(500));
            server = Server::spawn(&tern(), &data, http_port, mqtt_port);
            killed = true;
        }
    }
    assert!(opened && approved && killed, "window opened {opened}, budget approved {approved}, killed {killed}");

    // Product A: every eligible device healthy, exactly one attempt each, running release 2.
    let a = a_done.unwrap();
    let total = &a["summary"]["total"];
    assert_eq!(total["healthy"], A_COUNT - 2, "{a}");
    assert_eq!(
        (total["failed"].as_u64(), total["expired"].as_u64(), total["excluded"].as_u64()),
        (Some(0), Some(0), Some(2))
    );
    let fleet_a = {
        // The status file is rewritten every second: wait for the devices' last describes.
        let start = Instant::now();
        loop {
            let s = fleet_status(&status_a);
            let done = a_ids[2..].iter().all(|id| app_version_of(&s, id) == 3);
            if done || start.elapsed() > Duration::from_secs(30) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    for id in &a_ids {
        let (_, d) = server.get(&format!("/api/devices/{id}"));
        let attempts = d["attempts"].as_array().map_or(0, Vec::len);
        match id.as_str() {
            "ga-1" | "ga-2" => {
                assert_eq!(attempts, 0, "{id} (development or pinned) was updated");
                assert_eq!(app_version_of(&fleet_a, id), 1, "{id}");
            }
            _ => {
                assert_eq!(attempts, 1, "{id}: {attempts} attempts: {}", d["attempts"]);
                assert_eq!(d["attempts"][0]["state"], "confirmed", "{id}");
                assert_eq!(app_version_of(&fleet_a, id), 3, "{id}: the device's flash");
            }
        }
    }
    let phases = a["summary"]["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 3);
    assert!(phases.iter().all(|p| p["completed"] == true), "{a}");

    // Product B: paused in its canary, the reason and the failing devices named, nobody
    // outside the canary touched.
    let b = b_paused.unwrap();
    let reason = b["engine"]["state"]["paused"]["reason"].to_string();
    assert!(reason.contains("failure_threshold"), "{b}");
    let failing = b["summary"]["failing"].as_array().cloned().unwrap_or_default();
    assert!(!failing.is_empty(), "{b}");
    assert_eq!(b["summary"]["phase"], 0, "{b}");
    let (s, members) = server.get(&format!("/api/rollouts/{rb}/members"));
    ok(s, &members, "members of rollout B");
    let members = members.as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), B_COUNT as usize);
    let canary: BTreeSet<String> = members
        .iter()
        .filter(|m| m["member"]["phase"] == 0)
        .filter_map(|m| m["member"]["device"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(canary.len(), 20);
    for (device, reason) in failing.iter().filter_map(|f| Some((f[0].as_str()?, f[1].as_str()?))) {
        assert!(canary.contains(device), "{device} failed outside the canary");
        assert!(reason.contains("rolled_back"), "{device}: {reason}");
    }
    let fleet_b = fleet_status(&status_b);
    for n in 1..=B_COUNT {
        let id = format!("bb-{n}");
        let (_, d) = server.get(&format!("/api/devices/{id}"));
        let attempts = d["attempts"].as_array().map_or(0, Vec::len);
        if !canary.contains(&id) {
            assert_eq!(attempts, 0, "{id} is outside the canary and got the bad release");
            assert_eq!(app_version_of(&fleet_b, &id), 1, "{id}: the device's flash");
        }
    }

    // The operator's view through the CLI.
    let text = |args: &[&str]| {
        let out = run(&server, args);
        assert!(out.status.success(), "tern {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = text(&["rollout", "status", &ra.to_string()]);
    assert!(status.contains("completed") && status.contains("failures: 0 of"), "{status}");
    let status = text(&["rollout", "status", &rb.to_string()]);
    assert!(status.contains("paused — failure threshold reached") && status.contains("rolled_back"), "{status}");
    let out = run(&server, &["rollout", "status", &rb.to_string(), "--wait", "--timeout", "5"]);
    assert_eq!(out.status.code(), Some(2), "a paused rollout exits 2 with --wait");
    let listed: Value = serde_json::from_str(&text(&["rollout", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(text(&["product", "show", &A.to_string()]).contains(&format!("devices: {A_COUNT}")));
    assert!(text(&["group", "show", "night"]).contains("ga-13"));
    assert!(text(&["release", "list", "--product", &A.to_string()]).contains("user_part"));
    let fleet: Value = serde_json::from_str(&text(&["device", "tag", "ga-9", "spare", "--json"])).unwrap();
    assert_eq!(fleet["tags"], json!(["spare"]));
    let out = run(&server, &["rollout", "start", "--product", &A.to_string(), "--release", "2", "--phases", "10,50%"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not add up"), "{stderr}");
    // A release made from a signed bundle: its modules enter the catalog with statements
    // signed by the bundle's key.
    let bundle_file = dir.join("a5.tern");
    std::fs::write(&bundle_file, crate::support::bundle(platform, &[&app(5)], 1)).unwrap();
    let private = dir.join("release.pem");
    std::fs::write(&private, release_key().to_pkcs8_pem(Default::default()).unwrap().as_bytes()).unwrap();
    let made = text(&[
        "release",
        "create",
        "--product",
        &A.to_string(),
        "--bundle",
        bundle_file.to_str().unwrap(),
        "--key",
        private.to_str().unwrap(),
        "--json",
    ]);
    let made: Value = serde_json::from_str(&made).unwrap();
    assert_eq!((made["number"].as_u64(), made["modules"][0]["version"].as_u64()), (Some(3), Some(5)), "{made}");
    let other = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let stranger = dir.join("stranger.pem");
    std::fs::write(&stranger, other.to_pkcs8_pem(Default::default()).unwrap().as_bytes()).unwrap();
    let out = run(
        &server,
        &[
            "release",
            "create",
            "--product",
            &A.to_string(),
            "--bundle",
            bundle_file.to_str().unwrap(),
            "--key",
            stranger.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not signed by this key"));
    let out = run(&server, &["device", "pin", "ga-9", "9"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no release 9"));
    server.kill();
}
