//! The device's conversation against the server's attempt machine (`tern_proto::attempt`),
//! both sans-IO, over a seeded link that loses, duplicates and reorders encoded messages
//! both ways, with device resets and power cuts mid-transfer: every run ends confirmed
//! with the new module installed.

use std::collections::VecDeque;

use ed25519_dalek::VerifyingKey;

use tern_device::agent::Agent;
use tern_device::boot::{self, ResetCause};
use tern_device::conversation::{Conversation, ConversationConfig, Retained, Start};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_image::model::ModuleFunction::{SystemPart, UserPart};
use tern_proto::attempt::{Attempt, AttemptState, TransferConfig, Transmit};
use tern_proto::{Block, List, Message, UpdateOffer};
use tern_sim::device::{Image, SimDevice};
use tern_sim::flash::FaultKind;

use crate::support::{dep, device, module, offered, release};

const ATTEMPT: u64 = 77;

/// How blocks travel: one 1 KiB block per request (a server or device from before
/// windows), or windows of 16 KiB answered in 4 KiB messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocks {
    OnePerRequest,
    Windows,
}

/// Faults in per-mille per message, and device resets.
#[derive(Clone, Copy, Debug)]
struct Faults {
    loss: u64,
    duplicate: u64,
    reorder: u64,
    /// Per-mille chance per stored block that the device loses power at its next flash
    /// operation (at most `max_cuts` times).
    cut: u64,
    max_cuts: u32,
}

struct Rng(u64);

impl Rng {
    fn per_mille(&mut self, p: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 1000 < p
    }
}

/// A link direction: encoded messages, with faults applied on the way in.
#[derive(Default)]
struct Wire(VecDeque<Vec<u8>>);

impl Wire {
    fn send(&mut self, message: &Message<'_>, faults: Faults, rng: &mut Rng) {
        let mut bytes = vec![0u8; message.encoded_len()];
        let n = message.encode(&mut bytes).expect("encodes");
        bytes.truncate(n);
        if rng.per_mille(faults.loss) {
            return;
        }
        if rng.per_mille(faults.duplicate) {
            self.0.push_back(bytes.clone());
        }
        if rng.per_mille(faults.reorder) {
            self.0.push_front(bytes);
        } else {
            self.0.push_back(bytes);
        }
    }
}

/// Boots the device (again after a power cut during the boot itself) and starts its
/// conversation.
fn boot_conversation<'k>(
    dev: &SimDevice,
    keys: &'k [VerifyingKey],
    mut cause: ResetCause,
    blocks: Blocks,
) -> Conversation<'k> {
    let mut s = dev.storage();
    loop {
        dev.bench.borrow_mut().power_on();
        let booted = boot::boot(&mut s, dev.profile, cause)
            .map_err(|e| format!("{e:?}"))
            .and_then(|decision| Ok((decision, Agent::load(&mut s, dev.profile, keys).map_err(|e| format!("{e:?}"))?)));
        match booted {
            Ok((decision, agent)) => {
                let start = Start { decision, confirm_test_boot: true, retained: Retained::default() };
                let config = ConversationConfig {
                    request_timeout_ms: 300,
                    describe_every_ms: 2_000,
                    progress_every_ms: 500,
                    link: if blocks == Blocks::OnePerRequest { None } else { ConversationConfig::default().link },
                    ..ConversationConfig::default()
                };
                return Conversation::new(agent, start, config);
            }
            Err(_) if !dev.bench.borrow().powered => cause = ResetCause::PowerOn,
            Err(e) => panic!("the device does not boot: {e}"),
        }
    }
}

/// Runs one attempt of `modules` on a fresh `p` device; returns the final state, the
/// device and the number of power cuts.
fn run(
    p: &'static Profile,
    modules: &[&Image],
    faults: Faults,
    seed: u64,
    blocks: Blocks,
) -> (AttemptState, SimDevice, u32) {
    let signed = release(p, 1, modules);
    let dev = device(p);
    let keys = dev.keys.clone();
    let list = offered(modules);
    let (max_block, max_request) = match blocks {
        Blocks::OnePerRequest => (1024, 1024),
        Blocks::Windows => (4096, 16_384),
    };
    let config = TransferConfig {
        window: 8,
        max_block,
        max_request,
        offer_retry_ms: 1_000,
        give_up_after_ms: 120_000,
        count_tls_records: false,
    };
    let mut now = 0u64;
    let mut attempt = Attempt::new(ATTEMPT, list, config, now);
    let mut rng = Rng(seed | 1);
    let (mut down, mut up) = (Wire::default(), Wire::default());
    let mut conversation = boot_conversation(&dev, &keys, ResetCause::PowerOn, blocks);
    conversation.handle_connected(&mut dev.storage(), now);
    let mut cuts = 0;
    while !attempt.state().is_final() && now < 600_000 {
        now += 5;
        // The server.
        if attempt.poll_timeout().is_some_and(|due| due <= now) {
            attempt.handle_timeout(now);
        }
        while let Some(t) = attempt.poll_transmit() {
            match t {
                Transmit::Offer => {
                    let offer = UpdateOffer {
                        attempt: ATTEMPT,
                        signed: List::from_slice(&[signed.as_slice()]).expect("one document"),
                        modules: list,
                        air_bytes: 0,
                        window: config.window,
                        max_block: config.max_block,
                        max_request: (blocks == Blocks::Windows).then(|| attempt.max_request()),
                    };
                    down.send(&Message::UpdateOffer(offer), faults, &mut rng);
                }
                Transmit::Block { module, offset, length } => {
                    let bytes = &modules[usize::from(module)].bytes[offset as usize..][..length as usize];
                    let block = Block { attempt: ATTEMPT, module, offset, data: bytes };
                    down.send(&Message::Block(block), faults, &mut rng);
                }
                Transmit::Cancel => panic!("nobody cancels"),
            }
        }
        // The device.
        let mut s = dev.storage();
        let stored_before = conversation.stats().blocks_stored;
        if let Some(bytes) = down.0.pop_front() {
            let message = Message::decode(&bytes).expect("decodes");
            conversation.handle_message(&message, &mut s, now);
        }
        if conversation.poll_timeout().is_some_and(|due| due <= now) {
            conversation.handle_timeout(&mut s, now);
        }
        let powered = dev.bench.borrow().powered;
        if powered {
            while let Some(message) = conversation.poll_transmit() {
                up.send(&message, faults, &mut rng);
            }
        }
        let stored = conversation.stats().blocks_stored > stored_before;
        if stored && cuts < faults.max_cuts && rng.per_mille(faults.cut) {
            // The power goes at the device's next flash operation.
            let mut bench = dev.bench.borrow_mut();
            let at = bench.op_count();
            bench.faults = vec![(at, FaultKind::Cut)];
        }
        let reboot = if !powered {
            cuts += 1;
            Some(ResetCause::PowerOn)
        } else {
            conversation.poll_action().map(|_| ResetCause::Software)
        };
        if let Some(cause) = reboot {
            conversation = boot_conversation(&dev, &keys, cause, blocks);
            // The device reconnects; the server hears of it and offers again.
            conversation.handle_connected(&mut dev.storage(), now);
            attempt.handle_connected(now);
            down.0.clear();
        }
        // Uplink to the server.
        while let Some(bytes) = up.0.pop_front() {
            let _ = match Message::decode(&bytes).expect("decodes") {
                Message::BlockRequest(r) => attempt.handle_block_request(&r, now),
                Message::Progress(p) => attempt.handle_progress(&p, now),
                Message::Result(r) => attempt.handle_result(&r, now),
                Message::Describe(d) => attempt.handle_describe(&d, now),
                other => panic!("the device sent {other:?}"),
            };
        }
    }
    (attempt.state(), dev, cuts)
}

#[test]
fn conversation_and_attempt_end_confirmed_over_a_faulty_link() {
    let cases: &[(&str, Faults)] = &[
        ("clean", Faults { loss: 0, duplicate: 0, reorder: 0, cut: 0, max_cuts: 0 }),
        ("lossy", Faults { loss: 100, duplicate: 100, reorder: 100, cut: 0, max_cuts: 0 }),
        ("lossy with power cuts", Faults { loss: 100, duplicate: 50, reorder: 50, cut: 100, max_cuts: 3 }),
    ];
    let mut total_cuts = 0;
    for p in [&STM32F2, &NRF52840] {
        let sys = module(p, SystemPart, 1, 101, &[], 9 * 1024 + 100);
        let app = module(p, UserPart, 1, 2, &[dep(SystemPart, 1, 101)], 20 * 1024 + 7);
        for (&(case, faults), blocks) in cases.iter().flat_map(|c| [(c, Blocks::OnePerRequest), (c, Blocks::Windows)]) {
            let case = format!("{case} {blocks:?}");
            for seed in 1..=3u64 {
                let (state, dev, cuts) = run(p, &[&sys, &app], faults, seed, blocks);
                assert_eq!(state, AttemptState::Confirmed, "{} {case} seed {seed}", p.name);
                for m in [&sys, &app] {
                    let slot = p.slot_for(m.entry.function, m.entry.index).unwrap();
                    assert!(dev.slot_holds(slot, &m.bytes), "{} {case} seed {seed}: {} on flash", p.name, m.name);
                }
                if faults.cut > 0 {
                    println!("{} {case} seed {seed}: {cuts} power cuts", p.name);
                }
                total_cuts += cuts;
            }
        }
    }
    assert!(total_cuts >= 12, "the power-cut runs cut the power: {total_cuts}");
}
