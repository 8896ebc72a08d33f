//! Acceptance 1 and 3 of issue 4, on both profiles with real Device OS system modules from
//! the corpus installed at their real addresses: an application update ends `confirmed`
//! and the server lists the new hashes as installed; a bad application ends `rolled_back`
//! with the reason and the device runs and reports the previous application.

use std::time::Duration;

use tern_device::profile::Profile;
use tern_fleet::provision;
use tern_fleet::Settings;
use tern_image::model::{Dependency, ModuleFunction};
use tern_sim::device::{Behaviour, Image};

use crate::support::{bundle, installed_hashes, release_key, scratch, Device, Server};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A corpus-provisioned device of one profile and synthetic applications for it.
struct Board {
    name: &'static str,
    platform: &'static str,
    profile: &'static Profile,
    /// The system part the applications depend on (function, index, version as installed).
    system: Dependency,
}

fn boards() -> Vec<Board> {
    vec![
        Board {
            name: "photon",
            platform: "photon",
            profile: &tern_device::STM32F2,
            system: Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2300 },
        },
        Board {
            name: "argon",
            platform: "argon",
            profile: &tern_device::NRF52840,
            system: Dependency { function: ModuleFunction::SystemPart, index: 1, version: 4001 },
        },
    ]
}

fn app(board: &Board, version: u32, behaviour: Behaviour) -> Image {
    Image::synthetic(board.profile, ModuleFunction::UserPart, 1, version, &[board.system], behaviour, 6 * 1024 + 123)
}

/// Starts a device of `board` with the corpus system modules and application v1.
fn start_device(server: &Server, board: &Board, id: &str) -> (Device, Image) {
    let secret = server.add_device(id, board.platform);
    let v1 = app(board, 1, Behaviour::Healthy);
    let factory = app(board, 0, Behaviour::Healthy);
    let (name, app1) = (board.name, v1.clone());
    let device = Device::start(server, id, &secret, Settings::default(), None, move || {
        let corpus = tern_testkit::corpus();
        let keys = vec![release_key().verifying_key()];
        let made = if name == "photon" {
            provision::corpus_photon(keys, &corpus, "2.3.0", app1, factory)
        } else {
            provision::corpus_argon(keys, &corpus, "4.0.1", app1, factory)
        };
        made.expect("the corpus modules install").0
    });
    device.wait_for("the first describe", TIMEOUT, |s| s.describes > 0);
    crate::support::wait_inventory(server, id);
    (device, v1)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn application_update_is_confirmed_and_listed_on_both_profiles() {
    for board in boards() {
        let dir = scratch(&format!("fleet-app-update-{}", board.name));
        let server = Server::start(&dir.join("server"));
        let id = format!("{}-1", board.name);
        let (device, v1) = start_device(&server, &board, &id);
        assert!(installed_hashes(&server, &id).contains(&hex(&v1.entry.sha256)), "{}: v1 described", board.name);

        let v2 = app(&board, 2, Behaviour::Healthy);
        let attempt = server.flash(&id, &bundle(board.profile.platform_id, &[&v2], 1));
        let a = server.wait_final(attempt, TIMEOUT);
        assert_eq!(a["state"], "confirmed", "{}: {a}", board.name);

        let hashes = installed_hashes(&server, &id);
        assert!(hashes.contains(&hex(&v2.entry.sha256)), "{}: the new hash is listed: {hashes:?}", board.name);
        assert!(!hashes.contains(&hex(&v1.entry.sha256)), "{}: the old application is gone", board.name);
        let stats = device.stats();
        assert_eq!(stats.app_version, 2, "{}: the device runs v2: {stats:?}", board.name);
        assert_eq!(a["bytes_resent"], 0, "{}: nothing re-sent on a clean link: {a}", board.name);
        device.stop().expect("the device ran without error");
    }
}

#[test]
fn bad_application_is_rolled_back_with_the_reason_on_both_profiles() {
    for board in boards() {
        let dir = scratch(&format!("fleet-rollback-{}", board.name));
        let server = Server::start(&dir.join("server"));
        let id = format!("{}-bad", board.name);
        let (device, v1) = start_device(&server, &board, &id);

        let bad = app(&board, 3, Behaviour::Panic);
        let attempt = server.flash(&id, &bundle(board.profile.platform_id, &[&bad], 1));
        let a = server.wait_final(attempt, TIMEOUT);
        assert_eq!(a["state"], "rolled_back", "{}: {a}", board.name);
        assert_eq!(a["reason"], "app_failed_test_boot", "{}: {a}", board.name);

        // The device runs the previous application and says so.
        device.wait_for("the rollback describe", TIMEOUT, |s| s.boot_reason == "rollback");
        assert_eq!(device.stats().app_version, 1, "{}", board.name);
        // The Result can reach the server before the Describe that follows it.
        let start = std::time::Instant::now();
        let record = loop {
            let (_, record) = server.get(&format!("/api/devices/{id}"));
            if record["inventory"]["boot_reason"] == "rollback" || start.elapsed() > TIMEOUT {
                break record;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let hashes = installed_hashes(&server, &id);
        assert!(hashes.contains(&hex(&v1.entry.sha256)), "{}: v1 listed again: {record}", board.name);
        assert!(!hashes.contains(&hex(&bad.entry.sha256)), "{}: the bad app is not listed", board.name);
        assert_eq!(record["inventory"]["boot_reason"], "rollback", "{}: {record}", board.name);
        assert_eq!(record["inventory"]["confirmed"], true, "{}: {record}", board.name);
        device.stop().expect("the device ran without error");
    }
}
