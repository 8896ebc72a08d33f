//! Install plans end to end (issue 4, section 4 "Dependency healing"): module statements in
//! the catalog, per-device update policy, plans computed by the server from its catalog and
//! the device's last Describe, the rules for starting them, and automatic healing of devices
//! that describe safe mode because of an unmet dependency.
//!
//! Everything runs against the real `tern-server` binary. Devices are scripted MQTT clients
//! (rumqttc) that describe a chosen inventory of real Device OS modules from the corpus
//! (Photon, platform 6; Argon, platform 12), receive offers and pull blocks. The modules'
//! dependencies are what Particle shipped in them; statements are signed with a test key,
//! and every signed document an offer carries is verified with that key here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tern_image::manifest::build::Document;
use tern_image::manifest::{Kind, ModuleEntry, SignedDocument};
use tern_image::{Dependency, Integrity, ModuleFunction, ModuleInfo};
use tern_proto::{
    BlockRequest, BootReason, Capacity, Describe, InstalledModule, List, Message, MessageKind, OfferedModule, Phase,
    Progress, SafeModeCause, Topic,
};

use crate::support::{encode, wait_for, Api, Server};

/// How long anything the server does in answer to a device may take on loopback.
const SETTLE: Duration = Duration::from_secs(15);

/// How long a whole transfer (about 0.5 MB in 1 KiB blocks) may take on loopback.
const TRANSFER: Duration = Duration::from_secs(90);

/// The release key of these tests: signs every module statement.
fn release_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

// ---------------------------------------------------------------------------------------
// Corpus modules, statements and the catalog

/// A real module file from the corpus.
pub(crate) struct Module {
    name: &'static str,
    pub(crate) bytes: Vec<u8>,
    info: ModuleInfo,
    sha256: [u8; 32],
}

impl Module {
    /// `path` is relative to the corpus' `particle/` directory.
    pub(crate) fn load(path: &'static str) -> Module {
        let full = tern_testkit::corpus().join("particle").join(path);
        let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
        let info = tern_image::inspect(&bytes).info.unwrap_or_else(|| panic!("{path} is a module"));
        let name = path.rsplit('/').next().expect("a file name");
        let sha256 = Sha256::digest(&bytes).into();
        Module { name, bytes, info, sha256 }
    }

    pub(crate) fn hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// What the module's statement lists.
    fn entry(&self) -> ModuleEntry {
        ModuleEntry {
            function: self.info.function,
            index: self.info.index,
            version: self.info.version,
            sha256: self.sha256,
            size: self.bytes.len() as u32,
            start_address: self.info.start_address,
            dependencies: self.info.dependencies,
            format: self.info.format,
        }
    }

    /// The module as a device describes it once installed (dependencies met).
    pub(crate) fn installed(&self) -> InstalledModule {
        InstalledModule {
            function: self.info.function,
            index: self.info.index,
            version: self.info.version,
            sha256: self.sha256,
            size: self.bytes.len() as u32,
            integrity: Integrity::Valid,
            dependencies_met: true,
        }
    }

    /// The slot name the server uses in reasons (`system_part 1`, `bootloader`).
    fn slot_name(&self) -> String {
        slot_name(self.info.function, self.info.index)
    }

    /// Its requirement on `function`, as the file declares it.
    fn needs(&self, function: ModuleFunction) -> Dependency {
        *self.info.dependencies().find(|d| d.function == function).unwrap_or_else(|| panic!("{} needs it", self.name))
    }
}

fn slot_name(function: ModuleFunction, index: u8) -> String {
    match function {
        ModuleFunction::SystemPart | ModuleFunction::UserPart | ModuleFunction::Asset => {
            format!("{} {index}", function.name())
        }
        _ if index == 0 => function.name().to_owned(),
        _ => format!("{} {index}", function.name()),
    }
}

/// A signed document of `kind` listing `modules` for `platform`.
fn signed_document(kind: Kind, platform: u16, modules: Vec<ModuleEntry>) -> Vec<u8> {
    let document = Document {
        kind,
        platform_id: platform,
        product_id: 0,
        security_counter: 1,
        created: 1_700_000_000,
        modules,
        name: String::new(),
    };
    document.sign(&release_key()).expect("the document signs")
}

/// The module's statement, as `tern module sign` makes it.
pub(crate) fn statement(module: &Module) -> Vec<u8> {
    signed_document(Kind::ModuleStatement, module.info.platform_id, vec![module.entry()])
}

/// Uploads `module` to the catalog, with its statement when `signed`.
fn upload(api: &Api, module: &Module, signed: bool) {
    let (status, body) = api.post_bytes(&format!("/api/modules?filename={}", module.name), &module.bytes);
    assert!(status == 201 || status == 200, "{}: {status} {body}", module.name);
    if signed {
        let (status, body) = api.put_bytes(&format!("/api/modules/{}/statement", module.hex()), &statement(module));
        assert_eq!(status, 200, "{}: {body}", module.name);
    }
}

// ---------------------------------------------------------------------------------------
// A scripted device

/// An offer as the device received it.
struct Offer {
    attempt: u64,
    signed: Vec<Vec<u8>>,
    modules: Vec<OfferedModule>,
    window: u8,
    max_block: u32,
}

/// A device reduced to its protocol behaviour over a real MQTT connection. A thread pumps
/// the connection and hands every downlink payload to the test.
struct Device {
    id: String,
    client: Client,
    inbox: mpsc::Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
}

impl Device {
    /// Connects, subscribes to its downlink topics and describes `describe`.
    fn connect(server: &Server, id: &str, secret: &str, describe: &Describe) -> Device {
        let mut options = MqttOptions::new(format!("{id}-plans"), "127.0.0.1", server.mqtt_port);
        options.set_credentials(id, secret);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut connection) = Client::new(options, 64);
        let (to_test, inbox) = mpsc::channel();
        let (acks, acked) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let pump = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match connection.recv_timeout(Duration::from_millis(100)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        let _ = acks.send(ack.code == rumqttc::ConnectReturnCode::Success);
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        let _ = acks.send(true);
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                        let _ = to_test.send(publish.payload.to_vec());
                    }
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
        });
        let device = Device { id: id.to_owned(), client, inbox, stop, pump: Some(pump) };
        assert_eq!(acked.recv_timeout(SETTLE), Ok(true), "{id}: the gateway accepts the connection");
        device.client.subscribe(format!("tern/v1/d/{id}/down/#"), QoS::AtLeastOnce).expect("subscribe queued");
        assert_eq!(acked.recv_timeout(SETTLE), Ok(true), "{id}: the gateway grants the subscription");
        device.describe(describe);
        device
    }

    fn publish(&self, kind: MessageKind, payload: Vec<u8>) {
        let topic = Topic::new(&self.id, kind).to_string();
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).expect("publish queued");
    }

    fn describe(&self, describe: &Describe) {
        self.publish(MessageKind::Describe, encode(&Message::Describe(*describe)));
    }

    /// The next offer that arrives within `timeout` (other downlinks are skipped).
    fn next_offer(&self, timeout: Duration) -> Option<Offer> {
        let deadline = Instant::now() + timeout;
        loop {
            let payload = self.inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
            let message = Message::decode(&payload).expect("the server sends valid messages");
            if let Message::UpdateOffer(offer) = message {
                return Some(Offer {
                    attempt: offer.attempt,
                    signed: offer.signed.iter().map(|d| d.to_vec()).collect(),
                    modules: offer.modules.iter().copied().collect(),
                    window: offer.window,
                    max_block: offer.max_block,
                });
            }
        }
    }

    /// Pulls every block of `offer` (a window of requests in flight, re-asking after 5 s of
    /// silence) and returns the modules' bytes, each checked against the offered SHA-256.
    fn pull(&self, offer: &Offer) -> Vec<Vec<u8>> {
        let block = offer.max_block.min(4096);
        let mut staging: Vec<Vec<Option<Vec<u8>>>> =
            offer.modules.iter().map(|m| vec![None; m.size.div_ceil(block) as usize]).collect();
        let mut in_flight: Vec<(u8, u32, Instant)> = Vec::new();
        let start = Instant::now();
        while staging.iter().flatten().any(Option::is_none) {
            assert!(start.elapsed() < TRANSFER, "{}: the transfer did not finish in {TRANSFER:?}", self.id);
            in_flight.retain(|(_, _, at)| at.elapsed() < Duration::from_secs(5));
            let missing = staging.iter().enumerate().flat_map(|(m, blocks)| {
                blocks.iter().enumerate().filter(|(_, b)| b.is_none()).map(move |(b, _)| (m as u8, b as u32 * block))
            });
            let wanted: Vec<(u8, u32)> = missing
                .filter(|&(m, o)| !in_flight.iter().any(|&(fm, fo, _)| fm == m && fo == o))
                .take(usize::from(offer.window).saturating_sub(in_flight.len()))
                .collect();
            for (module, offset) in wanted {
                in_flight.push((module, offset, Instant::now()));
                let request = BlockRequest { attempt: offer.attempt, module, offset, length: block };
                self.publish(MessageKind::BlockRequest, encode(&Message::BlockRequest(request)));
            }
            let Ok(payload) = self.inbox.recv_timeout(Duration::from_millis(100)) else { continue };
            if let Message::Block(got) = Message::decode(&payload).expect("the server sends valid messages") {
                assert_eq!(got.attempt, offer.attempt, "blocks belong to the offered attempt");
                let slot = &mut staging[usize::from(got.module)][(got.offset / block) as usize];
                *slot = Some(got.data.to_vec());
                in_flight.retain(|&(m, o, _)| !(m == got.module && o == got.offset));
            }
        }
        offer
            .modules
            .iter()
            .zip(staging)
            .map(|(offered, blocks)| {
                let bytes: Vec<u8> = blocks.into_iter().flatten().flatten().collect();
                assert_eq!(bytes.len() as u32, offered.size);
                assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), offered.sha256, "bytes hash as offered");
                bytes
            })
            .collect()
    }

    /// Reports `phase` of `offer` with every byte held.
    fn report(&self, offer: &Offer, phase: Phase) {
        let total = offer.modules.iter().map(|m| u64::from(m.size)).sum();
        let progress = Progress { attempt: offer.attempt, phase, bytes_done: total, bytes_total: total };
        self.publish(MessageKind::Progress, encode(&Message::Progress(progress)));
    }

    /// Disconnects cleanly and waits for the DISCONNECT to go out.
    fn disconnect(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.client.disconnect();
        if let Some(pump) = self.pump.take() {
            // The pump ends when the DISCONNECT is sent; the flag bounds it otherwise.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !pump.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop.store(true, Ordering::Relaxed);
            let _ = pump.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A Describe of `modules`, running normally.
pub(crate) fn running(platform: u16, modules: &[InstalledModule]) -> Describe {
    Describe {
        platform,
        boot_reason: BootReason::Normal,
        safe_mode: None,
        unmet: None,
        confirmed: true,
        modules: List::from_slice(modules).expect("few modules"),
        capacity: None,
        security_counter: None,
        last_result: None,
    }
}

/// A Describe of `modules` in safe mode because `unmet` is missing.
fn safe_mode(platform: u16, modules: &[InstalledModule], unmet: Dependency) -> Describe {
    Describe {
        boot_reason: BootReason::SafeMode,
        safe_mode: Some(SafeModeCause::UnmetDependency),
        unmet: Some(unmet),
        ..running(platform, modules)
    }
}

/// An application the catalog does not know (built elsewhere), as a device describes it.
fn foreign_app(index: u8, version: u32, byte: u8, dependencies_met: bool) -> InstalledModule {
    InstalledModule {
        function: ModuleFunction::UserPart,
        index,
        version,
        sha256: [byte; 32],
        size: 4000,
        integrity: Integrity::Valid,
        dependencies_met,
    }
}

// ---------------------------------------------------------------------------------------
// API helpers

/// Registers `id` with the policy fields of `policy` (merged into the request) and
/// returns its secret.
fn add_device(api: &Api, id: &str, platform: &str, policy: Value) -> String {
    let mut body = json!({ "id": id, "platform": platform });
    body.as_object_mut().expect("an object").extend(policy.as_object().expect("an object").clone());
    let (status, added) = api.post_json("/api/devices", body);
    assert_eq!(status, 201, "{added}");
    added["secret"].as_str().expect("a secret").to_owned()
}

fn shown(api: &Api, id: &str) -> Value {
    let (status, shown) = api.get(&format!("/api/devices/{id}"));
    assert_eq!(status, 200, "{shown}");
    shown
}

fn plans(api: &Api, id: &str) -> Vec<Value> {
    let (status, list) = api.get(&format!("/api/devices/{id}/plans"));
    assert_eq!(status, 200, "{list}");
    list.as_array().expect("a list").clone()
}

fn attempts(api: &Api, id: &str) -> Vec<Value> {
    shown(api, id)["attempts"].as_array().expect("a list").clone()
}

/// The events of `kind` in the device's history.
fn events(api: &Api, id: &str, kind: &str) -> Vec<Value> {
    let shown = shown(api, id);
    shown["history"].as_array().expect("a list").iter().filter(|e| e["kind"] == kind).cloned().collect()
}

/// Waits until the server described the device with `modules` (SHA-256s, in order).
fn wait_described(api: &Api, id: &str, modules: &[InstalledModule]) {
    let want: Vec<String> = modules.iter().map(|m| hex::encode(m.sha256)).collect();
    wait_for(&format!("{id}'s Describe"), SETTLE, || {
        let shown = shown(api, id);
        let got: Vec<String> = shown["inventory"]["modules"]
            .as_array()
            .map(|l| l.iter().map(|m| m["sha256"].as_str().unwrap_or_default().to_owned()).collect())
            .unwrap_or_default();
        got == want
    });
}

/// Disconnects `device` and waits until the server handled its disconnection: the uplink
/// handles a device's messages in order, so everything it sent before (a Describe, and the
/// heal check that follows it) has been handled too.
fn settle(api: &Api, device: Device) {
    let id = device.id.clone();
    let before = events(api, &id, "device.disconnected").len();
    device.disconnect();
    wait_for(&format!("{id}'s disconnection"), SETTLE, || events(api, &id, "device.disconnected").len() > before);
}

/// Makes a plan; returns the status and body.
fn make_plan(api: &Api, id: &str, modules: &[&Module]) -> (u16, Value) {
    let hashes: Vec<String> = modules.iter().map(|m| m.hex()).collect();
    api.post_json(&format!("/api/devices/{id}/plans"), json!({ "modules": hashes }))
}

fn start(api: &Api, plan: &Value, body: Value) -> (u16, Value) {
    api.post_json(&format!("/api/plans/{}/start", plan["id"]), body)
}

fn step_hashes(plan: &Value) -> Vec<String> {
    plan["steps"].as_array().expect("steps").iter().map(|s| s["sha256"].as_str().expect("a hash").to_owned()).collect()
}

/// Checks that every step's declared dependencies are met by what the device described
/// plus the steps before it: the order a device can install them in.
fn assert_dependency_order(steps: &[&Module], installed: &[InstalledModule]) {
    let mut state: Vec<(ModuleFunction, u8, u32)> =
        installed.iter().map(|m| (m.function, m.index, m.version)).collect();
    for step in steps {
        for need in step.info.dependencies() {
            let held = state.iter().rev().find(|(f, i, _)| *f == need.function && *i == need.index);
            assert!(
                held.is_some_and(|(_, _, v)| *v >= need.version),
                "{} needs {:?} >= {} before it, which neither the device nor an earlier step has",
                step.name,
                need.function,
                need.version
            );
        }
        state.retain(|(f, i, _)| !(*f == step.info.function && *i == step.info.index));
        state.push((step.info.function, step.info.index, step.info.version));
    }
}

/// Checks that `offer` carries exactly `steps`, in order, each with its own statement
/// signed by the release key.
fn assert_offer_is(offer: &Offer, steps: &[&Module]) {
    let offered: Vec<[u8; 32]> = offer.modules.iter().map(|m| m.sha256).collect();
    let expected: Vec<[u8; 32]> = steps.iter().map(|m| m.sha256).collect();
    assert_eq!(offered, expected, "the offer lists the plan's modules in the plan's order");
    assert_eq!(offer.signed.len(), steps.len(), "one signed document per module");
    let trusted = [release_key().verifying_key()];
    for (document, module) in offer.signed.iter().zip(steps) {
        let verified = SignedDocument::parse(document).and_then(|d| d.verify(&trusted));
        let verified = verified.unwrap_or_else(|e| panic!("{}: the statement verifies: {e}", module.name));
        assert_eq!(verified.kind, Kind::ModuleStatement);
        let entries: Vec<&ModuleEntry> = verified.modules().collect();
        assert_eq!(entries, [&module.entry()], "{}: the statement names this module", module.name);
    }
}

// ---------------------------------------------------------------------------------------
// Statements

#[test]
fn statements_are_accepted_only_for_the_module_they_describe() {
    let dir = tern_testkit::scratch("plans-statements");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let boot = Module::load("releases/photon-bootloader@2.0.0+lto.bin");
    let part1 = Module::load("releases/photon-system-part1@2.0.1.bin");
    upload(&api, &boot, false);
    upload(&api, &part1, false);
    let path = |m: &Module| format!("/api/modules/{}/statement", m.hex());

    let release = signed_document(Kind::Release, 6, vec![boot.entry()]);
    let good = statement(&boot);
    let mut other_version = boot.entry();
    other_version.version += 1;
    let lying = signed_document(Kind::ModuleStatement, 6, vec![other_version]);
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    // (module path, body, status, code); every refusal leaves the module unsigned.
    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (path(&part1), good.clone(), 422, "bad_statement"),
        (path(&boot), release, 422, "bad_statement"),
        (path(&boot), lying, 422, "bad_statement"),
        (path(&boot), b"garbage".to_vec(), 422, "bad_statement"),
        (path(&boot), Vec::new(), 422, "bad_statement"),
        (path(&boot), good[..good.len() / 2].to_vec(), 422, "bad_statement"),
        (format!("/api/modules/{}/statement", "0".repeat(64)), good.clone(), 404, "not_found"),
        (format!("/api/modules/{}/statement", "f00d"), good.clone(), 404, "not_found"),
    ];
    for (path, body, status, code) in &cases {
        let (got, reply) = api.put_bytes(path, body);
        assert_eq!((got, reply["error"]["code"].as_str()), (*status, Some(*code)), "{path}: {reply}");
    }
    let (_, list) = api.get("/api/modules");
    assert!(list.as_array().unwrap().iter().all(|m| m["statement"].is_null()), "{list}");

    // The server holds no keys and cannot judge a signature (devices do): a statement whose
    // signature is broken but whose contents match is stored; the device refuses it later.
    let (status, signed) = api.put_bytes(&path(&boot), &tampered);
    assert_eq!(status, 200, "{signed}");
    // The right statement replaces it.
    let (status, signed) = api.put_bytes(&path(&boot), &good);
    assert_eq!(status, 200, "{signed}");
    let address = hex::encode(Sha256::digest(&good));
    assert_eq!(signed["statement"], json!(address), "the statement is stored by content address");
    let (_, list) = api.get("/api/modules");
    let statement_of = |m: &Module| {
        list.as_array().unwrap().iter().find(|e| e["sha256"] == json!(m.hex())).expect("listed")["statement"].clone()
    };
    assert_eq!(statement_of(&boot), json!(address));
    assert_eq!(statement_of(&part1), Value::Null);
    assert_eq!(api.get(&format!("/api/modules/{}", boot.hex())).1["statement"], json!(address));
}

// ---------------------------------------------------------------------------------------
// Policy

#[test]
fn device_policy_defaults_by_connectivity_and_can_be_changed() {
    let dir = tern_testkit::scratch("plans-policy");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    // (id, policy fields at registration, expected policy)
    let registrations = [
        ("p-default", json!({}), json!({ "connectivity": "wifi", "auto_heal": true })),
        ("p-wifi", json!({ "connectivity": "wifi" }), json!({ "connectivity": "wifi", "auto_heal": true })),
        ("p-eth", json!({ "connectivity": "ethernet" }), json!({ "connectivity": "ethernet", "auto_heal": true })),
        ("p-cell", json!({ "connectivity": "cellular" }), json!({ "connectivity": "cellular", "auto_heal": false })),
        (
            "p-cell-on",
            json!({ "connectivity": "cellular", "auto_heal": true }),
            json!({ "connectivity": "cellular", "auto_heal": true }),
        ),
        (
            "p-wifi-off",
            json!({ "connectivity": "wifi", "auto_heal": false }),
            json!({ "connectivity": "wifi", "auto_heal": false }),
        ),
    ];
    let policy = |v: &Value| json!({ "connectivity": v["connectivity"], "auto_heal": v["auto_heal"] });
    for (id, fields, expected) in &registrations {
        let mut body = json!({ "id": id, "platform": "photon" });
        body.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        let (status, added) = api.post_json("/api/devices", body);
        assert_eq!(status, 201, "{added}");
        assert_eq!(&policy(&added), expected, "{id} as registered");
        assert_eq!(&policy(&shown(&api, id)), expected, "{id} as shown");
    }
    let (_, list) = api.get("/api/devices");
    for (id, _, expected) in &registrations {
        let listed = list.as_array().unwrap().iter().find(|d| d["id"] == *id).expect("listed");
        assert_eq!(&policy(listed), expected, "{id} as listed");
    }

    // Changes, applied in order to p-cell: (body, status, policy or error code).
    let changes = [
        (json!({ "auto_heal": true }), 200, json!({ "connectivity": "cellular", "auto_heal": true })),
        (json!({ "auto_heal": null }), 200, json!({ "connectivity": "cellular", "auto_heal": false })),
        (json!({ "connectivity": "wifi" }), 200, json!({ "connectivity": "wifi", "auto_heal": true })),
        (json!({ "auto_heal": false }), 200, json!({ "connectivity": "wifi", "auto_heal": false })),
        (json!({ "connectivity": "ethernet" }), 200, json!({ "connectivity": "ethernet", "auto_heal": false })),
        (json!({}), 200, json!({ "connectivity": "ethernet", "auto_heal": false })),
        (json!({ "connectivity": "satellite" }), 400, json!("bad_connectivity")),
        (json!({ "connectivity": 3 }), 400, json!("bad_request")),
        (json!({ "auto_heal": "yes" }), 400, json!("bad_request")),
        (
            json!({ "connectivity": "cellular", "auto_heal": null }),
            200,
            json!({ "connectivity": "cellular", "auto_heal": false }),
        ),
    ];
    for (body, status, expected) in &changes {
        let (got, reply) = api.patch_json("/api/devices/p-cell", body.clone());
        assert_eq!(got, *status, "PATCH {body}: {reply}");
        if *status == 200 {
            assert_eq!(&reply, expected, "PATCH {body}");
            assert_eq!(&policy(&shown(&api, "p-cell")), expected, "after PATCH {body}");
        } else {
            assert_eq!(&reply["error"]["code"], expected, "PATCH {body}: {reply}");
        }
    }
    // A refused change changed nothing; each accepted one is in the device's history.
    assert_eq!(policy(&shown(&api, "p-cell")), json!({ "connectivity": "cellular", "auto_heal": false }));
    assert_eq!(events(&api, "p-cell", "device.policy").len(), 7);

    // Registration and changes for what does not exist or cannot be.
    let refusals = [
        (api.patch_json("/api/devices/nobody", json!({ "auto_heal": true })), 404, "not_found"),
        (
            api.post_json("/api/devices", json!({ "id": "p-bad", "platform": "photon", "connectivity": "lora" })),
            400,
            "bad_connectivity",
        ),
        (
            api.post_json("/api/devices", json!({ "id": "p-bad", "platform": "photon", "auto_heal": 1 })),
            400,
            "bad_request",
        ),
    ];
    for ((status, reply), want_status, code) in refusals {
        assert_eq!((status, reply["error"]["code"].as_str()), (want_status, Some(code)), "{reply}");
    }
    assert_eq!(api.get("/api/devices/p-bad").0, 404, "a refused registration stores nothing");
}

// ---------------------------------------------------------------------------------------
// Plans

/// The Argon of the plan tests: Device OS 2.0.1 (bootloader, SoftDevice, system part 1)
/// and an application built elsewhere.
struct Argon {
    boot_201: Module,
    softdevice_141: Module,
    part1_201: Module,
    boot_402: Module,
    boot_410: Module,
    part1_402: Module,
    part1_410: Module,
    part1_121: Module,
    boot_230: Module,
    /// User part 2 v6, needs system part 1 >= 4006 (4.0.2).
    app: Module,
    /// User part 2 v6, needs system part 1 >= 6101, which the corpus lacks.
    app_620: Module,
}

impl Argon {
    fn load() -> Argon {
        Argon {
            boot_201: Module::load("releases/argon-bootloader@2.0.1.bin"),
            softdevice_141: Module::load("releases/argon-softdevice@1.4.1.bin"),
            part1_201: Module::load("releases/argon-system-part1@2.0.1.bin"),
            boot_402: Module::load("releases/argon-bootloader@4.0.2.bin"),
            boot_410: Module::load("releases/argon-bootloader@4.1.0.bin"),
            part1_402: Module::load("releases/argon-system-part1@4.0.2.bin"),
            part1_410: Module::load("releases/argon-system-part1@4.1.0.bin"),
            part1_121: Module::load("releases/argon-system-part1@1.2.1.bin"),
            boot_230: Module::load("releases/argon-bootloader@2.3.0.bin"),
            app: Module::load("fixtures/cli_third_party_ota_app-with-assets.bin"),
            app_620: Module::load("fixtures/cli_binaries_argon-tinker-620.bin"),
        }
    }

    /// Uploads the catalog: everything signed but bootloader 2.3.0; the installed
    /// SoftDevice unsigned (the server learns its dependencies from it all the same).
    fn upload(&self, api: &Api) {
        for module in [
            &self.part1_201,
            &self.boot_402,
            &self.boot_410,
            &self.part1_402,
            &self.part1_410,
            &self.part1_121,
            &self.app,
            &self.app_620,
        ] {
            upload(api, module, true);
        }
        upload(api, &self.boot_230, false);
        upload(api, &self.softdevice_141, false);
    }

    fn installed(&self) -> Vec<InstalledModule> {
        vec![
            self.boot_201.installed(),
            self.softdevice_141.installed(),
            self.part1_201.installed(),
            foreign_app(2, 5, 0xa5, true),
        ]
    }

    fn connect(&self, server: &Server, id: &str, secret: &str) -> Device {
        let installed = self.installed();
        let device = Device::connect(server, id, secret, &running(12, &installed));
        wait_described(&server.api(), id, &installed);
        device
    }
}

#[test]
fn an_application_needing_newer_system_parts_gets_them_first_in_dependency_order() {
    let dir = tern_testkit::scratch("plans-order");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let argon = Argon::load();
    argon.upload(&api);
    let secret = add_device(&api, "argon-op", "argon", json!({}));
    let device = argon.connect(&server, "argon-op", &secret);

    let (status, plan) = make_plan(&api, "argon-op", &[&argon.app]);
    assert_eq!(status, 201, "{plan}");
    // The application needs system part 1 4.0.2, which needs bootloader 1101: the lowest
    // signed catalog versions that meet each need, needs first.
    let expected = [&argon.boot_402, &argon.part1_402, &argon.app];
    let names = |hashes: &[String]| -> Vec<&str> {
        let all = [&argon.boot_402, &argon.boot_410, &argon.part1_402, &argon.part1_410, &argon.app];
        hashes.iter().map(|h| all.iter().find(|m| m.hex() == *h).map_or("?", |m| m.name)).collect()
    };
    let steps = step_hashes(&plan);
    assert_eq!(names(&steps), expected.map(|m| m.name), "{plan}");
    assert_dependency_order(&expected, &argon.installed());
    let app_need = argon.app.needs(ModuleFunction::SystemPart);
    let part1_need = argon.part1_402.needs(ModuleFunction::Bootloader);
    let reasons: Vec<&str> = plan["steps"].as_array().unwrap().iter().map(|s| s["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            format!(
                "needed by {} v{}: {} >= v{}",
                argon.part1_402.slot_name(),
                argon.part1_402.info.version,
                slot_name(part1_need.function, part1_need.index),
                part1_need.version
            ),
            format!(
                "needed by {} v{}: {} >= v{}",
                argon.app.slot_name(),
                argon.app.info.version,
                slot_name(app_need.function, app_need.index),
                app_need.version
            ),
            "requested".to_owned(),
        ]
    );
    let total: u64 = expected.iter().map(|m| m.bytes.len() as u64).sum();
    assert_eq!(plan["bytes_total"], total);
    assert!(plan["air_bytes"].as_u64().unwrap() > total, "the estimate adds the protocol's overhead: {plan}");
    let fields = [
        ("device", json!("argon-op")),
        ("platform_id", json!(12)),
        ("origin", json!("operator")),
        ("status", json!("proposed")),
        ("requested", json!([argon.app.hex()])),
        ("connectivity", json!("wifi")),
        ("confirm_required", json!(false)),
        ("attempt", Value::Null),
    ];
    for (field, value) in fields {
        assert_eq!(plan[field], value, "{field}: {plan}");
    }
    // The plan is an object the operator can read back before anything is sent.
    assert_eq!(api.get(&format!("/api/plans/{}", plan["id"])), (200, plan.clone()));
    assert_eq!(plans(&api, "argon-op"), std::slice::from_ref(&plan));
    assert_eq!(attempts(&api, "argon-op"), Vec::<Value>::new(), "making a plan sends nothing");
    assert!(device.next_offer(Duration::from_millis(500)).is_none(), "making a plan sends nothing");

    // On Wi-Fi it starts without confirmation; the offer is the plan, with statements.
    let (status, attempt) = start(&api, &plan, json!({}));
    assert_eq!(status, 201, "{attempt}");
    assert_eq!(attempt["plan_id"], plan["id"]);
    assert_eq!(attempt["plan"], plan["steps"]);
    assert_eq!((&attempt["bytes_total"], &attempt["air_bytes"]), (&plan["bytes_total"], &plan["air_bytes"]));
    let offer = device.next_offer(SETTLE).expect("the offer arrives");
    assert_eq!(offer.attempt, attempt["id"].as_u64().unwrap());
    assert_offer_is(&offer, &expected);
    let shown = api.get(&format!("/api/plans/{}", plan["id"])).1;
    assert_eq!((&shown["status"], &shown["attempt"]), (&json!("started"), &attempt["id"]), "{shown}");
}

#[test]
fn plan_requests_that_cannot_be_planned_are_refused() {
    let dir = tern_testkit::scratch("plans-refused");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let argon = Argon::load();
    argon.upload(&api);
    let photon_part1 = Module::load("releases/photon-system-part1@2.0.1.bin");
    upload(&api, &photon_part1, true);
    let secret = add_device(&api, "argon-r", "argon", json!({}));
    add_device(&api, "argon-silent", "argon", json!({}));
    let _device = argon.connect(&server, "argon-r", &secret);

    let hashes = |modules: &[&Module]| json!({ "modules": modules.iter().map(|m| m.hex()).collect::<Vec<_>>() });
    // (device, body, status, code)
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("argon-r", json!({ "modules": ["ab".repeat(32)] }), 422, "unknown_module"),
        ("argon-r", hashes(&[&argon.boot_230]), 422, "unsigned_module"),
        ("argon-r", hashes(&[&photon_part1]), 422, "wrong_platform"),
        ("argon-r", hashes(&[&argon.part1_201]), 422, "already_installed"),
        ("argon-r", json!({ "modules": [] }), 422, "nothing_to_do"),
        ("argon-r", json!({}), 422, "nothing_to_do"),
        // The application needs system part 1 6.1.1; the catalog stops at 4.1.0.
        ("argon-r", hashes(&[&argon.app_620]), 422, "unsatisfiable"),
        // System part 1 1.2.1 is older than the installed SoftDevice needs.
        ("argon-r", hashes(&[&argon.part1_121]), 422, "downgrade"),
        ("argon-r", hashes(&[&argon.part1_402, &argon.part1_410]), 422, "same_slot_twice"),
        ("argon-silent", hashes(&[&argon.app]), 422, "not_described"),
        ("nobody", hashes(&[&argon.app]), 404, "not_found"),
        ("argon-r", json!({ "modules": ["xyz"] }), 400, "bad_module_hash"),
        ("argon-r", json!({ "modules": ["g".repeat(64)] }), 400, "bad_module_hash"),
        ("argon-r", json!({ "modules": [argon.app.hex() + "00"] }), 400, "bad_module_hash"),
        ("argon-r", json!({ "modules": "all" }), 400, "bad_request"),
    ];
    for (id, body, status, code) in &cases {
        let (got, reply) = api.post_json(&format!("/api/devices/{id}/plans"), body.clone());
        assert_eq!((got, reply["error"]["code"].as_str()), (*status, Some(*code)), "{id} {body}: {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap_or_default().is_empty(), "{reply}");
    }
    // Bytes sent as application/octet-stream are a release bundle, as the document says.
    let (status, reply) = api.post_bytes("/api/devices/argon-r/plans", b"not json");
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("bad_bundle")), "{reply}");
    // Upper-case hex names the same module.
    let (status, plan) =
        api.post_json("/api/devices/argon-r/plans", json!({ "modules": [argon.app.hex().to_uppercase()] }));
    assert_eq!(status, 201, "{plan}");
    assert_eq!(plan["requested"], json!([argon.app.hex()]));
    assert_eq!(plans(&api, "argon-r").len(), 1, "refused requests store no plan");
    // Unknown plans and devices; ids that are not numbers name nothing either.
    let unknown = [
        api.get("/api/plans/999"),
        api.get("/api/plans/abc"),
        api.get("/api/plans/99999999999999999999999"),
        api.get("/api/devices/nobody/plans"),
        api.get("/api/attempts/abc"),
        api.post_json("/api/plans/999/start", json!({})),
        api.post_json("/api/plans/-1/start", json!({})),
        api.post_json("/api/plans/abc/start", json!({})),
        api.post_json("/api/attempts/abc/cancel", json!({})),
    ];
    for (status, reply) in unknown {
        assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{reply}");
    }
    let (status, reply) =
        api.post_json(&format!("/api/plans/{}/start", plan["id"]), json!({ "confirm_air_bytes": "all" }));
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("bad_request")), "{reply}");
    assert!(attempts(&api, "argon-r").is_empty(), "nothing was started");
}

#[test]
fn a_cellular_plan_starts_only_with_the_confirmed_bytes_on_the_air() {
    let dir = tern_testkit::scratch("plans-start");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let argon = Argon::load();
    argon.upload(&api);
    let secret = add_device(&api, "argon-c", "argon", json!({ "connectivity": "wifi" }));
    let device = argon.connect(&server, "argon-c", &secret);

    // A plan made while the device was on Wi-Fi needs confirmation once it is cellular.
    let (status, wifi_plan) = make_plan(&api, "argon-c", &[&argon.app]);
    assert_eq!((status, &wifi_plan["confirm_required"]), (201, &json!(false)), "{wifi_plan}");
    assert_eq!(api.patch_json("/api/devices/argon-c", json!({ "connectivity": "cellular" })).0, 200);
    let (status, reply) = start(&api, &wifi_plan, json!({}));
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("confirmation_required")), "{reply}");

    let (status, plan) = make_plan(&api, "argon-c", &[&argon.app]);
    assert_eq!(status, 201, "{plan}");
    assert_eq!((&plan["connectivity"], &plan["confirm_required"]), (&json!("cellular"), &json!(true)));
    let air = plan["air_bytes"].as_u64().unwrap();
    let refused = [
        json!({}),
        json!({ "confirm_air_bytes": null }),
        json!({ "confirm_air_bytes": air - 1 }),
        json!({ "confirm_air_bytes": air + 1 }),
        json!({ "confirm_air_bytes": plan["bytes_total"] }),
        json!({ "confirm_air_bytes": 0 }),
    ];
    for body in refused {
        let (status, reply) = start(&api, &plan, body.clone());
        assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("confirmation_required")), "{body}: {reply}");
        assert!(reply["error"]["message"].as_str().unwrap().contains(&air.to_string()), "names the amount: {reply}");
    }
    // Nothing was offered: no attempt, the plan still proposed, no offer at the device.
    assert!(attempts(&api, "argon-c").is_empty());
    assert_eq!(api.get(&format!("/api/plans/{}", plan["id"])).1["status"], "proposed");
    assert!(device.next_offer(Duration::from_secs(1)).is_none(), "an unconfirmed plan sends nothing");

    let (status, attempt) = start(&api, &plan, json!({ "confirm_air_bytes": air }));
    assert_eq!(status, 201, "{attempt}");
    assert_eq!((&attempt["plan_id"], &attempt["plan"]), (&plan["id"], &plan["steps"]));
    let offer = device.next_offer(SETTLE).expect("the offer arrives");
    assert_offer_is(&offer, &[&argon.boot_402, &argon.part1_402, &argon.app]);
    assert_eq!(offer.attempt, attempt["id"].as_u64().unwrap());

    // Started once only.
    let (status, reply) = start(&api, &plan, json!({ "confirm_air_bytes": air }));
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("plan_not_proposed")), "{reply}");
    // Another plan cannot start while the attempt is in flight.
    let (status, second) = make_plan(&api, "argon-c", &[&argon.app]);
    assert_eq!(status, 201, "{second}");
    let confirm = json!({ "confirm_air_bytes": second["air_bytes"] });
    let (status, reply) = start(&api, &second, confirm.clone());
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("attempt_in_progress")), "{reply}");
    assert_eq!(attempts(&api, "argon-c").len(), 1);

    // The attempt ends; the device then describes other modules (system part 1 4.0.2 came
    // from elsewhere): the second plan, made for what it ran before, is stale.
    assert_eq!(api.post_json(&format!("/api/attempts/{}/cancel", attempt["id"]), json!({})).0, 200);
    let mut now = argon.installed();
    now[2] = argon.part1_402.installed();
    device.describe(&running(12, &now));
    wait_described(&api, "argon-c", &now);
    let (status, reply) = start(&api, &second, confirm);
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("stale_plan")), "{reply}");
    assert_eq!(api.get(&format!("/api/plans/{}", second["id"])).1["status"], "proposed");
    // A new plan for what it runs now needs only the bootloader before the application.
    let (status, third) = make_plan(&api, "argon-c", &[&argon.app]);
    assert_eq!(status, 201, "{third}");
    assert_eq!(step_hashes(&third), [argon.boot_402.hex(), argon.app.hex()]);
    let (status, attempt) = start(&api, &third, json!({ "confirm_air_bytes": third["air_bytes"] }));
    assert_eq!(status, 201, "{attempt}");
    let listed: Vec<Value> = plans(&api, "argon-c").iter().map(|p| p["id"].clone()).collect();
    assert_eq!(listed, [&third, &second, &plan, &wifi_plan].map(|p| p["id"].clone()), "newest first");
}

// ---------------------------------------------------------------------------------------
// Healing

/// The Photon of the heal tests: Device OS 1.5.2 and an application built for 2.0.1.
struct Photon {
    boot_152: Module,
    part1_152: Module,
    part2_152: Module,
    boot_200: Module,
    boot_210: Module,
    part1_201: Module,
    part1_210: Module,
    part2_201: Module,
    part2_210: Module,
    boot_231: Module,
}

impl Photon {
    fn load() -> Photon {
        Photon {
            boot_152: Module::load("releases/photon-bootloader@1.5.2+lto.bin"),
            part1_152: Module::load("releases/photon-system-part1@1.5.2.bin"),
            part2_152: Module::load("releases/photon-system-part2@1.5.2.bin"),
            boot_200: Module::load("releases/photon-bootloader@2.0.0+lto.bin"),
            boot_210: Module::load("releases/photon-bootloader@2.1.0+lto.bin"),
            part1_201: Module::load("releases/photon-system-part1@2.0.1.bin"),
            part1_210: Module::load("releases/photon-system-part1@2.1.0.bin"),
            part2_201: Module::load("releases/photon-system-part2@2.0.1.bin"),
            part2_210: Module::load("releases/photon-system-part2@2.1.0.bin"),
            boot_231: Module::load("releases/photon-bootloader@2.3.1+lto.bin"),
        }
    }

    /// The catalog: 2.0.0/2.0.1 and 2.1.0 parts, all signed but system part 1 2.0.1, so
    /// the lowest *signed* part 1 that meets the need is 2.1.0.
    fn upload(&self, api: &Api) {
        for module in [&self.boot_200, &self.boot_210, &self.part1_210, &self.part2_201, &self.part2_210] {
            upload(api, module, true);
        }
        upload(api, &self.part1_201, false);
    }

    /// What the device runs: 1.5.2 and an application (unknown to the catalog) whose
    /// dependency is not met.
    fn installed(&self) -> Vec<InstalledModule> {
        vec![
            self.boot_152.installed(),
            self.part1_152.installed(),
            self.part2_152.installed(),
            foreign_app(1, 6, 0x5a, false),
        ]
    }

    /// The application's need: system part 2 of Device OS 2.0.1.
    fn unmet(&self) -> Dependency {
        Dependency { function: ModuleFunction::SystemPart, index: 2, version: self.part2_201.info.version }
    }

    /// The heal plan the catalog allows, in an order a device can install: the lowest
    /// Device OS release the catalog holds whole and signed (2.1.0: 2.0.1 lacks a signed
    /// part 1), with the bootloader shipped with it — never part 1 of one release with
    /// part 2 of another.
    fn heal(&self) -> [&Module; 3] {
        [&self.boot_210, &self.part1_210, &self.part2_210]
    }
}

#[test]
fn a_device_in_safe_mode_is_healed_in_order_and_leaves_safe_mode() {
    let dir = tern_testkit::scratch("plans-heal");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let photon = Photon::load();
    photon.upload(&api);
    let secret = add_device(&api, "photon-h", "photon", json!({}));
    let installed = photon.installed();
    let device = Device::connect(&server, "photon-h", &secret, &safe_mode(6, &installed, photon.unmet()));

    // The server computes the heal and, Wi-Fi healing automatically, starts it.
    let offer = device.next_offer(SETTLE).expect("the heal is offered without an operator");
    let heal: Vec<&Module> = photon.heal().to_vec();
    let offered: Vec<&Module> = offer
        .modules
        .iter()
        .map(|o| *heal.iter().find(|m| m.sha256 == o.sha256).expect("a module of the expected heal"))
        .collect();
    assert_eq!(offered.len(), heal.len(), "exactly the missing system modules");
    assert_eq!(offered.last().map(|m| m.name), Some(photon.part2_210.name), "the needed part goes last");
    assert_dependency_order(&offered, &installed);
    assert_offer_is(&offer, &offered);
    let plan = plans(&api, "photon-h").pop().expect("a heal plan");
    assert_eq!((&plan["origin"], &plan["status"]), (&json!("heal"), &json!("started")), "{plan}");
    assert_eq!(plan["requested"], json!([]));
    assert_eq!(plan["attempt"].as_u64(), Some(offer.attempt));
    // Each module says why: a dependency it meets, or the release it belongs to.
    let reasons: Vec<&str> = plan["steps"].as_array().unwrap().iter().map(|s| s["reason"].as_str().unwrap()).collect();
    assert!(
        reasons.iter().all(|r| r.starts_with("needed by ") || r.starts_with("same Device OS release: 2.1.0 (v2101)")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("same Device OS release")), "{reasons:?}");
    let attempt = api.get(&format!("/api/attempts/{}", offer.attempt)).1;
    assert_eq!(attempt["plan_id"], plan["id"], "{attempt}");
    assert_eq!(shown(&api, "photon-h")["status"], "safe_mode");

    // The device pulls everything, installs and reboots into the healed system.
    let received = device.pull(&offer);
    for (bytes, module) in received.iter().zip(&offered) {
        assert_eq!(bytes, &module.bytes, "{} arrives intact", module.name);
    }
    for phase in [Phase::Verifying, Phase::Staged, Phase::Rebooting] {
        device.report(&offer, phase);
    }
    settle(&api, device);
    let mut healed: Vec<InstalledModule> = offered.iter().map(|m| m.installed()).collect();
    healed.push(foreign_app(1, 6, 0x5a, true));
    let device = Device::connect(&server, "photon-h", &secret, &running(6, &healed));
    wait_for("the heal's confirmation", SETTLE, || {
        api.get(&format!("/api/attempts/{}", offer.attempt)).1["state"] == "confirmed"
    });
    let shown = device_after(&api, "photon-h");
    assert_ne!(shown["status"], "safe_mode", "{shown}");
    assert_eq!(shown["inventory"]["boot_reason"], "normal");
    let done = api.get(&format!("/api/attempts/{}", offer.attempt)).1;
    assert!(done["bytes_sent"].as_u64() >= done["bytes_total"].as_u64(), "every byte was sent: {done}");
    settle(&api, device);
    assert_eq!(plans(&api, "photon-h").len(), 1, "a healthy device gets no further plan");
}

/// The device as shown, once it no longer reports safe mode.
fn device_after(api: &Api, id: &str) -> Value {
    wait_for(&format!("{id} out of safe mode"), SETTLE, || shown(api, id)["status"] != "safe_mode");
    shown(api, id)
}

/// What the server does with a device describing itself.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// A heal plan, started at once.
    Started,
    /// A heal plan, proposed to the operator (`heal.proposed`).
    Proposed,
    /// No plan: the catalog cannot heal it (`heal.impossible`).
    Impossible,
    /// Nothing: it needs no heal (no plan, no event).
    Nothing,
}

#[test]
fn automatic_healing_follows_the_device_policy() {
    let dir = tern_testkit::scratch("plans-auto-heal");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let photon = Photon::load();
    photon.upload(&api);
    // The newest bootloader in the corpus is not in the catalog.
    let beyond = Dependency { function: ModuleFunction::Bootloader, index: 0, version: photon.boot_231.info.version };
    let installed = photon.installed();
    let unmet = safe_mode(6, &installed, photon.unmet());
    // Safe mode for another cause (an operator asked for it) is not the healer's business.
    let requested = Describe { safe_mode: Some(SafeModeCause::Requested), unmet: None, ..unmet };
    // (device, policy at registration, what it describes, outcome)
    let cases = [
        ("heal-wifi", json!({}), unmet, Outcome::Started),
        ("heal-eth", json!({ "connectivity": "ethernet" }), unmet, Outcome::Started),
        ("heal-cell", json!({ "connectivity": "cellular" }), unmet, Outcome::Proposed),
        ("heal-cell-on", json!({ "connectivity": "cellular", "auto_heal": true }), unmet, Outcome::Started),
        ("heal-wifi-off", json!({ "auto_heal": false }), unmet, Outcome::Proposed),
        ("heal-stuck", json!({}), safe_mode(6, &installed, beyond), Outcome::Impossible),
        ("heal-asked", json!({}), requested, Outcome::Nothing),
        ("heal-fine", json!({}), running(6, &photon.installed()[..3]), Outcome::Nothing),
    ];
    let mut secrets = Vec::new();
    for (id, policy, describe, outcome) in &cases {
        let secret = add_device(&api, id, "photon", policy.clone());
        let device = Device::connect(&server, id, &secret, describe);
        let offer = device.next_offer(if *outcome == Outcome::Started { SETTLE } else { Duration::from_secs(1) });
        settle(&api, device);
        let plans = plans(&api, id);
        let attempts = attempts(&api, id);
        match outcome {
            Outcome::Started => {
                let offer = offer.unwrap_or_else(|| panic!("{id}: the heal is offered"));
                assert_eq!(offer.signed.len(), photon.heal().len(), "{id}: one statement per module");
                assert_eq!(plans.len(), 1, "{id}: {plans:?}");
                assert_eq!((&plans[0]["origin"], &plans[0]["status"]), (&json!("heal"), &json!("started")));
                assert_eq!(attempts.len(), 1, "{id}");
                assert_eq!(attempts[0]["plan_id"], plans[0]["id"], "{id}");
                assert_eq!(attempts[0]["id"].as_u64(), Some(offer.attempt), "{id}");
                assert!(events(&api, id, "heal.proposed").is_empty(), "{id}");
            }
            Outcome::Proposed => {
                assert!(offer.is_none(), "{id}: nothing is sent without the operator");
                assert!(attempts.is_empty(), "{id}: {attempts:?}");
                assert_eq!(plans.len(), 1, "{id}: {plans:?}");
                assert_eq!((&plans[0]["origin"], &plans[0]["status"]), (&json!("heal"), &json!("proposed")));
                let proposed = events(&api, id, "heal.proposed");
                assert_eq!(proposed.len(), 1, "{id}");
                assert_eq!(proposed[0]["data"]["plan"], plans[0]["id"], "{id}");
                assert_eq!(proposed[0]["data"]["air_bytes"], plans[0]["air_bytes"], "{id}");
            }
            Outcome::Impossible => {
                assert!(offer.is_none() && plans.is_empty() && attempts.is_empty(), "{id}: {plans:?} {attempts:?}");
                let impossible = events(&api, id, "heal.impossible");
                assert_eq!(impossible.len(), 1, "{id}");
                assert_eq!(impossible[0]["data"]["code"], "unsatisfiable", "{id}");
            }
            Outcome::Nothing => {
                assert!(offer.is_none() && plans.is_empty() && attempts.is_empty(), "{id}: {plans:?} {attempts:?}");
                let history = shown(&api, id)["history"].clone();
                let kinds: Vec<&str> =
                    history.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
                assert!(!kinds.iter().any(|k| k.starts_with("heal.") || k.starts_with("plan.")), "{id}: {kinds:?}");
            }
        }
        secrets.push(secret);
    }

    // Each device reconnects and describes the same safe mode again: no second heal plan,
    // no second proposal, no second attempt.
    for ((id, _, describe, outcome), secret) in cases.iter().zip(&secrets) {
        let device = Device::connect(&server, id, secret, describe);
        settle(&api, device);
        let expected_plans = usize::from(matches!(outcome, Outcome::Started | Outcome::Proposed));
        assert_eq!(plans(&api, id).len(), expected_plans, "{id}: one heal plan per described inventory");
        assert_eq!(attempts(&api, id).len(), usize::from(*outcome == Outcome::Started), "{id}");
        assert_eq!(events(&api, id, "heal.proposed").len(), usize::from(*outcome == Outcome::Proposed), "{id}");
    }

    // The operator reviews a proposed heal of the cellular device and sends it, confirming
    // its cost; the device receives it.
    let plan = plans(&api, "heal-cell").pop().expect("the proposed heal");
    assert_eq!(plan["confirm_required"], true);
    let (status, reply) = start(&api, &plan, json!({}));
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("confirmation_required")), "{reply}");
    let device = Device::connect(&server, "heal-cell", &secrets[2], &unmet);
    let (status, attempt) = start(&api, &plan, json!({ "confirm_air_bytes": plan["air_bytes"] }));
    assert_eq!(status, 201, "{attempt}");
    let offer = device.next_offer(SETTLE).expect("the heal is offered once sent");
    assert_eq!(offer.attempt, attempt["id"].as_u64().unwrap());
    assert_eq!(offer.signed.len(), photon.heal().len());

    // Turning auto-heal on sends the heal that was waiting for it.
    let device = Device::connect(&server, "heal-wifi-off", &secrets[4], &unmet);
    let (status, policy) = api.patch_json("/api/devices/heal-wifi-off", json!({ "auto_heal": true }));
    assert_eq!(status, 200, "{policy}");
    let offer = device.next_offer(SETTLE).expect("the proposed heal is offered once the policy allows it");
    let plans = plans(&api, "heal-wifi-off");
    assert_eq!((plans.len(), &plans[0]["status"]), (1, &json!("started")), "{plans:?}");
    assert_eq!(attempts(&api, "heal-wifi-off")[0]["id"].as_u64(), Some(offer.attempt));
}

/// With trusted keys configured, the catalog refuses a statement none of them signed, at
/// upload (both ways a statement arrives), naming the key id; a trusted one is accepted.
#[test]
fn statements_must_be_signed_by_a_trusted_key_when_keys_are_configured() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let dir = tern_testkit::scratch("plans-trusted-keys");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pem = release_key().verifying_key().to_public_key_pem(Default::default()).unwrap();
    std::fs::write(data.join("release.pub.pem"), pem).unwrap();
    std::fs::write(data.join("tern.toml"), "trusted_keys = [\"release.pub.pem\"]\n").unwrap();
    let server = Server::start(&data);
    let api = server.api();
    let boot = Module::load("releases/photon-bootloader@2.0.0+lto.bin");
    let part1 = Module::load("releases/photon-system-part1@2.0.1.bin");
    let stranger = SigningKey::from_bytes(&[0x5a; 32]);
    let by_stranger = |m: &Module| {
        Document {
            kind: Kind::ModuleStatement,
            platform_id: 6,
            product_id: 0,
            security_counter: 1,
            created: 1_700_000_000,
            modules: vec![m.entry()],
            name: String::new(),
        }
        .sign(&stranger)
        .unwrap()
    };

    // Attached to an uploaded module.
    upload(&api, &boot, false);
    let path = format!("/api/modules/{}/statement", boot.hex());
    let (status, reply) = api.put_bytes(&path, &by_stranger(&boot));
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("bad_signature")), "{reply}");
    let kid = hex::encode(tern_image::manifest::key_id(&stranger.verifying_key()));
    assert!(reply["error"]["message"].as_str().unwrap().contains(&kid), "names the key id: {reply}");
    let (status, reply) = api.put_bytes(&path, &statement(&boot));
    assert_eq!(status, 200, "{reply}");

    // Sent with the module as one signed module.
    let forged = tern_image::bundle::write_signed_module(&by_stranger(&part1), &part1.bytes).unwrap();
    let (status, reply) = api.post_bytes("/api/modules", &forged);
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("bad_signature")), "{reply}");
    let (_, list) = api.get("/api/modules");
    assert_eq!(list.as_array().unwrap().len(), 1, "the refused module did not enter the catalog: {list}");
    let signed = tern_image::bundle::write_signed_module(&statement(&part1), &part1.bytes).unwrap();
    let (status, reply) = api.post_bytes("/api/modules", &signed);
    assert_eq!(status, 201, "{reply}");
    assert!(reply["statement"].is_string(), "{reply}");
}

// ---------------------------------------------------------------------------------------
// Device OS releases and stages

/// A Photon on 1.5.2 that says it stages `staging` bytes per offer and has security
/// counter `counter`.
fn staged_photon(photon: &Photon, staging: u32, counter: u64) -> Describe {
    Describe {
        capacity: Some(Capacity {
            staging_bytes: staging,
            max_modules: 4,
            block_size: 1024,
            patches: false,
            link: None,
        }),
        security_counter: Some(counter),
        ..running(6, &[photon.boot_152.installed(), photon.part1_152.installed(), photon.part2_152.installed()])
    }
}

/// Photon 1.5.2 → 2.3.1 (`--target`): one release (bootloader 2.3.1 and both parts, no
/// mixture), split in two stages that fit the 256 KiB the device reports; one attempt
/// walks both, each stage offered with its own protocol attempt id, the next stage only
/// after the device described the first installed; confirmed after the last. Requests that
/// can never work are refused before anything is sent.
#[test]
fn a_device_os_release_goes_in_stages_that_fit_under_one_attempt() {
    let dir = tern_testkit::scratch("plans-stages");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let photon = Photon::load();
    let part1_231 = Module::load("releases/photon-system-part1@2.3.1.bin");
    let part2_231 = Module::load("releases/photon-system-part2@2.3.1.bin");
    for module in [&photon.boot_200, &photon.part1_201, &photon.part2_201, &photon.boot_231, &part1_231, &part2_231] {
        upload(&api, module, true);
    }
    let secret = add_device(&api, "photon-s", "photon", json!({}));
    let mut describe = staged_photon(&photon, 256 * 1024, 1);
    let device = Device::connect(&server, "photon-s", &secret, &describe);
    wait_described(&api, "photon-s", &describe.modules.iter().copied().collect::<Vec<_>>());

    // Refusals, before anything is sent.
    let target = |body: Value| api.post_json("/api/devices/photon-s/plans", body);
    let refusals = [
        (json!({ "device_os": "1.4.4" }), "downgrade"),
        (json!({ "device_os": "9.9.9" }), "unknown_release"),
        (json!({ "device_os": "2.1.0" }), "incomplete_release"),
        (json!({ "device_os": "1.5.2" }), "already_installed"),
    ];
    for (body, code) in &refusals {
        let (status, reply) = target(body.clone());
        assert_eq!((status, reply["error"]["code"].as_str()), (422, Some(*code)), "{body}: {reply}");
        assert_eq!(reply["error"]["message"].as_str().unwrap_or_default().lines().count(), 1, "{reply}");
    }

    let (status, plan) = target(json!({ "device_os": "2.3.1" }));
    assert_eq!(status, 201, "{plan}");
    let mut planned = step_hashes(&plan);
    planned.sort();
    let mut release = vec![photon.boot_231.hex(), part1_231.hex(), part2_231.hex()];
    release.sort();
    assert_eq!(planned, release, "exactly Device OS 2.3.1: {plan}");
    let stages = plan["stages"].as_array().expect("stages").clone();
    assert_eq!(stages.len(), 2, "{plan}");
    let stage_of =
        |sha: &str| plan["steps"].as_array().unwrap().iter().find(|s| s["sha256"] == sha).unwrap()["stage"].clone();
    assert_eq!(stage_of(&part2_231.hex()), json!(1), "part 2 goes last: {plan}");
    assert_eq!(
        plan["air_bytes"].as_u64(),
        Some(stages.iter().map(|s| s["air_bytes"].as_u64().unwrap()).sum()),
        "the plan's bytes on the air are its stages': {plan}"
    );
    let (status, attempt) = start(&api, &plan, json!({}));
    assert_eq!(status, 201, "{attempt}");
    let id = attempt["id"].as_u64().unwrap();

    // Stage 1: its modules only, with the attempt's own id.
    let offer = device.next_offer(SETTLE).expect("stage 1 is offered");
    assert_eq!(offer.attempt, id, "stage 1 carries the attempt id");
    let stage1: Vec<String> = offer.modules.iter().map(|m| hex::encode(m.sha256)).collect();
    assert!(stage1.len() < 3 && !stage1.contains(&part2_231.hex()), "{stage1:?}");
    assert_eq!(offer.signed.len(), stage1.len(), "one statement per offered module");
    device.pull(&offer);
    device.report(&offer, Phase::Staged);
    assert!(device.next_offer(Duration::from_secs(2)).is_none(), "no stage 2 before stage 1 is described");
    // The device reboots into stage 1 and describes it: stage 2 follows.
    let mut modules: Vec<InstalledModule> = describe.modules.iter().copied().collect();
    for m in &offer.modules {
        modules.retain(|i| !(i.function == m.function && i.index == m.index));
        let module = [&photon.boot_231, &part1_231].into_iter().find(|x| x.sha256 == m.sha256).expect("a 2.3.1 module");
        modules.push(module.installed());
    }
    describe.modules = List::from_slice(&modules).unwrap();
    device.describe(&describe);
    let offer2 = device.next_offer(SETTLE).expect("stage 2 is offered");
    assert_eq!(offer2.attempt >> 48, 1, "stage 2 has its own protocol id");
    assert_eq!(offer2.attempt & ((1 << 48) - 1), id, "… within the same attempt");
    assert_eq!(offer2.modules.iter().map(|m| hex::encode(m.sha256)).collect::<Vec<_>>(), [part2_231.hex()]);
    let shown_attempt = api.get(&format!("/api/attempts/{id}")).1;
    assert_eq!(
        (shown_attempt["stage"].as_u64(), shown_attempt["finished"].as_bool()),
        (Some(1), Some(false)),
        "{shown_attempt}"
    );
    device.pull(&offer2);
    device.report(&offer2, Phase::Staged);
    modules.retain(|i| !(i.function == ModuleFunction::SystemPart && i.index == 2));
    modules.push(part2_231.installed());
    describe.modules = List::from_slice(&modules).unwrap();
    device.describe(&describe);
    wait_for("the attempt confirmed", SETTLE, || api.get(&format!("/api/attempts/{id}")).1["state"] == "confirmed");
    let done = api.get(&format!("/api/attempts/{id}")).1;
    let total: u64 = [&photon.boot_231, &part1_231, &part2_231].iter().map(|m| m.bytes.len() as u64).sum();
    assert!(done["bytes_sent"].as_u64().unwrap() >= total, "every stage's bytes are counted: {done}");
    assert!(!events(&api, "photon-s", "attempt.stage").is_empty(), "the stage change is announced");

    // A device that stages little: the release can never fit, refused.
    let small = staged_photon(&photon, 128 * 1024, 1);
    let (_, again) = api.get("/api/devices/photon-s");
    assert_eq!(again["inventory"]["capacity"]["staging_bytes"], 256 * 1024);
    settle(&api, device);
    let secret2 = add_device(&api, "photon-small", "photon", json!({}));
    let small_device = Device::connect(&server, "photon-small", &secret2, &small);
    wait_described(&api, "photon-small", &small.modules.iter().copied().collect::<Vec<_>>());
    let (status, reply) = api.post_json("/api/devices/photon-small/plans", json!({ "device_os": "2.3.1" }));
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("does_not_fit")), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("can never fit"), "{reply}");
    settle(&api, small_device);

    // A device whose security counter is above the statements' (1): refused.
    let secret3 = add_device(&api, "photon-counter", "photon", json!({}));
    let high = staged_photon(&photon, 256 * 1024, 7);
    let counter_device = Device::connect(&server, "photon-counter", &secret3, &high);
    wait_described(&api, "photon-counter", &high.modules.iter().copied().collect::<Vec<_>>());
    let (status, reply) = make_plan(&api, "photon-counter", &[&part1_231]);
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("below_security_counter")), "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("below the device's 7"), "{reply}");
    let (_, shown_counter) = api.get("/api/devices/photon-counter");
    assert_eq!(shown_counter["inventory"]["security_counter"], 7, "{shown_counter}");
    let (_, module) = api.get(&format!("/api/modules/{}", part1_231.hex()));
    assert_eq!(module["security_counter"], 1, "the catalog shows the statement's counter: {module}");
    settle(&api, counter_device);
    assert!(plans(&api, "photon-counter").is_empty() && attempts(&api, "photon-counter").is_empty());
}
