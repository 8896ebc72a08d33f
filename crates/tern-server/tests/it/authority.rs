//! Operators and tokens: roles on every route, expiry, revocation, rotation, the audit
//! trail in events, and the `bearer` scheme in any case.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Api, Server};

/// Creates a token with `role` as the admin and returns it.
fn token(api: &Api, name: &str, role: &str) -> String {
    let (status, reply) = api.post_json("/api/tokens", json!({ "name": name, "role": role }));
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["role"], role);
    assert_eq!(reply["state"], "active");
    reply["token"].as_str().expect("the token is shown once").to_owned()
}

/// What the server holds, as read through the API: every list and one device.
fn snapshot(api: &Api) -> Vec<Value> {
    ["/api/tokens", "/api/devices", "/api/modules", "/api/products", "/api/groups", "/api/rollouts", "/api/devices/d1"]
        .iter()
        .map(|path| {
            let (status, body) = api.get(path);
            assert_eq!(status, 200, "GET {path}: {body}");
            body
        })
        .collect()
}

/// Every (method, path) of the OpenAPI document, path parameters filled with names that
/// exist (so a refusal is the role check, not a 404).
fn documented_routes(api: &Api) -> Vec<(String, String)> {
    let (_, doc) = api.with_token(None).get("/api/openapi.json");
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let filled = path
                .replace("{id}", if path.starts_with("/api/devices") { "d1" } else { "1" })
                .replace("{sha256}", &"0".repeat(64))
                .replace("{number}", "1")
                .replace("{name}", if path.starts_with("/api/tokens") { "admin" } else { "g1" });
            routes.push((method.to_uppercase(), filled));
        }
    }
    routes
}

#[test]
fn a_viewer_reads_everything_and_changes_nothing() {
    let dir = tern_testkit::scratch("authority-viewer");
    let server = Server::start(&dir.join("data"));
    let admin = server.api();
    server.add_device("d1", "argon");
    let viewer = admin.with_token(Some(&token(&admin, "watcher", "viewer")));
    let before = snapshot(&admin);
    let routes = documented_routes(&admin);
    let mutating: Vec<_> = routes.iter().filter(|(method, _)| method != "GET").collect();
    assert!(mutating.len() >= 25, "the document lists the mutating routes: {mutating:?}");
    for (method, path) in &mutating {
        let body = (method != "DELETE").then(|| json!({}));
        let (status, reply) = viewer.call(method, path, body, None);
        assert_eq!(status, 403, "{method} {path} as a viewer: {reply}");
        assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains("role viewer"), "{reply}");
    }
    // Reading is what a viewer is for (token management is the admin's).
    // (The event stream stays open; it is read in the API tests.)
    for (method, path) in routes.iter().filter(|(method, path)| method == "GET" && path != "/api/events") {
        let (status, reply) = viewer.call(method, path, None, None);
        let expected = if path.starts_with("/api/tokens") { 403 } else { status };
        assert_eq!(status, expected, "GET {path}: {reply}");
        assert_ne!(status, 401, "GET {path}: {reply}");
    }
    assert_eq!(snapshot(&admin), before, "a viewer's calls changed something");
}

#[test]
fn operators_update_but_only_admins_manage_tokens_and_remove() {
    let dir = tern_testkit::scratch("authority-operator");
    let server = Server::start(&dir.join("data"));
    let admin = server.api();
    let operator = admin.with_token(Some(&token(&admin, "ops", "operator")));
    let (status, reply) = operator.post_json("/api/devices", json!({ "id": "d1", "platform": "argon" }));
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = operator.post_json("/api/devices/d1/secret", json!({}));
    assert_eq!(status, 200, "an operator resets a device's secret: {reply}");
    for (method, path) in [("DELETE", "/api/devices/d1"), ("GET", "/api/tokens"), ("POST", "/api/tokens/ops/rotate")] {
        let (status, reply) = operator.call(method, path, (method == "POST").then(|| json!({})), None);
        assert_eq!((status, &reply["error"]["code"]), (403, &json!("forbidden")), "{method} {path}: {reply}");
    }
    let (status, reply) = operator.post_json("/api/tokens", json!({ "name": "mine", "role": "admin" }));
    assert_eq!(status, 403, "an operator cannot make itself an admin: {reply}");
    // The audit trail: the token's name is in the events its calls caused.
    let (_, device) = admin.get("/api/devices/d1");
    let kinds: Vec<(&str, &str)> = device["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["actor"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(kinds, [("device.registered", "ops"), ("device.secret_rotated", "ops")]);
    let (status, reply) = admin.delete("/api/devices/d1");
    assert_eq!(status, 200, "{reply}");
}

#[test]
fn revoked_expired_and_rotated_tokens_stop_working() {
    let dir = tern_testkit::scratch("authority-lifecycle");
    let server = Server::start(&dir.join("data"));
    let admin = server.api();
    // The first token is the admin token named `admin`.
    let (_, list) = admin.get("/api/tokens");
    assert_eq!(list[0]["name"], "admin");
    assert_eq!(list[0]["role"], "admin");

    let gone = token(&admin, "gone", "viewer");
    assert_eq!(admin.with_token(Some(&gone)).get("/api/devices").0, 200);
    let (status, reply) = admin.delete("/api/tokens/gone");
    assert_eq!((status, &reply["state"]), (200, &json!("revoked")), "{reply}");
    let (status, reply) = admin.with_token(Some(&gone)).get("/api/devices");
    assert_eq!((status, &reply["error"]["code"]), (401, &json!("unauthorized")));
    assert!(reply["error"]["message"].as_str().unwrap().contains("revoked"), "{reply}");

    let soon = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 + 1500;
    let (status, reply) =
        admin.post_json("/api/tokens", json!({ "name": "brief", "role": "operator", "expires_at": soon }));
    assert_eq!(status, 201, "{reply}");
    let brief = admin.with_token(reply["token"].as_str());
    assert_eq!(brief.get("/api/devices").0, 200);
    std::thread::sleep(Duration::from_millis(1700));
    let (status, reply) = brief.get("/api/devices");
    assert_eq!(status, 401, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("expired"), "{reply}");

    let old = token(&admin, "rolling", "operator");
    let (status, reply) = admin.post_json("/api/tokens/rolling/rotate", json!({}));
    assert_eq!(status, 200, "{reply}");
    let new = reply["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(admin.with_token(Some(&old)).get("/api/devices").0, 401, "the old token stopped working");
    assert_eq!(admin.with_token(Some(&new)).get("/api/devices").0, 200, "the new one works");
    assert_eq!(reply["role"], "operator", "rotation keeps the role");

    // The scheme is case-insensitive (RFC 9110 §11.1); anything else is refused.
    for header in [format!("bearer {new}"), format!("BEARER {new}"), format!("Bearer  {new}")] {
        let (status, reply) = admin.call("GET", "/api/devices", None, Some(&header));
        assert_eq!(status, 200, "{header}: {reply}");
    }
    let (status, _) = admin.call("GET", "/api/devices", None, Some(&format!("Token {new}")));
    assert_eq!(status, 401);
}

#[test]
fn bad_token_requests_get_clear_errors_and_change_nothing() {
    let dir = tern_testkit::scratch("authority-bad");
    let server = Server::start(&dir.join("data"));
    let admin = server.api();
    token(&admin, "taken", "viewer");
    let (_, before) = admin.get("/api/tokens");
    let past = 1_000_000_000_000i64;
    // (method, path, body, status, code)
    let cases = [
        ("POST", "/api/tokens", json!({ "name": "x", "role": "root" }), 400, "bad_role"),
        ("POST", "/api/tokens", json!({ "name": "x", "role": "viewer", "expires_at": past }), 422, "expiry_in_past"),
        ("POST", "/api/tokens", json!({ "name": "a b", "role": "viewer" }), 400, "bad_token_name"),
        ("POST", "/api/tokens", json!({ "name": "", "role": "viewer" }), 400, "bad_token_name"),
        ("POST", "/api/tokens", json!({ "name": "taken", "role": "admin" }), 409, "conflict"),
        ("POST", "/api/tokens", json!({ "role": "viewer" }), 400, "bad_request"),
        ("DELETE", "/api/tokens/nobody", Value::Null, 404, "not_found"),
        ("POST", "/api/tokens/nobody/rotate", json!({}), 404, "not_found"),
        ("DELETE", "/api/tokens/admin", Value::Null, 409, "last_admin"),
        ("GET", "/api/tokens?limit=0", Value::Null, 400, "bad_limit"),
    ];
    for (method, path, body, status, code) in cases {
        let body = (!body.is_null()).then_some(body);
        let (got, reply) = admin.call(method, path, body.clone(), None);
        assert_eq!((got, &reply["error"]["code"]), (status, &json!(code)), "{method} {path} {body:?}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap_or_default().is_empty());
    }
    assert_eq!(admin.get("/api/tokens").1, before, "nothing changed");
    // With a second admin the first may go.
    let second = token(&admin, "second-admin", "admin");
    assert_eq!(admin.delete("/api/tokens/admin").0, 200);
    let (status, reply) = admin.with_token(Some(&second)).delete("/api/tokens/second-admin");
    assert_eq!((status, &reply["error"]["code"]), (409, &json!("last_admin")), "{reply}");
}
