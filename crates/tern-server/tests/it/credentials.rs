//! A device's credential lifecycle on a real server and raw MQTT connections: secret
//! rotation (a thief's session ends, the device recovers), disable/enable, removal,
//! registration recovery, and bad input at each route.

use std::time::Duration;

use serde_json::json;

use crate::support::{wait_for, Mqtt, Server};

const ACCEPTED: u8 = 0;
const BAD_CREDENTIALS: u8 = 4;

#[test]
fn a_rotated_secret_ends_the_thiefs_session_and_the_device_recovers() {
    let dir = tern_testkit::scratch("cred-rotate");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let leaked = server.add_device("d1", "argon");
    // The thief connects with the leaked secret; the device, connecting with the same
    // secret, replaces the thief's session (and the thief the device's, back and forth).
    let (mut thief, code) = Mqtt::connect(&server, "d1", &leaked);
    assert_eq!(code, ACCEPTED);
    wait_for("d1 online", Duration::from_secs(5), || api.get("/api/devices/d1").1["online"] == true);
    let (status, rotated) = api.post_json("/api/devices/d1/secret", json!({}));
    assert_eq!(status, 200, "{rotated}");
    let fresh = rotated["secret"].as_str().expect("the new secret").to_owned();
    assert_eq!(fresh.len(), 64);
    assert_ne!(fresh, leaked);
    assert!(thief.closed_within(Duration::from_secs(3)), "the session made with the old secret was closed");
    let (_, code) = Mqtt::connect(&server, "d1", &leaked);
    assert_eq!(code, BAD_CREDENTIALS, "the old secret no longer works");
    let (mut device, code) = Mqtt::connect(&server, "d1", &fresh);
    assert_eq!(code, ACCEPTED, "the device, given the new secret, connects");
    assert!(device.alive());
    let (_, shown) = api.get("/api/devices/d1");
    let kinds: Vec<&str> = shown["history"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"device.secret_rotated"), "{kinds:?}");
    assert!(shown.get("secret").is_none());
}

#[test]
fn a_disabled_device_cannot_connect_until_enabled() {
    let dir = tern_testkit::scratch("cred-disable");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let secret = server.add_device("d1", "photon");
    let (mut live, code) = Mqtt::connect(&server, "d1", &secret);
    assert_eq!(code, ACCEPTED);
    wait_for("d1 online", Duration::from_secs(5), || api.get("/api/devices/d1").1["online"] == true);
    let (status, reply) = api.post_json("/api/devices/d1/disable", json!({}));
    assert_eq!((status, &reply["disabled"]), (200, &json!(true)), "{reply}");
    assert!(live.closed_within(Duration::from_secs(3)), "disabling closed the connection");
    assert_eq!(Mqtt::connect(&server, "d1", &secret).1, BAD_CREDENTIALS);
    let (_, list) = api.get("/api/devices?disabled=true");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (status, reply) = api.post_json("/api/devices/d1/enable", json!({}));
    assert_eq!((status, &reply["disabled"]), (200, &json!(false)), "{reply}");
    let (mut again, code) = Mqtt::connect(&server, "d1", &secret);
    assert_eq!(code, ACCEPTED, "the same secret works again");
    assert!(again.alive());
}

#[test]
fn a_removed_device_is_gone_and_its_id_can_be_registered_again() {
    let dir = tern_testkit::scratch("cred-remove");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let secret = server.add_device("d1", "photon");
    server.add_device("d2", "photon");
    let (mut live, code) = Mqtt::connect(&server, "d1", &secret);
    assert_eq!(code, ACCEPTED);
    wait_for("d1 online", Duration::from_secs(5), || api.get("/api/devices/d1").1["online"] == true);
    let (status, reply) = api.delete("/api/devices/d1");
    assert_eq!((status, &reply["removed"]), (200, &json!(true)), "{reply}");
    assert!(live.closed_within(Duration::from_secs(3)), "removal closed the connection");
    assert_eq!(Mqtt::connect(&server, "d1", &secret).1, BAD_CREDENTIALS, "a removed device cannot connect");
    let (_, list) = api.get("/api/devices");
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d2"]);
    // Every route about the removed device says it is not there, and changes nothing.
    for (method, path) in [
        ("GET", "/api/devices/d1"),
        ("DELETE", "/api/devices/d1"),
        ("POST", "/api/devices/d1/secret"),
        ("POST", "/api/devices/d1/disable"),
        ("POST", "/api/devices/d1/enable"),
        ("PATCH", "/api/devices/d1"),
    ] {
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        let (status, reply) = api.call(method, path, body, None);
        assert_eq!((status, &reply["error"]["code"]), (404, &json!("not_found")), "{method} {path}: {reply}");
    }
    assert_eq!(Mqtt::connect(&server, "d1", &secret).1, BAD_CREDENTIALS, "still cannot connect");
    // The id is free again: a new registration starts afresh with a new secret.
    let (status, added) = api.post_json("/api/devices", json!({ "id": "d1", "platform": "argon" }));
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["platform_id"], 12);
    let renewed = added["secret"].as_str().unwrap();
    assert_eq!(Mqtt::connect(&server, "d1", renewed).1, ACCEPTED);
    assert_eq!(Mqtt::connect(&server, "d1", &secret).1, BAD_CREDENTIALS, "the old secret stays dead");
}

#[test]
fn a_registration_whose_secret_was_lost_is_recovered_by_rotation() {
    let dir = tern_testkit::scratch("cred-recover");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    // The answer carrying the secret is lost (the client gave up); a retry is a clear 409.
    let _lost = server.add_device("d1", "boron");
    let (status, reply) = api.post_json("/api/devices", json!({ "id": "d1", "platform": "boron" }));
    assert_eq!((status, &reply["error"]["code"]), (409, &json!("device_exists")), "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("tern device rotate-secret d1"), "the error says how to recover: {message}");
    let (status, reply) = api.post_json("/api/devices/d1/secret", json!({}));
    assert_eq!(status, 200, "{reply}");
    let (mut device, code) = Mqtt::connect(&server, "d1", reply["secret"].as_str().unwrap());
    assert_eq!(code, ACCEPTED);
    assert!(device.alive());
    let (status, reply) = api.post_json("/api/devices/nobody/secret", json!({}));
    assert_eq!((status, &reply["error"]["code"]), (404, &json!("not_found")), "{reply}");
}
