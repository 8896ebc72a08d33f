//! The attempt state machine driven by a simulated device over a fault-injecting link.

extern crate std;

use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

use tern_image::{Integrity, ModuleFunction};

use crate::attempt::*;
use crate::*;

const ATTEMPT: AttemptId = 42;

fn offered(sizes: &[u32]) -> List<OfferedModule, MAX_MODULES> {
    let modules: Vec<OfferedModule> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| OfferedModule {
            function: if i + 1 == sizes.len() { ModuleFunction::UserPart } else { ModuleFunction::SystemPart },
            index: 1,
            version: 100 + i as u32,
            size,
            sha256: [i as u8 + 1; 32],
            transfer: Transfer::Raw,
        })
        .collect();
    List::from_slice(&modules).unwrap()
}

fn drain_events(attempt: &mut Attempt) -> Vec<AttemptState> {
    let mut states = Vec::new();
    while let Some(event) = attempt.poll_event() {
        if let AttemptEvent::State(state) = event {
            states.push(state);
        }
    }
    states
}

/// Faults the link injects, in percent per message.
#[derive(Clone, Copy, Debug)]
struct Faults {
    loss: u64,
    duplicate: u64,
    reorder: u64,
    /// Reset the device (losing its in-flight requests, keeping its staging) after this
    /// many blocks stored, once.
    reset_after: Option<usize>,
}

struct Rng(u64);

impl Rng {
    fn percent(&mut self, p: u64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 < p
    }
}

/// A device agent reduced to its protocol behaviour: it asks for the 1 KiB blocks it lacks,
/// keeps `window` requests in flight, re-asks after a timeout, reboots when it has all.
struct SimDevice {
    have: Vec<Vec<bool>>,
    in_flight: Vec<(u8, u32, u64)>,
    window: usize,
    offered: bool,
    stored: usize,
}

/// Runs one attempt to its end and returns it.
fn run(sizes: &[u32], faults: Faults, seed: u64) -> Attempt {
    let modules = offered(sizes);
    let config = TransferConfig {
        window: 4,
        max_block: 1024,
        max_request: 1024,
        offer_retry_ms: 500,
        give_up_after_ms: 60_000,
        count_tls_records: false,
    };
    let mut now = 0u64;
    let mut attempt = Attempt::new(ATTEMPT, modules, config, now);
    let mut device = SimDevice {
        have: sizes.iter().map(|&s| vec![false; s.div_ceil(1024) as usize]).collect(),
        in_flight: Vec::new(),
        window: 4,
        offered: false,
        stored: 0,
    };
    let mut rng = Rng(seed | 1);
    let mut down: VecDeque<Transmit> = VecDeque::new();
    let mut up: VecDeque<BlockRequest> = VecDeque::new();
    let mut reset_done = false;
    let mut finished_download = false;

    for _ in 0..200_000 {
        now += 10;
        // Server → device, through the faulty link.
        while let Some(t) = attempt.poll_transmit() {
            if rng.percent(faults.loss) {
                continue;
            }
            if rng.percent(faults.duplicate) {
                down.push_back(t);
            }
            if rng.percent(faults.reorder) {
                down.push_front(t);
            } else {
                down.push_back(t);
            }
        }
        while let Some(t) = down.pop_front() {
            match t {
                Transmit::Offer => device.offered = true,
                Transmit::Block { module, offset, length } => {
                    let m = usize::from(module);
                    assert!(length <= 1024 && offset % 1024 == 0, "server answers what was asked");
                    let block = (offset / 1024) as usize;
                    device.in_flight.retain(|&(im, io, _)| !(im == module && io == offset));
                    if !device.have[m][block] {
                        device.have[m][block] = true;
                        device.stored += 1;
                    }
                }
                Transmit::Cancel => panic!("nobody cancelled"),
            }
        }
        if faults.reset_after.is_some_and(|n| device.stored >= n) && !reset_done {
            // Power cut: requests in flight are forgotten, staging is kept; on reconnect the
            // server re-sends the offer and the device resumes.
            reset_done = true;
            device.in_flight.clear();
            device.offered = false;
            down.clear();
            attempt.handle_connected(now);
        }
        // Device: re-ask for requests that got no answer in 200 ms, then fill the window.
        if device.offered && !finished_download {
            device.in_flight.retain(|&(_, _, at)| now - at < 200);
            'fill: for (m, blocks) in device.have.iter().enumerate() {
                for (b, have) in blocks.iter().enumerate() {
                    if device.in_flight.len() >= device.window {
                        break 'fill;
                    }
                    let offset = b as u32 * 1024;
                    if !have && !device.in_flight.iter().any(|&(im, io, _)| im as usize == m && io == offset) {
                        device.in_flight.push((m as u8, offset, now));
                        up.push_back(BlockRequest { attempt: ATTEMPT, module: m as u8, offset, length: 1024 });
                    }
                }
            }
        }
        while let Some(request) = up.pop_front() {
            if rng.percent(faults.loss) {
                continue;
            }
            let _ = attempt.handle_block_request(&request, now);
        }
        if !finished_download && device.have.iter().all(|b| b.iter().all(|&h| h)) {
            finished_download = true;
            for phase in [Phase::Verifying, Phase::Staged, Phase::Rebooting] {
                let total = attempt.total_bytes();
                let progress = Progress { attempt: ATTEMPT, phase, bytes_done: total, bytes_total: total };
                attempt.handle_progress(&progress, now).unwrap();
            }
            let installed: Vec<InstalledModule> = attempt
                .modules()
                .iter()
                .map(|m| InstalledModule {
                    function: m.function,
                    index: m.index,
                    version: m.version,
                    sha256: m.sha256,
                    size: m.size,
                    integrity: Integrity::Valid,
                    dependencies_met: true,
                })
                .collect();
            let describe = Describe {
                platform: 6,
                boot_reason: BootReason::Normal,
                safe_mode: None,
                unmet: None,
                confirmed: true,
                modules: List::from_slice(&installed).unwrap(),
                capacity: None,
                security_counter: None,
                last_result: Some(UpdateResult {
                    attempt: ATTEMPT,
                    outcome: Outcome::Confirmed,
                    reason: Reason::None,
                    module: None,
                }),
            };
            attempt.handle_describe(&describe, now).unwrap();
        }
        if let Some(at) = attempt.poll_timeout() {
            if now >= at {
                attempt.handle_timeout(now);
            }
        }
        if attempt.state().is_final() {
            return attempt;
        }
    }
    panic!("attempt did not finish: {:?}", attempt.state());
}

#[test]
fn transfers_confirm_despite_loss_duplication_reordering_and_resets() {
    let sizes = [5000, 130_000, 20_480];
    let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    // (faults, the most re-sent bytes allowed as a share of the total, in percent)
    let clean = Faults { loss: 0, duplicate: 0, reorder: 0, reset_after: None };
    let cases = [
        (clean, 0),
        (Faults { loss: 10, ..clean }, 30),
        (Faults { duplicate: 20, ..clean }, 0),
        (Faults { reorder: 30, ..clean }, 0),
        (Faults { loss: 5, duplicate: 10, reorder: 20, ..clean }, 20),
        (Faults { reset_after: Some(60), ..clean }, 5),
        (Faults { loss: 5, reset_after: Some(100), ..clean }, 20),
    ];
    for (faults, max_resent_percent) in cases {
        for seed in 1..=5 {
            let attempt = run(&sizes, faults, seed);
            let stats = attempt.stats();
            assert_eq!(attempt.state(), AttemptState::Confirmed, "{faults:?} seed {seed}");
            assert!(stats.bytes_sent >= total, "{faults:?}: every byte sent at least once");
            assert_eq!(stats.bytes_sent - stats.bytes_resent, total, "{faults:?}: first-time bytes are the modules");
            if faults.loss > 0 {
                assert!(stats.bytes_resent > 0, "{faults:?} seed {seed}: lost blocks were asked for again");
            }
            assert!(
                stats.bytes_resent * 100 <= total * max_resent_percent,
                "{faults:?} seed {seed}: re-sent {} of {total}",
                stats.bytes_resent
            );
        }
    }
}

#[test]
fn requests_for_a_patched_module_address_its_patch() {
    let mut modules = offered(&[300_000, 2000]);
    let mut patched = modules.iter().copied().collect::<Vec<_>>();
    patched[0].transfer = Transfer::Patch { source: Some([7; 32]), length: 5000 };
    modules = List::from_slice(&patched).unwrap();
    let mut attempt = Attempt::new(ATTEMPT, modules, TransferConfig::default(), 0);
    assert_eq!(attempt.total_bytes(), 7000);
    while attempt.poll_transmit().is_some() {}
    let ask = |attempt: &mut Attempt, offset, length| {
        attempt.handle_block_request(&BlockRequest { attempt: ATTEMPT, module: 0, offset, length }, 1)
    };
    // The patch's last block is cut at the patch's end, not the module's.
    assert_eq!(ask(&mut attempt, 4096, 1024), Ok(()));
    assert_eq!(attempt.poll_transmit(), Some(Transmit::Block { module: 0, offset: 4096, length: 904 }));
    assert_eq!(ask(&mut attempt, 5000, 1024), Err(Ignored::OutOfRange));
    assert_eq!(attempt.stats().bytes_sent, 904);
}

#[test]
fn invalid_requests_are_ignored_with_a_reason() {
    let mut attempt = Attempt::new(ATTEMPT, offered(&[3000, 100]), TransferConfig::default(), 0);
    fn check(attempt: &mut Attempt, module: u8, offset: u32, length: u32, expected: Result<Option<Transmit>, Ignored>) {
        let request = BlockRequest { attempt: ATTEMPT, module, offset, length };
        let got = attempt.handle_block_request(&request, 1).map(|()| {
            // Skip the initial offer.
            let mut last = None;
            while let Some(t) = attempt.poll_transmit() {
                last = Some(t);
            }
            last
        });
        assert_eq!(got, expected, "{request:?}");
    }
    check(&mut attempt, 0, 0, 1024, Ok(Some(Transmit::Block { module: 0, offset: 0, length: 1024 })));
    // Shortened to the module's end and to max_block.
    check(&mut attempt, 0, 2048, 4096, Ok(Some(Transmit::Block { module: 0, offset: 2048, length: 952 })));
    check(&mut attempt, 1, 0, 9999, Ok(Some(Transmit::Block { module: 1, offset: 0, length: 100 })));
    check(&mut attempt, 2, 0, 10, Err(Ignored::NoSuchModule));
    check(&mut attempt, 255, 0, 10, Err(Ignored::NoSuchModule));
    check(&mut attempt, 0, 3000, 10, Err(Ignored::OutOfRange));
    check(&mut attempt, 0, u32::MAX, 10, Err(Ignored::OutOfRange));
    check(&mut attempt, 0, 0, 0, Err(Ignored::OutOfRange));
    let other = BlockRequest { attempt: ATTEMPT + 1, module: 0, offset: 0, length: 10 };
    assert_eq!(attempt.handle_block_request(&other, 1), Err(Ignored::OtherAttempt));
    // A flood of requests without polling: the queue is bounded.
    let mut full = 0;
    for i in 0..(MAX_QUEUED as u32 + 5) {
        let request = BlockRequest { attempt: ATTEMPT, module: 0, offset: i % 3 * 1024, length: 1024 };
        if attempt.handle_block_request(&request, 2) == Err(Ignored::QueueFull) {
            full += 1;
        }
    }
    assert_eq!(full, 5);
    assert_eq!(attempt.stats().requests_ignored, 6 + 5);
}

#[test]
fn the_offer_is_repeated_until_answered_then_the_attempt_times_out() {
    let config = TransferConfig {
        window: 2,
        max_block: 1024,
        max_request: 1024,
        offer_retry_ms: 1000,
        give_up_after_ms: 10_000,
        count_tls_records: false,
    };
    let mut attempt = Attempt::new(ATTEMPT, offered(&[4096]), config, 0);
    assert_eq!(attempt.poll_transmit(), Some(Transmit::Offer));
    assert_eq!(attempt.poll_transmit(), None);
    let mut offers = 1;
    let mut now = 0;
    while let Some(at) = attempt.poll_timeout() {
        assert!(at > now, "timeouts move forward");
        now = at;
        attempt.handle_timeout(now);
        while let Some(t) = attempt.poll_transmit() {
            assert_eq!(t, Transmit::Offer);
            offers += 1;
        }
    }
    assert_eq!(attempt.state(), AttemptState::TimedOut);
    assert_eq!(now, 10_000);
    assert_eq!(offers, 10, "one offer per second until the device was given up on");
    assert_eq!(drain_events(&mut attempt), [AttemptState::Offered, AttemptState::TimedOut]);
}

fn describe_with(
    modules: &[(Sha256, Integrity)],
    boot: BootReason,
    confirmed: bool,
    last: Option<UpdateResult>,
) -> Describe {
    let installed: Vec<InstalledModule> = modules
        .iter()
        .map(|&(sha256, integrity)| InstalledModule {
            function: ModuleFunction::UserPart,
            index: 1,
            version: 1,
            sha256,
            size: 10,
            integrity,
            dependencies_met: true,
        })
        .collect();
    Describe {
        platform: 6,
        boot_reason: boot,
        safe_mode: None,
        unmet: None,
        confirmed,
        modules: List::from_slice(&installed).unwrap(),
        capacity: None,
        security_counter: None,
        last_result: last,
    }
}

#[test]
fn only_a_describe_of_the_confirmed_new_modules_confirms() {
    let new = [1u8; 32];
    let old = [9u8; 32];
    let result = |outcome, reason| Some(UpdateResult { attempt: ATTEMPT, outcome, reason, module: None });
    let other_attempt =
        Some(UpdateResult { attempt: 7, outcome: Outcome::RolledBack, reason: Reason::AppHung, module: None });
    // (describe, expected state after it)
    let cases = [
        (describe_with(&[(new, Integrity::Valid)], BootReason::Normal, true, None), AttemptState::Confirmed),
        (describe_with(&[(new, Integrity::Valid)], BootReason::TestBoot, false, None), AttemptState::Rebooting),
        (describe_with(&[(old, Integrity::Valid)], BootReason::Normal, true, None), AttemptState::Rebooting),
        (describe_with(&[(new, Integrity::Invalid)], BootReason::Normal, true, None), AttemptState::Rebooting),
        (describe_with(&[(new, Integrity::Valid)], BootReason::SafeMode, true, None), AttemptState::Rebooting),
        (describe_with(&[(new, Integrity::Valid)], BootReason::Normal, true, other_attempt), AttemptState::Confirmed),
        (
            describe_with(
                &[(old, Integrity::Valid)],
                BootReason::Rollback,
                true,
                result(Outcome::RolledBack, Reason::AppHung),
            ),
            AttemptState::RolledBack(Reason::AppHung),
        ),
        (
            describe_with(&[(old, Integrity::Valid)], BootReason::Rollback, true, None),
            AttemptState::RolledBack(Reason::AppFailedTestBoot),
        ),
        (
            describe_with(
                &[(old, Integrity::Valid)],
                BootReason::Normal,
                true,
                result(Outcome::Failed, Reason::VerifyError),
            ),
            AttemptState::Failed(Reason::VerifyError),
        ),
    ];
    for (describe, expected) in cases {
        let mut attempt = Attempt::new(ATTEMPT, offered(&[10]), TransferConfig::default(), 0);
        let progress = Progress { attempt: ATTEMPT, phase: Phase::Rebooting, bytes_done: 10, bytes_total: 10 };
        attempt.handle_progress(&progress, 1).unwrap();
        attempt.handle_describe(&describe, 2).unwrap();
        assert_eq!(attempt.state(), expected, "{describe:?}");
    }
}

#[test]
fn results_end_attempts_but_a_success_result_alone_does_not_confirm() {
    // (outcome, reason, expected state)
    let cases = [
        (Outcome::Confirmed, Reason::None, AttemptState::Offered),
        (Outcome::Failed, Reason::RejectedSignature, AttemptState::Failed(Reason::RejectedSignature)),
        (Outcome::Failed, Reason::WrongPlatform, AttemptState::Failed(Reason::WrongPlatform)),
        (Outcome::RolledBack, Reason::AppFailedTestBoot, AttemptState::RolledBack(Reason::AppFailedTestBoot)),
        (Outcome::Cancelled, Reason::CancelledByServer, AttemptState::Cancelled),
        (Outcome::Other(77), Reason::Other(500), AttemptState::Failed(Reason::Other(500))),
    ];
    for (outcome, reason, expected) in cases {
        let mut attempt = Attempt::new(ATTEMPT, offered(&[10]), TransferConfig::default(), 0);
        let result = UpdateResult { attempt: ATTEMPT, outcome, reason, module: None };
        attempt.handle_result(&result, 1).unwrap();
        assert_eq!(attempt.state(), expected, "{outcome:?}");
        assert_eq!(attempt.device_reported_success(), outcome == Outcome::Confirmed);
        if expected.is_final() {
            // Nothing moves a finished attempt.
            let later = describe_with(&[([1; 32], Integrity::Valid)], BootReason::Normal, true, None);
            assert_eq!(attempt.handle_describe(&later, 2), Err(Ignored::Finished));
            assert_eq!(attempt.state(), expected);
            assert_eq!(attempt.poll_timeout(), None);
        }
    }
}

#[test]
fn cancel_sends_one_cancel_and_ends_the_attempt() {
    let mut attempt = Attempt::new(ATTEMPT, offered(&[4096]), TransferConfig::default(), 0);
    let request = BlockRequest { attempt: ATTEMPT, module: 0, offset: 0, length: 1024 };
    attempt.handle_block_request(&request, 1).unwrap();
    attempt.cancel();
    assert_eq!(attempt.poll_transmit(), Some(Transmit::Cancel), "pending blocks are dropped");
    assert_eq!(attempt.poll_transmit(), None);
    assert_eq!(attempt.handle_block_request(&request, 2), Err(Ignored::Finished));
    assert_eq!(drain_events(&mut attempt), [AttemptState::Offered, AttemptState::Downloading, AttemptState::Cancelled]);
}

#[test]
fn a_resumed_attempt_keeps_its_state_and_sent_record() {
    let mut attempt = Attempt::new(ATTEMPT, offered(&[4096]), TransferConfig::default(), 0);
    let first = BlockRequest { attempt: ATTEMPT, module: 0, offset: 0, length: 1024 };
    attempt.handle_block_request(&first, 1).unwrap();
    let mut resumed = Attempt::resume(
        ATTEMPT,
        *attempt.modules(),
        *attempt.config(),
        attempt.state(),
        attempt.stats(),
        attempt.sent_record(),
        1_000_000,
    );
    assert_eq!(resumed.state(), AttemptState::Downloading);
    assert_eq!(resumed.poll_transmit(), None, "nothing is sent until the device reconnects");
    assert_eq!(resumed.poll_event(), None);
    resumed.handle_connected(1_000_001);
    assert_eq!(resumed.poll_transmit(), Some(Transmit::Offer));
    resumed.handle_block_request(&first, 1_000_002).unwrap();
    let second = BlockRequest { attempt: ATTEMPT, module: 0, offset: 1024, length: 1024 };
    resumed.handle_block_request(&second, 1_000_003).unwrap();
    assert_eq!(resumed.stats().bytes_sent, 3072);
    assert_eq!(resumed.stats().bytes_resent, 1024, "the block sent before the restart counts as re-sent");
    assert_eq!(resumed.poll_timeout(), Some(1_000_003 + TransferConfig::default().give_up_after_ms));
}

/// A server killed after sending a whole module but before persisting the count: once
/// resumed, the device's confirmation (or its later phases) restores every byte as sent.
#[test]
fn delivery_restores_sends_lost_with_a_restart() {
    let sizes = [4096u32];
    let delivered = |state_after: &dyn Fn(&mut Attempt)| {
        let lost = TransferStats { bytes_sent: 1024, ..TransferStats::default() };
        let mut resumed = Attempt::resume(
            ATTEMPT,
            offered(&sizes),
            TransferConfig::default(),
            AttemptState::Downloading,
            lost,
            &[],
            0,
        );
        state_after(&mut resumed);
        resumed.stats().bytes_sent
    };
    let confirm = |a: &mut Attempt| {
        let describe = describe_with(&[([1; 32], Integrity::Valid)], BootReason::Normal, true, None);
        a.handle_describe(&describe, 1).unwrap();
        assert_eq!(a.state(), AttemptState::Confirmed);
    };
    let staged = |a: &mut Attempt| {
        let progress = Progress { attempt: ATTEMPT, phase: Phase::Staged, bytes_done: 4096, bytes_total: 4096 };
        a.handle_progress(&progress, 1).unwrap();
    };
    let still_downloading = |a: &mut Attempt| {
        let progress = Progress { attempt: ATTEMPT, phase: Phase::Downloading, bytes_done: 3072, bytes_total: 4096 };
        a.handle_progress(&progress, 1).unwrap();
    };
    assert_eq!(delivered(&confirm), 4096);
    assert_eq!(delivered(&staged), 4096);
    assert_eq!(delivered(&still_downloading), 1024, "nothing is assumed before the device holds it all");
}

/// A request for a window of blocks is answered with consecutive blocks of at most
/// `max_block`, shortened at the module's end and to `max_request`; every byte is counted,
/// and bytes asked again count as re-sent.
#[test]
fn windowed_requests_are_answered_block_by_block() {
    fn check(config: (u32, u32), requests: &[(u8, u32, u32)], blocks: &[(u8, u32, u32)], sent: (u64, u64)) {
        let (max_block, max_request) = config;
        let config = TransferConfig { max_block, max_request, ..TransferConfig::default() };
        let mut attempt = Attempt::new(ATTEMPT, offered(&[10_000, 3_000]), config, 0);
        assert_eq!(attempt.poll_transmit(), Some(Transmit::Offer));
        for &(module, offset, length) in requests {
            let request = BlockRequest { attempt: ATTEMPT, module, offset, length };
            attempt.handle_block_request(&request, 1).expect("a valid request");
        }
        let mut got = Vec::new();
        while let Some(t) = attempt.poll_transmit() {
            match t {
                Transmit::Block { module, offset, length } => got.push((module, offset, length)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, blocks, "{requests:?}");
        let stats = attempt.stats();
        assert_eq!((stats.bytes_sent, stats.bytes_resent), sent, "{requests:?}");
    }
    // 10 000 bytes asked at once, in 4 KiB blocks: 4096 + 4096 + 1808.
    check((4096, 16_384), &[(0, 0, 10_000)], &[(0, 0, 4096), (0, 4096, 4096), (0, 8192, 1808)], (10_000, 0));
    // The window is capped at `max_request`.
    check((4096, 8192), &[(0, 0, 10_000)], &[(0, 0, 4096), (0, 4096, 4096)], (8192, 0));
    // A window from the middle, then the same range again: counted as re-sent.
    check((2048, 16_384), &[(1, 1024, 4096), (1, 1024, 1024)], &[(1, 1024, 1976), (1, 1024, 1024)], (3000, 1024));
    // `max_request` below one block is one block; above the queue, the queue's worth.
    check((4096, 1), &[(0, 0, 10_000)], &[(0, 0, 4096)], (4096, 0));
    let config = TransferConfig { max_block: 1024, max_request: u32::MAX, ..TransferConfig::default() };
    let attempt = Attempt::new(ATTEMPT, offered(&[1 << 20]), config, 0);
    assert_eq!(attempt.max_request(), 1024 * MAX_QUEUED as u32);
}
