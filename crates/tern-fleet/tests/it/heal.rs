//! Acceptance 2 of issue 4, and section 4 (dependency healing): the *server* computes the
//! install plan from its catalog (real Device OS modules from the corpus, each uploaded
//! with a signed statement) and what the device described, shows it before anything is
//! sent, and the device verifies the statements with its own trusted key.
//!
//! - An operator flashes an application that needs a newer system part to a cellular
//!   Argon with the real `tern flash`: the plan adds the system part before the app; a
//!   wrong typed amount sends nothing; the right one sends it; the attempt is confirmed.
//! - A Wi-Fi Argon that boots safe mode (unmet dependency) is healed automatically.
//! - A cellular Argon in safe mode is not: the server proposes the heal plan and waits;
//!   `tern flash ID --heal --yes --wait` sends it.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tern_fleet::{provision, Settings};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::support::{installed_hashes, release_key, scratch, statement_signed_by, Device, Server};

const TIMEOUT: Duration = Duration::from_secs(120);
const PLATFORM: u16 = 12;
const CATALOG: &[&str] = &[
    "argon-softdevice@4.1.0.bin",
    "argon-bootloader@4.0.2.bin",
    "argon-bootloader@4.1.0.bin",
    "argon-system-part1@4.0.1.bin",
    "argon-system-part1@4.0.2.bin",
    "argon-system-part1@4.1.0.bin",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A module statement for `image`, signed with the key the devices trust.
fn statement(image: &Image) -> Vec<u8> {
    statement_signed_by(image, PLATFORM, &release_key())
}

/// Uploads the corpus catalog with statements; returns the images by hash.
fn upload_catalog(server: &Server) -> HashMap<String, Image> {
    let rel = tern_testkit::corpus().join("particle/releases");
    let mut images = HashMap::new();
    for f in CATALOG {
        let image = tern_sim::corpus::module(&rel.join(f), PLATFORM).unwrap();
        let body = tern_image::bundle::write_signed_module(&statement(&image), &image.bytes).unwrap();
        let (status, module) = server.post_bytes(&format!("/api/modules?filename={f}"), &body);
        assert!(status == 201 || status == 200, "{f}: {status} {module}");
        assert!(module["statement"].is_string(), "{f}: uploaded signed: {module}");
        images.insert(hex(&image.entry.sha256), image);
    }
    images
}

fn version_of(file: &str) -> u32 {
    let rel = tern_testkit::corpus().join("particle/releases");
    tern_sim::corpus::module(&rel.join(file), PLATFORM).unwrap().entry.version
}

fn tern_flash(server: &Server, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["flash"];
    all.extend_from_slice(args);
    tern_run(server, &all, stdin)
}

fn tern_run(server: &Server, args: &[&str], stdin: &str) -> Output {
    crate::support::tern_against(server, "fleet-heal-home", args, stdin)
}

fn device_record(server: &Server, id: &str) -> Value {
    let (status, d) = server.get(&format!("/api/devices/{id}"));
    assert_eq!(status, 200, "{d}");
    d
}

fn wait_record(server: &Server, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let d = device_record(server, id);
        if check(&d) {
            return d;
        }
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn has_event(d: &Value, kind: &str) -> bool {
    d["history"].as_array().into_iter().flatten().any(|e| e["kind"] == kind)
}

/// Every step's dependencies are met by the device or by an earlier step, and every
/// planned module is a catalog (or requested) module.
fn assert_dependency_order(steps: &[Value], images: &HashMap<String, Image>, installed: &[Value]) {
    let order: Vec<String> = steps.iter().map(|s| format!("{} v{}", s["function_name"], s["version"])).collect();
    for (i, step) in steps.iter().enumerate() {
        let image = &images[step["sha256"].as_str().unwrap()];
        for d in image.entry.dependencies() {
            if d.function == ModuleFunction::None {
                continue;
            }
            let meets = |m: &Value| {
                d.is_satisfied_by(
                    ModuleFunction::from_code(m["function"].as_u64().unwrap() as u8),
                    m["index"].as_u64().unwrap() as u8,
                    m["version"].as_u64().unwrap() as u32,
                )
            };
            let same_slot = |m: &Value| {
                m["function"].as_u64() == Some(u64::from(d.function.code()))
                    && m["index"].as_u64() == Some(u64::from(d.index))
            };
            let earlier = steps[..i].iter().any(meets);
            let present = installed.iter().any(meets) && !steps.iter().any(same_slot);
            assert!(earlier || present, "step {i} needs {d:?} first: {order:?}");
        }
        assert!(step["reason"].is_string(), "each step says why it is there: {step}");
    }
}

/// The device under test: an Argon on system part 1 4.0.1 whose application needs
/// `app_needs`; wifi or cellular.
fn start_argon(server: &Server, id: &str, connectivity: &str, app_needs: Dependency) -> Device {
    let (status, body) =
        server.post_json("/api/devices", json!({ "id": id, "platform": "argon", "connectivity": connectivity }));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["auto_heal"], connectivity != "cellular", "the default policy: {body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let profile = &tern_device::NRF52840;
    let app1 = Image::synthetic(profile, ModuleFunction::UserPart, 1, 1, &[app_needs], Behaviour::Healthy, 5000);
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, 1, 0, &[app_needs], Behaviour::Healthy, 2000);
    let corpus = tern_testkit::corpus();
    Device::start(server, id, &secret, Settings::default(), None, move || {
        provision::corpus_argon(vec![release_key().verifying_key()], &corpus, "4.0.1", app1, factory).unwrap().0
    })
}

fn part1_needs(file: &str) -> Dependency {
    Dependency { function: ModuleFunction::SystemPart, index: 1, version: version_of(file) }
}

#[test]
fn tern_flash_plans_missing_system_parts_confirms_cellular_cost_and_is_confirmed() {
    let dir = scratch("fleet-heal-flash");
    let server = Server::start(&dir.join("server"));
    let mut images = upload_catalog(&server);
    let id = "argon-cell";
    let device = start_argon(&server, id, "cellular", part1_needs("argon-system-part1@4.0.1.bin"));
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(&server, id);
    let installed = device_record(&server, id)["inventory"]["modules"].as_array().unwrap().clone();

    // Application v2 needs the newest system part 1; the operator has only the app file
    // (and its statement, made as `tern module sign` would).
    let need = part1_needs("argon-system-part1@4.1.0.bin");
    let app2 =
        Image::synthetic(&tern_device::NRF52840, ModuleFunction::UserPart, 1, 2, &[need], Behaviour::Healthy, 7000);
    let file = dir.join("app2.bin");
    std::fs::write(&file, &app2.bytes).unwrap();
    std::fs::write(dir.join("app2.bin.stmt"), statement(&app2)).unwrap();
    images.insert(hex(&app2.entry.sha256), app2.clone());
    let file = file.to_str().unwrap();

    // 1. The plan, shown before anything is sent.
    let out = tern_flash(&server, &[id, file, "--dry-run", "--json"], "");
    assert!(out.status.success(), "dry run: {}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("--dry-run --json prints the plan");
    let steps = plan["steps"].as_array().unwrap().clone();
    println!("plan: {}", serde_json::to_string_pretty(&steps).unwrap());
    assert_eq!(steps.last().unwrap()["sha256"], hex(&app2.entry.sha256), "the app goes last: {plan}");
    let part1 = steps.iter().find(|s| s["function_name"] == "system_part").expect("a system part is added");
    assert_eq!(part1["version"], need.version, "the lowest version that meets the need: {plan}");
    assert!(part1["reason"].as_str().unwrap().starts_with("needed by"), "{plan}");
    assert_eq!(steps.last().unwrap()["reason"], "requested");
    assert_dependency_order(&steps, &images, &installed);
    assert_eq!(plan["confirm_required"], true, "a cellular device confirms the cost: {plan}");
    let air = plan["air_bytes"].as_u64().unwrap();
    // Patches (deltas from the modules the device runs) make it cheaper than the modules;
    // what whole modules would cost is shown too.
    let full = plan["air_bytes_full"].as_u64().unwrap();
    assert!(full > plan["bytes_total"].as_u64().unwrap() && air <= full, "{plan}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("about {air} bytes")), "the plan is printed with its bytes on the air: {stderr}");

    // 2. A wrong amount typed: nothing is sent.
    let out = tern_flash(&server, &[id, file, "--wait", "--json"], "1000\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "not confirmed: {stderr}");
    assert!(stderr.contains(&format!("Type {air}")) && stderr.contains("nothing was sent"), "{stderr}");
    assert_eq!(device_record(&server, id)["attempts"], json!([]), "no attempt was created");

    // 3. The amount typed: sent, installed in order, confirmed.
    let before = server.link_bytes();
    let out = tern_flash(&server, &[id, file, "--wait", "--json"], &format!("{air}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flash: {stderr}");
    let attempt: Value = serde_json::from_slice(&out.stdout).expect("--json prints the final attempt");
    assert_eq!(attempt["state"], "confirmed", "{attempt}");
    assert_eq!(attempt["device"], id);
    assert!(attempt["id"].is_i64() && attempt["reason"].is_null() && attempt["plan_id"].is_i64(), "{attempt}");
    let sent: Vec<&Value> = attempt["plan"].as_array().unwrap().iter().map(|s| &s["sha256"]).collect();
    let planned: Vec<&Value> = steps.iter().map(|s| &s["sha256"]).collect();
    assert_eq!(sent, planned, "the attempt carries the plan that was shown");
    // The estimate shown to the operator against the MQTT bytes the gateway carried on the
    // device's connection for the whole attempt (offer, requests, blocks, acknowledgements,
    // progress, describes).
    let measured = server.link_bytes() - before;
    let ratio = measured as f64 / air as f64;
    println!("bytes on the air: estimated {air}, measured {measured} (measured/estimated {ratio:.3})");
    assert!((0.97..=1.03).contains(&ratio), "the estimate is within 3% of the bytes carried: {air} vs {measured}");
    let hashes = installed_hashes(&server, id);
    for step in &steps {
        assert!(hashes.contains(&step["sha256"].as_str().unwrap().to_owned()), "{step} installed: {hashes:?}");
    }
    device.wait_for("application v2 running", TIMEOUT, |s| s.app_version == 2 && s.boot_reason != "safe_mode");
    device.stop().expect("the device ran without error");
}

#[test]
fn wifi_device_in_safe_mode_is_healed_automatically() {
    let dir = scratch("fleet-heal-auto");
    let server = Server::start(&dir.join("server"));
    let images = upload_catalog(&server);
    let id = "argon-wifi";
    // Its application already needs the newest system part 1: it boots safe mode.
    let device = start_argon(&server, id, "wifi", part1_needs("argon-system-part1@4.1.0.bin"));
    let d = wait_record(&server, id, "an automatic heal attempt", |d| {
        d["attempts"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(has_event(&d, "plan.created") && has_event(&d, "attempt.created"), "{d}");
    let id_attempt = d["attempts"][0]["id"].as_i64().unwrap();
    let attempt = server.wait_final(id_attempt, TIMEOUT);
    assert_eq!(attempt["state"], "confirmed", "{attempt}");
    let (_, plan) = server.get(&format!("/api/plans/{}", attempt["plan_id"]));
    assert_eq!((&plan["origin"], &plan["status"]), (&json!("heal"), &json!("started")), "{plan}");
    let steps = plan["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["function_name"] == "system_part" && s["version"] == version_of("argon-system-part1@4.1.0.bin")),
        "{plan}"
    );
    let described = d["inventory"]["modules"].as_array().unwrap().clone();
    assert_dependency_order(steps, &images, &described);
    device.wait_for("the application running", TIMEOUT, |s| s.app_version == 1 && s.boot_reason != "safe_mode");
    let d = wait_record(&server, id, "the healed describe", |d| d["inventory"]["boot_reason"] != "safe_mode");
    assert_eq!(d["status"], "online", "{d}");
    device.stop().expect("the device ran without error");
}

#[test]
fn cellular_device_in_safe_mode_waits_for_the_operator() {
    let dir = scratch("fleet-heal-ask");
    let server = Server::start(&dir.join("server"));
    upload_catalog(&server);
    let id = "argon-ask";
    let device = start_argon(&server, id, "cellular", part1_needs("argon-system-part1@4.1.0.bin"));
    let d = wait_record(&server, id, "the heal proposal", |d| has_event(d, "heal.proposed"));
    assert_eq!(d["status"], "safe_mode", "{d}");
    assert_eq!(d["attempts"], json!([]), "nothing is sent to a cellular device without the operator: {d}");
    let (_, plans) = server.get(&format!("/api/devices/{id}/plans"));
    assert_eq!(plans[0]["status"], "proposed", "{plans}");
    let shown = tern_run(&server, &["device", "show", id], "");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("status    safe_mode") && shown.contains("policy    cellular, auto-heal off"), "{shown}");
    assert!(shown.contains("proposed  plan") && shown.contains(&format!("tern flash {id} --heal")), "{shown}");

    let out = tern_flash(&server, &[id, "--heal", "--yes", "--wait", "--json"], "");
    assert!(out.status.success(), "heal: {}", String::from_utf8_lossy(&out.stderr));
    let attempt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(attempt["state"], "confirmed", "{attempt}");
    device.wait_for("the application running", TIMEOUT, |s| s.app_version == 1 && s.boot_reason != "safe_mode");
    device.stop().expect("the device ran without error");
}

/// Acceptance 8 through the catalog: an unsigned module is never planned, and a module
/// whose statement a key the device does not trust signed is refused by the device; the
/// attempt says so and the device keeps what it ran.
#[test]
fn unsigned_and_wrongly_signed_modules_are_refused() {
    let dir = scratch("fleet-heal-signatures");
    let server = Server::start(&dir.join("server"));
    upload_catalog(&server);
    let id = "argon-sig";
    let device = start_argon(&server, id, "wifi", part1_needs("argon-system-part1@4.0.1.bin"));
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(&server, id);
    let profile = &tern_device::NRF52840;
    let app = |v| {
        let need = part1_needs("argon-system-part1@4.0.1.bin");
        Image::synthetic(profile, ModuleFunction::UserPart, 1, v, &[need], Behaviour::Healthy, 3000)
    };

    // No statement and no key: the server cannot describe it, nothing is sent.
    let unsigned = dir.join("unsigned.bin");
    std::fs::write(&unsigned, &app(5).bytes).unwrap();
    let out = tern_flash(&server, &[id, unsigned.to_str().unwrap(), "--yes"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("unsigned.bin") && stderr.contains("signed statement"), "{stderr}");

    // A statement signed by a stranger's key: planned and offered, refused by the device.
    let image = app(6);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let statement = statement_signed_by(&image, PLATFORM, &stranger);
    let forged = dir.join("forged.bin");
    std::fs::write(&forged, &image.bytes).unwrap();
    std::fs::write(dir.join("forged.bin.stmt"), statement).unwrap();
    let out = tern_flash(&server, &[id, forged.to_str().unwrap(), "--yes", "--wait", "--json", "--timeout", "120"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let attempt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&attempt["state"], &attempt["reason"]), (&json!("failed"), &json!("rejected_signature")), "{attempt}");
    assert!(stderr.contains("failed (rejected_signature)"), "{stderr}");
    assert!(!installed_hashes(&server, id).contains(&hex(&image.entry.sha256)));
    assert_eq!(device.stats().app_version, 1, "the device runs what it ran");
    device.stop().expect("the device ran without error");
}
