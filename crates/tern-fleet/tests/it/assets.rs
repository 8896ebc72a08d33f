//! Assets (module function 9) go through the catalog, plans and installs like any module,
//! with the real `tern` binary and a simulated Argon: the corpus asset (`cat.bin`, a
//! Particle asset module for no particular platform, whose prefix holds no flash address)
//! is signed for platform 12 at the profile's asset slot, uploaded, planned, installed and
//! described, and its bytes land in the asset slot on external flash.

use std::process::Output;

use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tern_fleet::SimRuntime;

use crate::cli::{device_json, has_hash, run, sim_device, wait_device};
use crate::support::{release_key, scratch, Server};

fn check(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: exit {:?}, stderr {}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn corpus_asset_installs_at_the_argon_asset_slot() {
    let dir = scratch("fleet-asset");
    let server = Server::start(&dir.join("server"));
    let signing = dir.join("release.pem");
    std::fs::write(&signing, release_key().to_pkcs8_pem(Default::default()).expect("PEM").as_bytes()).unwrap();
    let public = dir.join("release.pub.pem");
    std::fs::write(&public, release_key().verifying_key().to_public_key_pem(Default::default()).unwrap()).unwrap();
    let profile = &tern_device::NRF52840;
    let id = "argon-asset";
    let state = dir.join(id);
    let device = sim_device(&server, id, profile.name, &state, &public);
    wait_device(&server, id, "the first describe", |d| d["inventory"]["modules"].is_array());

    // The corpus file, in a scratch directory (its statement goes beside it).
    let source = tern_testkit::corpus().join("particle/fixtures/cat.bin");
    let asset = dir.join("cat.bin");
    std::fs::copy(&source, &asset).expect("the corpus asset");
    let bytes = std::fs::read(&asset).unwrap();
    let file_sha256 = crate::cli::hex(&Sha256::digest(&bytes));
    let path = asset.to_str().unwrap();
    let key = signing.to_str().unwrap();
    let slot = profile.slot_for(tern_image::ModuleFunction::Asset, 0).expect("the Argon profile has an asset slot");
    let address = profile.slot_address(slot).unwrap();
    assert_eq!(address, 0x1230_0000, "external flash mapped at 0x12000000, asset slot at offset 0x300000");

    // Uploaded unsigned first: in the catalog, for no platform and no address yet.
    let said = check(&run(&server, &["module", "upload", path]), "unsigned upload");
    assert!(said.contains(&format!("file sha256 {file_sha256}")) && said.contains("UNSIGNED"), "{said}");

    // The device offset alone is not the address the device checks: refused before signing.
    let out = run(&server, &["module", "sign", "--key", key, "--platform", "12", &format!("{path}@0x300000")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("installs assets at 0x12300000"), "{err}");
    // Without an address, the statement places the asset at the profile's slot.
    check(&run(&server, &["module", "sign", "--key", key, "--platform", "12", path]), "sign");
    let said = check(&run(&server, &["module", "upload", path]), "signed upload");
    assert!(said.contains("platform 12 asset 0") && said.contains(", signed"), "{said}");
    let listed: Value = serde_json::from_str(&check(&run(&server, &["module", "list", "--json"]), "list")).unwrap();
    let record = listed.as_array().unwrap().iter().find(|m| m["sha256"] == file_sha256.as_str()).expect("listed");
    assert_eq!(record["platform_id"], 12, "{record}");
    assert_eq!(record["function"], 9, "{record}");
    assert_eq!(record["start_address"], address, "{record}");

    // Planned, sent, installed and confirmed like any module.
    let out = run(&server, &["flash", id, path, "--wait", "--json", "--timeout", "120"]);
    let attempt: Value = serde_json::from_str(&check(&out, "flash")).expect("--json prints the attempt");
    assert_eq!(attempt["state"], "confirmed", "{attempt}");
    let plan = attempt["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 1, "{attempt}");
    assert_eq!((plan[0]["function"].as_u64(), plan[0]["start_address"].as_u64()), (Some(9), Some(u64::from(address))));
    let shown = device_json(&server, id);
    assert!(has_hash(&shown, &file_sha256), "{shown}");

    // The bytes are in the asset slot: a reboot saves the device's flash, then read it.
    check(&run(&server, &["device", "reboot", id, "--wait", "--timeout", "60"]), "reboot");
    drop(device);
    let saved = SimRuntime::load(&state, vec![release_key().verifying_key()]).unwrap().expect("a saved device");
    assert!(saved.slot_holds(slot, &bytes), "the asset is at external flash offset 0x300000");
    assert!(has_hash(&device_json(&server, id), &file_sha256));
}
