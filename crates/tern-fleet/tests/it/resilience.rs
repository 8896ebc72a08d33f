//! Acceptance 4 and 6 of issue 4: power cuts during the download and during the install
//! (the transfer resumes from what the flash holds, the bytes re-sent are counted and
//! small, the attempt still ends confirmed), and a link that loses, duplicates and
//! reorders protocol messages both ways (every attempt ends in a truthful state).

use std::time::Duration;

use tern_device::profile::Profile;
use tern_fleet::{provision, Faults, Settings};
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::support::{bundle, installed_hashes, release_key, scratch, Device, Server};

const TIMEOUT: Duration = Duration::from_secs(120);

fn app(profile: &'static Profile, version: u32, behaviour: Behaviour, size: usize) -> Image {
    let dep = Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 };
    Image::synthetic(profile, ModuleFunction::UserPart, 1, version, &[dep], behaviour, size)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn synthetic_device(
    server: &Server,
    id: &str,
    profile: &'static Profile,
    settings: Settings,
    faults: Option<(Faults, u64)>,
) -> Device {
    let platform = if profile.name == tern_device::STM32F2.name { "photon" } else { "argon" };
    let secret = server.add_device(id, platform);
    let device = Device::start(server, id, &secret, settings, faults, move || {
        provision::synthetic(profile, vec![release_key().verifying_key()], Behaviour::Healthy)
            .expect("synthetic modules fit")
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(server, id);
    device
}

/// (case, cut after this many blocks, cut at this flash operation of the install).
const POWER_CUTS: &[(&str, Option<u64>, Option<u64>)] =
    &[("download", Some(40), None), ("install", None, Some(30)), ("download-and-install", Some(10), Some(120))];

#[test]
fn power_cuts_during_download_and_install_resume_and_confirm() {
    for profile in [&tern_device::STM32F2, &tern_device::NRF52840] {
        for &(case, blocks, op) in POWER_CUTS {
            let name = format!("{}-{case}", profile.name);
            let dir = scratch(&format!("fleet-cut-{name}"));
            let server = Server::start(&dir.join("server"));
            let settings = Settings { cut_after_blocks: blocks, cut_install_at_op: op, ..Settings::default() };
            let device = synthetic_device(&server, &name, profile, settings, None);
            let v2 = app(profile, 2, Behaviour::Healthy, 100 * 1024 + 7);
            let attempt = server.flash(&name, &bundle(profile.platform_id, &[&v2], 1));
            let a = server.wait_final(attempt, TIMEOUT);
            assert_eq!(a["state"], "confirmed", "{name}: {a}");
            let stats = device.stats();
            assert_eq!(stats.power_cuts, 1 + u64::from(blocks.is_some() && op.is_some()), "{name}: {stats:?}");
            assert!(installed_hashes(&server, &name).contains(&hex(&v2.entry.sha256)), "{name}");
            // What the device had stored before the cut is not asked for again: at most
            // the blocks in flight and one exchange sector (the agent's documented bound).
            let resent = a["bytes_resent"].as_u64().expect("a count");
            let sector = if profile.name == tern_device::STM32F2.name { 128 * 1024 } else { 4 * 1024 };
            assert!(resent <= sector + 8 * 1024, "{name}: {resent} bytes re-sent");
            assert!(a["bytes_sent"].as_u64().unwrap() >= v2.bytes.len() as u64, "{name}: {a}");
            println!("{name}: {} bytes sent, {resent} re-sent, {} power cuts", a["bytes_sent"], stats.power_cuts);
            device.stop().expect("the device ran without error");
        }
    }
}

#[test]
fn lossy_duplicating_reordering_link_ends_truthfully() {
    let faults = Faults { drop: 100, duplicate: 100, reorder: 100 };
    // (case, application behaviour, expected final state, expected reason)
    let cases: &[(&str, Behaviour, &str, Option<&str>)] = &[
        ("healthy", Behaviour::Healthy, "confirmed", None),
        ("panics", Behaviour::Panic, "rolled_back", Some("app_failed_test_boot")),
    ];
    for (seed, &(case, behaviour, state, reason)) in (1u64..).zip(cases) {
        let profile = &tern_device::NRF52840;
        let name = format!("lossy-{case}");
        let dir = scratch(&format!("fleet-{name}"));
        let server = Server::start(&dir.join("server"));
        let settings = Settings {
            request_timeout: Duration::from_millis(300),
            describe_every: Duration::from_millis(500),
            ..Settings::default()
        };
        let device = synthetic_device(&server, &name, profile, settings, Some((faults, seed)));
        let v2 = app(profile, 2, behaviour, 40 * 1024 + 3);
        let attempt = server.flash(&name, &bundle(profile.platform_id, &[&v2], 1));
        let a = server.wait_final(attempt, TIMEOUT);
        assert_eq!(a["state"], state, "{name}: {a}");
        if let Some(reason) = reason {
            assert_eq!(a["reason"], reason, "{name}: {a}");
        }
        // Truthful: the server's record matches what the device runs.
        let want = if state == "confirmed" { 2 } else { 1 };
        device.wait_for("the device settles", TIMEOUT, |s| s.app_version == want);
        let listed = installed_hashes(&server, &name).contains(&hex(&v2.entry.sha256));
        assert_eq!(listed, state == "confirmed", "{name}");
        let stats = device.stats();
        println!("{name}: {stats:?}; attempt {a}");
        device.stop().expect("the device ran without error");
    }
}

/// Acceptance 5: the server (a `tern server` process) is killed with SIGKILL while a
/// Photon pulls real Device OS system part 2 (2.3.0 → 2.3.1) and restarted on the same
/// ports: the attempt continues from what the device holds and ends confirmed; what the
/// server recorded before the kill is still there.
#[test]
fn server_killed_mid_transfer_continues_and_confirms() {
    let dir = scratch("fleet-server-kill");
    let data = dir.join("server");
    let tern = crate::cli::tern();
    let (http, mqtt) = (crate::support::free_port(), crate::support::free_port());
    let server = Server::spawn(&tern, &data, http, mqtt);
    let id = "photon-kill";
    let secret = server.add_device(id, "photon");
    let corpus = tern_testkit::corpus();
    let rel = corpus.join("particle/releases");
    let sys = Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2300 };
    let app1 =
        Image::synthetic(&tern_device::STM32F2, ModuleFunction::UserPart, 1, 1, &[sys], Behaviour::Healthy, 3000);
    let factory =
        Image::synthetic(&tern_device::STM32F2, ModuleFunction::UserPart, 1, 0, &[sys], Behaviour::Healthy, 2000);
    // A few milliseconds per block (a slow link), so that the kill lands mid-transfer
    // however busy the machine is.
    let settings = Settings { block_pace: Duration::from_millis(4), ..Settings::default() };
    let device = Device::start(&server, id, &secret, settings, None, move || {
        provision::corpus_photon(vec![release_key().verifying_key()], &corpus, "2.3.0", app1, factory)
            .expect("the corpus modules install")
            .0
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(&server, id);
    let part2 = tern_sim::corpus::module(&rel.join("photon-system-part2@2.3.1.bin"), 6).expect("corpus module");
    let blocks = part2.bytes.len().div_ceil(1024) as u64;
    let attempt = server.flash(id, &bundle(6, &[&part2], 1));
    device.wait_for("part of the transfer", TIMEOUT, |s| s.blocks_stored >= 8);
    let (_, before) = server.get(&format!("/api/attempts/{attempt}"));
    let (_, device_before) = server.get(&format!("/api/devices/{id}"));
    server.kill();
    let stored_at_kill = device.stats().blocks_stored;
    assert!(
        stored_at_kill < blocks,
        "the transfer was still running when the server died: {stored_at_kill} of {blocks}"
    );

    let server = Server::spawn(&tern, &data, http, mqtt);
    let (_, after) = server.get(&format!("/api/attempts/{attempt}"));
    for key in ["id", "device", "plan", "signed", "bytes_total", "air_bytes"] {
        assert_eq!(before[key], after[key], "{key} survives the kill");
    }
    for key in ["bytes_sent", "bytes_done", "requests"] {
        assert!(after[key].as_u64() >= before[key].as_u64(), "{key}: {before} then {after}");
    }
    // The device's recorded history (its recent events) is all still there.
    let (_, device_after) = server.get(&format!("/api/devices/{id}"));
    let ids = |d: &serde_json::Value| -> Vec<i64> {
        d["history"].as_array().into_iter().flatten().filter_map(|e| e["id"].as_i64()).collect()
    };
    let (old, new) = (ids(&device_before), ids(&device_after));
    assert!(!old.is_empty(), "{device_before}");
    if new.len() < 50 {
        assert!(old.iter().all(|i| new.contains(i)), "events lost: {old:?} then {new:?}");
    }
    assert!(device_after["inventory"]["described_at"].as_i64() >= device_before["inventory"]["described_at"].as_i64());
    let a = server.wait_final(attempt, TIMEOUT);
    assert_eq!(a["state"], "confirmed", "{a}");
    assert!(installed_hashes(&server, id).contains(&hex(&part2.entry.sha256)));
    let resent = a["bytes_resent"].as_u64().unwrap();
    println!(
        "server kill: {} bytes sent, {resent} re-sent, {stored_at_kill} blocks stored at the kill",
        a["bytes_sent"]
    );
    // In flight: up to four windows of 16 KiB (the server's default window and
    // `max_request` for a device that announces its link).
    assert!(resent <= 64 * 1024, "only blocks in flight at the kill are sent again: {resent}");
    let sent = a["bytes_sent"].as_u64().unwrap();
    assert!(sent >= part2.bytes.len() as u64, "every byte counted as sent at least once despite the kill: {a}");
    device.stop().expect("the device ran without error");
}

/// A staged Device OS upgrade survives a server SIGKILL between its stages: a Photon on
/// 1.5.2 takes the signed 2.3.1 release bundle (bootloader and both system parts, too big
/// for one offer), stage 1 is confirmed, the server is killed during stage 2 and
/// restarted; the same attempt resumes at stage 2 and ends confirmed with every module.
#[test]
fn server_killed_between_stages_resumes_the_staged_attempt() {
    let dir = scratch("fleet-server-kill-stages");
    let data = dir.join("server");
    let tern = crate::cli::tern();
    let (http, mqtt) = (crate::support::free_port(), crate::support::free_port());
    let server = Server::spawn(&tern, &data, http, mqtt);
    let id = "photon-stages";
    let secret = server.add_device(id, "photon");
    let rel = tern_testkit::corpus().join("particle/releases");
    let load = |f: &str| tern_sim::corpus::module(&rel.join(f), 6).expect("corpus module");
    let from: Vec<Image> =
        ["photon-bootloader@1.5.2+lto.bin", "photon-system-part1@1.5.2.bin", "photon-system-part2@1.5.2.bin"]
            .iter()
            .map(|f| load(f))
            .collect();
    let to: Vec<Image> =
        ["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.1.bin"]
            .iter()
            .map(|f| load(f))
            .collect();
    let profile: &'static Profile = &tern_device::STM32F2;
    let sys = Dependency { function: ModuleFunction::SystemPart, index: 2, version: 1512 };
    let app = Image::synthetic(profile, ModuleFunction::UserPart, 1, 1, &[sys], Behaviour::Healthy, 3000);
    let factory = Image::synthetic(profile, ModuleFunction::UserPart, 1, 0, &[sys], Behaviour::Healthy, 2000);
    let settings = Settings { block_pace: Duration::from_millis(2), ..Settings::default() };
    let device = Device::start(&server, id, &secret, settings, None, move || {
        let mut dev = tern_sim::device::SimDevice::new(profile, vec![release_key().verifying_key()]);
        let mut set: Vec<&Image> = from.iter().collect();
        set.push(&app);
        dev.provision(&set, Some(&factory)).expect("the device is provisioned");
        dev
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(&server, id);
    let refs: Vec<&Image> = to.iter().collect();
    let attempt = server.flash(id, &bundle(6, &refs, 1));
    let (_, started) = server.get(&format!("/api/attempts/{attempt}"));
    assert_eq!(started["stages"].as_array().map(Vec::len), Some(2), "the release goes in two stages: {started}");
    // Into stage 2's transfer.
    let start = std::time::Instant::now();
    loop {
        let (_, a) = server.get(&format!("/api/attempts/{attempt}"));
        if a["stage"] == 1 && a["state"] == "downloading" {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "stage 2 never started: {a}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let server = Server::spawn(&tern, &data, http, mqtt);
    let (_, resumed) = server.get(&format!("/api/attempts/{attempt}"));
    assert_eq!(resumed["stage"], 1, "the attempt resumes at stage 2: {resumed}");
    let a = server.wait_final(attempt, TIMEOUT);
    assert_eq!(a["state"], "confirmed", "{a}");
    let hashes = installed_hashes(&server, id);
    for image in &to {
        assert!(hashes.contains(&hex(&image.entry.sha256)), "2.3.1 installed: {hashes:?}");
    }
    let total: u64 = to.iter().map(|i| i.bytes.len() as u64).sum();
    assert!(a["bytes_sent"].as_u64().unwrap() >= total, "both stages' bytes are counted: {a}");
    device.stop().expect("the device ran without error");
}
