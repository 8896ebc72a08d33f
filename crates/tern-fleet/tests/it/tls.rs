//! A device on MQTT over TLS: the update goes through, and the bytes on its socket (TLS
//! records included, counted by the gateway beneath TLS) stay within 3% of the estimate the
//! server gave before sending anything (which counts each packet's TLS records when TLS is
//! on). The TLS handshakes of the device's connections are the connection's, not the
//! attempt's: the count starts once the device is connected and the one reconnect after
//! the install is the only handshake inside it.

use std::time::Duration;

use tern_device::STM32F2;
use tern_fleet::{provision, Settings};
use tern_image::model::ModuleFunction;
use tern_sim::device::{Behaviour, Image};

use crate::support::{bundle, installed_hashes, release_key, scratch, wait_inventory, Device, Server};

#[test]
fn a_device_over_mqtt_tls_is_updated_and_the_estimate_holds_within_3_percent() {
    let dir = scratch("fleet-tls");
    let server = Server::start_tls(&dir.join("server"));
    assert!(server.http.starts_with("https://"), "{}", server.http);
    let profile = &STM32F2;
    let id = "tls-1";
    let secret = server.add_device(id, "photon");
    let keys = vec![release_key().verifying_key()];
    let device = Device::start(&server, id, &secret, Settings::default(), None, move || {
        provision::synthetic(profile, keys, Behaviour::Healthy).expect("a provisioned device")
    });
    device.wait_for("the first describe", Duration::from_secs(30), |s| s.describes > 0);
    wait_inventory(&server, id);

    // A system part 1 of 200 KiB, the newer version of what the device runs.
    let part = Image::synthetic(profile, ModuleFunction::SystemPart, 1, 101, &[], Behaviour::Healthy, 200 * 1024);
    let before = server.link_bytes();
    let attempt = server.flash(id, &bundle(profile.platform_id, &[&part], 1));
    let done = server.wait_final(attempt, Duration::from_secs(120));
    assert_eq!(done["state"], "confirmed", "{done}");
    let measured = server.link_bytes() - before;
    let estimate = done["air_bytes"].as_u64().expect("an estimate");
    let ratio = measured as f64 / estimate as f64;
    let per_module_byte = measured as f64 / part.bytes.len() as f64;
    println!(
        "over TLS: module {} B, estimated {estimate} B, measured {measured} B on the socket \
         (measured/estimated {ratio:.3}, {per_module_byte:.3} per module byte)",
        part.bytes.len()
    );
    assert!((0.97..=1.03).contains(&ratio), "the estimate is within 3% of the bytes on the socket: {done}");
    let part_hash = hex::encode(part.entry.sha256);
    assert!(installed_hashes(&server, id).contains(&part_hash), "system part 1 v101 is in the inventory");
    device.stop().expect("the device ran without error");
}

/// A device that does not trust the server's certificate never gets a session.
#[test]
fn a_device_that_does_not_trust_the_certificate_cannot_connect() {
    let dir = scratch("fleet-tls-untrusted");
    let server = Server::start_tls(&dir.join("server"));
    let other = Server::start_tls(&dir.join("other"));
    let id = "tls-untrusted";
    let secret = server.add_device(id, "photon");
    let keys = vec![release_key().verifying_key()];
    let profile = &STM32F2;
    // The device is given the other server's CA.
    let mut target = server.device_target(id, &secret);
    target.tls = other.tls.clone();
    let device = Device::start_with_target(target, Settings::default(), move || {
        provision::synthetic(profile, keys, Behaviour::Healthy).expect("a provisioned device")
    });
    std::thread::sleep(Duration::from_secs(3));
    let stats = device.stats();
    assert_eq!((stats.connects, stats.describes), (0, 0), "no session without a trusted certificate");
    let (_, d) = server.get(&format!("/api/devices/{id}"));
    assert!(d["last_seen"].is_null(), "{d}");
    device.stop().expect("the device ran without error");
}
