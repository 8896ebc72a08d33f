//! The MQTT gateway, driven by real third-party clients: `mosquitto_pub` and
//! `mosquitto_sub` from Debian's mosquitto-clients (installed by scripts/install-peers.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tern_image::{Integrity, ModuleFunction};
use tern_proto::{
    Action, BootReason, Describe, InstalledModule, List, Message, Outcome, Reason, SafeModeCause, UpdateResult,
};

use crate::support::{encode, payload_file, wait_for, Server};

fn clients() -> Option<(PathBuf, PathBuf)> {
    Some((tern_testkit::peer("/usr/bin/mosquitto_pub")?, tern_testkit::peer("/usr/bin/mosquitto_sub")?))
}

fn stats(server: &Server) -> Value {
    let (status, body) = server.api().get("/api/stats");
    assert_eq!(status, 200);
    body
}

#[test]
fn wrong_or_missing_credentials_are_refused() {
    let Some((publisher, subscriber)) = clients() else { return };
    let dir = tern_testkit::scratch("gw-auth");
    let server = Server::start(&dir.join("data"));
    let secret_a = server.add_device("dev-a", "photon");
    let secret_b = server.add_device("dev-b", "photon");
    let topic = "tern/v1/d/dev-a/down/#";
    // (what, username, password)
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("wrong password", Some("dev-a"), Some("0000")),
        ("another device's secret", Some("dev-a"), Some(&secret_b)),
        ("unknown device", Some("nobody"), Some(&secret_a)),
        ("no password", Some("dev-a"), None),
        ("no credentials", None, None),
    ];
    for (what, user, password) in cases {
        let mut args = vec!["-t", topic, "-C", "1", "-W", "5"];
        if let Some(user) = user {
            args.extend(["-u", user]);
        }
        if let Some(password) = password {
            args.extend(["-P", password]);
        }
        let out = server.mosquitto(&subscriber, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: connected");
        assert!(stderr.contains("bad user name or password"), "{what}: {stderr}");
    }
    assert_eq!(stats(&server)["link"]["auth_failures"], cases.len());
    // The right secret works, for publishing too.
    let file = payload_file(&dir, "garbage", b"\x00");
    let out = server.mosquitto(
        &publisher,
        &["-u", "dev-a", "-P", &secret_a, "-q", "1", "-t", "tern/v1/d/dev-a/up/progress", "-f", path(&file)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

#[test]
fn a_device_can_neither_read_nor_publish_as_another_device() {
    let Some((publisher, subscriber)) = clients() else { return };
    let dir = tern_testkit::scratch("gw-isolation");
    let server = Server::start(&dir.join("data"));
    let secret_a = server.add_device("dev-a", "photon");
    let secret_b = server.add_device("dev-b", "photon");
    let port = server.mqtt_port.to_string();

    // Subscriptions outside A's own prefix are refused in SUBACK, one by one.
    for filter in ["tern/v1/d/dev-b/down/#", "tern/v1/d/dev-b/up/#", "tern/v1/d/+/down/command", "#", "tern/#"] {
        let out = server.mosquitto(&subscriber, &["-u", "dev-a", "-P", &secret_a, "-t", filter, "-C", "1", "-W", "3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("All subscription requests were denied"), "{filter}: {stderr}");
        assert!(out.stdout.is_empty(), "{filter}: A read something");
    }

    // B listens on its own topics (allowed) while A listens on B's and on everything (refused)
    // and on its own (allowed). A command sent to B reaches B and only B.
    let spawn_sub = |user: &str, secret: &str, filters: &[&str]| {
        let mut cmd = Command::new(&subscriber);
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", secret, "-q", "1", "-v", "-W", "6", "-F", "%t %x"]);
        for filter in filters {
            cmd.args(["-t", filter]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mosquitto_sub starts")
    };
    let b_sub = spawn_sub("dev-b", &secret_b, &["tern/v1/d/dev-b/down/#"]);
    let a_sub = spawn_sub("dev-a", &secret_a, &["tern/v1/d/dev-b/down/#", "#", "tern/v1/d/dev-a/down/#"]);
    let api = server.api();
    // Both subscribers' SUBSCRIBEs were handled once B's filter and A's own are granted.
    wait_for("both subscriptions", Duration::from_secs(10), || stats(&server)["link"]["subscriptions"] == 2);
    let (status, reply) = api.post_json("/api/devices/dev-b/commands", json!({ "action": "factory_restore" }));
    assert_eq!(status, 202, "{reply}");

    // A tries to publish a Describe as B: the gateway drops A's connection and B's record is
    // untouched.
    let forged = encode(&Message::Describe(sample_describe(BootReason::Normal)));
    let forged_file = payload_file(&dir, "forged", &forged);
    let out = server.mosquitto(
        &publisher,
        &["-u", "dev-a", "-P", &secret_a, "-q", "1", "-t", "tern/v1/d/dev-b/up/describe", "-f", path(&forged_file)],
    );
    assert!(!out.status.success(), "publishing as B must fail");
    let b_out = b_sub.wait_with_output().expect("B's subscriber ends");
    let a_out = a_sub.wait_with_output().expect("A's subscriber ends");
    let b_text = String::from_utf8_lossy(&b_out.stdout);
    let a_text = String::from_utf8_lossy(&a_out.stdout);
    assert!(a_text.trim().is_empty(), "A received: {a_text}");
    let line = b_text.lines().next().unwrap_or_else(|| panic!("B received nothing: {:?}", b_out));
    let (topic, payload) = line.split_once(' ').expect("topic and payload");
    assert_eq!(topic, "tern/v1/d/dev-b/down/command");
    let payload = hex::decode(payload).expect("mosquitto_sub prints hex");
    match Message::decode(&payload).expect("B received a protocol message") {
        Message::Command(command) => assert_eq!(command.action, Action::FactoryRestore),
        other => panic!("B received {other:?}"),
    }

    let (_, shown) = api.get("/api/devices/dev-b");
    assert_eq!(shown["inventory"], Value::Null, "the forged describe was not recorded");
    assert!(stats(&server)["link"]["acl_denied"].as_u64().unwrap() >= 7, "{}", stats(&server));
}

fn module(function: ModuleFunction, index: u8, version: u32, byte: u8) -> InstalledModule {
    InstalledModule {
        function,
        index,
        version,
        sha256: [byte; 32],
        size: 1000 * u32::from(byte),
        integrity: Integrity::Valid,
        dependencies_met: true,
    }
}

/// A plausible Photon Describe.
pub fn sample_describe(boot_reason: BootReason) -> Describe {
    Describe {
        platform: 6,
        boot_reason,
        safe_mode: None,
        unmet: None,
        confirmed: true,
        modules: List::from_slice(&[
            module(ModuleFunction::Bootloader, 0, 1100, 0x11),
            module(ModuleFunction::SystemPart, 1, 1512, 0x22),
            module(ModuleFunction::SystemPart, 2, 1512, 0x33),
            module(ModuleFunction::UserPart, 1, 6, 0x44),
        ])
        .unwrap(),
        capacity: None,
        security_counter: None,
        last_result: Some(UpdateResult {
            attempt: 9,
            outcome: Outcome::RolledBack,
            reason: Reason::AppFailedTestBoot,
            module: Some(3),
        }),
    }
}

/// Publishes a Describe with a real client and checks the API and event stream show it.
pub fn publish_describe(
    server: &Server,
    publisher: &Path,
    dir: &Path,
    device: &str,
    secret: &str,
    describe: &Describe,
) {
    let bytes = encode(&Message::Describe(*describe));
    let file = payload_file(dir, &format!("describe-{device}"), &bytes);
    let topic = format!("tern/v1/d/{device}/up/describe");
    let out = server.mosquitto(publisher, &["-u", device, "-P", secret, "-q", "1", "-t", &topic, "-f", path(&file)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_describe_from_a_real_client_becomes_the_device_inventory() {
    let Some((publisher, _)) = clients() else { return };
    let dir = tern_testkit::scratch("gw-describe");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-d", "photon");
    let api = server.api();
    let events = api.stream_lines("/api/events?device=dev-d");

    let mut safe = sample_describe(BootReason::SafeMode);
    safe.safe_mode = Some(SafeModeCause::UnmetDependency);
    safe.unmet = Some(tern_image::Dependency { function: ModuleFunction::SystemPart, index: 2, version: 2000 });
    safe.confirmed = false;
    publish_describe(&server, &publisher, &dir, "dev-d", &secret, &safe);

    wait_for("the inventory", Duration::from_secs(10), || api.get("/api/devices/dev-d").1["inventory"] != Value::Null);
    let (_, shown) = api.get("/api/devices/dev-d");
    let inventory = &shown["inventory"];
    assert_eq!(shown["status"], "safe_mode");
    assert_eq!(shown["application_version"], 6);
    assert_eq!(inventory["boot_reason"], "safe_mode");
    assert_eq!(inventory["safe_mode"], "unmet_dependency");
    assert_eq!(
        inventory["unmet"],
        json!({ "function": 4, "function_name": "system_part", "index": 2, "version": 2000 })
    );
    assert_eq!(inventory["confirmed"], false);
    assert_eq!(
        inventory["last_result"],
        json!({ "attempt": 9, "outcome": "rolled_back", "reason": "app_failed_test_boot", "reason_code": 6, "module": 3 })
    );
    let modules = inventory["modules"].as_array().unwrap();
    let expected = safe.modules.iter().collect::<Vec<_>>();
    assert_eq!(modules.len(), expected.len());
    for (got, want) in modules.iter().zip(expected) {
        assert_eq!(got["function"], want.function.code());
        assert_eq!(got["index"], want.index);
        assert_eq!(got["version"], want.version);
        assert_eq!(got["sha256"], hex::encode(want.sha256));
        assert_eq!(got["size"], want.size);
        assert_eq!(got["integrity"], "valid");
    }
    assert!(shown["last_seen"].as_i64().unwrap() >= inventory["described_at"].as_i64().unwrap());

    // The same change arrived on the event stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = events.recv_timeout(left).expect("a device.described event");
        if line == "event: device.described" {
            break;
        }
    }
}

#[test]
fn malformed_device_messages_are_counted_and_harmless() {
    let Some((publisher, subscriber)) = clients() else { return };
    let dir = tern_testkit::scratch("gw-malformed");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-m", "argon");
    let good = encode(&Message::Describe(sample_describe(BootReason::Normal)));
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut wrong_version = good.clone();
    wrong_version[1] = 0x02;
    // (topic kind, payload)
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("describe", b"not cbor at all".to_vec()),
        ("describe", truncated),
        ("describe", wrong_version),
        ("describe", Vec::new()),
        // A well-formed Describe on the progress topic: kinds must agree.
        ("progress", good.clone()),
        ("result", vec![0xff; 300]),
    ];
    for (i, (kind, payload)) in cases.iter().enumerate() {
        let file = payload_file(&dir, &format!("bad-{i}"), payload);
        let topic = format!("tern/v1/d/dev-m/up/{kind}");
        let mut args = vec!["-u", "dev-m", "-P", &secret, "-q", "1", "-t", &topic];
        if payload.is_empty() {
            args.push("-n");
        } else {
            args.extend(["-f", path(&file)]);
        }
        let out = server.mosquitto(&publisher, &args);
        assert!(out.status.success(), "case {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let api = server.api();
    wait_for("malformed messages counted", Duration::from_secs(10), || {
        stats(&server)["uplink"]["malformed"] == cases.len()
    });
    assert_eq!(api.get("/api/devices/dev-m").1["inventory"], Value::Null);
    let (_, shown) = api.get("/api/devices/dev-m");
    let malformed_events =
        shown["history"].as_array().unwrap().iter().filter(|e| e["kind"] == "device.malformed_message").count();
    assert_eq!(malformed_events, cases.len());

    // Garbage at the MQTT level too: bytes that are no MQTT packet, on a raw socket.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", server.mqtt_port)).unwrap();
    std::io::Write::write_all(&mut raw, &[0xff; 64]).unwrap();
    drop(raw);

    // The server is unharmed: a good describe still lands, and subscriptions still work.
    publish_describe(&server, &publisher, &dir, "dev-m", &secret, &sample_describe(BootReason::Normal));
    wait_for("the good describe", Duration::from_secs(10), || {
        api.get("/api/devices/dev-m").1["inventory"] != Value::Null
    });
    let out = server.mosquitto(&subscriber, &["-u", "dev-m", "-P", &secret, "-t", "tern/v1/d/dev-m/down/#", "-W", "1"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("denied"));
    assert_eq!(api.get("/api/health").0, 200);
}
