//! One simulated device, end to end: the boot manager and update agent of `tern-device`
//! on `tern-sim`'s strict flash model, the simulated application from the image it runs,
//! and the `tern-proto` conversation with the server over a [`Link`].
//!
//! Every boot goes through [`tern_device::boot::boot`]; the application's behaviour comes
//! from the installed image ([`Behaviour::of_image`]). A healthy application on test is
//! confirmed once the device reached the server (then it describes itself, so the server
//! sees `confirmed = true` and boot reason `normal`: a confirmed test boot is no longer one). Panicking or hanging applications reset the device with the
//! matching cause until the boot manager rolls back.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use tern_device::agent::{Agent, BlockError, BlockOutcome, BlockRequest as AgentRequest, OfferError};
use tern_device::block::Block as AgentBlock;
use tern_device::boot::{self, BootDecision, BootError, ResetCause, Run, SafeModeReason};
use tern_device::profile::Profile;
use tern_device::state::{BootState, UpdatePhase, UpdateResult as DeviceResult};
use tern_image::model::{Integrity, ModuleFunction};
use tern_proto::{
    Action, BlockRequest, BootReason, Describe, InstalledModule, List, Message, Outcome, Phase, Progress, Reason,
    SafeModeCause, UpdateResult,
};
use tern_sim::device::{Behaviour, SimDevice, SimStorage};
use tern_sim::flash::FaultKind;

use crate::link::{Incoming, Link};

/// Name of the flash image in a state directory.
pub const FLASH_FILE: &str = "flash.bin";
/// Name of the file holding the current attempt id in a state directory.
pub const ATTEMPT_FILE: &str = "attempt";

/// Settings of a simulated device.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the flash and the current attempt id are saved (`None`: memory only).
    pub state_dir: Option<PathBuf>,
    /// Re-ask for a block not answered within this time.
    pub request_timeout: Duration,
    /// How long an application that never confirms runs before its watchdog fires.
    pub unconfirmed_watchdog: Duration,
    /// Describe again this often while connected: messages can be lost, and the server
    /// learns the outcome of a reboot only from a Describe.
    pub describe_every: Duration,
    /// Test hook: cut the power at the next flash operation once this many blocks were
    /// stored (a power cut during the download). One-shot.
    pub cut_after_blocks: Option<u64>,
    /// Test hook: cut the power at this flash operation of the boot that installs a
    /// completed download (a power cut during the install). One-shot.
    pub cut_install_at_op: Option<u64>,
    /// Time the device spends on each stored block beyond the work itself (a slow link
    /// or slow flash); zero by default.
    pub block_pace: Duration,
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
            block_pace: Duration::ZERO,
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
    attempt: Option<u64>,
    /// A result the device decided without the boot manager (a refused offer, a verify
    /// error, a cancel), for the attempt it names.
    own_result: Option<UpdateResult>,
    reported: Option<(u64, Outcome)>,
    /// How the application failed last (panic, hang, never confirmed), for the reason.
    last_fault: Option<Behaviour>,
    commands_seen: VecDeque<u32>,
    connected: bool,
    stats: Arc<Mutex<Stats>>,
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let n = message.encode(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

fn send(link: &mut dyn Link, message: &Message<'_>) {
    link.send(message.kind(), encode(message));
}

fn offer_reason(e: &OfferError) -> Reason {
    match e {
        OfferError::Manifest(_) => Reason::RejectedSignature,
        OfferError::WrongPlatform { .. } => Reason::WrongPlatform,
        OfferError::Downgrade { .. } => Reason::SecurityCounterRollback,
        OfferError::NoSlot(..)
        | OfferError::WrongAddress(..)
        | OfferError::TooManyModules
        | OfferError::MixedDocuments => Reason::MalformedOffer,
        OfferError::TooLarge => Reason::TooLarge,
        OfferError::UnsatisfiableDependency(_) => Reason::UnmetDependency,
        OfferError::Busy => Reason::Busy,
        OfferError::Flash(_) => Reason::FlashError,
    }
}

impl SimRuntime {
    /// A runtime for `device` (already provisioned or loaded). With a state directory
    /// holding an attempt id, that attempt is resumed.
    pub fn new(device: SimDevice, settings: Settings) -> Self {
        device.bench.borrow_mut().log_ops = false;
        let attempt = settings
            .state_dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join(ATTEMPT_FILE)).ok())
            .and_then(|s| s.trim().parse().ok());
        SimRuntime {
            device,
            settings,
            attempt,
            own_result: None,
            reported: None,
            last_fault: None,
            commands_seen: VecDeque::new(),
            connected: false,
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

    /// Saves the flash and the attempt id to the state directory, if any.
    pub fn save(&self) -> Result<(), RunError> {
        let Some(dir) = &self.settings.state_dir else { return Ok(()) };
        std::fs::create_dir_all(dir).map_err(RunError::Io)?;
        let tmp = dir.join(format!("{FLASH_FILE}.tmp"));
        self.device.save(&tmp).map_err(RunError::Io)?;
        std::fs::rename(&tmp, dir.join(FLASH_FILE)).map_err(RunError::Io)?;
        let attempt = self.attempt.map(|a| a.to_string()).unwrap_or_default();
        std::fs::write(dir.join(ATTEMPT_FILE), attempt).map_err(RunError::Io)
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
            let mut agent = match Agent::load(&mut storage, profile, &keys) {
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
                    let size = agent.state().installed[app].map_or(0, |m| m.size) as usize;
                    Behaviour::of_image(&self.device.slot_bytes(app, size))
                }
                Run::SafeMode(_) => Behaviour::Healthy,
            };
            match behaviour {
                Behaviour::Panic => {
                    self.last_fault = Some(Behaviour::Panic);
                    cause = ResetCause::Panic;
                    continue;
                }
                Behaviour::Hang => {
                    self.last_fault = Some(Behaviour::Hang);
                    cause = ResetCause::Watchdog;
                    continue;
                }
                _ => {}
            }
            match self.session(link, &mut agent, &mut storage, &decision, behaviour, stop) {
                Next::Reboot(c) => {
                    if matches!(c, ResetCause::Watchdog) {
                        self.last_fault = Some(Behaviour::NeverConfirms);
                    }
                    cause = c;
                    self.save()?;
                }
                Next::Stop => return self.save(),
            }
        }
    }

    /// The final result of the current attempt, as the device knows it.
    fn result(&self, agent: &Agent<'_>) -> Option<UpdateResult> {
        let attempt = self.attempt?;
        if let Some(own) = self.own_result.filter(|r| r.attempt == attempt) {
            return Some(own);
        }
        // The boot manager knows it gave up on the application; the runtime saw how the
        // application failed (its reset causes), which names the reason.
        let failed = match self.last_fault {
            Some(Behaviour::Panic) => Reason::AppFailedTestBoot,
            Some(Behaviour::Hang) => Reason::AppHung,
            _ => Reason::AppNotConfirmed,
        };
        let (outcome, reason) = match agent.state().last_result {
            DeviceResult::Confirmed => (Outcome::Confirmed, Reason::None),
            DeviceResult::RolledBackUnconfirmed | DeviceResult::RolledBackFaults | DeviceResult::FactoryRestored => {
                (Outcome::RolledBack, failed)
            }
            DeviceResult::RolledBackInvalid => (Outcome::RolledBack, Reason::VerifyError),
            DeviceResult::VerifyFailed => (Outcome::Failed, Reason::VerifyError),
            DeviceResult::Cancelled => (Outcome::Cancelled, Reason::CancelledByServer),
            _ => return None,
        };
        Some(UpdateResult { attempt, outcome, reason, module: None })
    }

    fn describe(&self, agent: &Agent<'_>, decision: &BootDecision) -> Describe {
        let profile = self.device.profile;
        let st = agent.state();
        let records: Vec<_> = st.installed.iter().flatten().copied().collect();
        let safe = matches!(decision.run, Run::SafeMode(_));
        let mut modules = List::new();
        for m in &records {
            let deps_met = m
                .dependencies
                .iter()
                .flatten()
                .filter(|d| d.function != ModuleFunction::None)
                .all(|d| records.iter().any(|r| d.is_satisfied_by(r.function, r.index, r.version)));
            let invalid_app = m.function == ModuleFunction::UserPart
                && matches!(decision.run, Run::SafeMode(SafeModeReason::Disabled(_)));
            let _ = modules.push(InstalledModule {
                function: m.function,
                index: m.index,
                version: m.version,
                sha256: m.sha256,
                size: m.size,
                integrity: if invalid_app { Integrity::Invalid } else { Integrity::Valid },
                dependencies_met: deps_met,
            });
        }
        let confirmed = matches!(st.boot, BootState::Confirmed { .. });
        let (boot_reason, safe_mode, unmet) = match decision.run {
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
            Run::Application { .. } if decision.events.rolled_back => (BootReason::Rollback, None, None),
            Run::Application { .. } if decision.events.factory_restored => (BootReason::FactoryRestore, None, None),
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
            confirmed: !safe && confirmed,
            modules,
            capacity: None,
            security_counter: None,
            last_result: self.result(agent),
        }
    }

    fn report(&mut self, link: &mut dyn Link, agent: &Agent<'_>, decision: &BootDecision) {
        if let Some(r) = self.result(agent) {
            if self.reported != Some((r.attempt, r.outcome)) {
                send(link, &Message::Result(r));
                self.reported = Some((r.attempt, r.outcome));
                self.stat(|s| s.last_result = Some((r.outcome.name().into(), r.reason.name().into())));
            }
        }
        let d = self.describe(agent, decision);
        let app = d.modules.iter().find(|m| m.function == ModuleFunction::UserPart).map_or(0, |m| m.version);
        let safe = d.boot_reason == BootReason::SafeMode;
        self.stat(|s| {
            s.describes += 1;
            s.boot_reason = d.boot_reason.name().into();
            s.app_version = if safe { 0 } else { app };
        });
        send(link, &Message::Describe(d));
    }

    fn progress(&self, link: &mut dyn Link, agent: &Agent<'_>, phase: Phase) {
        let Some(attempt) = self.attempt else { return };
        let (done, total) = agent.progress();
        send(link, &Message::Progress(Progress { attempt, phase, bytes_done: done.min(total), bytes_total: total }));
    }

    fn set_attempt(&mut self, attempt: u64) {
        if self.attempt != Some(attempt) {
            self.attempt = Some(attempt);
            self.own_result = None;
            self.last_fault = None;
            if let Some(dir) = &self.settings.state_dir {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(ATTEMPT_FILE), attempt.to_string());
            }
        }
    }

    fn cut_power_soon(&self) {
        let mut b = self.device.bench.borrow_mut();
        let at = b.op_count();
        b.faults = vec![(at, FaultKind::Cut)];
    }

    fn on_connect(
        &mut self,
        link: &mut dyn Link,
        agent: &mut Agent<'_>,
        storage: &mut SimStorage,
        decision: &BootDecision,
        behaviour: Behaviour,
    ) -> Option<Next> {
        let test = matches!(decision.run, Run::Application { test: true });
        if test && behaviour == Behaviour::Healthy && agent.confirm(storage).is_err() {
            return Some(Next::Reboot(ResetCause::PowerOn));
        }
        self.report(link, agent, decision);
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn session(
        &mut self,
        link: &mut dyn Link,
        agent: &mut Agent<'_>,
        storage: &mut SimStorage,
        decision: &BootDecision,
        behaviour: Behaviour,
        stop: &AtomicBool,
    ) -> Next {
        let started = Instant::now();
        let test = matches!(decision.run, Run::Application { test: true });
        let mut in_flight: HashMap<(u8, u32), Instant> = HashMap::new();
        let mut window = 4usize;
        let mut last_progress = Instant::now();
        let mut last_save = Instant::now();
        let mut last_describe = Instant::now();
        // A device that boots while connected describes itself at once.
        if self.connected {
            if let Some(next) = self.on_connect(link, agent, storage, decision, behaviour) {
                return next;
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return Next::Stop;
            }
            if test && behaviour == Behaviour::NeverConfirms && started.elapsed() > self.settings.unconfirmed_watchdog {
                return Next::Reboot(ResetCause::Watchdog);
            }
            match link.recv(Duration::from_millis(20)) {
                Some(Incoming::Connected) => {
                    self.connected = true;
                    self.stat(|s| s.connects += 1);
                    in_flight.clear();
                    if let Some(next) = self.on_connect(link, agent, storage, decision, behaviour) {
                        return next;
                    }
                }
                Some(Incoming::Disconnected) => {
                    self.connected = false;
                    in_flight.clear();
                }
                Some(Incoming::Message(payload)) => {
                    let Ok(message) = Message::decode(&payload) else { continue };
                    match message {
                        Message::UpdateOffer(offer) => {
                            let same = self.attempt == Some(offer.attempt);
                            if same && agent.state().phase == UpdatePhase::Staged {
                                return Next::Reboot(ResetCause::Software);
                            }
                            match agent.handle_offer_documents(storage, offer.signed.iter().copied()) {
                                Ok(_) => {
                                    self.set_attempt(offer.attempt);
                                    window = usize::from(offer.window.max(1));
                                    in_flight.clear();
                                    self.progress(link, agent, Phase::Downloading);
                                }
                                Err(_) if !self.powered() => return self.power_cut(),
                                Err(OfferError::Busy) if same => {}
                                Err(e) => {
                                    self.set_attempt(offer.attempt);
                                    let r = UpdateResult {
                                        attempt: offer.attempt,
                                        outcome: Outcome::Failed,
                                        reason: offer_reason(&e),
                                        module: None,
                                    };
                                    self.own_result = Some(r);
                                    self.report(link, agent, decision);
                                }
                            }
                        }
                        Message::Block(b) if Some(b.attempt) == self.attempt => {
                            in_flight.remove(&(b.module, b.offset));
                            let block = AgentBlock { module: b.module, offset: b.offset, data: b.data };
                            match agent.handle_block(storage, block) {
                                Ok(BlockOutcome::Stored) => {
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
                                Ok(BlockOutcome::Duplicate) => self.stat(|s| s.duplicate_blocks += 1),
                                Ok(BlockOutcome::Complete) => {
                                    self.stat(|s| s.blocks_stored += 1);
                                    self.progress(link, agent, Phase::Verifying);
                                    self.progress(link, agent, Phase::Staged);
                                    self.progress(link, agent, Phase::Rebooting);
                                    if let Some(op) = self.settings.cut_install_at_op.take() {
                                        let mut bench = self.device.bench.borrow_mut();
                                        let at = bench.op_count() + op;
                                        bench.faults = vec![(at, FaultKind::Cut)];
                                    }
                                    return Next::Reboot(ResetCause::Software);
                                }
                                Err(_) if !self.powered() => return self.power_cut(),
                                Err(BlockError::VerifyFailed(i)) => {
                                    if let Some(attempt) = self.attempt {
                                        self.own_result = Some(UpdateResult {
                                            attempt,
                                            outcome: Outcome::Failed,
                                            reason: Reason::VerifyError,
                                            module: Some(i),
                                        });
                                    }
                                    self.report(link, agent, decision);
                                }
                                Err(BlockError::Flash(_)) => {
                                    if let Some(attempt) = self.attempt {
                                        self.own_result = Some(UpdateResult {
                                            attempt,
                                            outcome: Outcome::Failed,
                                            reason: Reason::FlashError,
                                            module: None,
                                        });
                                    }
                                    self.report(link, agent, decision);
                                }
                                Err(BlockError::MarkersExhausted) => in_flight.clear(),
                                // Stale, unknown or malformed blocks are ignored.
                                Err(_) => {}
                            }
                        }
                        Message::Command(c) => {
                            if self.commands_seen.contains(&c.id) {
                                continue;
                            }
                            self.commands_seen.push_back(c.id);
                            if self.commands_seen.len() > 32 {
                                self.commands_seen.pop_front();
                            }
                            match c.action {
                                Action::Reboot => return Next::Reboot(ResetCause::Software),
                                Action::EnterSafeMode => {
                                    let _ = agent.request_safe_mode(storage);
                                    return Next::Reboot(ResetCause::Software);
                                }
                                Action::FactoryRestore => {
                                    let _ = agent.request_factory_restore(storage);
                                    return Next::Reboot(ResetCause::Software);
                                }
                                Action::CancelUpdate => {
                                    let attempt = c.attempt.or(self.attempt);
                                    if let (Ok(true), Some(attempt)) = (agent.cancel(storage), attempt) {
                                        self.set_attempt(attempt);
                                        self.own_result = Some(UpdateResult {
                                            attempt,
                                            outcome: Outcome::Cancelled,
                                            reason: Reason::CancelledByServer,
                                            module: None,
                                        });
                                        self.report(link, agent, decision);
                                    }
                                }
                                Action::Other(_) => {}
                            }
                        }
                        _ => {}
                    }
                }
                None => {}
            }
            if !self.powered() {
                return self.power_cut();
            }
            if self.connected && agent.state().phase == UpdatePhase::Receiving {
                if let Some(attempt) = self.attempt {
                    let timeout = self.settings.request_timeout;
                    in_flight.retain(|_, at| at.elapsed() < timeout);
                    let mut missing = [AgentRequest { module: 0, offset: 0, len: 0 }; 64];
                    let n = match agent.missing_blocks(storage, &mut missing) {
                        Ok(n) => n,
                        Err(_) => return self.power_cut(),
                    };
                    for r in &missing[..n] {
                        if in_flight.len() >= window {
                            break;
                        }
                        if in_flight.contains_key(&(r.module, r.offset)) {
                            continue;
                        }
                        in_flight.insert((r.module, r.offset), Instant::now());
                        self.stat(|s| s.block_requests += 1);
                        send(
                            link,
                            &Message::BlockRequest(BlockRequest {
                                attempt,
                                module: r.module,
                                offset: r.offset,
                                length: r.len,
                            }),
                        );
                    }
                    if last_progress.elapsed() > Duration::from_millis(500) {
                        last_progress = Instant::now();
                        self.progress(link, agent, Phase::Downloading);
                    }
                }
            }
            if self.connected && last_describe.elapsed() > self.settings.describe_every {
                last_describe = Instant::now();
                self.report(link, agent, decision);
            }
            if last_save.elapsed() > Duration::from_secs(2) {
                last_save = Instant::now();
                let _ = self.save();
            }
        }
    }

    fn power_cut(&mut self) -> Next {
        self.stat(|s| s.power_cuts += 1);
        Next::Reboot(ResetCause::PowerOn)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use tern_device::block::BLOCK_SIZE;
    use tern_image::manifest::build::Document;
    use tern_image::manifest::Kind;
    use tern_proto::MessageKind;
    use tern_sim::device::Image;

    use super::*;
    use crate::provision;

    /// Records what the runtime sends.
    #[derive(Default)]
    struct Recorder(Vec<(MessageKind, Vec<u8>)>);

    impl Link for Recorder {
        fn send(&mut self, kind: MessageKind, payload: Vec<u8>) {
            self.0.push((kind, payload));
        }
        fn recv(&mut self, _: Duration) -> Option<Incoming> {
            None
        }
    }

    /// A synthetic device whose application is replaced by version 2 with `behaviour`
    /// (or left alone), rebooted, and connected: the boot reason and `confirmed` of the
    /// Describe it sends on connecting.
    fn check(update: Option<Behaviour>, expected: (BootReason, bool)) {
        let key = SigningKey::from_bytes(&[0x42; 32]);
        let profile = &tern_device::profile::NRF52840;
        let device = provision::synthetic(profile, vec![key.verifying_key()], Behaviour::Healthy).unwrap();
        let mut rt = SimRuntime::new(device, Settings::default());
        let keys = rt.device.keys.clone();
        let mut storage = rt.device.storage();
        let mut cause = ResetCause::PowerOn;
        let mut behaviour = Behaviour::Healthy;
        if let Some(b) = update {
            let sys = tern_image::model::Dependency { function: ModuleFunction::SystemPart, index: 1, version: 100 };
            let app = Image::synthetic(profile, ModuleFunction::UserPart, 1, 2, &[sys], b, 3000);
            let signed = Document {
                kind: Kind::Release,
                platform_id: profile.platform_id,
                product_id: 0,
                security_counter: 1,
                created: 1,
                modules: vec![app.entry],
                name: String::new(),
            }
            .sign(&key)
            .unwrap();
            let mut agent = Agent::load(&mut storage, profile, &keys).unwrap();
            agent.handle_offer(&mut storage, &signed).unwrap();
            for (k, chunk) in app.bytes.chunks(BLOCK_SIZE as usize).enumerate() {
                agent
                    .handle_block(&mut storage, AgentBlock { module: 0, offset: k as u32 * BLOCK_SIZE, data: chunk })
                    .unwrap();
            }
            cause = ResetCause::Software;
            behaviour = b;
        }
        let decision = boot::boot(&mut storage, profile, cause).unwrap();
        assert_eq!(decision.run, Run::Application { test: update.is_some() });
        let mut agent = Agent::load(&mut storage, profile, &keys).unwrap();
        let mut link = Recorder::default();
        assert!(rt.on_connect(&mut link, &mut agent, &mut storage, &decision, behaviour).is_none());
        let describes: Vec<Describe> = link
            .0
            .iter()
            .filter_map(|(_, bytes)| match Message::decode(bytes) {
                Ok(Message::Describe(d)) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(describes.len(), 1, "one Describe on connecting");
        assert_eq!((describes[0].boot_reason, describes[0].confirmed), expected, "{update:?}");
    }

    /// A test boot the device confirmed is described as a normal boot with `confirmed`;
    /// one still on test says so and is not confirmed.
    #[test]
    fn confirmed_test_boot_describes_normal() {
        check(None, (BootReason::Normal, true));
        check(Some(Behaviour::Healthy), (BootReason::Normal, true));
        check(Some(Behaviour::NeverConfirms), (BootReason::TestBoot, false));
    }
}
