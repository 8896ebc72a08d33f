//! Device commands and the factory (backup) image, with the real `tern` binary: `tern
//! device reboot | safe-mode | factory-restore | cancel --wait` report what the device did
//! and exit non-zero when it did something else or never answered; the factory image is
//! restored on command, and loaded by the device by itself when its application slot holds
//! no valid image — each proven with the module hashes `tern device show` lists.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ed25519_dalek::pkcs8::EncodePublicKey;
use serde_json::Value;
use tern_fleet::{provision, Settings};
use tern_image::model::ModuleFunction;
use tern_sim::device::{Behaviour, Image, SimDevice};

use crate::cli::{device_json, has_hash, hex, run, sim_device, wait_device};
use crate::support::{bundle, release_key, scratch, Device, Server};

/// Writes the release public key the devices trust; returns its path.
fn trust_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("release.pub.pem");
    let pem = release_key().verifying_key().to_public_key_pem(Default::default()).expect("PEM");
    std::fs::write(&key, pem).unwrap();
    key
}

/// Saves `device` as the state of a device `id` registered on `server`, so that `tern sim
/// device --state DIR` boots exactly these flash contents.
fn save_state(server: &Server, id: &str, device: &SimDevice, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    device.save(&dir.join(tern_fleet::runtime::FLASH_FILE)).unwrap();
    let secret = server.add_device(id, &device.profile.platform_id.to_string());
    std::fs::write(dir.join("secret"), secret).unwrap();
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The application module (user part 1) of a device record.
fn application(device: &Value) -> Value {
    let modules = device["inventory"]["modules"].as_array().cloned().unwrap_or_default();
    modules.into_iter().find(|m| m["function"] == ModuleFunction::UserPart.code()).unwrap_or_default()
}

/// Reboot, safe mode and factory restore on command, each followed to the device's next
/// Describe; the outcome line, the exit status and `tern device show` agree.
#[test]
fn reboot_safe_mode_and_factory_restore_on_command() {
    let dir = scratch("fleet-commands");
    let server = Server::start(&dir.join("server"));
    let key = trust_key(&dir);
    let profile = &tern_device::STM32F2;
    let id = "cmd-1";
    let _device = sim_device(&server, id, profile.name, &dir.join("cmd-1"), &key);
    wait_device(&server, id, "the first describe", |d| d["inventory"]["modules"].is_array());
    let (set, factory) = provision::synthetic_images(profile, Behaviour::Healthy);
    let app = hex(&set.last().expect("an application").entry.sha256);
    let factory = hex(&factory.entry.sha256);
    assert_ne!(app, factory);

    // (command, line printed, boot reason then, safe-mode cause, application file sha256)
    let cases = [
        ("reboot", "cmd-1 rebooted: normal boot, application v1 confirmed", "normal", None, &app),
        ("safe-mode", "cmd-1 in safe mode (requested), application v1 installed", "safe_mode", Some("requested"), &app),
        ("reboot", "cmd-1 rebooted: normal boot, application v1 confirmed", "normal", None, &app),
        ("factory-restore", "cmd-1 factory image restored: application v0", "factory_restore", None, &factory),
    ];
    for (command, line, boot, cause, hash) in cases {
        let out = run(&server, &["device", command, id, "--wait", "--timeout", "60"]);
        assert!(out.status.success(), "{command}: exit {:?}, stderr {}", out.status, stderr(&out));
        assert_eq!(stdout(&out).trim(), line, "{command}");
        let shown = device_json(&server, id);
        assert_eq!(shown["inventory"]["boot_reason"], boot, "{command}: {shown}");
        assert_eq!(shown["inventory"]["safe_mode"].as_str(), cause, "{command}: {shown}");
        assert_eq!(application(&shown)["sha256"], hash.as_str(), "{command}: {shown}");
    }
    let old_app_listed = has_hash(&device_json(&server, id), &app);
    assert!(!old_app_listed, "the restored factory application replaced application v1");

    // --json: the command, the verdict and the Describe it is based on.
    let out = run(&server, &["device", "reboot", id, "--wait", "--json", "--timeout", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["command"]["action"], "reboot", "{answer}");
    assert_eq!(answer["inventory"]["boot_reason"], "normal", "{answer}");

    // Refusals: one line each, non-zero exit, nothing sent.
    server.add_device("cmd-offline", "photon");
    let refusals = [
        (vec!["device", "cancel", id], "device cmd-1 has no update attempt in flight"),
        (vec!["device", "reboot", "nobody", "--wait"], "no device nobody"),
        (vec!["device", "safe-mode", "cmd-offline", "--wait"], "device cmd-offline is not connected"),
    ];
    for (args, message) in refusals {
        let out = run(&server, &args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {}", stdout(&out));
        assert!(err.contains(message) && err.lines().count() == 1, "{args:?}: {err}");
    }
}

/// The factory image is loaded by the device itself when its application slot holds no
/// valid image (bytes corrupted before boot), on both profiles: the device describes a
/// factory restore and `tern device show` lists the factory application's hash. A device
/// without a factory image asked to restore one reboots without it: exit status 1.
#[test]
fn invalid_application_loads_the_factory_image() {
    let dir = scratch("fleet-factory-self");
    let server = Server::start(&dir.join("server"));
    let key = trust_key(&dir);
    let keys = vec![release_key().verifying_key()];
    for profile in [&tern_device::STM32F2, &tern_device::NRF52840] {
        let id = format!("corrupt-{}", profile.name);
        let device = provision::synthetic(profile, keys.clone(), Behaviour::Healthy).unwrap();
        let (set, factory) = provision::synthetic_images(profile, Behaviour::Healthy);
        let app = set.last().expect("an application");
        let slot = profile.app_slot().expect("an application slot");
        assert!(device.slot_holds(slot, &app.bytes), "{id}: provisioned");
        corrupt_application(&device);
        assert!(!device.slot_holds(slot, &app.bytes), "{id}: corrupted");
        let state = dir.join(&id);
        save_state(&server, &id, &device, &state);
        drop(device);

        let sim = sim_device(&server, &id, profile.name, &state, &key);
        wait_device(&server, &id, "a describe", |d| d["inventory"]["modules"].is_array());
        let out = run(&server, &["device", "show", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("boot      factory_restore"), "{id}: {}", stdout(&out));
        let shown = device_json(&server, &id);
        assert_eq!(shown["inventory"]["boot_reason"], "factory_restore", "{id}: {shown}");
        assert_eq!(application(&shown)["sha256"], hex(&factory.entry.sha256), "{id}: {shown}");
        assert_eq!(application(&shown)["version"], 0, "{id}: {shown}");
        drop(sim);
    }

    // No factory image: the restore cannot happen, and the CLI says so.
    let profile = &tern_device::STM32F2;
    let (set, _) = provision::synthetic_images(profile, Behaviour::Healthy);
    let mut device = SimDevice::new(profile, keys.clone());
    device.provision(&set.iter().collect::<Vec<_>>(), None).unwrap();
    let id = "no-factory";
    let state = dir.join(id);
    save_state(&server, id, &device, &state);
    drop(device);
    let _sim = sim_device(&server, id, profile.name, &state, &key);
    wait_device(&server, id, "a describe", |d| d["inventory"]["modules"].is_array());
    let out = run(&server, &["device", "factory-restore", id, "--wait", "--timeout", "60"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("rebooted without restoring a factory image") && err.contains("application v1"), "{err}");
    let shown = device_json(&server, id);
    assert_eq!(application(&shown)["sha256"], hex(&set.last().unwrap().entry.sha256), "{shown}");
}

/// `tern device cancel ID --wait` cancels the attempt in flight; the device acknowledges
/// and keeps its application; a second cancel finds nothing in flight.
#[test]
fn cancel_stops_the_attempt_in_flight() {
    let dir = scratch("fleet-cancel");
    let server = Server::start(&dir.join("server"));
    let profile = &tern_device::STM32F2;
    let id = "cancel-1";
    let secret = server.add_device(id, "photon");
    let keys = vec![release_key().verifying_key()];
    // Slow enough that the cancel lands mid-transfer: a 250 KiB system part stored at 40 ms
    // per KiB. The device keeps up to eight 16 KiB windows in flight (the test server's
    // window), and what the server already sent reaches it before the cancel does: the
    // cancel goes out as soon as the download starts, so at most what the device stored by
    // then plus 128 KiB arrives first — less than the module unless sending the cancel
    // takes more than ~4 s.
    let settings = Settings { block_pace: Duration::from_millis(40), ..Settings::default() };
    let device = Device::start(&server, id, &secret, settings, None, move || {
        provision::synthetic(profile, keys, Behaviour::Healthy).unwrap()
    });
    device.wait_for("the first describe", Duration::from_secs(30), |s| s.describes > 0);
    crate::support::wait_inventory(&server, id);
    let size = 250 * 1024;
    let v2 = Image::synthetic(profile, ModuleFunction::SystemPart, 1, 101, &[], Behaviour::Healthy, size);
    let attempt = server.flash(id, &bundle(profile.platform_id, &[&v2], 1));
    let start = Instant::now();
    loop {
        let (_, a) = server.get(&format!("/api/attempts/{attempt}"));
        if a["state"] == "downloading" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the transfer did not start: {a}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let at_cancel = (start.elapsed(), device.stats().blocks_stored);
    let out = run(&server, &["device", "cancel", id, "--wait", "--timeout", "60"]);
    println!(
        "cancel sent {:?} after the attempt, {} blocks stored then; {} stored when the cancel returned ({:?})",
        at_cancel.0,
        at_cancel.1,
        device.stats().blocks_stored,
        start.elapsed()
    );
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    let said = stdout(&out);
    assert!(said.starts_with(&format!("cancel-1: attempt {attempt} cancelled (")), "{said}");
    assert!(said.contains("the device dropped it"), "{said}");
    let (_, a) = server.get(&format!("/api/attempts/{attempt}"));
    assert_eq!(a["state"], "cancelled", "{a}");
    assert!(a["bytes_done"].as_u64().unwrap() < size as u64, "cancelled before the end: {a}");
    let shown = device_json(&server, id);
    assert!(!has_hash(&shown, &hex(&v2.entry.sha256)), "{shown}");
    assert_eq!(application(&shown)["version"], 1, "{shown}");

    let out = run(&server, &["device", "cancel", id]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(err.contains(&format!("no update attempt in flight (last: attempt {attempt} cancelled)")), "{err}");
    device.stop().expect("the device ran without error");
}

/// Corrupts the application slot of `device` (a few bytes in its middle).
fn corrupt_application(device: &SimDevice) {
    let profile = device.profile;
    let region = profile.slots[profile.app_slot().expect("an application slot")].region;
    let mut bench = device.bench.borrow_mut();
    let at = (region.offset + 1000) as usize;
    for b in &mut bench.devices[region.dev as usize].bytes[at..at + 16] {
        *b ^= 0x5A;
    }
}

/// A device whose application slot turns invalid while it runs the factory application
/// (after a factory restore, on test or confirmed) still has an intact factory image: the
/// boot manager copies it again rather than disabling the application.
#[test]
fn invalid_factory_application_is_restored_again() {
    use tern_device::boot::{boot, ResetCause, Run};
    let keys = vec![release_key().verifying_key()];
    for profile in [&tern_device::STM32F2, &tern_device::NRF52840] {
        for confirmed in [false, true] {
            let case = format!("{} confirmed={confirmed}", profile.name);
            let device = provision::synthetic(profile, keys.clone(), Behaviour::Healthy).unwrap();
            corrupt_application(&device);
            let mut storage = device.storage();
            let first = boot(&mut storage, profile, ResetCause::PowerOn).unwrap();
            assert!(first.events.factory_restored, "{case}: {first:?}");
            if confirmed {
                let mut agent = tern_device::agent::Agent::load(&mut storage, profile, &keys).unwrap();
                agent.confirm(&mut storage).unwrap();
            }
            corrupt_application(&device);
            let second = boot(&mut storage, profile, ResetCause::PowerOn).unwrap();
            assert!(matches!(second.run, Run::Application { .. }), "{case}: {second:?}");
            assert!(second.events.factory_restored, "{case}: {second:?}");
        }
    }
}
