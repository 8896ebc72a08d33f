//! The server side of one update attempt, as a sans-IO state machine.
//!
//! [`Attempt`] is fed what arrives from the device (`handle_*`, each with `now` in
//! milliseconds from any monotonic clock) and says what to send (`poll_transmit`), what
//! changed (`poll_event`) and when it next needs the clock (`poll_timeout` /
//! `handle_timeout`). It performs no IO and reads no clock, so the server persists and
//! transmits around it, and tests drive it with a simulated device and a fault-injecting
//! link.
//!
//! States and transitions:
//!
//! | from | input | to |
//! |---|---|---|
//! | Offered | first valid BlockRequest, or Progress downloading | Downloading |
//! | any non-final | Progress verifying / staged / rebooting | Verifying / Staged / Rebooting |
//! | any non-final | Result failed, rolled back, cancelled | Failed / RolledBack / Cancelled (with reason) |
//! | any non-final | Describe: boot reason rollback, or last result of this attempt rolled back | RolledBack |
//! | any non-final | Describe: confirmed, and every offered module's SHA-256 installed with valid integrity | **Confirmed** |
//! | any non-final (an intermediate stage, see [`Attempt::accept_safe_mode`]) | Describe: safe mode for an unmet dependency, every offered module installed and valid | **Confirmed** |
//! | any non-final | no message from the device for `give_up_after_ms` | TimedOut |
//! | any non-final | [`Attempt::cancel`] | Cancelled |
//!
//! A Result saying "confirmed" is noted but never confirms by itself: only a Describe after
//! the reboot proves the new modules run and are marked good.
//!
//! The device pulls blocks. Every valid request is answered with the blocks it covers, in
//! order, each at most `max_block` bytes (the device tolerates duplicates and reorders; a
//! lost block is simply asked for again), so the machine keeps no per-request state, only which byte ranges were already sent, to count
//! the bytes re-sent. Until the first request arrives the offer is re-sent every
//! `offer_retry_ms`, and again whenever the device reconnects (it resumes from what its
//! staging area already holds).

use crate::list::List;
use crate::message::{
    AttemptId, BlockRequest, BootReason, Describe, OfferedModule, Outcome, Phase, Progress, Reason, SafeModeCause,
    UpdateResult, MAX_MODULES,
};
use tern_image::Integrity;

/// Granularity of the sent-bytes record: 1 KiB, the device agent's block size.
pub const TRACK_UNIT: u32 = 1024;
/// Units of [`TRACK_UNIT`] the sent-bytes record covers: 16 MiB per attempt (each module
/// rounded up to whole units). Bytes beyond it
/// are sent normally but not classified as first-time or re-sent.
pub const TRACK_UNITS: usize = 16 * 1024;
/// The most transmissions waiting in [`Attempt::poll_transmit`]; requests beyond it are
/// dropped (and counted), and the device asks again. One request is answered with at most
/// this many blocks ([`Attempt::max_request`]).
pub const MAX_QUEUED: usize = 64;

/// Settings of an attempt's transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// The most block requests the device may keep in flight (sent in the offer).
    pub window: u8,
    /// The largest block sent in one message (sent in the offer). The server sets it per
    /// attempt to what the device's link takes ([`crate::LinkCapacity::max_block`]; 1 KiB
    /// for a device that does not say).
    pub max_block: u32,
    /// The most bytes one block request may ask for (sent in the offer, see
    /// [`Attempt::max_request`]); it is answered with consecutive blocks.
    pub max_request: u32,
    /// How long to wait for the first request before sending the offer again.
    pub offer_retry_ms: u64,
    /// How long the device may stay silent before the attempt times out.
    pub give_up_after_ms: u64,
    /// Whether the server's estimates of bytes on the air count the records of a TLS
    /// layer under the device protocol (set when the device listener speaks TLS). The
    /// machine itself does not use it.
    pub count_tls_records: bool,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            window: 4,
            max_block: 16 * 1024,
            max_request: 16 * 1024,
            offer_retry_ms: 5_000,
            give_up_after_ms: 15 * 60_000,
            count_tls_records: false,
        }
    }
}

/// Where an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// The offer was sent; no request yet.
    Offered,
    /// The device is pulling blocks.
    Downloading,
    /// The device is verifying what it received.
    Verifying,
    /// Verified and pending; the device will install at its next boot.
    Staged,
    /// The device is rebooting into the boot manager.
    Rebooting,
    /// The device described the new modules as installed, running and confirmed.
    Confirmed,
    /// The device refused or failed the update.
    Failed(Reason),
    /// The device installed the update, then went back to the previous modules.
    RolledBack(Reason),
    /// The device stopped answering.
    TimedOut,
    /// Stopped by the operator or the device.
    Cancelled,
}

impl AttemptState {
    /// Whether the attempt is over.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            AttemptState::Confirmed
                | AttemptState::Failed(_)
                | AttemptState::RolledBack(_)
                | AttemptState::TimedOut
                | AttemptState::Cancelled
        )
    }

    /// A stable lowercase name for storage, JSON and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            AttemptState::Offered => "offered",
            AttemptState::Downloading => "downloading",
            AttemptState::Verifying => "verifying",
            AttemptState::Staged => "staged",
            AttemptState::Rebooting => "rebooting",
            AttemptState::Confirmed => "confirmed",
            AttemptState::Failed(_) => "failed",
            AttemptState::RolledBack(_) => "rolled_back",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Cancelled => "cancelled",
        }
    }

    /// The reason of a failed or rolled-back attempt.
    pub const fn reason(self) -> Option<Reason> {
        match self {
            AttemptState::Failed(reason) | AttemptState::RolledBack(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Something to send to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// The attempt's offer (the caller encodes an [`crate::UpdateOffer`] with
    /// [`Attempt::modules`] and the config's window and block size).
    Offer,
    /// A block: the caller reads `length` bytes at `offset` of module `module` and sends a
    /// [`crate::Block`]. A request for a window of blocks gives one of these per block.
    Block {
        /// Position of the module in the offer.
        module: u8,
        /// Offset in the module.
        offset: u32,
        /// Bytes to send (already shortened to the module's end and `max_block`).
        length: u32,
    },
    /// A cancel command for this attempt.
    Cancel,
}

/// Something that changed, for the caller to persist and publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEvent {
    /// The attempt moved to a new state.
    State(AttemptState),
    /// The device reported progress.
    Progress {
        /// Bytes the device holds.
        bytes_done: u64,
        /// Bytes in total.
        bytes_total: u64,
    },
}

/// Why an input was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// It names another attempt.
    OtherAttempt,
    /// The attempt is over.
    Finished,
    /// The request names a module the offer does not have.
    NoSuchModule,
    /// The request starts at or beyond the module's end, or asks for nothing.
    OutOfRange,
    /// Too many transmissions are waiting; the device will ask again.
    QueueFull,
}

/// Byte counters of a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Offers sent.
    pub offers_sent: u32,
    /// Valid block requests received.
    pub requests: u64,
    /// Requests ignored (wrong attempt, out of range, queue full, after the end).
    pub requests_ignored: u64,
    /// Block bytes sent, in total.
    pub bytes_sent: u64,
    /// Of those, bytes sent before (lost, duplicated or re-requested after a reset).
    pub bytes_resent: u64,
}

/// One update attempt, seen from the server.
#[derive(Clone, Debug)]
pub struct Attempt {
    id: AttemptId,
    modules: List<OfferedModule, MAX_MODULES>,
    config: TransferConfig,
    state: AttemptState,
    stats: TransferStats,
    /// One bit per [`TRACK_UNIT`] of the concatenated modules: sent at least once.
    sent: [u8; TRACK_UNITS / 8],
    queue: [Option<Transmit>; MAX_QUEUED],
    queued: usize,
    events: [Option<AttemptEvent>; 4],
    pending_events: usize,
    last_heard: u64,
    next_offer: Option<u64>,
    confirmed_reported: bool,
    accept_safe_mode: bool,
}

impl Attempt {
    /// Starts an attempt: the offer is the first transmission.
    pub fn new(id: AttemptId, modules: List<OfferedModule, MAX_MODULES>, config: TransferConfig, now: u64) -> Self {
        let mut attempt = Attempt {
            id,
            modules,
            config,
            state: AttemptState::Offered,
            stats: TransferStats::default(),
            sent: [0; TRACK_UNITS / 8],
            queue: [None; MAX_QUEUED],
            queued: 0,
            events: [None; 4],
            pending_events: 0,
            last_heard: now,
            next_offer: None,
            confirmed_reported: false,
            accept_safe_mode: false,
        };
        attempt.send_offer(now);
        attempt.event(AttemptEvent::State(AttemptState::Offered));
        attempt
    }

    /// Rebuilds an attempt from what the server persisted ([`Attempt::state`],
    /// [`Attempt::stats`], [`Attempt::sent_record`]) after a restart. Nothing is queued: the
    /// offer goes out again when the device reconnects ([`Attempt::handle_connected`]).
    /// The device's silence is counted from `now`.
    pub fn resume(
        id: AttemptId,
        modules: List<OfferedModule, MAX_MODULES>,
        config: TransferConfig,
        state: AttemptState,
        stats: TransferStats,
        sent_record: &[u8],
        now: u64,
    ) -> Self {
        let mut attempt = Attempt::new(id, modules, config, now);
        attempt.poll_transmit();
        attempt.poll_event();
        attempt.stats = stats;
        attempt.state = state;
        attempt.next_offer = None;
        let len = sent_record.len().min(attempt.sent.len());
        attempt.sent[..len].copy_from_slice(&sent_record[..len]);
        attempt
    }

    /// Marks this offer as an intermediate stage of a larger update after which the device
    /// is expected to run safe mode (its application needs what a later stage brings):
    /// the offer is then confirmed by a Describe in safe mode for an unmet dependency
    /// that lists every offered module installed and valid.
    pub fn accept_safe_mode(&mut self, accept: bool) {
        self.accept_safe_mode = accept;
    }

    /// Which [`TRACK_UNIT`]s were sent at least once, one bit each: persist it with the
    /// state so that re-sent bytes stay counted across server restarts.
    pub fn sent_record(&self) -> &[u8] {
        &self.sent
    }

    /// The attempt id.
    pub fn id(&self) -> AttemptId {
        self.id
    }

    /// The offered modules, in install order.
    pub fn modules(&self) -> &List<OfferedModule, MAX_MODULES> {
        &self.modules
    }

    /// The transfer settings.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// The most bytes one block request may ask for, as the offer says: the config's
    /// `max_request`, at least one block, and at most the blocks one request may queue.
    pub fn max_request(&self) -> u32 {
        let block = self.config.max_block.max(1);
        let most = block.saturating_mul(MAX_QUEUED as u32);
        self.config.max_request.clamp(block, most)
    }

    /// The current state.
    pub fn state(&self) -> AttemptState {
        self.state
    }

    /// The byte counters.
    pub fn stats(&self) -> TransferStats {
        self.stats
    }

    /// Total bytes of the offered modules' transfers (module sizes, or patch lengths).
    pub fn total_bytes(&self) -> u64 {
        self.modules.iter().map(|m| u64::from(m.transfer_len())).sum()
    }

    /// Whether the device said its update succeeded (a Result), while the server still
    /// waits for the Describe that proves it.
    pub fn device_reported_success(&self) -> bool {
        self.confirmed_reported
    }

    fn event(&mut self, event: AttemptEvent) {
        if let Some(slot) = self.events.get_mut(self.pending_events) {
            *slot = Some(event);
            self.pending_events += 1;
        } else if let AttemptEvent::State(_) = event {
            // State changes must never be lost: overwrite the oldest progress event if any.
            if let Some(slot) = self.events.iter_mut().find(|e| matches!(e, Some(AttemptEvent::Progress { .. }))) {
                *slot = Some(event);
            }
        }
    }

    fn set_state(&mut self, state: AttemptState) {
        if self.state != state && !self.state.is_final() {
            self.state = state;
            // Past downloading (and once confirmed) the device holds every byte, so each
            // was sent at least once. After a server restart, sends since the last
            // persisted record are missing from `stats`; this floor puts them back.
            let delivered = matches!(
                state,
                AttemptState::Verifying | AttemptState::Staged | AttemptState::Rebooting | AttemptState::Confirmed
            );
            if delivered {
                let total = self.total_bytes();
                self.stats.bytes_sent = self.stats.bytes_sent.max(total);
            }
            if state.is_final() {
                self.next_offer = None;
                self.queued = 0;
                self.queue = [None; MAX_QUEUED];
            }
            self.event(AttemptEvent::State(state));
        }
    }

    fn push(&mut self, transmit: Transmit) -> Result<(), Ignored> {
        let slot = self.queue.get_mut(self.queued).ok_or(Ignored::QueueFull)?;
        *slot = Some(transmit);
        self.queued += 1;
        Ok(())
    }

    fn send_offer(&mut self, now: u64) {
        if self.state.is_final() || self.queue[..self.queued].contains(&Some(Transmit::Offer)) {
            return;
        }
        if self.push(Transmit::Offer).is_ok() {
            self.stats.offers_sent += 1;
        }
        self.next_offer = (self.state == AttemptState::Offered).then(|| now.saturating_add(self.config.offer_retry_ms));
    }

    fn heard(&mut self, now: u64) {
        self.last_heard = self.last_heard.max(now);
    }

    /// The device (re)connected: send the offer again so it resumes.
    pub fn handle_connected(&mut self, now: u64) {
        self.heard(now);
        if !self.state.is_final() && matches!(self.state, AttemptState::Offered | AttemptState::Downloading) {
            self.send_offer(now);
        }
    }

    /// A block request from the device.
    pub fn handle_block_request(&mut self, request: &BlockRequest, now: u64) -> Result<(), Ignored> {
        let result = self.block_request(request, now);
        match result {
            Ok(()) => self.stats.requests += 1,
            Err(_) => self.stats.requests_ignored += 1,
        }
        result
    }

    fn block_request(&mut self, request: &BlockRequest, now: u64) -> Result<(), Ignored> {
        if request.attempt != self.id {
            return Err(Ignored::OtherAttempt);
        }
        if self.state.is_final() {
            return Err(Ignored::Finished);
        }
        self.heard(now);
        let module = *self.modules.get(usize::from(request.module)).ok_or(Ignored::NoSuchModule)?;
        let size = module.transfer_len();
        if request.offset >= size || request.length == 0 {
            return Err(Ignored::OutOfRange);
        }
        // A window: consecutive blocks of at most `max_block`, each counted when queued;
        // what does not fit the queue is dropped and asked again by the device.
        let end = request.offset + request.length.min(size - request.offset).min(self.max_request());
        let mut offset = request.offset;
        while offset < end {
            let length = (end - offset).min(self.config.max_block.max(1));
            match self.push(Transmit::Block { module: request.module, offset, length }) {
                Ok(()) => self.record_sent(request.module, offset, length),
                Err(full) if offset == request.offset => return Err(full),
                Err(_) => break,
            }
            offset += length;
        }
        if self.state == AttemptState::Offered {
            self.next_offer = None;
            self.set_state(AttemptState::Downloading);
        }
        Ok(())
    }

    /// Counts a block's bytes as sent, and as re-sent where they fall in [`TRACK_UNIT`]s
    /// sent before (exact for unit-aligned blocks, which is what the device agent asks for).
    fn record_sent(&mut self, module: u8, offset: u32, length: u32) {
        self.stats.bytes_sent += u64::from(length);
        let unit = u64::from(TRACK_UNIT);
        // Each module starts on a unit boundary of the record, so modules never share a unit.
        let base: u64 = self
            .modules
            .iter()
            .take(usize::from(module))
            .map(|m| u64::from(m.transfer_len()).div_ceil(unit) * unit)
            .sum();
        let (mut at, end) = (base + u64::from(offset), base + u64::from(offset) + u64::from(length));
        while at < end {
            let index = at / unit;
            let chunk_end = ((index + 1) * unit).min(end);
            let slot = usize::try_from(index).ok().and_then(|i| Some((self.sent.get_mut(i / 8)?, 1u8 << (i % 8))));
            if let Some((byte, bit)) = slot {
                if *byte & bit != 0 {
                    self.stats.bytes_resent += chunk_end - at;
                }
                *byte |= bit;
            }
            at = chunk_end;
        }
    }

    /// A progress report from the device.
    pub fn handle_progress(&mut self, progress: &Progress, now: u64) -> Result<(), Ignored> {
        if progress.attempt != self.id {
            return Err(Ignored::OtherAttempt);
        }
        if self.state.is_final() {
            return Err(Ignored::Finished);
        }
        self.heard(now);
        let state = match progress.phase {
            Phase::Downloading => AttemptState::Downloading,
            Phase::Verifying => AttemptState::Verifying,
            Phase::Staged => AttemptState::Staged,
            Phase::Rebooting => AttemptState::Rebooting,
            Phase::Other(_) => self.state,
        };
        if state != AttemptState::Offered {
            self.next_offer = None;
        }
        self.set_state(state);
        self.event(AttemptEvent::Progress { bytes_done: progress.bytes_done, bytes_total: progress.bytes_total });
        Ok(())
    }

    /// A result report from the device.
    pub fn handle_result(&mut self, result: &UpdateResult, now: u64) -> Result<(), Ignored> {
        if result.attempt != self.id {
            return Err(Ignored::OtherAttempt);
        }
        if self.state.is_final() {
            return Err(Ignored::Finished);
        }
        self.heard(now);
        self.next_offer = None;
        match result.outcome {
            // Not proof: wait for the Describe after the reboot.
            Outcome::Confirmed => self.confirmed_reported = true,
            Outcome::Failed | Outcome::Other(_) => self.set_state(AttemptState::Failed(result.reason)),
            Outcome::RolledBack => self.set_state(AttemptState::RolledBack(result.reason)),
            Outcome::Cancelled => self.set_state(AttemptState::Cancelled),
        }
        Ok(())
    }

    /// A Describe from the device: the only input that can confirm the attempt.
    pub fn handle_describe(&mut self, describe: &Describe, now: u64) -> Result<(), Ignored> {
        if self.state.is_final() {
            return Err(Ignored::Finished);
        }
        self.heard(now);
        if let Some(result) = describe.last_result.filter(|r| r.attempt == self.id) {
            let ended = match result.outcome {
                Outcome::RolledBack => Some(AttemptState::RolledBack(result.reason)),
                Outcome::Failed => Some(AttemptState::Failed(result.reason)),
                Outcome::Cancelled => Some(AttemptState::Cancelled),
                Outcome::Confirmed | Outcome::Other(_) => None,
            };
            if let Some(state) = ended {
                self.set_state(state);
                return Ok(());
            }
        }
        let installed = self.modules.iter().all(|offered| {
            describe
                .modules
                .iter()
                .any(|m| m.sha256 == offered.sha256 && m.integrity == Integrity::Valid && m.dependencies_met)
        });
        let running = describe.confirmed && describe.boot_reason != BootReason::SafeMode;
        let expected_safe_mode = self.accept_safe_mode
            && describe.boot_reason == BootReason::SafeMode
            && describe.safe_mode == Some(SafeModeCause::UnmetDependency);
        if installed && (running || expected_safe_mode) {
            self.set_state(AttemptState::Confirmed);
        } else if describe.boot_reason == BootReason::Rollback
            && matches!(self.state, AttemptState::Staged | AttemptState::Rebooting)
        {
            // Rolled back without a result naming this attempt: the boot manager's own
            // decision after failed test boots.
            self.set_state(AttemptState::RolledBack(Reason::AppFailedTestBoot));
        }
        Ok(())
    }

    /// The operator cancels: a cancel command goes out and the attempt ends.
    pub fn cancel(&mut self) {
        if !self.state.is_final() {
            self.set_state(AttemptState::Cancelled);
            // The queue was emptied by the final state; the cancel is the one transmission.
            let _ = self.push(Transmit::Cancel);
        }
    }

    /// The next thing to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.queued == 0 {
            return None;
        }
        let first = self.queue[0].take();
        self.queue.rotate_left(1);
        self.queued -= 1;
        first
    }

    /// The next change to persist and publish, oldest first.
    pub fn poll_event(&mut self) -> Option<AttemptEvent> {
        if self.pending_events == 0 {
            return None;
        }
        let first = self.events[0].take();
        self.events.rotate_left(1);
        self.pending_events -= 1;
        first
    }

    /// When [`Attempt::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.state.is_final() {
            return None;
        }
        let give_up = self.last_heard.saturating_add(self.config.give_up_after_ms);
        Some(self.next_offer.map_or(give_up, |offer| offer.min(give_up)))
    }

    /// Acts on the clock: re-sends the offer, or times the attempt out.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.state.is_final() {
            return;
        }
        if now >= self.last_heard.saturating_add(self.config.give_up_after_ms) {
            self.set_state(AttemptState::TimedOut);
            return;
        }
        if self.next_offer.is_some_and(|at| now >= at) {
            self.send_offer(now);
        }
    }
}
