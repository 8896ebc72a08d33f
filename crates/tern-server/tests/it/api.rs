//! The HTTP API: authentication, the module catalog (checked against Particle's own
//! binary-version-reader), bad uploads, devices, OpenAPI, the event stream.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Api, Server};

#[test]
fn routes_need_a_valid_token_except_health_and_openapi() {
    let dir = tern_testkit::scratch("api-auth");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let wrong = "tern_0000000000000000000000000000000000000000000000000000000000000000";
    // (path, token, expected status)
    let cases: &[(&str, Option<&str>, u16)] = &[
        ("/api/health", None, 200),
        ("/api/openapi.json", None, 200),
        ("/api/modules", None, 401),
        ("/api/modules", Some(wrong), 401),
        ("/api/modules", Some(""), 401),
        ("/api/modules", Some(&server.token), 200),
        ("/api/devices", None, 401),
        ("/api/devices", Some("Basic abc"), 401),
        ("/api/devices", Some(&server.token), 200),
        ("/api/devices/x", None, 401),
        ("/api/stats", Some(wrong), 401),
        ("/api/stats", Some(&server.token), 200),
        ("/api/events", None, 401),
        ("/api/devices/x/plans", None, 401),
        ("/api/plans/1", Some(wrong), 401),
        ("/api/nothing-here", Some(&server.token), 404),
    ];
    for (path, token, expected) in cases {
        let (status, body) = api.with_token(*token).get(path);
        assert_eq!(status, *expected, "GET {path} with {token:?}: {body}");
        if status == 401 {
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    let (status, _) = api.with_token(None).post_bytes("/api/modules", b"x");
    assert_eq!(status, 401, "uploads need a token too");
    let anonymous = api.with_token(None);
    let writes = [
        anonymous.put_bytes(&format!("/api/modules/{}/statement", "0".repeat(64)), b"x"),
        anonymous.patch_json("/api/devices/x", json!({ "auto_heal": true })),
        anonymous.post_json("/api/devices/x/plans", json!({ "modules": [] })),
        anonymous.post_json("/api/plans/1/start", json!({})),
    ];
    for (status, body) in writes {
        assert_eq!((status, &body["error"]["code"]), (401, &json!("unauthorized")), "{body}");
    }
}

#[test]
fn openapi_document_lists_every_route() {
    let dir = tern_testkit::scratch("api-openapi");
    let server = Server::start(&dir.join("data"));
    let (status, doc) = server.api().with_token(None).get("/api/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("/api/health", "get"),
        ("/api/openapi.json", "get"),
        ("/api/stats", "get"),
        ("/api/modules", "get"),
        ("/api/modules", "post"),
        ("/api/modules/{sha256}", "get"),
        ("/api/modules/{sha256}/statement", "put"),
        ("/api/devices", "get"),
        ("/api/devices", "post"),
        ("/api/devices/{id}", "get"),
        ("/api/devices/{id}", "patch"),
        ("/api/devices/{id}/plans", "get"),
        ("/api/devices/{id}/plans", "post"),
        ("/api/plans/{id}", "get"),
        ("/api/plans/{id}/start", "post"),
        ("/api/devices/{id}/commands", "post"),
        ("/api/events", "get"),
        ("/api/devices/{id}/attempts", "post"),
        ("/api/attempts/{id}", "get"),
        ("/api/attempts/{id}/cancel", "post"),
        ("/api/devices/{id}/fleet", "patch"),
        ("/api/products", "get"),
        ("/api/products", "post"),
        ("/api/products/{id}", "get"),
        ("/api/products/{id}/releases", "get"),
        ("/api/products/{id}/releases", "post"),
        ("/api/products/{id}/releases/{number}", "get"),
        ("/api/groups", "get"),
        ("/api/groups/{name}", "put"),
        ("/api/groups/{name}", "get"),
        ("/api/groups/{name}", "delete"),
        ("/api/rollouts", "get"),
        ("/api/rollouts", "post"),
        ("/api/rollouts/{id}", "get"),
        ("/api/rollouts/{id}/members", "get"),
        ("/api/rollouts/{id}/pause", "post"),
        ("/api/rollouts/{id}/resume", "post"),
        ("/api/rollouts/{id}/abort", "post"),
        ("/api/rollouts/{id}/approve", "post"),
        ("/api/devices/{id}", "delete"),
        ("/api/devices/{id}/secret", "post"),
        ("/api/devices/{id}/disable", "post"),
        ("/api/devices/{id}/enable", "post"),
        ("/api/tokens", "get"),
        ("/api/tokens", "post"),
        ("/api/tokens/{name}", "get"),
        ("/api/tokens/{name}", "delete"),
        ("/api/tokens/{name}/rotate", "post"),
    ];
    for (path, method) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the OpenAPI document");
    }
    // Every reference inside the document names a component it defines.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("{reference} is local"));
        assert!(doc.pointer(pointer).is_some(), "{reference} names nothing in the document");
    }
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                refs.push(reference.clone());
            }
            map.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

/// What binary-version-reader (Particle's own parser) says about each file, through the
/// repository's oracle script `tests/oracle/particle-inspect.js`.
fn oracle(files: &[PathBuf]) -> Option<Vec<Value>> {
    tern_testkit::peer("tests/oracle/node_modules/binary-version-reader")?;
    let output = Command::new("node")
        .arg(tern_testkit::repo_root().join("tests/oracle/particle-inspect.js"))
        .args(files)
        .output()
        .expect("node runs");
    assert!(output.status.success(), "oracle failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("the oracle prints UTF-8");
    let reports: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("JSON Lines")).collect();
    for report in &reports {
        assert_eq!(report["ok"], true, "the oracle rejected a corpus file: {report}");
    }
    Some(reports)
}

fn corpus_sample() -> Vec<PathBuf> {
    let wanted = [
        "argon-bootloader@4.1.0.bin",
        "argon-softdevice@4.1.0.bin",
        "argon-system-part1@1.5.2.bin",
        "photon-bootloader@1.5.2.bin",
        "photon-system-part1@1.5.2.bin",
        "photon-system-part2@1.5.2.bin",
    ];
    let files: Vec<PathBuf> = tern_testkit::corpus_files("particle/releases")
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| wanted.iter().any(|w| n == *w)))
        .collect();
    assert!(files.len() >= 4, "the corpus should hold most of {wanted:?}; found {files:?}");
    files
}

fn upload(api: &Api, file: &Path) -> (u16, Value) {
    let name = file.file_name().expect("a file name").to_string_lossy().into_owned();
    let bytes = std::fs::read(file).expect("corpus file readable");
    api.post_bytes(&format!("/api/modules?filename={}", name.replace('@', "%40")), &bytes)
}

#[test]
fn uploaded_corpus_modules_are_listed_with_the_metadata_particle_reads() {
    let dir = tern_testkit::scratch("api-upload");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let files = corpus_sample();
    for file in &files {
        let (status, body) = upload(&api, file);
        assert_eq!(status, 201, "{}: {body}", file.display());
        let bytes = std::fs::read(file).unwrap();
        let address = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(body["sha256"], address.as_str(), "the catalog addresses the file by its SHA-256");
        assert!(server.data.join("blobs/sha256").join(&address[..2]).join(&address).is_file(), "blob stored");
        // The same bytes again: accepted, nothing new.
        let (again, body_again) = upload(&api, file);
        assert_eq!((again, &body_again), (200, &body));
    }
    let (status, listed) = api.get("/api/modules");
    assert_eq!(status, 200);
    let listed = listed.as_array().expect("a list").clone();
    assert_eq!(listed.len(), files.len());

    let Some(expected) = oracle(&files) else { return };
    for (file, want) in files.iter().zip(expected) {
        let name = file.file_name().unwrap().to_string_lossy();
        let got = listed.iter().find(|m| m["filename"] == *name).unwrap_or_else(|| panic!("{name} not listed"));
        assert_eq!(got["platform_id"], want["platformId"], "{name}");
        assert_eq!(got["function"], want["moduleFunction"], "{name}");
        assert_eq!(got["index"], want["moduleIndex"], "{name}");
        assert_eq!(got["version"], want["moduleVersion"], "{name}");
        assert_eq!(got["start_address"], want["startAddress"], "{name}");
        assert_eq!(got["size"], want["size"], "{name}");
        assert_eq!(got["module_sha256"], Value::from(want["sha256"].as_str().map(str::to_lowercase)), "{name}");
        let deps: Vec<Value> = want["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["function"] != 0)
            .map(|d| json!({ "function": d["function"], "index": d["index"], "version": d["version"] }))
            .collect();
        let got_deps: Vec<Value> = got["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| json!({ "function": d["function"], "index": d["index"], "version": d["version"] }))
            .collect();
        assert_eq!(got_deps, deps, "{name} dependencies");
        let (status, one) = api.get(&format!("/api/modules/{}", got["sha256"].as_str().unwrap()));
        assert_eq!((status, &one), (200, got));
    }
}

#[test]
fn bad_uploads_get_clear_errors_and_the_server_stays_healthy() {
    let dir = tern_testkit::scratch("api-bad-upload");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The data directory's tern.toml is read: it lowers the upload limit for this test.
    std::fs::write(data.join("tern.toml"), "max_module_size = 2000000\n").unwrap();
    let server = Server::start(&data);
    let api = server.api();

    let real = corpus_sample().remove(0);
    let mut corrupted = std::fs::read(&real).unwrap();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0xff;
    let mut garbage = vec![0u8; 5000];
    let mut x = 0x1234_5678u32;
    for byte in &mut garbage {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    // (what, bytes, status, error code)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", Vec::new(), 400, "empty"),
        ("random bytes", garbage, 422, "unrecognised_module"),
        ("text", b"hello, this is not firmware\n".to_vec(), 422, "unrecognised_module"),
        ("one byte flipped in a real module", corrupted, 422, "integrity_failed"),
        ("over the configured limit", vec![0xff; 2_000_001], 413, "too_large"),
    ];
    for (what, bytes, status, code) in cases {
        let (got, body) = api.post_bytes("/api/modules", &bytes);
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty(), "{what}: a message");
    }
    assert_eq!(api.get("/api/health").0, 200);
    let (_, listed) = api.get("/api/modules");
    assert_eq!(listed, json!([]), "nothing bad entered the catalog");
    // And a good upload still works afterwards.
    assert_eq!(upload(&api, &real).0, 201);
}

#[test]
fn devices_register_once_with_valid_ids_and_platforms() {
    let dir = tern_testkit::scratch("api-devices");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    // (body, status, error code)
    let cases = [
        (json!({ "id": "sensor-1", "platform": "photon" }), 201, None),
        (json!({ "id": "sensor-2", "platform": 12 }), 201, None),
        (json!({ "id": "sensor-1", "platform": "argon" }), 409, Some("device_exists")),
        (json!({ "id": "a/b", "platform": "argon" }), 400, Some("bad_device_id")),
        (json!({ "id": "", "platform": "argon" }), 400, Some("bad_device_id")),
        (json!({ "id": "x".repeat(65), "platform": "argon" }), 400, Some("bad_device_id")),
        (json!({ "id": "ok", "platform": "toaster" }), 400, Some("bad_platform")),
        (json!({ "id": "ok", "platform": 70000 }), 400, Some("bad_platform")),
        (json!({ "id": "ok", "platform": 99 }), 422, Some("unknown_platform")),
        (json!({ "id": "ok" }), 400, Some("bad_request")),
        (json!("not an object"), 400, Some("bad_request")),
    ];
    for (body, status, code) in cases {
        let (got, reply) = api.post_json("/api/devices", body.clone());
        assert_eq!(got, status, "{body}: {reply}");
        match code {
            Some(code) => assert_eq!(reply["error"]["code"], code, "{body}: {reply}"),
            None => assert_eq!(reply["secret"].as_str().map(str::len), Some(64), "{reply}"),
        }
    }
    let (_, list) = api.get("/api/devices");
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sensor-1", "sensor-2"]);
    assert_eq!(list[0]["platform"], "photon");
    assert_eq!(list[1]["platform_id"], 12);
    assert_eq!(list[0]["status"], "offline");
    let (status, shown) = api.get("/api/devices/sensor-1");
    assert_eq!(status, 200);
    assert_eq!(shown["inventory"], Value::Null, "never described");
    assert!(shown.get("secret").is_none(), "the secret is never shown again");
    assert_eq!(shown["history"][0]["kind"], "device.registered");
    let (status, missing) = api.get("/api/devices/nobody");
    assert_eq!((status, &missing["error"]["code"]), (404, &json!("not_found")));
    // A command to a device that is not connected is refused, not queued silently.
    let (status, reply) = api.post_json("/api/devices/sensor-1/commands", json!({ "action": "reboot" }));
    assert_eq!((status, &reply["error"]["code"]), (409, &json!("device_offline")));
    let (status, reply) = api.post_json("/api/devices/sensor-1/commands", json!({ "action": "explode" }));
    assert_eq!((status, &reply["error"]["code"]), (400, &json!("bad_action")));
}

#[test]
fn event_stream_replays_and_follows_events() {
    let dir = tern_testkit::scratch("api-events");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    server.add_device("first", "photon");
    // Replay from the start, filtered to one device, then a live event.
    let lines = api.stream_lines("/api/events?since=0&device=second");
    server.add_device("second", "argon");
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).expect("an event arrives");
        if let Some(data) = line.strip_prefix("data:") {
            events.push(serde_json::from_str::<Value>(data.trim()).expect("event data is JSON"));
        }
    }
    assert_eq!(events[0]["kind"], "device.registered");
    assert_eq!(events[0]["device"], "second", "the filter kept out the first device");
}
