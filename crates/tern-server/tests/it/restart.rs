//! A server killed with SIGKILL keeps everything it had acknowledged.

use std::time::Duration;

use serde_json::Value;
use tern_proto::BootReason;

use crate::support::{wait_for, Server};

#[test]
fn sigkill_and_restart_loses_nothing() {
    let Some(publisher) = tern_testkit::peer("/usr/bin/mosquitto_pub") else { return };
    let dir = tern_testkit::scratch("restart");
    let data = dir.join("data");
    let server = Server::start(&data);
    let api = server.api();
    let secret = server.add_device("dev-r", "photon");
    server.add_device("dev-s", "argon");
    let module = tern_testkit::corpus_files("particle/releases")
        .into_iter()
        .find(|f| f.file_name().is_some_and(|n| n == "photon-system-part1@1.5.2.bin"))
        .expect("the corpus holds photon-system-part1@1.5.2.bin");
    let (status, uploaded) = api.post_bytes("/api/modules?filename=sp1", &std::fs::read(&module).unwrap());
    assert_eq!(status, 201, "{uploaded}");
    let describe = crate::gateway::sample_describe(BootReason::TestBoot);
    crate::gateway::publish_describe(&server, &publisher, &dir, "dev-r", &secret, &describe);
    wait_for("the inventory", Duration::from_secs(10), || api.get("/api/devices/dev-r").1["inventory"] != Value::Null);
    // The publisher's clean disconnect is recorded after its Describe: wait for it too.
    wait_for("the disconnect", Duration::from_secs(10), || {
        api.get("/api/devices/dev-r").1["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "device.disconnected")
    });

    let before = |path: &str| api.get(path).1;
    let modules_before = before("/api/modules");
    let device_before = before("/api/devices/dev-r");
    let devices_before = before("/api/devices");
    let token = server.token.clone();
    server.kill();

    let server = Server::start(&data);
    assert_eq!(server.token, token, "no second admin token on restart");
    let api = server.api();
    assert_eq!(api.get("/api/modules").1, modules_before);
    let mut device_after = api.get("/api/devices/dev-r").1;
    let mut device_expected = device_before.clone();
    // Being offline now is the one expected difference, plus the disconnect the kill caused
    // not being recorded (the process died before it could see it).
    for d in [&mut device_after, &mut device_expected] {
        d["online"] = Value::Null;
        d["status"] = Value::Null;
    }
    assert_eq!(device_after["inventory"], device_expected["inventory"]);
    assert_eq!(device_after["history"], device_expected["history"]);
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|d| d["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&api.get("/api/devices").1), ids(&devices_before));
    // The device's credentials still work against the restarted gateway.
    crate::gateway::publish_describe(&server, &publisher, &dir, "dev-r", &secret, &describe);
    let (_, blob_module) = api.get(&format!("/api/modules/{}", uploaded["sha256"].as_str().unwrap()));
    assert_eq!(blob_module, uploaded);
}
