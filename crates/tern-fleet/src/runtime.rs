//! One simulated device, end to end: the boot manager and update agent of `tern-device`
//! on `tern-sim`'s strict flash model, the simulated application from the image it runs,
//! and the `tern-proto` conversation with the server over a [`Link`].
//!
//! The conversation itself — Describe, offers, windowed block pulls and their retries,
//! progress, results and their reasons, commands, confirming a test boot — is
//! `tern-device`'s sans-IO [`Conversation`], the same code a port runs on a real MCU. This
//! runtime only pumps it: it carries messages over the link, gives it a clock, resets the
//! device when it says so, and plays the application (its behaviour comes from the
//! installed image, [`Behaviour::of_image`]): panicking or hanging applications reset the
//! device with the matching cause until the boot manager rolls back, and one that never
//! confirms is reset by its watchdog. It also keeps the flash in a state directory and
//! offers fault hooks (power cuts during the download or the install, a slow link).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use tern_device::agent::Agent;
use tern_device::boot::{self, BootError, ResetCause, Run};
use tern_device::conversation::{AppFault, Conversation, ConversationConfig, PlatformAction, Retained, Start};
use tern_device::profile::Profile;
use tern_image::model::ModuleFunction;
use tern_proto::{BootReason, LinkCapacity, Message, TopicForm};
use tern_sim::device::{Behaviour, SimDevice};
use tern_sim::flash::FaultKind;

use crate::link::{Incoming, Link};

/// Name of the flash image in a state directory.
pub const FLASH_FILE: &str = "flash.bin";

/// Settings of a simulated device.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the flash is saved (`None`: memory only). The attempt the device works on is
    /// in its state record, on that flash.
    pub state_dir: Option<PathBuf>,
    /// Re-ask for a block not answered within this time.
    pub request_timeout: Duration,
    /// How long an application that never confirms runs before its watchdog fires.
    pub unconfirmed_watchdog: Duration,
    /// Describe again this often while connected: messages can be lost, and the server
    /// learns the outcome of a reboot only from a Describe.
    pub describe_every: Duration,
    /// Test hook: cut the power at the next flash operation once this many blocks were
    /// stored (a power cut during the download), or `cut_delay_ops` operations later
    /// (past the last blocks: while patches are applied). One-shot.
    pub cut_after_blocks: Option<u64>,
    /// Flash operations between the `cut_after_blocks` point and the cut.
    pub cut_delay_ops: u64,
    /// Test hook: cut the power at this flash operation of the boot that installs a
    /// completed download (a power cut during the install). One-shot.
    pub cut_install_at_op: Option<u64>,
    /// Time the device spends on each stored block beyond the work itself (a slow link
    /// or slow flash); zero by default.
    pub block_pace: Duration,
    /// The longest the device waits for the link before it looks at its own state again
    /// (stop requested, watchdog, saving). Messages and the conversation's timers wake it
    /// sooner; a larger value costs a large fleet less CPU when idle.
    pub idle_wait: Duration,
    /// How applications the device receives behave regardless of their image (a hardware
    /// variant on which new releases fail); `None`: as their image says.
    pub received_apps: Option<ReceivedApps>,
}

/// How every application a device receives behaves, whatever its image says — except the
/// applications it was provisioned with (its own and the factory copy), which run as
/// their images say. Applications are told apart by their SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedApps {
    /// The behaviour of received applications.
    pub behaviour: Behaviour,
    /// SHA-256 of the applications the device was provisioned with.
    pub provisioned: Vec<[u8; 32]>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            state_dir: None,
            request_timeout: Duration::from_millis(1500),
            unconfirmed_watchdog: Duration::from_secs(2),
            describe_every: Duration::from_secs(30),
            cut_after_blocks: None,
            cut_install_at_op: None,
            cut_delay_ops: 0,
            block_pace: Duration::ZERO,
            idle_wait: Duration::from_millis(20),
            received_apps: None,
        }
    }
}

/// Counters a test or the CLI can read while the device runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Boots (every pass through the boot manager).
    pub boots: u64,
    /// Power cuts injected by the test hooks.
    pub power_cuts: u64,
    /// Block requests sent.
    pub block_requests: u64,
    /// Blocks stored.
    pub blocks_stored: u64,
    /// Blocks that arrived again (ignored by the agent).
    pub duplicate_blocks: u64,
    /// Describes sent.
    pub describes: u64,
    /// Connections made.
    pub connects: u64,
    /// The boot reason of the last boot, as described.
    pub boot_reason: String,
    /// The version of the running application (0 in safe mode).
    pub app_version: u32,
    /// The last result sent (outcome name, reason name).
    pub last_result: Option<(String, String)>,
    /// Whether the link is up.
    pub connected: bool,
}

/// Why a simulated device stopped for good.
#[derive(Debug)]
pub enum RunError {
    /// The boot manager found nothing bootable (the device is bricked).
    Bricked(BootError),
    /// The state directory could not be written.
    Io(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Bricked(e) => write!(f, "the device does not boot: {e:?}"),
            RunError::Io(e) => write!(f, "saving the device state: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

enum Next {
    Reboot(ResetCause),
    Stop,
}

/// A simulated device and its conversation with the server.
pub struct SimRuntime {
    device: SimDevice,
    settings: Settings,
    /// What the device keeps across resets (commands carried out, how the application
    /// failed), handed from one boot's conversation to the next.
    retained: Retained,
    /// Whether the link is up (it stays up across the device's reboots).
    connected: bool,
    /// The clock's origin: `now` is milliseconds since.
    epoch: Instant,
    stats: Arc<Mutex<Stats>>,
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let n = message.encode(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl SimRuntime {
    /// A runtime for `device` (already provisioned or loaded). An attempt the device's
    /// state record names is resumed.
    pub fn new(device: SimDevice, settings: Settings) -> Self {
        device.bench.borrow_mut().log_ops = false;
        SimRuntime {
            device,
            settings,
            retained: Retained::default(),
            connected: false,
            epoch: Instant::now(),
            stats: Arc::new(Mutex::new(Stats::default())),
        }
    }

    /// Loads the device saved in `dir` (see [`SimRuntime::save`]), if there is one.
    pub fn load(dir: &Path, keys: Vec<VerifyingKey>) -> Result<Option<SimDevice>, String> {
        let path = dir.join(FLASH_FILE);
        if !path.exists() {
            return Ok(None);
        }
        SimDevice::load(&path, keys).map(Some)
    }

    /// The runtime with its counters kept in `stats` (made before the device's thread, so
    /// a reporter can hold them from the start).
    pub fn with_stats(mut self, stats: Arc<Mutex<Stats>>) -> Self {
        self.stats = stats;
        self
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<Mutex<Stats>> {
        self.stats.clone()
    }

    /// The simulated device.
    pub fn device(&self) -> &SimDevice {
        &self.device
    }

    fn stat(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// Saves the flash to the state directory, if any.
    pub fn save(&self) -> Result<(), RunError> {
        let Some(dir) = &self.settings.state_dir else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(RunError::Io)?;
        let tmp = dir.join(format!("{FLASH_FILE}.tmp"));
        self.device.save(&tmp).map_err(RunError::Io)?;
        std::fs::rename(&tmp, dir.join(FLASH_FILE)).map_err(RunError::Io)
    }

    fn powered(&self) -> bool {
        self.device.bench.borrow().powered
    }

    /// Runs the device until `stop` is set: boots, runs the application, talks to the
    /// server, reboots when told to or when the application fails.
    pub fn run(&mut self, link: &mut dyn Link, stop: &AtomicBool) -> Result<(), RunError> {
        let profile: &'static Profile = self.device.profile;
        let keys = self.device.keys.clone();
        let mut cause = ResetCause::PowerOn;
        loop {
            if stop.load(Ordering::Relaxed) {
                return self.save();
            }
            self.device.bench.borrow_mut().power_on();
            self.stat(|s| s.boots += 1);
            let mut storage = self.device.storage();
            let decision = match boot::boot(&mut storage, profile, cause) {
                Ok(d) => d,
                Err(BootError::Flash(_)) if !self.powered() => {
                    self.stat(|s| s.power_cuts += 1);
                    cause = ResetCause::PowerOn;
                    continue;
                }
                Err(e) => return Err(RunError::Bricked(e)),
            };
            let agent = match Agent::load(&mut storage, profile, &keys) {
                Ok(a) => a,
                Err(_) if !self.powered() => {
                    self.stat(|s| s.power_cuts += 1);
                    cause = ResetCause::PowerOn;
                    continue;
                }
                Err(_) => return Err(RunError::Bricked(BootError::NoState)),
            };
            let behaviour = match decision.run {
                Run::Application { .. } => {
                    let app = profile.app_slot().unwrap_or(0);
                    let record = agent.state().installed[app];
                    let size = record.map_or(0, |m| m.size) as usize;
                    let own = Behaviour::of_image(&self.device.slot_bytes(app, size));
                    match (&self.settings.received_apps, record) {
                        (Some(r), Some(m)) if !r.provisioned.contains(&m.sha256) => r.behaviour,
                        _ => own,
                    }
                }
                Run::SafeMode(_) => Behaviour::Healthy,
            };
            match behaviour {
                Behaviour::Panic => {
                    self.retained.fault = Some(AppFault::Panicked);
                    cause = ResetCause::Panic;
                    continue;
                }
                Behaviour::Hang => {
                    self.retained.fault = Some(AppFault::Hung);
                    cause = ResetCause::Watchdog;
                    continue;
                }
                _ => {}
            }
            let start = Start { decision, confirm_test_boot: behaviour == Behaviour::Healthy, retained: self.retained };
            // The link takes the default block size, on the topic form it uses.
            let link_capacity = ConversationConfig::default()
                .link
                .map(|l| LinkCapacity { compact_topics: link.topic_form() == TopicForm::Compact, ..l });
            let config = ConversationConfig {
                request_timeout_ms: millis(self.settings.request_timeout),
                describe_every_ms: millis(self.settings.describe_every),
                link: link_capacity,
                ..ConversationConfig::default()
            };
            let mut conversation = Conversation::new(agent, start, config);
            let next = self.converse(link, &mut conversation, &mut storage, behaviour, stop);
            self.retained = conversation.retained();
            match next {
                Next::Reboot(c) => {
                    if matches!(c, ResetCause::Watchdog) {
                        self.retained.fault = Some(AppFault::NeverConfirmed);
                    }
                    cause = c;
                    self.save()?;
                }
                Next::Stop => return self.save(),
            }
        }
    }

    /// Publishes what the conversation queued, noting it in the counters.
    fn transmit(&self, link: &mut dyn Link, conversation: &mut Conversation<'_>) {
        while let Some(message) = conversation.poll_transmit() {
            match &message {
                Message::Describe(d) => {
                    let app =
                        d.modules.iter().find(|m| m.function == ModuleFunction::UserPart).map_or(0, |m| m.version);
                    let safe = d.boot_reason == BootReason::SafeMode;
                    self.stat(|s| {
                        s.describes += 1;
                        s.boot_reason = d.boot_reason.name().into();
                        s.app_version = if safe { 0 } else { app };
                    });
                }
                Message::Result(r) => {
                    self.stat(|s| s.last_result = Some((r.outcome.name().into(), r.reason.name().into())))
                }
                Message::BlockRequest(_) => self.stat(|s| s.block_requests += 1),
                _ => {}
            }
            link.send(message.kind(), encode(&message));
        }
    }

    /// One boot's conversation: pumps link events and the clock into it until it, the
    /// application or a power cut resets the device, or `stop` is set.
    fn converse(
        &mut self,
        link: &mut dyn Link,
        conversation: &mut Conversation<'_>,
        storage: &mut tern_sim::device::SimStorage,
        behaviour: Behaviour,
        stop: &AtomicBool,
    ) -> Next {
        let started = Instant::now();
        let test = matches!(conversation.boot_decision().run, Run::Application { test: true });
        let mut last_save = Instant::now();
        // What the boot itself changed (an install) is saved at the first turn.
        let mut saved_at_op = u64::MAX;
        let (mut stored, mut duplicates) = (0, 0);
        // A device that boots while connected describes itself at once.
        if self.connected {
            conversation.handle_connected(storage, self.now());
        }
        loop {
            if !self.powered() {
                return self.power_cut();
            }
            self.transmit(link, conversation);
            // Blocks stored since the last turn: the download hooks.
            let counts = conversation.stats();
            for _ in stored..counts.blocks_stored {
                let mut n = 0;
                self.stat(|s| {
                    s.blocks_stored += 1;
                    n = s.blocks_stored;
                });
                if self.settings.cut_after_blocks == Some(n) {
                    self.settings.cut_after_blocks = None;
                    self.cut_power_soon();
                }
                if !self.settings.block_pace.is_zero() {
                    std::thread::sleep(self.settings.block_pace);
                }
            }
            let new_duplicates = counts.duplicate_blocks - duplicates;
            self.stat(|s| s.duplicate_blocks += new_duplicates);
            (stored, duplicates) = (counts.blocks_stored, counts.duplicate_blocks);
            match conversation.poll_action() {
                Some(PlatformAction::RebootToInstall) => {
                    if let Some(op) = self.settings.cut_install_at_op.take() {
                        let mut bench = self.device.bench.borrow_mut();
                        let at = bench.op_count() + op;
                        bench.faults = vec![(at, FaultKind::Cut)];
                    }
                    return Next::Reboot(ResetCause::Software);
                }
                Some(_) => return Next::Reboot(ResetCause::Software),
                None => {}
            }
            if stop.load(Ordering::Relaxed) {
                return Next::Stop;
            }
            if test && behaviour == Behaviour::NeverConfirms && started.elapsed() > self.settings.unconfirmed_watchdog {
                return Next::Reboot(ResetCause::Watchdog);
            }
            // Saved every 2 s while the flash changes (a download): a large fleet with
            // state directories does not rewrite idle devices' flash.
            let ops = self.device.bench.borrow().op_count();
            if last_save.elapsed() > Duration::from_secs(2) && ops != saved_at_op {
                last_save = Instant::now();
                saved_at_op = ops;
                let _ = self.save();
            }
            let now = self.now();
            let idle = millis(self.settings.idle_wait);
            let wait = conversation.poll_timeout().map_or(idle, |due| due.saturating_sub(now).min(idle));
            match link.recv(Duration::from_millis(wait)) {
                Some(Incoming::Connected) => {
                    self.connected = true;
                    self.stat(|s| {
                        s.connects += 1;
                        s.connected = true;
                    });
                    conversation.handle_connected(storage, self.now());
                }
                Some(Incoming::Disconnected) => {
                    self.connected = false;
                    self.stat(|s| s.connected = false);
                    conversation.handle_disconnected();
                }
                Some(Incoming::Message(payload)) => {
                    if let Ok(message) = Message::decode(&payload) {
                        conversation.handle_message(&message, storage, self.now());
                    }
                }
                None => {}
            }
            let now = self.now();
            if conversation.poll_timeout().is_some_and(|due| due <= now) {
                conversation.handle_timeout(storage, now);
            }
        }
    }

    fn cut_power_soon(&self) {
        let mut b = self.device.bench.borrow_mut();
        let at = b.op_count() + self.settings.cut_delay_ops;
        b.faults = vec![(at, FaultKind::Cut)];
    }

    fn power_cut(&mut self) -> Next {
        self.stat(|s| s.power_cuts += 1);
        Next::Reboot(ResetCause::PowerOn)
    }
}
