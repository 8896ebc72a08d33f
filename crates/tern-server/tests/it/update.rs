//! Update attempts end to end: a signed release bundle posted to the API is offered to a
//! device over MQTT, pulled block by block, and confirmed only by the device's Describe
//! after its reboot. The device here is scripted (it stores blocks in memory, it is not
//! the device crate) and connects with rumqttc, a third-party MQTT client library.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tern_image::manifest::build::Document;
use tern_image::manifest::{Kind, ModuleEntry};
use tern_image::{Integrity, MAX_DEPENDENCIES};
use tern_proto::{
    BlockRequest, BootReason, Describe, InstalledModule, List, Message, MessageKind, Phase, Progress, Topic,
    UpdateOffer,
};

use crate::support::{encode, wait_for, Server};

const WINDOW: usize = 4;

fn corpus(name: &str) -> Vec<u8> {
    let path: PathBuf = tern_testkit::corpus().join("particle/releases").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A release bundle for `platform` holding `files`, signed with a fixed test key.
pub(crate) fn bundle(platform: u16, files: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let modules: Vec<Vec<u8>> = files.iter().map(|f| corpus(f)).collect();
    let entries = modules
        .iter()
        .map(|bytes| {
            let info = tern_image::inspect(bytes).info.expect("corpus modules are readable");
            ModuleEntry {
                function: info.function,
                index: info.index,
                version: info.version,
                sha256: Sha256::digest(bytes).into(),
                size: bytes.len() as u32,
                start_address: info.start_address,
                dependencies: [None; MAX_DEPENDENCIES],
                format: info.format,
            }
        })
        .collect();
    let document = Document {
        kind: Kind::Release,
        platform_id: platform,
        product_id: 0,
        security_counter: 1,
        created: 1_700_000_000,
        modules: entries,
        name: "test release".into(),
    };
    let signed = document.sign(&SigningKey::from_bytes(&[7; 32])).expect("the document signs");
    let slices: Vec<&[u8]> = modules.iter().map(Vec::as_slice).collect();
    let bundle = tern_image::bundle::write(&signed, &slices).expect("the bundle writes");
    (bundle, signed, modules)
}

/// The offer a device holds: attempt id, signed manifest, (size, SHA-256) per module.
type HeldOffer = (u64, Vec<Vec<u8>>, Vec<(u32, [u8; 32])>);

/// A device reduced to its protocol behaviour. Its "staging area" (what it received)
/// survives reconnects, as a real device's flash survives resets.
struct ScriptedDevice {
    id: String,
    secret: String,
    client: Option<(Client, Connection)>,
    offer: Option<HeldOffer>,
    staging: Vec<Vec<Option<Vec<u8>>>>,
    in_flight: Vec<(u8, u32, Instant)>,
    duplicate_bytes: u64,
    offers_seen: u32,
    /// When each offer arrived.
    offer_times: Vec<Instant>,
    /// Cancel commands received, with their attempt.
    cancels: Vec<Option<u64>>,
}

impl ScriptedDevice {
    fn new(id: &str, secret: &str) -> Self {
        ScriptedDevice {
            id: id.into(),
            secret: secret.into(),
            client: None,
            offer: None,
            staging: Vec::new(),
            in_flight: Vec::new(),
            duplicate_bytes: 0,
            offers_seen: 0,
            offer_times: Vec::new(),
            cancels: Vec::new(),
        }
    }

    /// Connects, subscribes to its down topics and describes `modules` as installed.
    fn connect(&mut self, port: u16, modules: &[InstalledModule], confirmed: bool) {
        let mut options = MqttOptions::new(format!("{}-client", self.id), "127.0.0.1", port);
        options.set_credentials(self.id.clone(), self.secret.clone());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut connection) = Client::new(options, 64);
        // Wait for CONNACK, then subscribe and describe.
        loop {
            match connection.recv_timeout(Duration::from_secs(10)).expect("the gateway answers") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                    break;
                }
                Ok(_) => {}
                Err(err) => panic!("connect failed: {err}"),
            }
        }
        client.subscribe(format!("tern/v1/d/{}/down/#", self.id), QoS::AtLeastOnce).unwrap();
        self.client = Some((client, connection));
        self.describe(modules, confirmed);
        self.in_flight.clear();
    }

    fn publish(&self, kind: MessageKind, payload: Vec<u8>) {
        let (client, _) = self.client.as_ref().expect("connected");
        client.publish(Topic::new(&self.id, kind).to_string(), QoS::AtLeastOnce, false, payload).unwrap();
    }

    fn describe(&self, modules: &[InstalledModule], confirmed: bool) {
        let describe = Describe {
            platform: 6,
            boot_reason: if confirmed { BootReason::Normal } else { BootReason::TestBoot },
            safe_mode: None,
            unmet: None,
            confirmed,
            modules: List::from_slice(modules).unwrap(),
            capacity: None,
            security_counter: None,
            last_result: None,
        };
        self.publish(MessageKind::Describe, encode(&Message::Describe(describe)));
    }

    fn disconnect(&mut self) {
        if let Some((client, mut connection)) = self.client.take() {
            let _ = client.disconnect();
            // Let the DISCONNECT go out.
            while let Ok(Ok(event)) = connection.recv_timeout(Duration::from_millis(200)) {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        }
    }

    fn blocks_held(&self) -> usize {
        self.staging.iter().flatten().filter(|b| b.is_some()).count()
    }

    fn complete(&self) -> bool {
        !self.staging.is_empty() && self.staging.iter().flatten().all(Option::is_some)
    }

    /// Requests missing blocks up to the window (re-asking after 2 s without an answer).
    fn request_more(&mut self) {
        let Some((attempt, _, _)) = &self.offer else { return };
        let attempt = *attempt;
        self.in_flight.retain(|(_, _, at)| at.elapsed() < Duration::from_secs(2));
        let mut wanted = Vec::new();
        for (m, blocks) in self.staging.iter().enumerate() {
            for (b, held) in blocks.iter().enumerate() {
                let offset = b as u32 * 1024;
                if held.is_none() && !self.in_flight.iter().any(|&(im, io, _)| usize::from(im) == m && io == offset) {
                    wanted.push((m as u8, offset));
                }
            }
        }
        for (module, offset) in wanted.into_iter().take(WINDOW.saturating_sub(self.in_flight.len())) {
            self.in_flight.push((module, offset, Instant::now()));
            let request = BlockRequest { attempt, module, offset, length: 1024 };
            self.publish(MessageKind::BlockRequest, encode(&Message::BlockRequest(request)));
        }
    }

    /// Runs the device until `done` holds (or panics after `timeout`).
    fn run_until(&mut self, timeout: Duration, done: impl Fn(&ScriptedDevice) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < timeout, "device timed out holding {} blocks", self.blocks_held());
            let event = {
                let (_, connection) = self.client.as_mut().expect("connected");
                connection.recv_timeout(Duration::from_millis(100))
            };
            if let Ok(Ok(Event::Incoming(Packet::Publish(publish)))) = event {
                self.receive(&publish.topic, &publish.payload);
            }
            self.request_more();
        }
    }

    fn receive(&mut self, topic: &str, payload: &[u8]) {
        let topic = Topic::parse(topic).expect("only Tern topics arrive");
        assert_eq!(topic.device, self.id, "only the device's own topics arrive");
        match Message::decode(payload).expect("the server sends valid messages") {
            Message::UpdateOffer(UpdateOffer { attempt, signed, modules, window, max_block, .. }) => {
                assert!(usize::from(window) >= WINDOW && max_block >= 1024);
                self.offers_seen += 1;
                self.offer_times.push(Instant::now());
                let listed: Vec<(u32, [u8; 32])> = modules.iter().map(|m| (m.size, m.sha256)).collect();
                if self.offer.as_ref().is_none_or(|(a, _, _)| *a != attempt) {
                    self.staging = listed.iter().map(|(size, _)| vec![None; size.div_ceil(1024) as usize]).collect();
                }
                // The same offer again (after a reconnect) resumes: staging is kept.
                self.offer = Some((attempt, signed.iter().map(|d| d.to_vec()).collect(), listed));
            }
            Message::Block(block) => {
                let Some((attempt, _, _)) = &self.offer else { panic!("a block before any offer") };
                assert_eq!(block.attempt, *attempt);
                let slot = &mut self.staging[usize::from(block.module)][(block.offset / 1024) as usize];
                if slot.is_some() {
                    self.duplicate_bytes += block.data.len() as u64;
                }
                *slot = Some(block.data.to_vec());
                self.in_flight.retain(|&(m, o, _)| !(m == block.module && o == block.offset));
            }
            Message::Command(c) if c.action == tern_proto::Action::CancelUpdate => self.cancels.push(c.attempt),
            Message::Command(_) => {}
            other => panic!("unexpected downlink {other:?}"),
        }
    }

    /// The received modules, each checked against the offer's SHA-256.
    fn verified_modules(&self) -> Vec<InstalledModule> {
        let (_, _, listed) = self.offer.as_ref().expect("an offer");
        listed
            .iter()
            .zip(&self.staging)
            .map(|((size, sha256), blocks)| {
                let bytes: Vec<u8> = blocks.iter().flat_map(|b| b.clone().expect("complete")).collect();
                assert_eq!(bytes.len() as u32, *size);
                assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), *sha256, "received bytes hash as offered");
                let info = tern_image::inspect(&bytes).info.expect("a readable module");
                InstalledModule {
                    function: info.function,
                    index: info.index,
                    version: info.version,
                    sha256: *sha256,
                    size: *size,
                    integrity: Integrity::Valid,
                    dependencies_met: true,
                }
            })
            .collect()
    }

    fn report(&self, phase: Phase) {
        let (attempt, _, listed) = self.offer.as_ref().expect("an offer");
        let total: u64 = listed.iter().map(|(size, _)| u64::from(*size)).sum();
        let progress = Progress { attempt: *attempt, phase, bytes_done: total, bytes_total: total };
        self.publish(MessageKind::Progress, encode(&Message::Progress(progress)));
        // Let the publish go out.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Pumps the connection briefly so queued publishes are sent.
    fn flush(&mut self) {
        if let Some((_, connection)) = self.client.as_mut() {
            while let Ok(Ok(_)) = connection.recv_timeout(Duration::from_millis(100)) {}
        }
    }
}

fn old_modules() -> Vec<InstalledModule> {
    vec![InstalledModule {
        function: tern_image::ModuleFunction::SystemPart,
        index: 1,
        version: 1,
        sha256: [0xee; 32],
        size: 1,
        integrity: Integrity::Valid,
        dependencies_met: true,
    }]
}

fn attempt(server: &Server, id: i64) -> Value {
    let (status, attempt) = server.api().get(&format!("/api/attempts/{id}"));
    assert_eq!(status, 200, "{attempt}");
    attempt
}

fn attempt_states(server: &Server, device: &str) -> Vec<String> {
    let (_, shown) = server.api().get(&format!("/api/devices/{device}"));
    shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "attempt.state")
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Finishes an attempt whose blocks are all received: progress, reboot, describe.
fn finish(device: &mut ScriptedDevice, port: u16) {
    let installed = device.verified_modules();
    for phase in [Phase::Verifying, Phase::Staged, Phase::Rebooting] {
        device.report(phase);
    }
    device.flush();
    device.disconnect();
    // After the reboot: first on test, then confirmed.
    device.connect(port, &installed, false);
    device.flush();
    device.describe(&installed, true);
    device.flush();
}

#[test]
fn a_bundle_is_offered_pulled_and_confirmed_only_by_the_describe() {
    let dir = tern_testkit::scratch("update-confirm");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    let secret = server.add_device("dev-u", "photon");
    let (bundle, signed, modules) = bundle(6, &["photon-bootloader@1.5.2+lto.bin", "photon-system-part2@1.5.2.bin"]);

    let mut device = ScriptedDevice::new("dev-u", &secret);
    device.connect(server.mqtt_port, &old_modules(), true);
    let (status, created) = api.post_bytes("/api/devices/dev-u/attempts", &bundle);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let total: u64 = modules.iter().map(|m| m.len() as u64).sum();
    assert_eq!(created["bytes_total"], total);
    assert!(created["air_bytes"].as_u64().unwrap() > total, "the estimate includes protocol overhead");
    // A second attempt while this one runs is refused.
    let (status, busy) = api.post_bytes("/api/devices/dev-u/attempts", &bundle);
    assert_eq!((status, &busy["error"]["code"]), (409, &json!("attempt_in_progress")));

    device.run_until(Duration::from_secs(60), ScriptedDevice::complete);
    assert_eq!(device.offer.as_ref().unwrap().1, vec![signed], "the offer carries the signed manifest as built");
    for (got, want) in device.verified_modules().iter().zip(&modules) {
        assert_eq!(got.sha256, <[u8; 32]>::from(Sha256::digest(want)));
    }
    // A success Result alone does not confirm; neither does the reboot report.
    finish_without_describe(&mut device);
    assert_ne!(attempt(&server, id)["state"], "confirmed");

    finish(&mut device, server.mqtt_port);
    wait_for("confirmation", Duration::from_secs(10), || attempt(&server, id)["state"] == "confirmed");
    let done = attempt(&server, id);
    assert_eq!(done["bytes_sent"], total, "each byte sent once");
    assert_eq!(done["bytes_resent"], 0);
    assert_eq!(device.duplicate_bytes, 0);
    // The state is stored before its event: wait for the event too.
    wait_for("the confirmed state's event", Duration::from_secs(10), || {
        attempt_states(&server, "dev-u").last().is_some_and(|s| s == "confirmed")
    });
    assert_eq!(
        attempt_states(&server, "dev-u"),
        ["offered", "downloading", "verifying", "staged", "rebooting", "confirmed"]
    );
    let (_, shown) = api.get("/api/devices/dev-u");
    let hashes: Vec<String> = shown["inventory"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sha256"].as_str().unwrap().into())
        .collect();
    let expected: Vec<String> = modules.iter().map(|m| hex::encode(Sha256::digest(m))).collect();
    assert_eq!(hashes, expected, "the device's modules are the new ones");
    assert_eq!(shown["attempts"][0]["state"], "confirmed");
}

/// Reports the reboot and a success Result, without the Describe that proves it.
fn finish_without_describe(device: &mut ScriptedDevice) {
    let (attempt, _, _) = device.offer.clone().expect("an offer");
    let result = tern_proto::UpdateResult {
        attempt,
        outcome: tern_proto::Outcome::Confirmed,
        reason: tern_proto::Reason::None,
        module: None,
    };
    device.publish(MessageKind::Result, encode(&Message::Result(result)));
    device.flush();
}

#[test]
fn bad_bundles_and_wrong_platforms_are_refused() {
    let dir = tern_testkit::scratch("update-bad");
    let server = Server::start(&dir.join("data"));
    let api = server.api();
    server.add_device("dev-p", "photon");
    let (good, _, _) = bundle(6, &["photon-bootloader@1.5.2+lto.bin"]);
    let (argon, _, _) = bundle(12, &["argon-bootloader@4.1.0.bin"]);
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    // (device, body, status, code)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("dev-p", b"garbage".to_vec(), 422, "bad_bundle"),
        ("dev-p", good[..good.len() / 2].to_vec(), 422, "bad_bundle"),
        ("dev-p", tampered, 422, "bad_bundle"),
        ("dev-p", argon, 422, "wrong_platform"),
        ("nobody", good.clone(), 404, "not_found"),
    ];
    for (device, body, status, code) in cases {
        let (got, reply) = api.post_bytes(&format!("/api/devices/{device}/attempts"), &body);
        assert_eq!((got, reply["error"]["code"].as_str()), (status, Some(code)), "{reply}");
    }
    assert_eq!(api.get("/api/devices/dev-p").1["attempts"], json!([]));
    // Cancelling: unknown attempt, then a real one.
    assert_eq!(api.post_json("/api/attempts/999/cancel", json!({})).0, 404);
    let (status, created) = api.post_bytes("/api/devices/dev-p/attempts", &good);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let (status, cancelled) = api.post_json(&format!("/api/attempts/{id}/cancel"), json!({}));
    assert_eq!((status, &cancelled["state"]), (200, &json!("cancelled")), "{cancelled}");
    let (status, again) = api.post_json(&format!("/api/attempts/{id}/cancel"), json!({}));
    assert_eq!((status, &again["error"]["code"]), (409, &json!("finished")));
}

#[test]
fn an_attempt_survives_a_sigkill_mid_transfer_and_resumes() {
    let dir = tern_testkit::scratch("update-kill");
    let data = dir.join("data");
    let server = Server::start(&data);
    let secret = server.add_device("dev-k", "photon");
    let (bundle, _, modules) = bundle(6, &["photon-system-part2@1.5.2.bin"]);
    let total: u64 = modules.iter().map(|m| m.len() as u64).sum();
    let blocks = total.div_ceil(1024) as usize;

    let mut device = ScriptedDevice::new("dev-k", &secret);
    device.connect(server.mqtt_port, &old_modules(), true);
    let (status, created) = server.api().post_bytes("/api/devices/dev-k/attempts", &bundle);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    device.run_until(Duration::from_secs(60), |d| d.blocks_held() >= blocks / 2);
    let history_before = server.api().get("/api/devices/dev-k").1["history"].clone();

    server.kill();
    device.disconnect();
    let server = Server::start(&data);
    assert_eq!(attempt(&server, id)["state"], "downloading", "the attempt was stored and is resumed");
    let held = device.blocks_held();
    device.connect(server.mqtt_port, &old_modules(), true);
    device.run_until(Duration::from_secs(60), ScriptedDevice::complete);
    assert!(device.offers_seen >= 2, "the offer came again after the restart");
    finish(&mut device, server.mqtt_port);
    wait_for("confirmation", Duration::from_secs(10), || attempt(&server, id)["state"] == "confirmed");

    // Only what was in flight at the kill may arrive twice.
    assert!(device.duplicate_bytes <= (WINDOW as u64) * 1024, "{} bytes arrived twice", device.duplicate_bytes);
    assert!(held >= blocks / 2);
    let done = attempt(&server, id);
    assert!(done["bytes_resent"].as_u64().unwrap() <= (WINDOW as u64) * 1024, "{done}");
    // Nothing recorded before the kill was lost.
    let history_after = server.api().get("/api/devices/dev-k").1["history"].clone();
    let before = history_before.as_array().unwrap();
    let after = history_after.as_array().unwrap();
    let first = before[0]["id"].as_i64().unwrap();
    let start = after.iter().position(|e| e["id"].as_i64() == Some(first)).expect("the oldest event is kept");
    assert_eq!(&after[start..start + before.len()], before.as_slice());
}

/// Pumps `device` for `duration`: every 300 ms it describes its old modules (as a device
/// does periodically) and, with `pull`, asks for one more block; nothing else.
fn idle_describing(device: &mut ScriptedDevice, duration: Duration, pull: bool) {
    let start = Instant::now();
    let mut next = Instant::now();
    while start.elapsed() < duration {
        if Instant::now() >= next {
            next += Duration::from_millis(300);
            device.describe(&old_modules(), true);
            if pull {
                if let Some((attempt, _, _)) = &device.offer {
                    let held = device.blocks_held() as u32;
                    let request = BlockRequest { attempt: *attempt, module: 0, offset: held * 1024, length: 1024 };
                    device.publish(MessageKind::BlockRequest, encode(&Message::BlockRequest(request)));
                }
            }
        }
        let event = {
            let (_, connection) = device.client.as_mut().expect("connected");
            connection.recv_timeout(Duration::from_millis(50))
        };
        if let Ok(Ok(Event::Incoming(Packet::Publish(publish)))) = event {
            device.receive(&publish.topic, &publish.payload);
        }
    }
}

/// A device that takes no step on its attempt while it keeps describing itself: the offer
/// is re-sent with a doubling wait (capped by `reoffer_max_ms`), the Describes do not keep
/// the attempt alive, and `give_up_after_ms` after the last progress it ends `timed_out`
/// with reason `no_progress`; the device is sent a cancel for it.
#[test]
fn describes_do_not_keep_an_attempt_alive_and_offers_back_off() {
    let dir = tern_testkit::scratch("update-no-progress");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tern.toml"), "offer_retry_ms = 200\nreoffer_max_ms = 800\ngive_up_after_ms = 3000\n")
        .unwrap();
    let server = Server::start(&data);
    let secret = server.add_device("dev-n", "photon");
    let (bundle, _, _) = bundle(6, &["photon-system-part2@1.5.2.bin"]);
    let mut device = ScriptedDevice::new("dev-n", &secret);
    device.connect(server.mqtt_port, &old_modules(), true);
    let (status, created) = server.api().post_bytes("/api/devices/dev-n/attempts", &bundle);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let started = Instant::now();
    idle_describing(&mut device, Duration::from_millis(4500), false);
    let done = attempt(&server, id);
    assert_eq!((&done["state"], &done["reason"]), (&json!("timed_out"), &json!("no_progress")), "{done}");
    let ended = done["updated_at"].as_i64().unwrap() - done["created_at"].as_i64().unwrap();
    assert!((2900..4400).contains(&ended), "timed out {ended} ms after its creation, not about 3000");
    assert!(started.elapsed() >= Duration::from_millis(2900));
    // Offers at about 0, 0.2, 0.6, 1.4, 2.2, 3.0 s: the gaps double up to the cap.
    let gaps: Vec<u128> = device.offer_times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert!((4..=7).contains(&device.offer_times.len()), "offers at gaps {gaps:?}");
    assert!(gaps.windows(2).all(|g| g[1] + 100 >= g[0]), "the gaps do not shrink: {gaps:?}");
    assert!(gaps.iter().all(|&g| g <= 1000), "no gap beyond the cap: {gaps:?}");
    assert!(gaps.last().is_some_and(|&g| g >= 600), "the gaps grew to the cap: {gaps:?}");
    assert_eq!(done["offers_sent"].as_u64(), Some(device.offer_times.len() as u64), "{done}");
    assert_eq!(device.cancels, [Some(id as u64)], "the device is told to stop");
}

/// An attempt that keeps making progress, too slowly, ends at `attempt_deadline_ms`
/// after its creation with reason `deadline`.
#[test]
fn every_attempt_ends_by_its_deadline() {
    let dir = tern_testkit::scratch("update-deadline");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tern.toml"), "give_up_after_ms = 60000\nattempt_deadline_ms = 2500\n").unwrap();
    let server = Server::start(&data);
    let secret = server.add_device("dev-d", "photon");
    let (bundle, _, _) = bundle(6, &["photon-system-part2@1.5.2.bin"]);
    let mut device = ScriptedDevice::new("dev-d", &secret);
    device.connect(server.mqtt_port, &old_modules(), true);
    let (status, created) = server.api().post_bytes("/api/devices/dev-d/attempts", &bundle);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    idle_describing(&mut device, Duration::from_millis(3500), true);
    let done = attempt(&server, id);
    assert_eq!((&done["state"], &done["reason"]), (&json!("timed_out"), &json!("deadline")), "{done}");
    assert!(device.blocks_held() >= 5, "it was making progress: {} blocks", device.blocks_held());
    let ended = done["updated_at"].as_i64().unwrap() - done["created_at"].as_i64().unwrap();
    assert!((2400..3400).contains(&ended), "ended {ended} ms after its creation");
}

/// Starting an update with an `Idempotency-Key` is idempotent: the same request again (a
/// retry after a lost response, or after a server restart) answers `200` with the same
/// attempt and starts nothing; the key cannot be reused for another device or plan; a
/// plan started with a key answers its repeat with the attempt, without a key with `409`.
#[test]
fn starts_with_an_idempotency_key_return_the_same_attempt() {
    let dir = tern_testkit::scratch("update-idempotent");
    let data = dir.join("data");
    let server = Server::start(&data);
    let api = server.api();
    let (bundle, _, _) = bundle(6, &["photon-system-part2@1.5.2.bin"]);
    let mut devices = Vec::new();
    for id in ["dev-i", "dev-j"] {
        let secret = server.add_device(id, "photon");
        let mut device = ScriptedDevice::new(id, &secret);
        device.connect(server.mqtt_port, &old_modules(), true);
        device.flush();
        devices.push(device);
    }
    wait_for("both inventories", Duration::from_secs(10), || {
        ["dev-i", "dev-j"].iter().all(|d| api.get(&format!("/api/devices/{d}")).1["inventory"].is_object())
    });

    let (status, first) = api.post_bytes_keyed("/api/devices/dev-i/attempts", &bundle, "key-1");
    assert_eq!(status, 201, "{first}");
    let (status, again) = api.post_bytes_keyed("/api/devices/dev-i/attempts", &bundle, "key-1");
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    // After a server restart too.
    server.kill();
    let server = Server::start(&data);
    let api = server.api();
    let (status, again) = api.post_bytes_keyed("/api/devices/dev-i/attempts", &bundle, "key-1");
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
    let (_, shown) = api.get("/api/devices/dev-i");
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(1), "one attempt: {shown}");
    let (status, reused) = api.post_bytes_keyed("/api/devices/dev-j/attempts", &bundle, "key-1");
    assert_eq!((status, &reused["error"]["code"]), (422, &json!("idempotency_key_reused")), "{reused}");
    let (status, bad) = api.post_bytes_keyed("/api/devices/dev-j/attempts", &bundle, "two words");
    assert_eq!((status, &bad["error"]["code"]), (400, &json!("bad_idempotency_key")), "{bad}");

    // A plan started with a key.
    let (status, plan) = api.post_bytes("/api/devices/dev-j/plans", &bundle);
    assert_eq!(status, 201, "{plan}");
    let start = format!("/api/plans/{}/start", plan["id"]);
    let (status, started) = api.post_json_keyed(&start, json!({}), "key-2");
    assert_eq!(status, 201, "{started}");
    let (status, again) = api.post_json_keyed(&start, json!({}), "key-2");
    assert_eq!((status, &again["id"]), (200, &started["id"]), "{again}");
    let (status, unkeyed) = api.post_json(&start, json!({}));
    assert_eq!((status, &unkeyed["error"]["code"]), (409, &json!("plan_not_proposed")), "{unkeyed}");
    let (status, other) = api.post_json_keyed(&start, json!({}), "key-1");
    assert_eq!((status, &other["error"]["code"]), (422, &json!("idempotency_key_reused")), "{other}");
}
