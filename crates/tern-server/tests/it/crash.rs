//! A server that dies at any moment keeps every change together with the event that
//! records it (issue 11, "a row and its event written in one transaction").
//!
//! The server is made to abort just before its N-th write transaction commits (the
//! `TERN_TEST_ABORT_AT_COMMIT` hook: no flush, no unwinding, as a power cut or SIGKILL),
//! while a script of operator and device actions runs against it: tokens created, revoked
//! and rotated; a module uploaded and signed; a product, a release, groups saved and
//! deleted; devices registered, re-configured, disabled, enabled, given a new secret,
//! described over MQTT and removed; a plan made and started, its attempt cancelled by the
//! update task; a rollout started and aborted. For every N until the script completes, the
//! store left behind is opened and replayed: the events must say exactly what the rows
//! hold — no row without its event, no event without its row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tern_proto::{Message, MessageKind, Topic};
use tern_server::store::{SqliteStore, Store, ABORT_AT_COMMIT_ENV};

use crate::plans::{running, statement, Module};
use crate::support::{encode, Api, Body, Server};

/// What the script learned from answers it got (an answer lost to the crash is `None`).
#[derive(Default)]
struct Known {
    /// The operator token as first issued.
    operator_token: Option<String>,
    /// Device `d1`'s secret as registered, and as rotated.
    secret: Option<String>,
    rotated_secret: Option<String>,
    /// The statuses of the answers, in order.
    statuses: Vec<u16>,
}

/// The script, step by step; stops at the first request the server does not answer.
/// Returns whether it ran to the end.
fn script(server: &Server, module: &Module, parts: &[&Module], known: &mut Known) -> bool {
    let api = server.api();
    let statuses = std::cell::RefCell::new(Vec::new());
    let call = |method: &str, path: &str, body: Body| {
        let answer = api.try_call(method, path, body);
        if let Some((status, _)) = &answer {
            statuses.borrow_mut().push(*status);
        }
        answer
    };
    let json = |value: Value| Body::Json(value);
    let sha = module.hex();
    macro_rules! step {
        ($answer:expr) => {
            match $answer {
                Some(answer) => answer,
                None => {
                    known.statuses = statuses.take();
                    return false;
                }
            }
        };
    }
    step!(call("POST", "/api/tokens", json(json!({ "name": "viewer-1", "role": "viewer" }))));
    step!(call("DELETE", "/api/tokens/viewer-1", Body::Json(Value::Null)));
    let (_, issued) = step!(call("POST", "/api/tokens", json(json!({ "name": "op-1", "role": "operator" }))));
    known.operator_token = issued["token"].as_str().map(str::to_owned);
    step!(call("POST", "/api/tokens/op-1/rotate", Body::Json(Value::Null)));
    step!(call("POST", "/api/modules?filename=boot.bin", Body::Bytes(module.bytes.clone())));
    step!(call("PUT", &format!("/api/modules/{sha}/statement"), Body::Bytes(statement(module))));
    step!(call("POST", "/api/products", json(json!({ "id": 7, "platform": "photon" }))));
    step!(call("POST", "/api/products/7/releases", json(json!({ "modules": [sha] }))));
    let group = |name: &str| json!({ "name": name, "product": 7, "filter": ["tag=field"] });
    step!(call("PUT", "/api/groups/field", json(group("field"))));
    step!(call("PUT", "/api/groups/lab", json(group("lab"))));
    step!(call("DELETE", "/api/groups/lab", Body::Json(Value::Null)));
    let (_, added) = step!(call("POST", "/api/devices", json(json!({ "id": "d1", "platform": "photon" }))));
    known.secret = added["secret"].as_str().map(str::to_owned);
    step!(call("PATCH", "/api/devices/d1", json(json!({ "auto_heal": false }))));
    step!(call("PATCH", "/api/devices/d1/fleet", json(json!({ "product": 7, "add_tags": ["field"] }))));
    step!(call("POST", "/api/devices/d1/disable", Body::Json(Value::Null)));
    step!(call("POST", "/api/devices/d1/enable", Body::Json(Value::Null)));
    let (_, rotated) = step!(call("POST", "/api/devices/d1/secret", Body::Json(Value::Null)));
    known.rotated_secret = rotated["secret"].as_str().map(str::to_owned);
    let Some(secret) = known.rotated_secret.clone() else { return false };
    let installed: Vec<_> = parts.iter().map(|m| m.installed()).collect();
    let described = describe(server, "d1", &secret, &encode(&Message::Describe(running(6, &installed))));
    step!(described.then_some(()));
    step!(poll(|| Some(step_shown(&api, "d1")?["inventory"].is_object())).then_some(()));
    let (_, plan) = step!(call("POST", "/api/devices/d1/plans", json(json!({ "modules": [sha] }))));
    let (_, attempt) = step!(call("POST", &format!("/api/plans/{}/start", plan["id"]), json(json!({}))));
    let attempt = attempt["id"].clone();
    step!(call("POST", &format!("/api/attempts/{attempt}/cancel"), Body::Json(Value::Null)));
    let cancelled = || {
        let (_, shown) = api.try_call("GET", &format!("/api/attempts/{attempt}"), Body::Json(Value::Null))?;
        Some(shown["state"] == "cancelled")
    };
    step!(poll(cancelled).then_some(()));
    step!(call("POST", "/api/devices", json(json!({ "id": "d2", "platform": "photon" }))));
    step!(call("DELETE", "/api/devices/d2", Body::Json(Value::Null)));
    let rollout = json!({ "product": 7, "release": 1, "group": "field", "phases": ["100%"] });
    let (_, started) = step!(call("POST", "/api/rollouts", json(rollout)));
    step!(call("POST", &format!("/api/rollouts/{}/abort", started["id"]), Body::Json(Value::Null)));
    known.statuses = statuses.take();
    true
}

/// `GET /api/devices/{id}`, or `None` when the server is gone.
fn step_shown(api: &Api, id: &str) -> Option<Value> {
    api.try_call("GET", &format!("/api/devices/{id}"), Body::Json(Value::Null)).map(|(_, shown)| shown)
}

/// Polls `condition` for up to 10 s; `false` when the server went away (or it never held).
fn poll(mut condition: impl FnMut() -> Option<bool>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match condition() {
            Some(true) => return true,
            Some(false) => std::thread::sleep(Duration::from_millis(20)),
            None => return false,
        }
    }
    false
}

/// Connects as `id`, publishes a Describe at QoS 1 and waits for its PUBACK; `false` when
/// the server went away first.
fn describe(server: &Server, id: &str, secret: &str, payload: &[u8]) -> bool {
    let mut options = MqttOptions::new(format!("{id}-crash"), "127.0.0.1", server.mqtt_port);
    options.set_credentials(id, secret);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 8);
    let topic = Topic::new(id, MessageKind::Describe).to_string();
    if client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                let _ = client.disconnect();
                // Let the DISCONNECT go out.
                for _ in 0..5 {
                    if connection.recv_timeout(Duration::from_millis(50)).is_err() {
                        break;
                    }
                }
                return true;
            }
            Ok(Err(_)) => return false,
            _ => {}
        }
    }
    false
}

/// Every kind of event the script causes (the run that completes makes them all).
const EVERY_KIND: &[&str] = &[
    "token.created",
    "token.revoked",
    "token.rotated",
    "module.uploaded",
    "module.signed",
    "product.created",
    "release.created",
    "group.saved",
    "group.deleted",
    "device.registered",
    "device.policy",
    "device.fleet",
    "device.disabled",
    "device.enabled",
    "device.secret_rotated",
    "device.connected",
    "device.described",
    "plan.created",
    "attempt.created",
    "attempt.state",
    "device.removed",
    "rollout.started",
    "rollout.aborted",
];

/// Opens the store the server left and checks that its events replay to exactly its rows;
/// returns the kinds of the events checked, in order.
fn check_whole(data: &Path, known: &Known, n: u64) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(&data.join("tern.db")).await.expect("the store opens after the crash");
        let events = store.events_after(0, None, 100_000).await.expect("events");
        let of = |kind: &'static str| events.iter().filter(move |e| e.kind == kind);
        // The values of one field over the events of one kind.
        let texts = |kind, field| of(kind).map(|e| e.data[field].as_str().unwrap()).collect::<BTreeSet<&str>>();
        let numbers = |kind, field| of(kind).map(|e| e.data[field].as_i64().unwrap()).collect::<BTreeSet<i64>>();
        let context =
            format!("aborted before commit {n}; events: {:?}", events.iter().map(|e| &e.kind).collect::<Vec<_>>());

        // Tokens: the admin token is made at first start, without an event.
        let tokens = store.list_tokens().await.expect("tokens");
        let rows: BTreeSet<&str> = tokens.iter().map(|t| t.name.as_str()).filter(|n| *n != "admin").collect();
        assert_eq!(rows, texts("token.created", "name"), "tokens: {context}");
        let revoked: BTreeSet<&str> =
            tokens.iter().filter(|t| t.revoked_at.is_some()).map(|t| t.name.as_str()).collect();
        assert_eq!(revoked, texts("token.revoked", "name"), "revoked tokens: {context}");
        if let (Some(first), Some(row)) = (&known.operator_token, tokens.iter().find(|t| t.name == "op-1")) {
            let rotated = row.token_hash != tern_server::auth::hash_secret(first);
            assert_eq!(rotated, of("token.rotated").count() == 1, "token rotation: {context}");
        }

        // The catalog.
        let modules = store.list_modules().await.expect("modules");
        let rows: BTreeSet<&str> = modules.iter().map(|m| m.sha256.as_str()).collect();
        assert_eq!(rows, texts("module.uploaded", "sha256"), "modules: {context}");
        let signed: BTreeSet<&str> =
            modules.iter().filter(|m| m.statement.is_some()).map(|m| m.sha256.as_str()).collect();
        assert_eq!(signed, texts("module.signed", "module"), "signed modules: {context}");

        // Products, releases, groups.
        let products: BTreeSet<i64> =
            store.list_products().await.expect("products").iter().map(|p| i64::from(p.id)).collect();
        assert_eq!(products, numbers("product.created", "product"), "products: {context}");
        let releases: BTreeSet<i64> =
            store.list_releases(7).await.expect("releases").iter().map(|r| i64::from(r.number)).collect();
        assert_eq!(releases, numbers("release.created", "release"), "releases: {context}");
        let groups: BTreeSet<String> = store.list_groups().await.expect("groups").into_iter().map(|g| g.name).collect();
        let mut replayed = BTreeSet::new();
        for event in events.iter().filter(|e| e.kind.starts_with("group.")) {
            let name = event.data["group"].as_str().unwrap().to_owned();
            match event.kind.as_str() {
                "group.saved" => replayed.insert(name),
                _ => replayed.remove(&name),
            };
        }
        assert_eq!(groups, replayed, "groups: {context}");

        // Devices: registered and not removed since; each one's state is its last event's.
        let devices = store.list_devices().await.expect("devices");
        let rows: BTreeSet<&str> = devices.iter().map(|d| d.id.as_str()).collect();
        let mut replayed = BTreeSet::new();
        for event in &events {
            let device = event.device.as_deref().unwrap_or_default();
            match event.kind.as_str() {
                "device.registered" => replayed.insert(device),
                "device.removed" => replayed.remove(device),
                _ => false,
            };
        }
        assert_eq!(rows, replayed, "devices: {context}");
        if let Some(d1) = devices.iter().find(|d| d.id == "d1") {
            let last = |kinds: &[&str]| {
                events.iter().rev().find(|e| e.device.as_deref() == Some("d1") && kinds.contains(&e.kind.as_str()))
            };
            let disabled = last(&["device.disabled", "device.enabled"]).is_some_and(|e| e.kind == "device.disabled");
            assert_eq!(d1.disabled, disabled, "d1 disabled: {context}");
            let auto_heal = last(&["device.policy"]).map(|e| e.data["auto_heal"].clone());
            assert_eq!(d1.policy.auto_heal == Some(false), auto_heal == Some(json!(false)), "d1 policy: {context}");
            let fleet = last(&["device.fleet"]).map(|e| e.data["product"].clone());
            assert_eq!(d1.fleet.product.is_some(), fleet == Some(json!(7)), "d1 fleet: {context}");
            assert_eq!(d1.inventory.is_some(), last(&["device.described"]).is_some(), "d1 inventory: {context}");
            if let (Some(first), false) = (&known.secret, d1.disabled) {
                let hash = store.device_secret_hash("d1").await.expect("a secret").expect("d1 may connect");
                let rotated = hash != tern_server::auth::hash_secret(first);
                assert_eq!(rotated, last(&["device.secret_rotated"]).is_some(), "d1 secret: {context}");
            }
        }

        // Plans and attempts: each with its event; an attempt's state is its last event's.
        let plans = store.device_plans("d1", 100).await.expect("plans");
        let created = numbers("plan.created", "plan");
        assert_eq!(plans.iter().map(|p| p.id).collect::<BTreeSet<_>>(), created, "plans: {context}");
        let attempts = store.device_attempts("d1", 100).await.expect("attempts");
        let created: BTreeMap<i64, i64> = of("attempt.created")
            .map(|e| (e.data["attempt"].as_i64().unwrap(), e.data["plan"].as_i64().unwrap()))
            .collect();
        let rows: BTreeMap<i64, i64> = attempts.iter().map(|a| (a.id, a.plan_id.unwrap())).collect();
        assert_eq!(rows, created, "attempts: {context}");
        for plan in &plans {
            let started = created.values().any(|&p| p == plan.id);
            assert_eq!(plan.status.name() == "started", started, "plan {} status: {context}", plan.id);
        }
        for attempt in &attempts {
            let last = of("attempt.state").rfind(|e| e.data["attempt"] == attempt.id);
            let state = last.map_or("queued".to_owned(), |e| e.data["state"].as_str().unwrap().to_owned());
            assert_eq!(attempt.state.name(), state, "attempt {} state: {context}", attempt.id);
        }

        // Rollouts: each started with its event, aborted only with the abort's.
        let rollouts = store.list_rollouts().await.expect("rollouts");
        let started = numbers("rollout.started", "rollout");
        assert_eq!(rollouts.iter().map(|r| r.id).collect::<BTreeSet<_>>(), started, "rollouts: {context}");
        for rollout in &rollouts {
            let aborted = of("rollout.aborted").any(|e| e.data["rollout"] == rollout.id);
            assert_eq!(rollout.status.name() == "aborted", aborted, "rollout {} status: {context}", rollout.id);
        }
        events.into_iter().map(|e| e.kind).collect()
    })
}

#[test]
fn a_crash_before_any_commit_leaves_every_row_with_its_event() {
    let dir = tern_testkit::scratch("crash-commits");
    let module = Module::load("releases/photon-bootloader@2.0.0+lto.bin");
    let p152 = [
        Module::load("releases/photon-bootloader@1.5.2+lto.bin"),
        Module::load("releases/photon-system-part1@1.5.2.bin"),
        Module::load("releases/photon-system-part2@1.5.2.bin"),
    ];
    let parts: Vec<&Module> = p152.iter().collect();
    let args = ["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"];
    let mut crashes = 0;
    let mut checked = 0;
    // Commit 1 is the admin token a first start makes, before the server listens.
    for n in 2u64.. {
        assert!(n < 400, "the script never completed: the server kept dying");
        let data = dir.join(format!("data-{n}"));
        let abort_at = n.to_string();
        let mut server = Server::start_with_env(&data, &args, &[(ABORT_AT_COMMIT_ENV, &abort_at)]);
        let mut known = Known::default();
        let completed = script(&server, &module, &parts, &mut known);
        if completed && !server.exited_within(Duration::from_millis(300)) {
            server.kill();
            // The whole script ran, every request accepted: the run that crashed nowhere.
            assert!(known.statuses.iter().all(|s| (200..300).contains(s)), "statuses: {:?}", known.statuses);
            let kinds = check_whole(&data, &known, n);
            for kind in EVERY_KIND {
                assert!(kinds.iter().any(|k| k == kind), "the script made no {kind} event: {kinds:?}");
            }
            checked += kinds.len();
            break;
        }
        assert!(server.exited_within(Duration::from_secs(10)), "commit {n}: the server neither answered nor died");
        crashes += 1;
        checked += check_whole(&data, &known, n).len();
        // The server starts again on what it left, and answers.
        let restarted = Server::start(&data);
        assert_eq!(restarted.api().get("/api/health").0, 200, "commit {n}: the server restarts");
        drop(restarted);
        let _ = std::fs::remove_dir_all(&data);
    }
    println!("{crashes} crashes, one before each commit; {checked} events checked against their rows");
    assert!(crashes >= 25, "the script has a commit per change to crash at: {crashes}");
}
