//! The device's side of the protocol conversation with the server, as a sans-IO state
//! machine: what a port to a real MCU runs between its network stack and the [`Agent`].
//!
//! A [`Conversation`] owns the [`Agent`] for one boot. The platform feeds it what happens —
//! [`Conversation::handle_connected`] / [`Conversation::handle_disconnected`], every
//! downlink message ([`Conversation::handle_message`], or the typed `handle_offer`,
//! `handle_block`, `handle_command`), and [`Conversation::handle_timeout`] once the time
//! [`Conversation::poll_timeout`] named has come — each with `now` in milliseconds from
//! any monotonic clock. It then drains what the conversation decided: the uplink messages
//! to publish ([`Conversation::poll_transmit`]: Describe, BlockRequest, Progress,
//! UpdateResult) and what the platform must do ([`Conversation::poll_action`]: reboot, to
//! install or on command). It performs no IO besides the agent's flash, reads no clock and
//! allocates nothing.
//!
//! | input | what the conversation does |
//! |---|---|
//! | connected | confirms a test boot of a healthy application (reaching the server is the proof), sends the last result if not yet sent and a Describe, asks for missing blocks |
//! | UpdateOffer, the attempt whose update is staged | reboots to install it |
//! | UpdateOffer, an attempt the state record says is over (confirmed, failed, rolled back, cancelled) or installed and on test | sends that result again (if any) and a Describe, changes nothing |
//! | UpdateOffer, any attempt whose modules are all installed and confirmed | sends the last result and a Describe, changes nothing |
//! | UpdateOffer, accepted | records it with its attempt id in the state record, sends Progress downloading, keeps up to `window` requests in flight, each for a run of missing blocks of up to `max_request` bytes |
//! | UpdateOffer, refused | sends Result failed with the reason ([`OfferError::reason`]) and a Describe |
//! | Block of the current attempt | stores its data as agent blocks of 1 KiB in order (any order across messages, duplicates ignored); the last block of a window ends that request (what of it is missing is asked again at once); asks for more; Progress every `progress_every_bytes`; on the last one sends Progress verifying, staged, rebooting and reboots to install |
//! | Block that fails verification or flash | sends Result failed (verify_error / flash_error) |
//! | last Block of an offer with patches | applies each patch into its module's place first; a patch that cannot be applied sends Result failed (delta_failed), and the server falls back to whole modules |
//! | Command (each id once) | reboot; safe mode or factory restore requested in the state record, then reboot; cancel drops the transfer and sends Result cancelled |
//! | timeout | re-asks for what is missing of windows unanswered for `request_timeout_ms` (counted from the request or from the attempt's last block to arrive, whichever is later: while blocks arrive, the windows queued behind them are still coming), sends Progress when none went out for `progress_every_ms` while downloading, and a Describe every `describe_every_ms` |
//!
//! The attempt id the device works on lives in the state record
//! ([`DeviceState::attempt`](crate::state::DeviceState::attempt)), written together with
//! the offer it belongs to, so the attempt the device reports always matches its flash.
//! Only a refusal's result (nothing was written) is held in RAM; after a reset the device
//! reports the last attempt its flash knows.

use tern_proto::{
    Action, AttemptId, Block, BlockRequest, BootReason, Capacity, Command, Describe, InstalledModule, LinkCapacity,
    List, Message, Outcome, Phase, Progress, Reason, SafeModeCause, Transfer, UpdateOffer, UpdateResult, MAX_MODULES,
};

use crate::agent::{Agent, BlockError, BlockOutcome, OfferError, OfferScope};
use crate::block::{Block as AgentBlock, BLOCK_SIZE};
use crate::boot::{BootDecision, Run, SafeModeReason};
use crate::state::{BootState, UpdatePhase, UpdateResult as DeviceResult};
use crate::storage::Storage;
use tern_image::model::{Integrity, ModuleFunction};

/// The most block requests kept in flight, whatever window the offer allows.
pub const MAX_WINDOW: usize = 16;
/// The window used until an offer names one (after a reset, before the offer is resent).
pub const DEFAULT_WINDOW: u8 = 4;
/// The most uplink messages waiting in [`Conversation::poll_transmit`]; more are dropped
/// (the protocol tolerates loss: a block is asked again, a Describe repeated).
pub const MAX_QUEUED: usize = 32;
/// The most recent command ids remembered, so a command delivered twice runs once.
pub const COMMAND_MEMORY: usize = 32;

/// Timings of the conversation, and what the port's link takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConversationConfig {
    /// Re-ask for a block (or what is missing of a window of blocks) not answered within
    /// this time, counted from the request or from the last block of the attempt that
    /// arrived, whichever is later.
    pub request_timeout_ms: u64,
    /// Describe again this often while connected: messages can be lost, and the server
    /// learns the outcome of a reboot only from a Describe.
    pub describe_every_ms: u64,
    /// Send Progress while downloading whenever this many more bytes are held …
    pub progress_every_bytes: u64,
    /// … and when none was sent for this long (so the server sees a slow download live).
    pub progress_every_ms: u64,
    /// What one message of the port's link may carry and which topic form it uses,
    /// announced in the Describe's capacity (`None`: 1 KiB blocks and long topics, as
    /// devices did before). The port publishes and subscribes on the form it says.
    pub link: Option<LinkCapacity>,
}

/// The block size a port's link takes by default: 4 KiB of data in one message (a
/// receive buffer of about 4.2 KiB with the MQTT and CBOR framing).
pub const DEFAULT_MAX_BLOCK: u32 = 4 * BLOCK_SIZE;

impl Default for ConversationConfig {
    fn default() -> Self {
        ConversationConfig {
            request_timeout_ms: 1_500,
            describe_every_ms: 30_000,
            progress_every_bytes: 32 * 1024,
            progress_every_ms: 5_000,
            link: Some(LinkCapacity { max_block: DEFAULT_MAX_BLOCK, compact_topics: false }),
        }
    }
}

/// How the application failed before the reset(s) that ended its test boot: the reason a
/// rollback is reported with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppFault {
    /// It panicked (fault-handler resets): `app_failed_test_boot`.
    Panicked,
    /// It hung and the watchdog reset the device: `app_hung`.
    Hung,
    /// It ran but never confirmed itself: `app_not_confirmed`.
    NeverConfirmed,
}

/// The command ids already carried out, most recent last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandLog {
    ids: [Option<u32>; COMMAND_MEMORY],
    next: usize,
}

impl CommandLog {
    /// Whether `id` was recorded.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.contains(&Some(id))
    }

    /// Records `id`, forgetting the oldest when full.
    pub fn record(&mut self, id: u32) {
        self.ids[self.next % COMMAND_MEMORY] = Some(id);
        self.next = (self.next + 1) % COMMAND_MEMORY;
    }
}

/// What a port keeps across a warm reset (in RAM the startup code does not clear, or
/// nowhere): losing it is harmless — a command delivered again after the reset runs
/// again, a rollback is reported as `app_not_confirmed` instead of its exact cause, and
/// the last result is sent once more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Commands already carried out.
    pub commands: CommandLog,
    /// How the application failed since the last accepted offer.
    pub fault: Option<AppFault>,
    /// The last Result sent (attempt and outcome), so it is sent once.
    pub reported: Option<(AttemptId, Outcome)>,
}

/// What the platform knows when the conversation starts, after the boot manager ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The boot manager's decision for this boot.
    pub decision: BootDecision,
    /// The application is healthy (it says so, on a real device): reaching the server
    /// then confirms its test boot. An application that never confirms is left on test
    /// for the boot manager to roll back.
    pub confirm_test_boot: bool,
    /// What was kept from before the reset.
    pub retained: Retained,
}

/// Something the platform must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformAction {
    /// Reset now: an update is staged and the boot manager installs it.
    RebootToInstall,
    /// Reset now: the server asked for a reboot.
    Reboot,
    /// Reset now: safe mode is requested for the next boot.
    RebootIntoSafeMode,
    /// Reset now: a factory restore is requested for the next boot (when the device has a
    /// factory image; otherwise it is an ordinary reboot).
    RebootToFactoryRestore,
}

/// Counters of a conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConversationStats {
    /// Block requests queued.
    pub block_requests: u64,
    /// Blocks stored.
    pub blocks_stored: u64,
    /// Blocks that arrived again (ignored).
    pub duplicate_blocks: u64,
    /// Describes queued.
    pub describes: u64,
    /// Uplink messages dropped because the queue was full.
    pub dropped: u64,
}

/// An uplink message waiting to be sent; a Describe is built when it is polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Describe,
    Result(UpdateResult),
    Progress(Progress),
    Request(BlockRequest),
}

/// A block request in flight: a window `[offset, end)` of a module's transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    module: u8,
    offset: u32,
    end: u32,
    sent_at: u64,
}

impl InFlight {
    fn covers(&self, module: u8, offset: u32) -> bool {
        self.module == module && (self.offset..self.end).contains(&offset)
    }
}

impl OfferError {
    /// The reason a refused offer is reported with.
    pub const fn reason(&self) -> Reason {
        match self {
            OfferError::Manifest(_) => Reason::RejectedSignature,
            OfferError::WrongPlatform { .. } => Reason::WrongPlatform,
            OfferError::Downgrade { .. } => Reason::SecurityCounterRollback,
            OfferError::NoSlot(..)
            | OfferError::WrongAddress(..)
            | OfferError::TooManyModules
            | OfferError::MixedDocuments
            | OfferError::UnsignedModule => Reason::MalformedOffer,
            OfferError::TooLarge => Reason::TooLarge,
            OfferError::UnsatisfiableDependency(_) => Reason::UnmetDependency,
            OfferError::DeltaSource(..) => Reason::DeltaSource,
            OfferError::Busy => Reason::Busy,
            OfferError::Flash(_) => Reason::FlashError,
        }
    }
}

/// The device's conversation with the server during one boot (see the module docs).
pub struct Conversation<'k> {
    agent: Agent<'k>,
    config: ConversationConfig,
    start: Start,
    connected: bool,
    window: u8,
    /// The most bytes one request asks for (the offer's `max_request`, whole blocks).
    request_len: u32,
    in_flight: [Option<InFlight>; MAX_WINDOW],
    queue: [Option<Pending>; MAX_QUEUED],
    queue_head: usize,
    queue_len: usize,
    action: Option<PlatformAction>,
    /// A result the device decided on its own and holds only in RAM (a refused offer), or
    /// one more detailed than the state record's (the module that failed to verify).
    own_result: Option<UpdateResult>,
    next_describe: u64,
    next_progress: u64,
    /// Bytes held when the last Progress was sent.
    progress_bytes: u64,
    stats: ConversationStats,
}

impl<'k> Conversation<'k> {
    /// The conversation of one boot, over the loaded `agent`. Nothing is sent until the
    /// link is up ([`Conversation::handle_connected`]).
    pub fn new(agent: Agent<'k>, start: Start, config: ConversationConfig) -> Self {
        Conversation {
            agent,
            config,
            start,
            connected: false,
            window: DEFAULT_WINDOW,
            request_len: BLOCK_SIZE,
            in_flight: [None; MAX_WINDOW],
            queue: [None; MAX_QUEUED],
            queue_head: 0,
            queue_len: 0,
            action: None,
            own_result: None,
            next_describe: 0,
            next_progress: 0,
            progress_bytes: 0,
            stats: ConversationStats::default(),
        }
    }

    /// The update agent (what is installed, staged, on test).
    pub fn agent(&self) -> &Agent<'k> {
        &self.agent
    }

    /// The boot manager's decision for this boot.
    pub fn boot_decision(&self) -> &BootDecision {
        &self.start.decision
    }

    /// What the platform should keep across a reset (see [`Retained`]).
    pub fn retained(&self) -> Retained {
        self.start.retained
    }

    /// Counters.
    pub fn stats(&self) -> ConversationStats {
        self.stats
    }

    /// The attempt the device works on or last worked on, as its state record says.
    pub fn attempt(&self) -> Option<AttemptId> {
        self.agent.state().attempt
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The link is up (connected and subscribed to the device's downlink).
    pub fn handle_connected<S: Storage>(&mut self, s: &mut S, now: u64) {
        self.connected = true;
        self.in_flight = [None; MAX_WINDOW];
        let test = matches!(self.start.decision.run, Run::Application { test: true });
        if test && self.start.confirm_test_boot {
            // A flash failure leaves the application on test: the boot manager decides.
            let _ = self.agent.confirm(s);
        }
        self.report();
        self.next_describe = now.saturating_add(self.config.describe_every_ms);
        self.next_progress = now.saturating_add(self.config.progress_every_ms);
        self.request_blocks(s, now);
    }

    /// The link is down: nothing is sent until it is up again.
    pub fn handle_disconnected(&mut self) {
        self.connected = false;
        self.in_flight = [None; MAX_WINDOW];
    }

    /// A downlink message. Uplink kinds are ignored.
    pub fn handle_message<S: Storage>(&mut self, message: &Message<'_>, s: &mut S, now: u64) {
        match message {
            Message::UpdateOffer(offer) => self.handle_offer(offer, s, now),
            Message::Block(block) => self.handle_block(block, s, now),
            Message::Command(command) => self.handle_command(command, s),
            _ => {}
        }
    }

    /// An update offer.
    pub fn handle_offer<S: Storage>(&mut self, offer: &UpdateOffer<'_>, s: &mut S, now: u64) {
        let st = self.agent.state();
        let same = st.attempt == Some(offer.attempt);
        if same && st.phase == UpdatePhase::Staged {
            // The reboot that installs it was lost or has not happened yet.
            self.action = Some(PlatformAction::RebootToInstall);
            return;
        }
        if (same && self.finished_attempt()) || self.already_running(offer) {
            // A server that did not hear the end of this attempt offers it again (or
            // offers modules the device already runs and confirmed): the answer is how
            // it ended and a Describe, never a second download.
            self.start.retained.reported = None;
            self.report();
            return;
        }
        let mut selection = [[0u8; 32]; MAX_MODULES];
        let mut transfers = [Transfer::Raw; MAX_MODULES];
        for (i, m) in offer.modules.iter().enumerate() {
            selection[i] = m.sha256;
            transfers[i] = m.transfer;
        }
        let n = offer.modules.len();
        let scope = OfferScope { attempt: Some(offer.attempt), modules: &selection[..n], transfers: &transfers[..n] };
        let accepted = if offer.max_block < BLOCK_SIZE {
            // The agent stores whole blocks; shorter ones could never complete one.
            Err(Reason::MalformedOffer)
        } else {
            match self.agent.handle_offer_scoped(s, offer.signed.iter().copied(), scope) {
                Ok(_) => Ok(()),
                // The offer being worked on, repeated while its install runs.
                Err(OfferError::Busy) if same => return,
                Err(e) => Err(e.reason()),
            }
        };
        match accepted {
            Ok(()) => {
                self.own_result = None;
                self.start.retained.reported = None;
                self.start.retained.fault = None;
                self.window = offer.window.clamp(1, MAX_WINDOW as u8);
                // Whole agent blocks per request; an offer without `max_request` (an
                // older server) answers one block per request.
                let most = offer.max_request.unwrap_or(offer.max_block);
                self.request_len = (most / BLOCK_SIZE).max(1) * BLOCK_SIZE;
                self.in_flight = [None; MAX_WINDOW];
                self.progress(Phase::Downloading);
                self.next_progress = now.saturating_add(self.config.progress_every_ms);
                self.request_blocks(s, now);
            }
            Err(reason) => {
                self.own_result =
                    Some(UpdateResult { attempt: offer.attempt, outcome: Outcome::Failed, reason, module: None });
                self.report();
            }
        }
    }

    /// Whether the state record says the attempt it names is past its download: over,
    /// with any final outcome (confirmed, failed, rolled back, cancelled), or installed
    /// and on test (the boot manager and the application decide how that ends; an offer
    /// must neither confirm the test boot nor start the download again).
    fn finished_attempt(&self) -> bool {
        let st = self.agent.state();
        st.phase == UpdatePhase::Idle
            && st.job.is_none()
            && (self.result().is_some() || st.last_result == DeviceResult::Installed)
    }

    /// Whether every module `offer` lists is installed and confirmed, and the state
    /// record says the last attempt ended confirmed (a server whose view lags the
    /// device's, whatever attempt id it offers under).
    fn already_running(&self, offer: &UpdateOffer<'_>) -> bool {
        let st = self.agent.state();
        st.phase == UpdatePhase::Idle
            && st.job.is_none()
            && st.last_result == DeviceResult::Confirmed
            && matches!(st.boot, BootState::Confirmed { .. })
            && !offer.modules.is_empty()
            && offer.modules.iter().all(|m| st.installed.iter().flatten().any(|r| r.sha256 == m.sha256))
    }

    /// A block of a module: its data is stored in agent blocks of [`BLOCK_SIZE`], in
    /// order (a message may carry several), each with its own progress marker.
    pub fn handle_block<S: Storage>(&mut self, block: &Block<'_>, s: &mut S, now: u64) {
        let Some(attempt) = self.attempt().filter(|&a| a == block.attempt) else { return };
        let end = block.offset.saturating_add(block.data.len() as u32);
        for slot in self.in_flight.iter_mut() {
            // The window's last block came: what of it is still missing was lost, and is
            // asked again now rather than after the timeout.
            if slot.is_some_and(|f| f.covers(block.module, block.offset) && end >= f.end) {
                *slot = None;
            }
            // The link is delivering: the windows queued behind this block are still
            // coming, so their timeout starts again (on a slow link several windows take
            // longer than the timeout to arrive, and asking again would send them twice).
            if let Some(f) = slot {
                f.sent_at = now;
            }
        }
        for (k, data) in block.data.chunks(BLOCK_SIZE as usize).enumerate() {
            let offset = block.offset.saturating_add(k as u32 * BLOCK_SIZE);
            let stored = AgentBlock { module: block.module, offset, data };
            match self.agent.handle_block(s, stored) {
                Ok(BlockOutcome::Stored) => self.stats.blocks_stored += 1,
                Ok(BlockOutcome::Duplicate) => self.stats.duplicate_blocks += 1,
                Ok(BlockOutcome::Complete) => {
                    self.stats.blocks_stored += 1;
                    self.progress(Phase::Verifying);
                    self.progress(Phase::Staged);
                    self.progress(Phase::Rebooting);
                    self.action = Some(PlatformAction::RebootToInstall);
                    return;
                }
                Err(e @ (BlockError::VerifyFailed(module) | BlockError::PatchFailed(module))) => {
                    let reason =
                        if matches!(e, BlockError::PatchFailed(_)) { Reason::DeltaFailed } else { Reason::VerifyError };
                    self.own_result =
                        Some(UpdateResult { attempt, outcome: Outcome::Failed, reason, module: Some(module) });
                    self.report();
                    return;
                }
                Err(BlockError::Flash(_)) => {
                    let reason = Reason::FlashError;
                    self.own_result = Some(UpdateResult { attempt, outcome: Outcome::Failed, reason, module: None });
                    self.report();
                    return;
                }
                // The agent started the transfer over: every block is missing again.
                Err(BlockError::MarkersExhausted) => {
                    self.in_flight = [None; MAX_WINDOW];
                    break;
                }
                // Stale, unknown or malformed blocks are ignored (and what follows them).
                Err(_) => break,
            }
        }
        let (done, _) = self.agent.progress();
        if done >= self.progress_bytes.saturating_add(self.config.progress_every_bytes) {
            self.progress(Phase::Downloading);
            self.next_progress = now.saturating_add(self.config.progress_every_ms);
        }
        self.request_blocks(s, now);
    }

    /// A command from the server; each command id is carried out once.
    pub fn handle_command<S: Storage>(&mut self, command: &Command, s: &mut S) {
        if self.start.retained.commands.contains(command.id) {
            return;
        }
        self.start.retained.commands.record(command.id);
        match command.action {
            Action::Reboot => self.action = Some(PlatformAction::Reboot),
            Action::EnterSafeMode => {
                let _ = self.agent.request_safe_mode(s);
                self.action = Some(PlatformAction::RebootIntoSafeMode);
            }
            Action::FactoryRestore => {
                let _ = self.agent.request_factory_restore(s);
                self.action = Some(PlatformAction::RebootToFactoryRestore);
            }
            Action::CancelUpdate => {
                let current = self.attempt();
                // A cancel of another attempt than the one in progress is not for it.
                if command.attempt.is_some() && current.is_some() && command.attempt != current {
                    return;
                }
                if let (Ok(true), Some(attempt)) = (self.agent.cancel(s), command.attempt.or(current)) {
                    self.in_flight = [None; MAX_WINDOW];
                    self.own_result = Some(UpdateResult {
                        attempt,
                        outcome: Outcome::Cancelled,
                        reason: Reason::CancelledByServer,
                        module: None,
                    });
                    self.report();
                }
            }
            Action::Other(_) => {}
        }
    }

    /// The time named by [`Conversation::poll_timeout`] has come (calling it earlier is
    /// harmless).
    pub fn handle_timeout<S: Storage>(&mut self, s: &mut S, now: u64) {
        if !self.connected {
            return;
        }
        if now >= self.next_describe {
            self.next_describe = now.saturating_add(self.config.describe_every_ms);
            self.report();
        }
        if self.agent.state().phase == UpdatePhase::Receiving {
            self.request_blocks(s, now);
            if now >= self.next_progress {
                self.next_progress = now.saturating_add(self.config.progress_every_ms);
                self.progress(Phase::Downloading);
            }
        }
    }

    /// When [`Conversation::handle_timeout`] is next due; `None` while disconnected.
    pub fn poll_timeout(&self) -> Option<u64> {
        if !self.connected {
            return None;
        }
        let mut due = self.next_describe;
        if self.agent.state().phase == UpdatePhase::Receiving {
            due = due.min(self.next_progress);
            for f in self.in_flight.iter().flatten() {
                due = due.min(f.sent_at.saturating_add(self.config.request_timeout_ms));
            }
        }
        Some(due)
    }

    /// The next uplink message to publish, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Message<'static>> {
        if self.queue_len == 0 {
            return None;
        }
        let pending = self.queue[self.queue_head].take();
        self.queue_head = (self.queue_head + 1) % MAX_QUEUED;
        self.queue_len -= 1;
        Some(match pending? {
            Pending::Describe => Message::Describe(self.describe()),
            Pending::Result(r) => Message::Result(r),
            Pending::Progress(p) => Message::Progress(p),
            Pending::Request(r) => Message::BlockRequest(r),
        })
    }

    /// What the platform must do now, if anything. After a reboot action the platform
    /// resets; messages still queued may be sent first.
    pub fn poll_action(&mut self) -> Option<PlatformAction> {
        self.action.take()
    }

    fn push(&mut self, pending: Pending) {
        if self.queue_len == MAX_QUEUED {
            self.stats.dropped += 1;
            return;
        }
        self.queue[(self.queue_head + self.queue_len) % MAX_QUEUED] = Some(pending);
        self.queue_len += 1;
    }

    /// Sends the attempt's result once per outcome, then a Describe.
    fn report(&mut self) {
        if !self.connected {
            return;
        }
        if let Some(r) = self.result() {
            if self.start.retained.reported != Some((r.attempt, r.outcome)) {
                self.start.retained.reported = Some((r.attempt, r.outcome));
                self.push(Pending::Result(r));
            }
        }
        self.stats.describes += 1;
        self.push(Pending::Describe);
    }

    fn progress(&mut self, phase: Phase) {
        if !self.connected {
            return;
        }
        let Some(attempt) = self.attempt() else { return };
        let (done, total) = self.agent.progress();
        self.progress_bytes = done;
        self.push(Pending::Progress(Progress { attempt, phase, bytes_done: done.min(total), bytes_total: total }));
    }

    /// Forgets requests unanswered for the timeout (no block of the attempt arrived in it
    /// either), then asks for the missing blocks no
    /// request in flight covers, in runs of consecutive blocks of up to `request_len`
    /// bytes, until `window` requests are in flight.
    fn request_blocks<S: Storage>(&mut self, s: &mut S, now: u64) {
        if !self.connected || self.agent.state().phase != UpdatePhase::Receiving {
            return;
        }
        let Some(attempt) = self.attempt() else { return };
        let timeout = self.config.request_timeout_ms;
        for slot in self.in_flight.iter_mut() {
            if slot.is_some_and(|f| now.saturating_sub(f.sent_at) >= timeout) {
                *slot = None;
            }
        }
        let window = usize::from(self.window).min(MAX_WINDOW);
        let mut from = 0;
        while self.in_flight.iter().flatten().count() < window {
            let in_flight = &self.in_flight;
            let covered = |module, offset| in_flight.iter().flatten().any(|f: &InFlight| f.covers(module, offset));
            // A flash failure here is a power cut or worse: the platform sees it.
            let Ok(Some((run, next))) = self.agent.missing_run(s, from, self.request_len, covered) else { return };
            from = next;
            if let Some(free) = self.in_flight.iter_mut().find(|f| f.is_none()) {
                *free =
                    Some(InFlight { module: run.module, offset: run.offset, end: run.offset + run.len, sent_at: now });
            }
            self.stats.block_requests += 1;
            let request = BlockRequest { attempt, module: run.module, offset: run.offset, length: run.len };
            self.push(Pending::Request(request));
        }
    }

    /// The final result of the attempt the device last worked on, as it knows it.
    pub fn result(&self) -> Option<UpdateResult> {
        if let Some(own) = self.own_result {
            return Some(own);
        }
        let st = self.agent.state();
        let attempt = st.attempt?;
        // The boot manager knows it gave up on the application; the platform saw how the
        // application failed (its reset causes), which names the reason.
        let failed = match self.start.retained.fault {
            Some(AppFault::Panicked) => Reason::AppFailedTestBoot,
            Some(AppFault::Hung) => Reason::AppHung,
            Some(AppFault::NeverConfirmed) | None => Reason::AppNotConfirmed,
        };
        let (outcome, reason) = match st.last_result {
            DeviceResult::Confirmed => (Outcome::Confirmed, Reason::None),
            DeviceResult::RolledBackUnconfirmed | DeviceResult::RolledBackFaults | DeviceResult::FactoryRestored => {
                (Outcome::RolledBack, failed)
            }
            DeviceResult::RolledBackInvalid => (Outcome::RolledBack, Reason::VerifyError),
            DeviceResult::VerifyFailed => (Outcome::Failed, Reason::VerifyError),
            DeviceResult::PatchFailed => (Outcome::Failed, Reason::DeltaFailed),
            DeviceResult::Cancelled => (Outcome::Cancelled, Reason::CancelledByServer),
            DeviceResult::None
            | DeviceResult::Staged
            | DeviceResult::Installed
            | DeviceResult::FactoryRestoredOnRequest => return None,
        };
        Some(UpdateResult { attempt, outcome, reason, module: None })
    }

    /// The Describe of the device as it is now.
    pub fn describe(&self) -> Describe {
        let profile = self.agent.profile();
        let st = self.agent.state();
        let run = self.start.decision.run;
        let mut modules = List::new();
        for m in st.installed.iter().flatten() {
            let dependencies_met = m
                .dependencies
                .iter()
                .flatten()
                .filter(|d| d.function != ModuleFunction::None)
                .all(|d| st.installed.iter().flatten().any(|r| d.is_satisfied_by(r.function, r.index, r.version)));
            let invalid_app =
                m.function == ModuleFunction::UserPart && matches!(run, Run::SafeMode(SafeModeReason::Disabled(_)));
            // MAX_SLOTS records always fit the list.
            let _ = modules.push(InstalledModule {
                function: m.function,
                index: m.index,
                version: m.version,
                sha256: m.sha256,
                size: m.size,
                integrity: if invalid_app { Integrity::Invalid } else { Integrity::Valid },
                dependencies_met,
            });
        }
        let confirmed = matches!(st.boot, BootState::Confirmed { .. });
        let events = self.start.decision.events;
        let (boot_reason, safe_mode, unmet) = match run {
            Run::SafeMode(SafeModeReason::DependencyUnmet(d)) => {
                (BootReason::SafeMode, Some(SafeModeCause::UnmetDependency), Some(d))
            }
            Run::SafeMode(SafeModeReason::NoApplication) => {
                (BootReason::SafeMode, Some(SafeModeCause::NoApplication), None)
            }
            Run::SafeMode(SafeModeReason::Disabled(_)) => {
                (BootReason::SafeMode, Some(SafeModeCause::InvalidApplication), None)
            }
            Run::SafeMode(SafeModeReason::Requested) => (BootReason::SafeMode, Some(SafeModeCause::Requested), None),
            Run::Application { .. } if events.rolled_back => (BootReason::Rollback, None, None),
            Run::Application { .. } if events.factory_restored => (BootReason::FactoryRestore, None, None),
            // The boot manager decided at boot time that the application runs on test; once
            // it confirmed, it runs as any confirmed application does until the next boot.
            Run::Application { test: true } if !confirmed => (BootReason::TestBoot, None, None),
            Run::Application { .. } => (BootReason::Normal, None, None),
        };
        Describe {
            platform: profile.platform_id,
            boot_reason,
            safe_mode,
            unmet,
            confirmed: !matches!(run, Run::SafeMode(_)) && confirmed,
            modules,
            last_result: self.result(),
            capacity: Some(Capacity { link: self.config.link, ..self.agent.capacity() }),
            security_counter: Some(st.security_counter),
        }
    }
}
