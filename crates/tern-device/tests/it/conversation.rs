//! The sans-IO conversation, driven by hand: inputs with a made-up clock, outputs read
//! from `poll_transmit` / `poll_action` / `poll_timeout`.

use ed25519_dalek::{SigningKey, VerifyingKey};
use tern_device::agent::Agent;
use tern_device::block::BLOCK_SIZE;
use tern_device::boot::{self, ResetCause, Run, SafeModeReason};
use tern_device::conversation::{
    AppFault, Conversation, ConversationConfig, PlatformAction, Retained, Start, MAX_WINDOW,
};
use tern_device::profile::{Profile, NRF52840, STM32F2};
use tern_device::state::UpdatePhase;
use tern_image::model::ModuleFunction::{self, SystemPart, UserPart};
use tern_proto::{
    Action, Block, BootReason, Capacity, Command, LinkCapacity, List, Message, Outcome, Reason, SafeModeCause,
    UpdateOffer, UpdateResult,
};
use tern_sim::device::{Behaviour, Image, SimDevice, SimStorage};

use crate::support::{dep, device, module, offered, release, release_signed_by};

/// One 1 KiB block per request, Progress every 500 ms: the conversation as it was before
/// windows (what these tests count on); windows are tested on their own.
const CONFIG: ConversationConfig = ConversationConfig {
    request_timeout_ms: 1_000,
    describe_every_ms: 30_000,
    progress_every_bytes: u64::MAX,
    progress_every_ms: 500,
    link: None,
};

/// A provisioned device and its trusted keys.
struct Rig {
    dev: SimDevice,
    keys: Vec<VerifyingKey>,
}

impl Rig {
    fn new(p: &'static Profile) -> Self {
        let dev = device(p);
        let keys = dev.keys.clone();
        Rig { dev, keys }
    }

    /// Boots (the boot manager runs) and starts a conversation, not yet connected.
    fn boot(&self, cause: ResetCause, confirm_test_boot: bool, retained: Retained) -> Conversation<'_> {
        let p = self.dev.profile;
        let mut storage: SimStorage = self.dev.storage();
        let decision = boot::boot(&mut storage, p, cause).expect("boots");
        let agent = Agent::load(&mut storage, p, &self.keys).expect("state loads");
        Conversation::new(agent, Start { decision, confirm_test_boot, retained }, CONFIG)
    }
}

/// Everything queued, in order.
fn drain(c: &mut Conversation<'_>) -> Vec<Message<'static>> {
    core::iter::from_fn(|| c.poll_transmit()).collect()
}

/// The block requests among `messages`, as (module, block number).
fn requests(messages: &[Message<'_>]) -> Vec<(u8, u32)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::BlockRequest(r) => Some((r.module, r.offset / BLOCK_SIZE)),
            _ => None,
        })
        .collect()
}

/// A compact view of `messages` for comparing with expectations.
fn kinds(messages: &[Message<'_>]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            Message::Describe(d) => format!("describe {}", d.boot_reason.name()),
            Message::BlockRequest(r) => format!("request {}:{}", r.module, r.offset / BLOCK_SIZE),
            Message::Progress(p) => format!("progress {}", p.phase.name()),
            Message::Result(r) => format!("result {} {}", r.outcome.name(), r.reason.name()),
            other => format!("{:?}", other.kind()),
        })
        .collect()
}

fn offer<'a>(attempt: u64, signed: &'a [u8], modules: &[&Image], window: u8) -> UpdateOffer<'a> {
    let list = offered(modules);
    UpdateOffer {
        attempt,
        signed: List::from_slice(&[signed]).expect("one document"),
        modules: list,
        air_bytes: 0,
        window,
        max_block: 1024,
        max_request: None,
    }
}

/// The block of `image` at block number `k`, for attempt `attempt`.
fn block(attempt: u64, image: &Image, module: u8, k: u32) -> Block<'_> {
    let start = (k * BLOCK_SIZE) as usize;
    let data = &image.bytes[start..(start + BLOCK_SIZE as usize).min(image.bytes.len())];
    Block { attempt, module, offset: k * BLOCK_SIZE, data }
}

fn app(p: &Profile, version: u32, size: usize) -> Image {
    module(p, UserPart, 1, version, &[dep(SystemPart, 1, 100)], size)
}

/// On connecting, a device describes itself; an offer starts the transfer with progress
/// and exactly `window` requests; each block stored lets one more request out. The window
/// is capped at [`MAX_WINDOW`].
#[test]
fn requests_respect_the_window() {
    for (window, expected) in [(3u8, 3usize), (1, 1), (0, 1), (200, MAX_WINDOW)] {
        let p = &NRF52840;
        let rig = Rig::new(p);
        let v2 = app(p, 2, 40 * 1024);
        let signed = release(p, 1, &[&v2]);
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        assert_eq!(kinds(&drain(&mut c)), ["describe normal"]);
        c.handle_offer(&offer(9, &signed, &[&v2], window), s, 10);
        let sent = drain(&mut c);
        assert_eq!(kinds(&sent[..1]), ["progress downloading"], "window {window}");
        let first = requests(&sent);
        assert_eq!(first, (0..expected as u32).map(|k| (0, k)).collect::<Vec<_>>(), "window {window}");
        c.handle_block(&block(9, &v2, 0, 0), s, 20);
        assert_eq!(requests(&drain(&mut c)), [(0, expected as u32)], "window {window}: one more");
        assert_eq!(c.stats().blocks_stored, 1);
    }
}

/// A lost block is asked for again once the request timeout has passed with nothing
/// arriving, and not before: a block that arrives starts the timeout of every request in
/// flight again. `poll_timeout` names the moments to come back.
#[test]
fn lost_block_is_asked_again_after_the_timeout() {
    let p = &STM32F2;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 10 * 1024);
    let signed = release(p, 1, &[&v2]);
    let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    c.handle_offer(&offer(3, &signed, &[&v2], 2), s, 0);
    assert_eq!(requests(&drain(&mut c)), [(0, 0), (0, 1)]);
    // Block 0 is lost; block 1 arrives, which restarts block 0's timeout: 100 + 1000.
    c.handle_block(&block(3, &v2, 0, 1), s, 100);
    assert_eq!(requests(&drain(&mut c)), [(0, 2)]);
    // Next due: progress at 500 and 1000, before the requests' timeout at 1100.
    assert_eq!(c.poll_timeout(), Some(500));
    c.handle_timeout(s, 500);
    assert_eq!(kinds(&drain(&mut c)), ["progress downloading"]);
    assert_eq!(c.poll_timeout(), Some(1000));
    c.handle_timeout(s, 1000);
    assert_eq!(kinds(&drain(&mut c)), ["progress downloading"], "1000 after block 0 was asked: not yet");
    assert_eq!(c.poll_timeout(), Some(1100));
    c.handle_timeout(s, 1099);
    assert!(requests(&drain(&mut c)).is_empty(), "not yet");
    // Nothing arrived for the timeout: block 0 and block 2 (also lost) are asked again.
    c.handle_timeout(s, 1100);
    assert_eq!(requests(&drain(&mut c)), [(0, 0), (0, 2)], "blocks 0 and 2 again");
    assert_eq!(c.stats().block_requests, 5);
    c.handle_disconnected();
    assert_eq!(c.poll_timeout(), None, "nothing to time while disconnected");
}

/// With an offer that allows windows, each request asks for a run of up to `max_request`
/// bytes of missing blocks; a message carrying several blocks stores each with its own
/// marker; the window's last block ends the request, and what of it was lost is asked for
/// again at once, and a window left unanswered is asked again once the timeout passed with
/// no block arriving. The
/// Describe announces the link's block size and topic form.
#[test]
fn windows_ask_for_runs_and_ask_again_for_what_was_lost() {
    let p = &NRF52840;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 40 * 1024 + 100);
    let signed = release(p, 1, &[&v2]);
    let link = LinkCapacity { max_block: 4096, compact_topics: true };
    let mut storage: SimStorage = rig.dev.storage();
    let decision = boot::boot(&mut storage, p, ResetCause::PowerOn).expect("boots");
    let agent = Agent::load(&mut storage, p, &rig.keys).expect("state loads");
    let config = ConversationConfig { link: Some(link), progress_every_bytes: 16 * 1024, ..CONFIG };
    let start = Start { decision, confirm_test_boot: true, retained: Retained::default() };
    let mut c = Conversation::new(agent, start, config);
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    let sent = drain(&mut c);
    let Message::Describe(d) = sent[0] else { panic!("{sent:?}") };
    assert_eq!(d.capacity.and_then(|c| c.link), Some(link));
    // Runs of 16 KiB: blocks 0–15, 16–31; window 2.
    let windows = |messages: &[Message<'_>]| -> Vec<(u32, u32)> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::BlockRequest(r) => Some((r.offset / BLOCK_SIZE, r.length)),
                _ => None,
            })
            .collect()
    };
    let offer = UpdateOffer { max_block: 4096, max_request: Some(16 * 1024), ..offer(5, &signed, &[&v2], 2) };
    c.handle_offer(&offer, s, 0);
    assert_eq!(windows(&drain(&mut c)), [(0, 16 * 1024), (16, 16 * 1024)]);
    // The first window's messages: blocks 0–3, 4–7 (lost), 8–11, 12–15.
    let message = |k: u32, n: u32| {
        let start = (k * BLOCK_SIZE) as usize;
        let end = (start + (n * BLOCK_SIZE) as usize).min(v2.bytes.len());
        Block { attempt: 5, module: 0, offset: k * BLOCK_SIZE, data: &v2.bytes[start..end] }
    };
    c.handle_block(&message(0, 4), s, 10);
    c.handle_block(&message(8, 4), s, 11);
    assert_eq!(c.stats().blocks_stored, 8, "each block of a message is stored");
    assert!(windows(&drain(&mut c)).is_empty(), "both windows still in flight");
    c.handle_block(&message(12, 4), s, 12);
    // The first window is over: its lost blocks 4–7 are asked at once, as a run.
    let sent = drain(&mut c);
    assert_eq!(windows(&sent), [(4, 4 * 1024)]);
    assert_eq!(sent.len(), 1, "12 KiB held: no Progress before 16 KiB more: {sent:?}");
    // The second window is never answered: after the timeout, it is asked again.
    c.handle_block(&message(4, 4), s, 20);
    let sent = drain(&mut c);
    assert_eq!(kinds(&sent[..1]), ["progress downloading"], "16 KiB held");
    assert_eq!(windows(&sent), [(32, 8 * 1024 + 100)], "the rest, a shorter last run");
    // The last block arrived at 20: both windows are due at 1020, not before.
    c.handle_timeout(s, 1019);
    assert!(windows(&drain(&mut c)).is_empty(), "not yet");
    c.handle_timeout(s, 1020);
    assert_eq!(windows(&drain(&mut c)), [(16, 16 * 1024), (32, 8 * 1024 + 100)]);
    // A message at an offset that is not a block boundary is ignored.
    c.handle_block(&Block { attempt: 5, module: 0, offset: 100, data: &v2.bytes[100..1124] }, s, 1021);
    assert_eq!(c.stats().blocks_stored, 16);
    for k in (16..41).step_by(4) {
        c.handle_block(&message(k, 4), s, 1022);
    }
    assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall), "every block arrived");
}

/// A slow link: the server answers windows in the order asked, one 4 KiB message every
/// 300 ms, so a window of 16 KiB takes 1.2 s and the fourth window asked starts arriving
/// 3.6 s after it was asked — far beyond the 1 s timeout — while something arrives every
/// 300 ms. No window is asked twice, and the transfer completes with one request per window.
#[test]
fn no_window_is_asked_twice_while_blocks_keep_arriving() {
    let p = &NRF52840;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 96 * 1024);
    let signed = release(p, 1, &[&v2]);
    let link = LinkCapacity { max_block: 4096, compact_topics: true };
    let mut storage: SimStorage = rig.dev.storage();
    let decision = boot::boot(&mut storage, p, ResetCause::PowerOn).expect("boots");
    let agent = Agent::load(&mut storage, p, &rig.keys).expect("state loads");
    let config = ConversationConfig { link: Some(link), ..CONFIG };
    let start = Start { decision, confirm_test_boot: true, retained: Retained::default() };
    let mut c = Conversation::new(agent, start, config);
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    drain(&mut c);
    let offer = UpdateOffer { max_block: 4096, max_request: Some(16 * 1024), ..offer(6, &signed, &[&v2], 4) };
    c.handle_offer(&offer, s, 0);
    // What the server still has to send, in order: (offset, end) of each window asked.
    let mut queued: std::collections::VecDeque<(u32, u32)> = Default::default();
    let mut asked: Vec<u32> = Vec::new();
    let mut take_requests = |c: &mut Conversation<'_>, queued: &mut std::collections::VecDeque<(u32, u32)>| {
        for m in drain(c) {
            if let Message::BlockRequest(r) = m {
                asked.push(r.offset);
                queued.push_back((r.offset, r.offset + r.length));
            }
        }
    };
    take_requests(&mut c, &mut queued);
    assert_eq!(queued.len(), 4, "a window of 4");
    const GAP_MS: u64 = 300;
    let mut now = 0;
    let mut messages = 0;
    let mut action = None;
    while let Some((offset, end)) = queued.pop_front() {
        let next = (offset + 4096).min(end);
        if next < end {
            queued.push_front((next, end));
        }
        // The device's clock runs to the next arrival, its timeouts handled on the way.
        now += GAP_MS;
        while let Some(due) = c.poll_timeout().filter(|&due| due <= now) {
            c.handle_timeout(s, due);
            take_requests(&mut c, &mut queued);
        }
        let data = &v2.bytes[offset as usize..(next as usize).min(v2.bytes.len())];
        c.handle_block(&Block { attempt: 6, module: 0, offset, data }, s, now);
        messages += 1;
        take_requests(&mut c, &mut queued);
        action = c.poll_action();
        if action.is_some() {
            break;
        }
    }
    assert_eq!(action, Some(PlatformAction::RebootToInstall), "every block arrived");
    assert!(now > 4 * CONFIG.request_timeout_ms, "slower than the timeout per window: {now} ms");
    assert_eq!(asked, (0..6).map(|w| w * 16 * 1024).collect::<Vec<_>>(), "each window asked once");
    assert_eq!((messages, c.stats().block_requests, c.stats().duplicate_blocks), (24, 6, 0));
}

/// Blocks in any order, duplicated, or for another attempt: duplicates are counted and
/// ignored, other attempts ignored; the last block verifies, reports progress and asks
/// for the reboot that installs. After it the device confirms on reaching the server and
/// reports the attempt confirmed with the new module described.
#[test]
fn reordered_and_duplicate_blocks_complete_then_confirm() {
    let p = &NRF52840;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 6 * 1024 + 5);
    let signed = release(p, 1, &[&v2]);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(5, &signed, &[&v2], 8), s, 0);
        drain(&mut c);
        for k in [6, 2, 2, 0, 5, 0] {
            c.handle_block(&block(5, &v2, 0, k), s, 10);
        }
        c.handle_block(&block(4, &v2, 0, 1), s, 10);
        assert_eq!((c.stats().blocks_stored, c.stats().duplicate_blocks), (4, 2));
        assert_eq!(c.agent().progress().0, 4 * u64::from(BLOCK_SIZE), "the other attempt's block is ignored");
        drain(&mut c);
        for k in [4, 3, 1] {
            c.handle_block(&block(5, &v2, 0, k), s, 20);
        }
        let sent = drain(&mut c);
        assert_eq!(kinds(&sent), ["progress verifying", "progress staged", "progress rebooting"]);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
        assert_eq!(c.poll_action(), None, "once");
        // The reboot was lost; the server offers again: reboot again.
        c.handle_offer(&offer(5, &signed, &[&v2], 8), s, 30);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
    }
    let mut c = rig.boot(ResetCause::Software, true, Retained::default());
    assert_eq!(c.boot_decision().run, Run::Application { test: true });
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    let sent = drain(&mut c);
    assert_eq!(kinds(&sent), ["result confirmed none", "describe normal"]);
    let Message::Describe(d) = &sent[1] else { unreachable!() };
    assert!(d.confirmed);
    assert!(d.modules.iter().any(|m| m.sha256 == v2.entry.sha256), "the new application is described");
    assert_eq!(
        d.last_result,
        Some(UpdateResult { attempt: 5, outcome: Outcome::Confirmed, reason: Reason::None, module: None })
    );

    // The server did not hear it and offers the attempt again: the answer is the result,
    // not a second download.
    c.handle_offer(&offer(5, &signed, &[&v2], 8), s, 10);
    assert_eq!(kinds(&drain(&mut c)), ["result confirmed none", "describe normal"]);
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
}

/// Offers the agent or the conversation refuses: a Result `failed` with the reason, then a
/// Describe carrying the same result; nothing changes on the device.
#[test]
fn refused_offers_report_their_reason() {
    let p = &STM32F2;
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let v2 = app(p, 2, 3000);
    let other_platform = Profile { platform_id: 99, ..STM32F2 };
    let too_big = module(p, SystemPart, 1, 101, &[], 300 * 1024);
    // A system part whose dependency the update does not bring and the device lacks.
    let needs_newer = module(p, SystemPart, 2, 101, &[dep(SystemPart, 1, 200)], 3000);
    let unsigned = app(p, 4, 3000);
    let cases: Vec<(&str, UpdateOffer<'static>, Reason)> = {
        let leak = |v: Vec<u8>| -> &'static [u8] { Vec::leak(v) };
        vec![
            (
                "stranger's key",
                offer(1, leak(release_signed_by(p, 1, &[&v2], &stranger)), &[&v2], 4),
                Reason::RejectedSignature,
            ),
            ("other platform", offer(2, leak(release(&other_platform, 1, &[&v2])), &[&v2], 4), Reason::WrongPlatform),
            ("too large", offer(3, leak(release(p, 1, &[&too_big])), &[&too_big], 4), Reason::TooLarge),
            (
                "unmet dependency",
                offer(4, leak(release(p, 1, &[&needs_newer])), &[&needs_newer], 4),
                Reason::UnmetDependency,
            ),
            ("unsigned module", offer(5, leak(release(p, 1, &[&v2])), &[&unsigned], 4), Reason::MalformedOffer),
            (
                "blocks too small",
                UpdateOffer { max_block: 512, ..offer(6, leak(release(p, 1, &[&v2])), &[&v2], 4) },
                Reason::MalformedOffer,
            ),
        ]
    };
    for (case, o, reason) in cases {
        let rig = Rig::new(p);
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        drain(&mut c);
        c.handle_message(&Message::UpdateOffer(o), s, 0);
        let sent = drain(&mut c);
        let expected = UpdateResult { attempt: o.attempt, outcome: Outcome::Failed, reason, module: None };
        assert_eq!(sent.first(), Some(&Message::Result(expected)), "{case}");
        let Some(Message::Describe(d)) = sent.get(1) else { panic!("{case}: a Describe follows: {sent:?}") };
        assert_eq!(d.last_result, Some(expected), "{case}");
        assert_eq!(c.agent().state().phase, UpdatePhase::Idle, "{case}");
        assert_eq!(c.agent().state().attempt, None, "{case}: a refusal writes nothing");
        assert!(requests(&sent).is_empty(), "{case}");
    }
    // A security counter below the device's.
    let rig = Rig::new(p);
    let v5 = app(p, 5, 3000);
    let newer = release(p, 6, &[&v5]);
    let older = release(p, 2, &[&v2]);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(7, &newer, &[&v5], 16), s, 0);
        let sent = drain(&mut c);
        for k in 0..3 {
            c.handle_block(&block(7, &v5, 0, k), s, 0);
        }
        assert_eq!(requests(&sent).len(), 3);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
    }
    let mut c = rig.boot(ResetCause::Software, true, Retained::default());
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    drain(&mut c);
    c.handle_offer(&offer(8, &older, &[&v2], 4), s, 0);
    let expected =
        UpdateResult { attempt: 8, outcome: Outcome::Failed, reason: Reason::SecurityCounterRollback, module: None };
    assert_eq!(drain(&mut c).first(), Some(&Message::Result(expected)));
    assert_eq!(c.attempt(), Some(7), "the attempt on flash is still the one installed");
}

/// Commands: each id runs once; reboot, safe mode and factory restore ask the platform to
/// reset (safe mode really boots safe mode next); cancel stops the transfer of its attempt
/// and reports it, a cancel of another attempt is ignored.
#[test]
fn commands_run_once_and_as_asked() {
    let p = &STM32F2;
    let command = |id, action, attempt| Command { id, action, attempt };
    let rig = Rig::new(p);
    let retained = {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_command(&command(1, Action::Reboot, None), s);
        assert_eq!(c.poll_action(), Some(PlatformAction::Reboot));
        c.handle_command(&command(1, Action::Reboot, None), s);
        assert_eq!(c.poll_action(), None, "a command delivered twice runs once");
        c.handle_command(&command(2, Action::Other(77), None), s);
        assert_eq!(c.poll_action(), None, "unknown actions are ignored");
        c.handle_command(&command(3, Action::EnterSafeMode, None), s);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootIntoSafeMode));
        c.retained()
    };
    let retained = {
        let mut c = rig.boot(ResetCause::Software, true, retained);
        assert_eq!(c.boot_decision().run, Run::SafeMode(SafeModeReason::Requested));
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        let sent = drain(&mut c);
        let Some(Message::Describe(d)) = sent.last() else { panic!("{sent:?}") };
        assert_eq!(
            (d.boot_reason, d.safe_mode, d.confirmed),
            (BootReason::SafeMode, Some(SafeModeCause::Requested), false)
        );
        c.handle_command(&command(3, Action::EnterSafeMode, None), s);
        assert_eq!(c.poll_action(), None, "remembered across the reset");
        c.handle_command(&command(4, Action::FactoryRestore, None), s);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToFactoryRestore));
        c.retained()
    };
    let mut c = rig.boot(ResetCause::Software, true, retained);
    assert!(c.boot_decision().events.factory_restored);
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    let v2 = app(p, 2, 8 * 1024);
    let signed = release(p, 1, &[&v2]);
    c.handle_offer(&offer(12, &signed, &[&v2], 4), s, 0);
    drain(&mut c);
    c.handle_command(&command(5, Action::CancelUpdate, Some(11)), s);
    assert!(drain(&mut c).is_empty(), "a cancel of another attempt");
    assert_eq!(c.agent().state().phase, UpdatePhase::Receiving);
    c.handle_command(&command(6, Action::CancelUpdate, Some(12)), s);
    assert_eq!(kinds(&drain(&mut c)), ["result cancelled cancelled_by_server", "describe factory_restore"]);
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
    c.handle_timeout(s, 5_000);
    assert!(requests(&drain(&mut c)).is_empty(), "no requests after the cancel");
}

/// The Describe: what the state record lists, the boot reason, the capacity (the agent's)
/// and the security counter.
#[test]
fn describe_carries_inventory_capacity_and_counter() {
    for p in [&STM32F2, &NRF52840] {
        let rig = Rig::new(p);
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let d = c.describe();
        assert_eq!(d.platform, p.platform_id);
        assert_eq!((d.boot_reason, d.confirmed, d.safe_mode), (BootReason::Normal, true, None));
        let expected_capacity = Capacity {
            staging_bytes: if p.name == STM32F2.name { 256 * 1024 } else { 2048 * 1024 },
            max_modules: 4,
            block_size: 1024,
            patches: true,
            link: None,
        };
        assert_eq!(d.capacity, Some(expected_capacity), "{}", p.name);
        assert_eq!(d.capacity, Some(c.agent().capacity()));
        assert_eq!(d.security_counter, Some(0));
        let listed: Vec<(ModuleFunction, u32)> = d.modules.iter().map(|m| (m.function, m.version)).collect();
        let installed: Vec<(ModuleFunction, u32)> =
            c.agent().state().installed.iter().flatten().map(|m| (m.function, m.version)).collect();
        assert_eq!(listed, installed);
        assert!(listed.contains(&(UserPart, 1)) && listed.contains(&(SystemPart, 100)), "{listed:?}");
        assert!(d.modules.iter().all(|m| m.dependencies_met));
        assert_eq!(d.last_result, None);
        // Not connected: nothing is sent.
        let s = &mut rig.dev.storage();
        c.handle_timeout(s, 60_000);
        assert!(drain(&mut c).is_empty());
    }
    // The counter after installing a release signed with counter 3.
    let p = &NRF52840;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 1000);
    let signed = release(p, 3, &[&v2]);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(1, &signed, &[&v2], 4), s, 0);
        c.handle_block(&block(1, &v2, 0, 0), s, 0);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
    }
    let c = rig.boot(ResetCause::Software, true, Retained::default());
    assert_eq!(c.describe().security_counter, Some(3));
}

/// A test boot is confirmed by reaching the server when the application is healthy: it is
/// then described as a normal, confirmed boot. An application that never confirms stays on
/// test; after the boot manager rolls back, the reason is how it failed.
#[test]
fn test_boots_confirm_on_reaching_the_server_or_roll_back_with_the_reason() {
    let p = &NRF52840;
    let cases = [
        (Behaviour::Healthy, true, None),
        (Behaviour::NeverConfirms, false, Some(AppFault::NeverConfirmed)),
        (Behaviour::Panic, false, Some(AppFault::Panicked)),
        (Behaviour::Hang, false, Some(AppFault::Hung)),
    ];
    for (behaviour, healthy, fault) in cases {
        let rig = Rig::new(p);
        let v2 = Image::synthetic(p, UserPart, 1, 2, &[dep(SystemPart, 1, 100)], behaviour, 2000);
        let signed = release(p, 1, &[&v2]);
        {
            let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
            let s = &mut rig.dev.storage();
            c.handle_connected(s, 0);
            c.handle_offer(&offer(21, &signed, &[&v2], 4), s, 0);
            c.handle_block(&block(21, &v2, 0, 0), s, 0);
            c.handle_block(&block(21, &v2, 0, 1), s, 0);
            assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
        }
        let mut c = rig.boot(ResetCause::Software, healthy, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        let sent = drain(&mut c);
        let Some(Message::Describe(d)) = sent.last() else { panic!("{sent:?}") };
        let expected = if healthy { (BootReason::Normal, true) } else { (BootReason::TestBoot, false) };
        assert_eq!((d.boot_reason, d.confirmed), expected, "{behaviour:?}");
        let Some(fault) = fault else { continue };
        // The application fails its test boots until the boot manager rolls back.
        let cause = if fault == AppFault::Panicked { ResetCause::Panic } else { ResetCause::Watchdog };
        let retained = Retained { fault: Some(fault), ..Retained::default() };
        let mut c = loop {
            let c = rig.boot(cause, false, retained);
            if c.boot_decision().events.rolled_back {
                break c;
            }
        };
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        let reason = match fault {
            AppFault::Panicked => Reason::AppFailedTestBoot,
            AppFault::Hung => Reason::AppHung,
            AppFault::NeverConfirmed => Reason::AppNotConfirmed,
        };
        let result = UpdateResult { attempt: 21, outcome: Outcome::RolledBack, reason, module: None };
        assert_eq!(
            kinds(&drain(&mut c)),
            [format!("result rolled_back {}", reason.name()), "describe rollback".into()]
        );
        assert_eq!(c.result(), Some(result), "{behaviour:?}");
    }
}

/// The attempt id lives in the state record with the offer: after a reset mid-transfer the
/// device asks for what is missing under that attempt without waiting for the offer again,
/// and a verify failure is reported for it with the module.
#[test]
fn attempt_survives_a_reset_with_the_transfer() {
    let p = &STM32F2;
    let rig = Rig::new(p);
    let v2 = app(p, 2, 4 * 1024);
    let signed = release(p, 1, &[&v2]);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(31, &signed, &[&v2], 2), s, 0);
        c.handle_block(&block(31, &v2, 0, 0), s, 0);
    }
    let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
    assert_eq!(c.attempt(), Some(31));
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    let sent = drain(&mut c);
    // The offer's window (2) is not kept across the reset: the default until the server
    // offers again.
    assert_eq!(kinds(&sent), ["describe normal", "request 0:1", "request 0:2", "request 0:3"]);
    assert!(sent.iter().all(|m| !matches!(m, Message::BlockRequest(r) if r.attempt != 31)));
    // Bytes that do not match the signed hash: the transfer fails on the last block.
    let mut bad = v2.bytes.clone();
    bad[3 * 1024] ^= 1;
    let bad = Image { bytes: bad, ..v2.clone() };
    for k in 1..4 {
        c.handle_block(&block(31, &bad, 0, k), s, 0);
    }
    let expected = UpdateResult { attempt: 31, outcome: Outcome::Failed, reason: Reason::VerifyError, module: Some(0) };
    assert_eq!(drain(&mut c).first(), Some(&Message::Result(expected)));
    assert_eq!(c.poll_action(), None);
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
}

/// Every finished attempt, offered again (a server that did not hear its end), is answered
/// with its final result and a Describe — cancelled, rolled back — and never restarted:
/// no Progress, no block request, nothing erased. An offer under a new attempt id for
/// modules the device already runs and confirmed is answered the same way.
#[test]
fn finished_attempts_offered_again_are_answered_not_restarted() {
    let p = &STM32F2;
    let v2 = app(p, 2, 3 * 1024);
    let signed = release(p, 1, &[&v2]);

    // Cancelled mid-transfer.
    let rig = Rig::new(p);
    let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    c.handle_offer(&offer(31, &signed, &[&v2], 4), s, 0);
    c.handle_block(&block(31, &v2, 0, 0), s, 0);
    c.handle_command(&Command { id: 1, action: Action::CancelUpdate, attempt: Some(31) }, s);
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
    drain(&mut c);
    // After a reset (nothing but the state record survives).
    let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    drain(&mut c);
    c.handle_offer(&offer(31, &signed, &[&v2], 4), s, 10);
    assert_eq!(kinds(&drain(&mut c)), ["result cancelled cancelled_by_server", "describe normal"]);
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle, "not restarted");
    assert_eq!(c.agent().progress().0, 0);

    // Rolled back after failed test boots.
    let rig = Rig::new(p);
    let bad = Image::synthetic(p, UserPart, 1, 3, &[dep(SystemPart, 1, 100)], Behaviour::Panic, 2000);
    let bad_signed = release(p, 1, &[&bad]);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(32, &bad_signed, &[&bad], 4), s, 0);
        c.handle_block(&block(32, &bad, 0, 0), s, 0);
        c.handle_block(&block(32, &bad, 0, 1), s, 0);
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
    }
    {
        // Installed and on test (the application has not confirmed yet): an offer of the
        // attempt again neither confirms the test boot nor downloads again.
        let mut c = rig.boot(ResetCause::Software, false, Retained::default());
        assert_eq!(c.boot_decision().run, Run::Application { test: true });
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        drain(&mut c);
        c.handle_offer(&offer(32, &bad_signed, &[&bad], 4), s, 10);
        assert_eq!(kinds(&drain(&mut c)), ["describe test_boot"]);
        assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
        assert!(matches!(c.agent().state().boot, tern_device::state::BootState::Testing { .. }), "still on test");
    }
    let retained = Retained { fault: Some(AppFault::Panicked), ..Retained::default() };
    let mut cause = ResetCause::Panic;
    let mut c = loop {
        let c = rig.boot(cause, false, retained);
        if c.boot_decision().events.rolled_back {
            break c;
        }
        cause = ResetCause::Panic;
    };
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    drain(&mut c);
    for again in 0..2 {
        c.handle_offer(&offer(32, &bad_signed, &[&bad], 4), s, 10);
        assert_eq!(
            kinds(&drain(&mut c)),
            ["result rolled_back app_failed_test_boot", "describe rollback"],
            "offer {again}"
        );
        assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
    }

    // Confirmed, then offered under a new attempt id: the modules already run.
    let rig = Rig::new(p);
    {
        let mut c = rig.boot(ResetCause::PowerOn, true, Retained::default());
        let s = &mut rig.dev.storage();
        c.handle_connected(s, 0);
        c.handle_offer(&offer(33, &signed, &[&v2], 4), s, 0);
        for k in 0..3 {
            c.handle_block(&block(33, &v2, 0, k), s, 0);
        }
        assert_eq!(c.poll_action(), Some(PlatformAction::RebootToInstall));
    }
    let mut c = rig.boot(ResetCause::Software, true, Retained::default());
    let s = &mut rig.dev.storage();
    c.handle_connected(s, 0);
    assert_eq!(kinds(&drain(&mut c)), ["result confirmed none", "describe normal"]);
    c.handle_offer(&offer(34, &signed, &[&v2], 4), s, 10);
    let sent = drain(&mut c);
    assert_eq!(kinds(&sent), ["result confirmed none", "describe normal"]);
    let Some(Message::Describe(d)) = sent.last() else { unreachable!() };
    assert!(d.confirmed && d.modules.iter().any(|m| m.sha256 == v2.entry.sha256));
    assert_eq!(c.agent().state().phase, UpdatePhase::Idle);
    assert_eq!(c.attempt(), Some(33), "the state record still names the attempt that installed it");
}
