//! Bytes on the air (issue 12): for real modules of several sizes — an application, a
//! bootloader, a 475 KB system part — the bytes that cross the device's connection per
//! module byte, for a whole module sent uncompressed, compressed (a `tern-delta` patch
//! from nothing) and as a delta from the version the device runs, on a clean link and on
//! a link that loses 5% of the messages each way; next to the server's estimate and to
//! Particle's 1.14× (the field report: 0.139 MB asked for a 121,576-byte system part).
//!
//! It runs the server's attempt machine (`tern_proto::attempt`, with the block size and
//! windows the server agrees with the device, `tern_server::updates::AirTerms`) against the
//! real device conversation and agent on simulated flash, in virtual time, and counts every
//! MQTT packet as the `rumqttc` codec the gateway uses writes it: PUBLISHes on the compact
//! topics (downlinks at QoS 1 with their PUBACK, but blocks at QoS 0), the reconnect after the install (CONNECT,
//! CONNACK, SUBSCRIBE, SUBACK) and the confirmation. A lost message's bytes count (they
//! were sent); a lost downlink has no PUBACK. The run ends when the attempt is confirmed.
//! The TLS columns put every packet in TLS 1.3 records as the gateway writes them (one
//! record per packet, 22 bytes each, RFC 8446 §5.2; the handshake is the connection's);
//! the `tls` tests measure the same on a real TLS socket.
//!
//! `cargo test --release -p tern-fleet --test it air_bench -- --nocapture` prints the
//! table (about 20 s); `TERN_AIR_BENCH_SEEDS=N` repeats the lossy runs with N seeds.

use std::collections::VecDeque;
use std::path::Path;

use bytes::BytesMut;
use ed25519_dalek::VerifyingKey;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, SubAck};
use rumqttc::mqttbytes::v4::{Subscribe, SubscribeReasonCode};
use rumqttc::mqttbytes::QoS;
use tern_device::agent::Agent;
use tern_device::boot::{self, ResetCause};
use tern_device::conversation::{Conversation, ConversationConfig, Retained, Start, DEFAULT_MAX_BLOCK};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_image::model::ModuleFunction;
use tern_proto::attempt::{Attempt, AttemptState, TransferConfig, Transmit};
use tern_proto::{
    Block, LinkCapacity, List, Message, MessageKind, OfferedModule, Topic, TopicForm, Transfer, UpdateOffer,
};
use tern_server::store::{CapacityRecord, PatchRef, PlannedModule};
use tern_server::updates::{estimate_air_bytes, AirTerms, TLS_RECORD_OVERHEAD, TLS_RECORD_PAYLOAD};
use tern_sim::device::{Behaviour, Image, SimDevice};
use tern_sim::scenario::{scenario_key, Scenario};

const DEVICE: &str = "bench-device";
const ATTEMPT: u64 = 1000;
/// Particle's figure for the field report's Electron system part 3 (0.139 MB / 121,576 B).
const PARTICLE: f64 = 1.14;

/// How a module travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Uncompressed,
    Compressed,
    Delta,
}

/// One module of the benchmark: the device runs `old` (with `base` around it) and is sent
/// `new`.
struct Case {
    name: &'static str,
    profile: &'static Profile,
    base: Vec<Image>,
    old: Image,
    new: Image,
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Measured {
    /// Bytes of the MQTT packets (plain TCP).
    socket_bytes: u64,
    /// The same packets in TLS 1.3 records, one record per packet as the gateway writes
    /// them (and one more per 16 KiB of a packet).
    tls_bytes: u64,
    resent: u64,
    messages_lost: u64,
}

impl Measured {
    /// One packet of `len` bytes crossed the connection.
    fn packet(&mut self, len: u64) {
        self.socket_bytes += len;
        self.tls_bytes += len + len.div_ceil(TLS_RECORD_PAYLOAD).max(1) * TLS_RECORD_OVERHEAD;
    }
}

fn release_module(corpus: &Path, file: &str, platform: u16) -> Image {
    tern_sim::corpus::module(&corpus.join("particle/releases").join(file), platform).expect("a corpus module")
}

fn cases(corpus: &Path) -> Vec<Case> {
    let argon = NRF52840.platform_id;
    let photon = STM32F2.platform_id;
    let pair = |name: &str, which: &str| {
        tern_sim::corpus::module(&corpus.join("pairs").join(name).join(which), photon).expect("a corpus pair")
    };
    let argon_app = |part1: &Image| {
        let need =
            tern_image::Dependency { function: ModuleFunction::SystemPart, index: 1, version: part1.entry.version };
        Image::synthetic(&NRF52840, ModuleFunction::UserPart, 1, 1, &[need], Behaviour::Healthy, 6000)
    };
    let part1_old = release_module(corpus, "argon-system-part1@4.0.1.bin", argon);
    let part1_new = release_module(corpus, "argon-system-part1@4.0.2.bin", argon);
    let softdevice = release_module(corpus, "argon-softdevice@4.1.0.bin", argon);
    vec![
        Case {
            name: "application (Photon ascender 1.0.1 → 1.1.0)",
            profile: &STM32F2,
            base: vec![
                release_module(corpus, "photon-bootloader@2.3.1+lto.bin", photon),
                release_module(corpus, "photon-system-part1@2.3.1.bin", photon),
                release_module(corpus, "photon-system-part2@2.3.1.bin", photon),
            ],
            old: pair("particle_photon_ascender-app_1.0.1_to_1.1.0", "old.bin"),
            new: pair("particle_photon_ascender-app_1.0.1_to_1.1.0", "new.bin"),
        },
        Case {
            name: "bootloader (Argon 4.0.1 → 4.0.2)",
            profile: &NRF52840,
            base: vec![softdevice.clone(), part1_new.clone(), argon_app(&part1_new)],
            old: release_module(corpus, "argon-bootloader@4.0.1.bin", argon),
            new: release_module(corpus, "argon-bootloader@4.0.2.bin", argon),
        },
        Case {
            name: "system part (Argon 4.0.1 → 4.0.2)",
            profile: &NRF52840,
            base: vec![softdevice, release_module(corpus, "argon-bootloader@4.0.2.bin", argon), argon_app(&part1_old)],
            old: part1_old,
            new: part1_new,
        },
    ]
}

/// Bytes of one MQTT packet as the codec writes it.
fn packet_len(packet: Packet) -> u64 {
    let mut out = BytesMut::new();
    packet.write(&mut out, 1 << 24).expect("the packet encodes");
    out.len() as u64
}

fn publish_len(kind: MessageKind, payload: &[u8], qos: QoS) -> u64 {
    let topic = Topic::with_form(DEVICE, kind, TopicForm::Compact).to_string();
    let mut publish = Publish::new(topic, qos, payload.to_vec());
    if qos == QoS::AtLeastOnce {
        publish.pkid = 1;
    }
    packet_len(Packet::Publish(publish))
}

/// The packets of a (re)connection: CONNECT with a 32-byte secret, CONNACK, SUBSCRIBE to
/// the compact downlink, SUBACK.
fn connection_packets() -> [u64; 4] {
    let mut connect = Connect::new(DEVICE);
    connect.login = Some(Login::new(DEVICE, "0".repeat(32)));
    let filter = Topic::downlink_filter(DEVICE, TopicForm::Compact).to_string();
    [
        packet_len(Packet::Connect(connect)),
        packet_len(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))),
        packet_len(Packet::Subscribe(Subscribe::new(&filter, QoS::AtLeastOnce))),
        packet_len(Packet::SubAck(SubAck::new(1, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]))),
    ]
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let n = message.encode(&mut buf).expect("sized by encoded_len");
    buf.truncate(n);
    buf
}

/// A seeded coin for losing messages.
struct Loss {
    state: u64,
    per_mille: u64,
}

impl Loss {
    fn lost(&mut self) -> bool {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % 1000 < self.per_mille
    }
}

fn conversation_config() -> ConversationConfig {
    let link = LinkCapacity { max_block: DEFAULT_MAX_BLOCK, compact_topics: true };
    ConversationConfig { link: Some(link), ..ConversationConfig::default() }
}

fn boot_device<'k>(dev: &SimDevice, keys: &'k [VerifyingKey], cause: ResetCause) -> Conversation<'k> {
    let mut s = dev.storage();
    let decision = boot::boot(&mut s, dev.profile, cause).expect("the device boots");
    let agent = Agent::load(&mut s, dev.profile, keys).expect("its state loads");
    let start = Start { decision, confirm_test_boot: true, retained: Retained::default() };
    Conversation::new(agent, start, conversation_config())
}

/// The terms the server agrees with the benchmark's device (its Describe's link).
fn terms(tls: bool) -> AirTerms {
    let capacity = CapacityRecord {
        staging_bytes: 1 << 20,
        max_modules: 4,
        block_size: 1024,
        patches: true,
        max_block: Some(DEFAULT_MAX_BLOCK),
        compact_topics: true,
    };
    let config = TransferConfig { count_tls_records: tls, ..TransferConfig::default() };
    AirTerms::for_device(&config, Some(&capacity), 4)
}

/// Sends `case.new` as `transfer` (with `payload` the bytes block requests address) to a
/// device running `case.old`, over a link losing `loss` per mille of the messages each
/// way; returns what crossed the device's connection.
fn run(case: &Case, transfer: Transfer, payload: &[u8], loss: u64, seed: u64) -> Measured {
    let keys = vec![scenario_key().verifying_key()];
    let mut dev = SimDevice::new(case.profile, keys.clone());
    let installed: Vec<&Image> = case.base.iter().chain([&case.old]).collect();
    dev.provision(&installed, None).expect("the device is provisioned");
    let signed = Scenario::sign(case.profile, std::slice::from_ref(&case.new), 1);
    let e = &case.new.entry;
    let module = OfferedModule {
        function: e.function,
        index: e.index,
        version: e.version,
        size: e.size,
        sha256: e.sha256,
        transfer,
    };
    let modules = List::from_slice(&[module]).expect("one module");
    let config = terms(false).transfer(&TransferConfig::default());
    let mut loss = Loss { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, per_mille: loss };
    let mut measured = Measured::default();

    let mut conversation = boot_device(&dev, &keys, ResetCause::PowerOn);
    let mut now = 0u64;
    conversation.handle_connected(&mut dev.storage(), now);
    // The Describe of the connection before the attempt is not the attempt's.
    while conversation.poll_transmit().is_some() {}
    let mut attempt = Attempt::new(ATTEMPT, modules, config, now);
    let (mut down, mut up): (VecDeque<Vec<u8>>, VecDeque<Vec<u8>>) = Default::default();
    let mut offer_again = false;
    while !attempt.state().is_final() {
        now += 1;
        assert!(now < 3_600_000, "{}: no end after an hour of virtual time", case.name);
        if attempt.poll_timeout().is_some_and(|due| due <= now) {
            attempt.handle_timeout(now);
        }
        let mut transmits: Vec<Transmit> = std::iter::from_fn(|| attempt.poll_transmit()).collect();
        if std::mem::take(&mut offer_again) {
            transmits.push(Transmit::Offer);
        }
        for t in transmits {
            let (kind, bytes) = match t {
                Transmit::Offer => {
                    let offer = UpdateOffer {
                        attempt: ATTEMPT,
                        signed: List::from_slice(&[signed.as_slice()]).expect("one document"),
                        modules,
                        air_bytes: 0,
                        window: config.window,
                        max_block: config.max_block,
                        max_request: Some(attempt.max_request()),
                    };
                    (MessageKind::UpdateOffer, encode(&Message::UpdateOffer(offer)))
                }
                Transmit::Block { module, offset, length } => {
                    let data = &payload[offset as usize..][..length as usize];
                    let block = Block { attempt: ATTEMPT, module, offset, data };
                    (MessageKind::Block, encode(&Message::Block(block)))
                }
                Transmit::Cancel => panic!("nobody cancels"),
            };
            // Blocks go at QoS 0 (the gateway's rule), the rest at QoS 1 with a PUBACK.
            let qos = if kind == MessageKind::Block { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            measured.packet(publish_len(kind, &bytes, qos));
            if loss.lost() {
                measured.messages_lost += 1;
            } else {
                if qos == QoS::AtLeastOnce {
                    measured.packet(packet_len(Packet::PubAck(PubAck::new(1))));
                }
                down.push_back(bytes);
            }
        }
        {
            let mut s = dev.storage();
            while let Some(bytes) = down.pop_front() {
                let message = Message::decode(&bytes).expect("decodes");
                conversation.handle_message(&message, &mut s, now);
            }
            if conversation.poll_timeout().is_some_and(|due| due <= now) {
                conversation.handle_timeout(&mut s, now);
            }
        }
        while let Some(message) = conversation.poll_transmit() {
            let bytes = encode(&message);
            measured.packet(publish_len(message.kind(), &bytes, QoS::AtMostOnce));
            if loss.lost() {
                measured.messages_lost += 1;
            } else {
                up.push_back(bytes);
            }
        }
        if conversation.poll_action().is_some() {
            // The install: the boot manager copies the staged module; the device
            // reconnects, and the server offers again on the reconnect (its `Watch`).
            conversation = boot_device(&dev, &keys, ResetCause::Software);
            for len in connection_packets() {
                measured.packet(len);
            }
            conversation.handle_connected(&mut dev.storage(), now);
            attempt.handle_connected(now);
            offer_again = !matches!(attempt.state(), AttemptState::Offered | AttemptState::Downloading);
            down.clear();
        }
        while let Some(bytes) = up.pop_front() {
            let _ = match Message::decode(&bytes).expect("decodes") {
                Message::BlockRequest(r) => attempt.handle_block_request(&r, now),
                Message::Progress(p) => attempt.handle_progress(&p, now),
                Message::Result(r) => attempt.handle_result(&r, now),
                Message::Describe(d) => attempt.handle_describe(&d, now),
                other => panic!("the device sent {other:?}"),
            };
        }
    }
    assert_eq!(attempt.state(), AttemptState::Confirmed, "{} {transfer:?}", case.name);
    let slot = case.profile.slot_for(case.new.entry.function, case.new.entry.index).expect("a slot");
    assert!(dev.slot_holds(slot, &case.new.bytes), "{}: the new module is installed", case.name);
    measured.resent = attempt.stats().bytes_resent;
    measured
}

/// The server's estimate for the transfer (what a plan shows and a cellular operator
/// confirms).
fn estimate(case: &Case, transfer: Transfer, signed_len: usize, tls: bool) -> u64 {
    let e = &case.new.entry;
    let patch = match transfer {
        Transfer::Raw => None,
        Transfer::Patch { source, length } => {
            Some(PatchRef { source: source.map(hex::encode), address: String::new(), length })
        }
    };
    let planned = PlannedModule {
        sha256: hex::encode(e.sha256),
        function: e.function.code(),
        function_name: String::new(),
        index: e.index,
        version: e.version,
        size: e.size,
        start_address: e.start_address,
        reason: None,
        stage: 0,
        security_counter: 0,
        patch,
        patch_dropped: None,
    };
    estimate_air_bytes(DEVICE, &[planned], signed_len, 0, &terms(tls))
}

#[test]
fn air_bench() {
    let corpus = tern_testkit::corpus();
    let seeds: u64 = std::env::var("TERN_AIR_BENCH_SEEDS").map_or(1, |v| v.parse().expect("a number"));
    println!();
    println!(
        "bytes on the device's connection per module byte (MQTT 3.1.1, compact topics, 4 KiB blocks, 16 KiB windows)"
    );
    println!(
        "{:<46} {:>8} {:<13} {:>8} {:>8} {:>9} {:>10} {:>8} {:>10}",
        "module", "bytes", "transfer", "sent", "clean", "5% loss", "estimate", "TLS", "estimate"
    );
    let mut failures = Vec::new();
    for case in cases(&corpus) {
        let size = case.new.bytes.len() as f64;
        let signed_len = Scenario::sign(case.profile, std::slice::from_ref(&case.new), 1).len();
        let delta_config = tern_delta::Config::default();
        for kind in [Kind::Uncompressed, Kind::Compressed, Kind::Delta] {
            let (transfer, payload) = match kind {
                Kind::Uncompressed => (Transfer::Raw, case.new.bytes.clone()),
                Kind::Compressed => {
                    let patch = tern_delta::compress(&case.new.bytes, &delta_config);
                    (Transfer::Patch { source: None, length: patch.len() as u32 }, patch)
                }
                Kind::Delta => {
                    let patch = tern_delta::make(&case.old.bytes, &case.new.bytes, &delta_config);
                    let source = Some(case.old.entry.sha256);
                    (Transfer::Patch { source, length: patch.len() as u32 }, patch)
                }
            };
            let clean = run(&case, transfer, &payload, 0, 1);
            let lossy: Vec<Measured> = (1..=seeds).map(|seed| run(&case, transfer, &payload, 50, seed)).collect();
            let lossy_bytes = lossy.iter().map(|m| m.socket_bytes).sum::<u64>() as f64 / seeds as f64;
            let estimate_plain = estimate(&case, transfer, signed_len, false);
            let estimate_tls = estimate(&case, transfer, signed_len, true);
            println!(
                "{:<46} {:>8} {:<13} {:>8} {:>7.3}× {:>8.3}× {:>9.3}× {:>7.3}× {:>9.3}×",
                case.name,
                case.new.bytes.len(),
                format!("{kind:?}").to_lowercase(),
                payload.len(),
                clean.socket_bytes as f64 / size,
                lossy_bytes / size,
                estimate_plain as f64 / size,
                clean.tls_bytes as f64 / size,
                estimate_tls as f64 / size,
            );
            // The estimate is what the device's connection carries on a clean link.
            for (estimate, measured, link) in
                [(estimate_plain, clean.socket_bytes, "TCP"), (estimate_tls, clean.tls_bytes, "TLS")]
            {
                let error = estimate as f64 / measured as f64 - 1.0;
                if error.abs() > 0.03 {
                    failures
                        .push(format!("{} {kind:?} over {link}: estimate {estimate}, measured {measured}", case.name));
                }
            }
            assert_eq!(clean.resent, 0, "{} {kind:?}: nothing re-sent on a clean link", case.name);
            assert!(lossy.iter().all(|m| m.messages_lost > 0), "{} {kind:?}: the lossy link lost messages", case.name);
            if case.name.starts_with("system part") {
                let bound = match kind {
                    Kind::Uncompressed => 1.03,
                    Kind::Compressed => 0.70,
                    Kind::Delta => 0.10,
                };
                for (bytes, link) in [(clean.socket_bytes, "TCP"), (clean.tls_bytes, "TLS")] {
                    let ratio = bytes as f64 / size;
                    if ratio > bound {
                        failures.push(format!(
                            "{} {kind:?} over {link}: {ratio:.3}× the module, above {bound}×",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    println!(
        "{:<46} {:>8} {:<13} {:>8} {:>7.3}×",
        "Particle's estimate (Electron system part 3)", 121_576, "uncompressed", "", PARTICLE
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
