//! Issue 8's acceptance: real Device OS upgrades on the platforms users own, with the real
//! `tern` binary, loopback MQTT and simulated devices on the platforms' own profiles,
//! from the corpus's real modules (each uploaded with a signed statement):
//!
//! - a cellular Electron from 1.4.4 to 1.5.2 (three system parts), the whole plan's bytes
//!   typed by the operator first;
//! - a Photon from 1.5.2 to 2.3.1 (bootloader and two system parts, which do not fit one
//!   exchange area: staged);
//! - a Boron from 1.5.2 to 2.0.1 (with its SoftDevice);
//! - a Tracker from 2.0.1 to 2.3.0.
//!
//! Each is planned with `tern flash ID --target VERSION`, which must send exactly one
//! coherent Device OS release, and ends confirmed with every module hash shown by
//! `tern device show`. Requests that can never work are refused before anything is sent.
//!
//! Modules travel as patches where that is smaller (issue 10): the Electron's three parts
//! as deltas (and, damaged, fall back to whole modules confirmed anew), an Argon's system
//! part as a delta (damaged: whole, by itself), and a rollout sends each device a delta
//! from what it runs.

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tern_device::profile::Profile;
use tern_fleet::Settings;
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image, SimDevice};

use crate::support::{installed_hashes, release_key, scratch, statement_signed_by, Device, Server};

const TIMEOUT: Duration = Duration::from_secs(240);

/// One upgrade story.
struct Upgrade {
    /// Particle's platform name (also the device profile's).
    platform: &'static str,
    connectivity: &'static str,
    /// Corpus files the device runs at the start.
    from: &'static [&'static str],
    /// Modules the corpus lacks that the device runs (function, version), made up.
    extra: &'static [(ModuleFunction, u32)],
    /// Corpus files in the catalog.
    catalog: &'static [&'static str],
    /// `--target`.
    target: &'static str,
    /// The corpus files the plan must send, in any order.
    expected: &'static [&'static str],
    /// Whether the plan must be split into stages on this device (`None`: whatever its
    /// reported capacity requires).
    staged: Option<bool>,
    /// How the modules must travel: `Some("delta")` when the catalog holds what the device
    /// runs (each module a delta from its installed one); `None`: not checked.
    transfer: Option<&'static str>,
    /// Damage every patch blob after planning: the device cannot apply them and the server
    /// falls back to whole modules (Wi-Fi), or ends the attempt for a new confirmation
    /// (cellular).
    damage_patches: bool,
    /// Cut the device's power once, while it applies the patches (after 8 blocks, 60 flash
    /// operations later): it must apply them again after the reboot and confirm.
    cut_while_applying: bool,
}

fn profile(name: &str) -> &'static Profile {
    tern_device::profile::by_name(name).unwrap_or_else(|| panic!("a device profile named {name}"))
}

fn corpus_image(file: &str, platform: u16) -> Image {
    let rel = tern_testkit::corpus().join("particle/releases");
    tern_sim::corpus::module(&rel.join(file), platform).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn statement(image: &Image, platform: u16) -> Vec<u8> {
    statement_signed_by(image, platform, &release_key())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tern_run(server: &Server, args: &[&str], stdin: &str) -> Output {
    crate::support::tern_against(server, "fleet-device-os-home", args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The application every device runs: it needs system part 1 at the version it has.
fn app(profile: &'static Profile, version: u32, needs: u32) -> Image {
    let dep = Dependency { function: ModuleFunction::SystemPart, index: 1, version: needs };
    Image::synthetic(profile, ModuleFunction::UserPart, 1, version, &[dep], Behaviour::Healthy, 6000)
}

fn run(upgrade: &Upgrade) {
    let profile = profile(upgrade.platform);
    let platform = profile.platform_id;
    let damaged = if upgrade.damage_patches { "-damaged" } else { "" };
    let dir = scratch(&format!("fleet-device-os-{}{damaged}", upgrade.platform));
    let server = Server::start(&dir.join("server"));
    for file in upgrade.catalog {
        let image = corpus_image(file, platform);
        let body = tern_image::bundle::write_signed_module(&statement(&image, platform), &image.bytes).unwrap();
        let (status, module) = server.post_bytes(&format!("/api/modules?filename={file}"), &body);
        assert!(status == 201 || status == 200, "{file}: {status} {module}");
    }
    let (status, body) = server.post_json(
        "/api/devices",
        json!({ "id": "dev", "platform": upgrade.platform, "connectivity": upgrade.connectivity }),
    );
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();

    let mut installed: Vec<Image> = upgrade.from.iter().map(|f| corpus_image(f, platform)).collect();
    for &(function, version) in upgrade.extra {
        installed.push(Image::synthetic(profile, function, 0, version, &[], Behaviour::Healthy, 4096));
    }
    let part1 = installed
        .iter()
        .find(|i| i.entry.function == ModuleFunction::SystemPart && i.entry.index == 1)
        .expect("a system part 1")
        .entry
        .version;
    installed.push(app(profile, 1, part1));
    let factory = app(profile, 0, part1);
    let settings = if upgrade.cut_while_applying {
        Settings { cut_after_blocks: Some(8), cut_delay_ops: 60, ..Settings::default() }
    } else {
        Settings::default()
    };
    let device = Device::start(&server, "dev", &secret, settings, None, move || {
        let mut dev = SimDevice::new(profile, vec![release_key().verifying_key()]);
        let refs: Vec<&Image> = installed.iter().collect();
        dev.provision(&refs, Some(&factory)).expect("the device is provisioned");
        dev
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    // The device counts a Describe when it sends it; the server stores it a moment later.
    let start = std::time::Instant::now();
    let capacity = loop {
        let (_, record) = server.get("/api/devices/dev");
        if let Some(bytes) = record["inventory"]["capacity"]["staging_bytes"].as_u64() {
            break bytes;
        }
        assert!(start.elapsed() < TIMEOUT, "the device never said what it can stage: {record}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    // The plan, before anything is sent: exactly the release, staged to fit.
    let out = tern_run(&server, &["flash", "dev", "--target", upgrade.target, "--dry-run", "--json"], "");
    assert!(out.status.success(), "dry run: {}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).expect("--dry-run --json prints the plan");
    let mut sent: Vec<String> =
        plan["steps"].as_array().unwrap().iter().map(|s| s["sha256"].as_str().unwrap().to_owned()).collect();
    let mut expected: Vec<String> =
        upgrade.expected.iter().map(|f| hex(&corpus_image(f, platform).entry.sha256)).collect();
    sent.sort();
    expected.sort();
    assert_eq!(sent, expected, "{} → {}: one coherent release: {plan}", upgrade.platform, upgrade.target);
    let stages = plan["stages"].as_array().unwrap();
    let staged_bytes: u64 =
        plan["steps"].as_array().unwrap().iter().map(|s| s["size"].as_u64().unwrap().div_ceil(1024) * 1024).sum();
    let must_stage = upgrade.staged.unwrap_or(staged_bytes > capacity);
    assert_eq!(staged_bytes > capacity, must_stage, "the {} stages {capacity} bytes per offer", upgrade.platform);
    assert_eq!(stages.len() > 1, must_stage, "stages on a {} ({capacity} bytes): {plan}", upgrade.platform);
    for stage in stages {
        assert!(stage["bytes"].as_u64().unwrap() <= capacity, "each stage fits: {plan}");
    }
    println!(
        "{} → {}: {} modules in {} stages, {} bytes on the air",
        upgrade.platform,
        upgrade.target,
        sent.len(),
        stages.len(),
        plan["air_bytes"]
    );
    let steps = plan["steps"].as_array().unwrap();
    let patched: Vec<&Value> = steps.iter().filter(|s| s["patch"].is_object()).collect();
    let patch_bytes: u64 = patched.iter().map(|s| s["patch"]["length"].as_u64().unwrap()).sum();
    println!(
        "  {} of {} modules as patches ({patch_bytes} bytes), about {} bytes on the air, {} whole",
        patched.len(),
        steps.len(),
        plan["air_bytes"],
        plan["air_bytes_full"]
    );
    if let Some(kind) = upgrade.transfer {
        assert_eq!(patched.len(), steps.len(), "every module travels as a patch: {plan}");
        for s in &patched {
            let source = s["patch"]["source"].as_str();
            assert_eq!(source.is_some(), kind == "delta", "{kind}: {s}");
        }
        assert!(plan["air_bytes"].as_u64() < plan["air_bytes_full"].as_u64(), "patches cost less: {plan}");
    }
    let printed = text(&out.stderr) + &text(&out.stdout);
    if !patched.is_empty() {
        assert!(printed.contains("patches save"), "the saving is shown: {printed}");
    }
    if upgrade.damage_patches {
        assert!(!patched.is_empty(), "patches to damage: {plan}");
        for s in &patched {
            let address = s["patch"]["address"].as_str().unwrap();
            let path = dir.join("server/blobs/sha256").join(&address[..2]).join(address);
            let mut bytes = std::fs::read(&path).expect("the patch blob");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    if must_stage {
        assert!(printed.contains(&format!("stage 1 of {}", stages.len())), "the stages are shown: {printed}");
    }

    // Cellular: nothing goes without the whole plan's bytes typed.
    let air = plan["air_bytes"].as_u64().unwrap();
    let mut answer = String::new();
    if upgrade.connectivity == "cellular" {
        let out = tern_run(&server, &["flash", "dev", "--target", upgrade.target, "--wait"], "12\n");
        assert_eq!(out.status.code(), Some(3), "not confirmed: {}", text(&out.stderr));
        let (_, record) = server.get("/api/devices/dev");
        assert_eq!(record["attempts"], json!([]), "no attempt without the typed amount");
        answer = format!("{air}\n");
    }
    // Every MQTT byte the gateway carries for the device from here on (both ways).
    let link_before = server.link_bytes();
    let out = tern_run(&server, &["flash", "dev", "--target", upgrade.target, "--wait", "--json"], &answer);
    if upgrade.damage_patches && upgrade.connectivity == "cellular" {
        // More than the confirmed bytes are never sent: the attempt ends with the reason,
        // and the next plan sends whole modules, for a new confirmation.
        assert!(!out.status.success(), "the attempt fails: {}", text(&out.stdout));
        let (_, record) = server.get("/api/devices/dev");
        let last = &record["attempts"][0];
        assert_eq!(last["reason"], "delta_failed", "{record}");
        let out = tern_run(&server, &["flash", "dev", "--target", upgrade.target, "--dry-run", "--json"], "");
        let again: Value = serde_json::from_slice(&out.stdout).expect("a plan");
        assert!(again["steps"].as_array().unwrap().iter().all(|s| s["patch"].is_null()), "whole modules: {again}");
        assert_eq!(again["air_bytes"], again["air_bytes_full"]);
        answer = format!("{}\n", again["air_bytes"]);
    }
    let out = if upgrade.damage_patches && upgrade.connectivity == "cellular" {
        tern_run(&server, &["flash", "dev", "--target", upgrade.target, "--wait", "--json"], &answer)
    } else {
        out
    };
    assert!(out.status.success(), "flash: {}", text(&out.stderr));
    let attempt: Value = serde_json::from_slice(&out.stdout).expect("--json prints the final attempt");
    let on_link = server.link_bytes() - link_before;
    println!(
        "  attempt: {} bytes sent ({} re-sent) for {} module bytes; the gateway carried {on_link} MQTT bytes",
        attempt["bytes_sent"], attempt["bytes_resent"], attempt["bytes_total"]
    );
    if !upgrade.damage_patches {
        // What the plan showed (and a cellular operator confirmed) is what crossed the
        // device's connection.
        let ratio = on_link as f64 / air as f64;
        println!("  estimated {air} bytes, the gateway carried {on_link} (measured/estimated {ratio:.3})");
        assert!((0.97..=1.03).contains(&ratio), "the estimate is within 3%: {air} vs {on_link}");
    }
    if upgrade.transfer.is_some() && !upgrade.damage_patches {
        let sent = attempt["bytes_sent"].as_u64().unwrap();
        assert!(sent <= patch_bytes + attempt["bytes_resent"].as_u64().unwrap(), "only patch bytes sent: {attempt}");
        // The saving shows on the wire, not only in the estimate.
        let module_bytes = attempt["bytes_total"].as_u64().unwrap();
        assert!(on_link * 5 < module_bytes, "{on_link} MQTT bytes for {module_bytes} module bytes");
    }
    if upgrade.damage_patches && upgrade.connectivity != "cellular" {
        let (_, record) = server.get(&format!("/api/attempts/{}", attempt["id"]));
        let dropped =
            record["plan"].as_array().unwrap().iter().filter(|m| m["patch_dropped"] == "delta_failed").count();
        assert_eq!(dropped, patched.len(), "each module says why it went whole: {record}");
    }
    assert_eq!(attempt["state"], "confirmed", "{attempt}");
    assert_eq!(
        attempt["stages"].as_array().map(Vec::len),
        Some(stages.len()),
        "one attempt follows the whole plan: {attempt}"
    );
    let hashes = installed_hashes(&server, "dev");
    let show = tern_run(&server, &["device", "show", "dev"], "");
    let shown = text(&show.stdout);
    for sha in &expected {
        assert!(hashes.contains(sha), "{sha} installed: {hashes:?}");
        assert!(shown.contains(sha.as_str()), "`tern device show` shows {sha}: {shown}");
    }
    device.wait_for("the application running", TIMEOUT, |s| s.app_version == 1 && s.boot_reason != "safe_mode");
    if upgrade.cut_while_applying {
        assert_eq!(device.stats().power_cuts, 1, "the power was cut while the patches were applied");
    }
    device.stop().expect("the device ran without error");
}

/// A cellular Electron from 1.4.4 to 1.5.2, its three system parts in the catalog at both
/// versions (so each travels as a delta); without damage, the device loses power while it
/// applies them.
fn electron(damage_patches: bool) -> Upgrade {
    Upgrade {
        platform: "electron",
        connectivity: "cellular",
        from: &[
            "electron-system-part1@1.4.4.bin",
            "electron-system-part2@1.4.4.bin",
            "electron-system-part3@1.4.4.bin",
        ],
        extra: &[(ModuleFunction::Bootloader, 501)],
        catalog: &[
            "electron-system-part1@1.4.4.bin",
            "electron-system-part2@1.4.4.bin",
            "electron-system-part3@1.4.4.bin",
            "electron-system-part1@1.5.2.bin",
            "electron-system-part2@1.5.2.bin",
            "electron-system-part3@1.5.2.bin",
        ],
        target: "1.5.2",
        expected: &[
            "electron-system-part1@1.5.2.bin",
            "electron-system-part2@1.5.2.bin",
            "electron-system-part3@1.5.2.bin",
        ],
        staged: None,
        transfer: Some("delta"),
        damage_patches,
        // The plain story also loses power while its three deltas are applied.
        cut_while_applying: !damage_patches,
    }
}

#[test]
fn cellular_electron_1_4_4_to_1_5_2_three_system_parts() {
    run(&electron(false));
}

/// The same Electron story with every patch damaged after planning: the device refuses
/// to install what does not match, the attempt ends `delta_failed` without sending more
/// than the operator confirmed, and the next plan sends whole modules, confirmed anew.
#[test]
fn cellular_electron_with_damaged_patches_gets_whole_modules_confirmed_anew() {
    run(&electron(true));
}

/// A Wi-Fi Argon taking system part 1 4.0.1 → 4.0.2 as a delta whose blob is damaged: the
/// server falls back to the whole module by itself, with the reason on the attempt.
#[test]
fn wifi_argon_falls_back_to_the_whole_module_when_a_delta_is_damaged() {
    run(&Upgrade {
        platform: "argon",
        connectivity: "wifi",
        from: &["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", "argon-system-part1@4.0.1.bin"],
        extra: &[],
        catalog: &[
            "argon-softdevice@4.1.0.bin",
            "argon-bootloader@4.0.2.bin",
            "argon-system-part1@4.0.1.bin",
            "argon-system-part1@4.0.2.bin",
        ],
        target: "4.0.2",
        expected: &["argon-system-part1@4.0.2.bin"],
        staged: Some(false),
        transfer: Some("delta"),
        damage_patches: true,
        cut_while_applying: false,
    });
}

#[test]
fn photon_1_5_2_to_2_3_1_in_stages() {
    run(&Upgrade {
        platform: "photon",
        connectivity: "wifi",
        from: &["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"],
        extra: &[],
        catalog: &[
            "photon-bootloader@2.0.0+lto.bin",
            "photon-bootloader@2.3.1+lto.bin",
            "photon-system-part1@2.0.1.bin",
            "photon-system-part2@2.0.1.bin",
            "photon-system-part1@2.3.1.bin",
            "photon-system-part2@2.3.1.bin",
        ],
        target: "2.3.1",
        expected: &[
            "photon-bootloader@2.3.1+lto.bin",
            "photon-system-part1@2.3.1.bin",
            "photon-system-part2@2.3.1.bin",
        ],
        // 517 KB against a 256 KiB exchange area: what the field reports could not do.
        staged: Some(true),
        transfer: None,
        damage_patches: false,
        cut_while_applying: false,
    });
}

#[test]
fn boron_1_5_2_to_2_0_1_with_its_softdevice() {
    run(&Upgrade {
        platform: "boron",
        connectivity: "cellular",
        from: &["boron-softdevice@1.4.1.bin", "boron-bootloader@1.5.2.bin", "boron-system-part1@1.5.2.bin"],
        extra: &[],
        catalog: &["boron-softdevice@1.4.1.bin", "boron-bootloader@2.0.1.bin", "boron-system-part1@2.0.1.bin"],
        target: "2.0.1",
        expected: &["boron-bootloader@2.0.1.bin", "boron-system-part1@2.0.1.bin"],
        staged: None,
        transfer: None,
        damage_patches: false,
        cut_while_applying: false,
    });
}

#[test]
fn tracker_2_0_1_to_2_3_0() {
    run(&Upgrade {
        platform: "tracker",
        connectivity: "cellular",
        from: &["tracker-bootloader@2.0.1.bin", "tracker-system-part1@2.0.1.bin"],
        extra: &[(ModuleFunction::RadioStack, 202)],
        catalog: &["tracker-bootloader@2.3.0.bin", "tracker-system-part1@2.3.0.bin"],
        target: "2.3.0",
        expected: &["tracker-bootloader@2.3.0.bin", "tracker-system-part1@2.3.0.bin"],
        staged: None,
        transfer: None,
        damage_patches: false,
        cut_while_applying: false,
    });
}

/// Refused before anything is sent, each with a one-line reason: a plan that can never
/// fit, a release below the device's security counter, a downgrade, an unknown release, a
/// module for another platform, an unknown platform.
#[test]
fn impossible_requests_are_refused_before_sending() {
    let profile = profile("photon");
    let dir = scratch("fleet-device-os-refusals");
    let server = Server::start(&dir.join("server"));
    let (status, body) = server.post_json("/api/devices", json!({ "id": "x", "platform": 99 }));
    assert_eq!(status, 422, "an unknown platform is refused: {body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("99"), "{body}");
    let (status, body) = server.post_json("/api/devices", json!({ "id": "p", "platform": "photon" }));
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    for file in ["photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.1.bin", "photon-bootloader@2.3.1+lto.bin"] {
        let image = corpus_image(file, 6);
        let body = tern_image::bundle::write_signed_module(&statement(&image, 6), &image.bytes).unwrap();
        let (status, module) = server.post_bytes(&format!("/api/modules?filename={file}"), &body);
        assert_eq!(status, 201, "{module}");
    }
    let argon = corpus_image("argon-system-part1@4.1.0.bin", 12);
    let argon_file = dir.join("argon-part1.bin");
    std::fs::write(&argon_file, &argon.bytes).unwrap();
    std::fs::write(dir.join("argon-part1.bin.stmt"), statement(&argon, 12)).unwrap();

    let from = ["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"];
    let installed: Vec<Image> = from.iter().map(|f| corpus_image(f, 6)).collect();
    let device = Device::start(&server, "p", &secret, Settings::default(), None, move || {
        let mut dev = SimDevice::new(profile, vec![release_key().verifying_key()]);
        let mut set = installed.clone();
        set.push(app(profile, 1, 1512));
        let refs: Vec<&Image> = set.iter().collect();
        dev.provision(&refs, Some(&app(profile, 0, 1512))).unwrap();
        dev
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(&server, "p");
    let refused = |args: &[&str], reason: &str| {
        let out = tern_run(&server, args, "");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    };
    refused(&["flash", "p", "--target", "1.4.4"], "not downgraded");
    refused(&["flash", "p", "--target", "9.9.9"], "unknown Device OS release");
    refused(&["flash", "p", "--target", "2.0.1"], "not complete in the catalog");
    refused(&["flash", "p", argon_file.to_str().unwrap()], "platform 12");
    let (_, record) = server.get("/api/devices/p");
    assert_eq!(record["attempts"], json!([]), "nothing was sent");
    device.stop().expect("the device ran without error");
}

/// Rollouts send each device its own patch: two Wi-Fi Argons, one on system part 1 4.0.0
/// and one on 4.0.1, in a product whose release carries 4.0.2; the rollout's plan for each
/// sends a delta from the system part that device runs, and both converge.
#[test]
fn a_rollout_sends_each_device_a_delta_from_what_it_runs() {
    let profile = profile("argon");
    let platform = profile.platform_id;
    let dir = scratch("fleet-device-os-rollout");
    let server = Server::start(&dir.join("server"));
    let mut hashes = std::collections::HashMap::new();
    for file in [
        "argon-softdevice@4.1.0.bin",
        "argon-bootloader@4.0.2.bin",
        "argon-system-part1@4.0.0.bin",
        "argon-system-part1@4.0.1.bin",
        "argon-system-part1@4.0.2.bin",
    ] {
        let image = corpus_image(file, platform);
        let body = tern_image::bundle::write_signed_module(&statement(&image, platform), &image.bytes).unwrap();
        let (status, module) = server.post_bytes(&format!("/api/modules?filename={file}"), &body);
        assert!(status == 201 || status == 200, "{file}: {status} {module}");
        hashes.insert(file, hex(&image.entry.sha256));
    }
    let (status, body) = server.post_json("/api/products", json!({ "id": 7, "platform": "argon", "name": "argons" }));
    assert!(status == 201 || status == 200, "{body}");
    let mut devices = Vec::new();
    for (id, part1) in [("a1", "argon-system-part1@4.0.0.bin"), ("a2", "argon-system-part1@4.0.1.bin")] {
        let (status, body) =
            server.post_json("/api/devices", json!({ "id": id, "platform": "argon", "connectivity": "wifi" }));
        assert_eq!(status, 201, "{body}");
        let secret = body["secret"].as_str().unwrap().to_owned();
        let files = ["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", part1];
        let installed: Vec<Image> = files.iter().map(|f| corpus_image(f, platform)).collect();
        let version = installed[2].entry.version;
        let device = Device::start(&server, id, &secret, Settings::default(), None, move || {
            let mut dev = SimDevice::new(profile, vec![release_key().verifying_key()]);
            let mut all: Vec<&Image> = installed.iter().collect();
            let app = app(profile, 1, version);
            all.push(&app);
            dev.provision(&all, Some(&app)).expect("the device is provisioned");
            dev
        });
        device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
        let response = crate::support::agent()
            .patch(&format!("{}/api/devices/{id}/fleet", server.http))
            .header("Authorization", &format!("Bearer {}", server.token))
            .send_json(json!({ "product": 7 }));
        let (status, body) = crate::support::finish(response);
        assert_eq!(status, 200, "{body}");
        devices.push((id, part1, device));
    }
    // Both devices said what they can stage (and that they apply patches).
    for (id, _, _) in &devices {
        let start = std::time::Instant::now();
        while server.get(&format!("/api/devices/{id}")).1["inventory"]["capacity"]["patches"] != json!(true) {
            assert!(start.elapsed() < TIMEOUT, "{id} never described its capacity");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let modules: Vec<&String> =
        ["argon-softdevice@4.1.0.bin", "argon-bootloader@4.0.2.bin", "argon-system-part1@4.0.2.bin"]
            .iter()
            .map(|f| &hashes[f])
            .collect();
    let (status, body) = server.post_json("/api/products/7/releases", json!({ "modules": modules }));
    assert!(status == 201 || status == 200, "{body}");
    let (status, rollout) = server.post_json(
        "/api/rollouts",
        json!({ "product": 7, "release": body["number"], "phases": ["100%"], "soak_seconds": 1 }),
    );
    assert!(status == 201 || status == 200, "{rollout}");
    let start = std::time::Instant::now();
    loop {
        let (_, view) = server.get(&format!("/api/rollouts/{}", rollout["id"]));
        if view["status"] == "completed" {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "the rollout did not complete: {view}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let target = &hashes["argon-system-part1@4.0.2.bin"];
    for (id, part1, device) in devices {
        let (_, record) = server.get(&format!("/api/devices/{id}"));
        let attempt = &record["attempts"][0];
        assert_eq!(attempt["state"], "confirmed", "{record}");
        let plan = attempt["plan"].as_array().expect("the attempt's plan");
        assert_eq!(plan.len(), 1, "only the system part: {attempt}");
        assert_eq!(&plan[0]["sha256"], &json!(target));
        assert_eq!(plan[0]["patch"]["source"], json!(hashes[part1]), "{id}: a delta from what it runs: {attempt}");
        let sent = attempt["bytes_sent"].as_u64().unwrap();
        assert!(sent < 100_000, "{id}: {sent} bytes sent for a 475 KB system part");
        println!("{id}: {part1} → 4.0.2 as a {} byte delta", plan[0]["patch"]["length"]);
        assert!(installed_hashes(&server, id).contains(target), "{id} runs 4.0.2");
        device.stop().expect("the device ran without error");
    }
}
