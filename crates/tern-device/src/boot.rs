//! The boot manager: runs at every boot, before anything else.
//!
//! In order, [`boot`]:
//!
//! 1. loads the state record, finishes an erase the agent journaled (see
//!    [`Stored::journaled_erase`](crate::state::Stored::journaled_erase)), rewrites the
//!    record after a power-on reset (the newest record may have been cut at the very end
//!    of its program), and **finishes an interrupted install job** from its journal (the
//!    job kind and the number of completed copy steps are in the state record; the
//!    interrupted step is redone from the start: erase destination, copy, verify — which
//!    is idempotent because a step's source is never written by that job — except a
//!    bootloader step whose destination already verifies, which is not redone). Every
//!    source of a job is verified before its first erase: a source that fails abandons
//!    the job (the device keeps what it had, or falls back), with the reason as the last
//!    result, instead of failing every boot;
//! 2. starts a **factory restore** if one was requested, or **installs a staged update**:
//!    rollback copies of the replaced modules first (when the exchange area has room),
//!    then the new modules, the bootloader last;
//! 3. verifies every installed module against the SHA-256 recorded from its signed
//!    manifest, and their dependencies;
//! 4. counts boots of an application on **test** and panic/watchdog resets of a confirmed
//!    one, and **rolls back** (or restores the factory image, or disables the
//!    application) when a limit is reached;
//! 5. returns what to run: the application (on test with a watchdog, or confirmed), or
//!    **safe mode** with the reason.
//!
//! Steps 2–4 can start a new job; the loop is bounded because each failure moves the
//! state strictly forward (update → rollback → factory → disabled).

use tern_image::model::{Dependency, ModuleFunction};

use crate::block::BLOCK_SIZE;
use crate::profile::{Profile, MAX_SLOTS};
use crate::state::{
    self, Backup, BootState, DeviceState, DisableReason, Job, JobKind, LoadError, Origin, Stored, UpdatePhase,
    UpdateResult, MAX_UPDATE_MODULES,
};
use crate::storage::{self, FlashError, Loc, Storage};

/// Why the MCU reset, as the platform reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    /// Power-on or brown-out.
    PowerOn,
    /// A deliberate software reset (after an update, on command).
    Software,
    /// The application panicked (fault handler reset).
    Panic,
    /// The watchdog expired.
    Watchdog,
}

/// The platform services the boot flow needs. The boot manager itself only takes the
/// reset cause as input and returns the watchdog timeout to arm; this trait lets a port
/// wire both with [`boot_platform`].
pub trait Platform {
    /// Why the MCU last reset.
    fn reset_cause(&mut self) -> ResetCause;
    /// Arms the watchdog.
    fn start_watchdog(&mut self, timeout_ms: u32);
}

/// Why safe mode (system only, able to connect and take an update) was booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafeModeReason {
    /// No application is installed and there is no factory image.
    NoApplication,
    /// The application's dependency is not met by the installed modules.
    DependencyUnmet(Dependency),
    /// The application was disabled after every fallback failed.
    Disabled(DisableReason),
    /// Safe mode was requested (a command from the server or a local one) for this boot.
    Requested,
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// Start the application; `test` when it must confirm (the watchdog is armed).
    Application {
        /// The application is on test.
        test: bool,
    },
    /// Start the system only.
    SafeMode(SafeModeReason),
}

/// What this boot did, for the device's report to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootEvents {
    /// An install job interrupted by a reset was completed.
    pub resumed_job: bool,
    /// A staged update was installed.
    pub installed_update: bool,
    /// The previous modules were restored.
    pub rolled_back: bool,
    /// The factory image was restored.
    pub factory_restored: bool,
}

/// The boot manager's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootDecision {
    /// What to run.
    pub run: Run,
    /// Watchdog timeout to arm before running it.
    pub watchdog_ms: Option<u32>,
    /// What happened during this boot.
    pub events: BootEvents,
}

/// Why the boot manager could not boot anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// No valid state record for this profile: the device was never provisioned.
    NoState,
    /// Flash failed.
    Flash(FlashError),
    /// A copy step's destination did not verify after [`COPY_ATTEMPTS`] tries (worn-out
    /// or failing flash). A source that does not verify is not an error: the job is
    /// abandoned before anything is erased and the reason recorded.
    CopyVerifyFailed,
    /// The profile is inconsistent ([`Profile::check`] fails): a porting error.
    BadProfile,
    /// A system module is invalid or its dependencies are unmet and nothing can restore
    /// it. Never happens to a provisioned device (the explorer checks this).
    NoBootableSystem,
}

impl From<FlashError> for BootError {
    fn from(e: FlashError) -> Self {
        BootError::Flash(e)
    }
}

/// One copy of a job step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStep {
    /// Source.
    pub from: Loc,
    /// Destination (erased by the step).
    pub to: Loc,
    /// Bytes.
    pub len: u32,
    /// Expected SHA-256 of source and destination.
    pub sha256: [u8; 32],
}

/// One journaled step: erase a range, then make the copies. Redoing a step from the start
/// is idempotent: no step writes the source of any of its own copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Erased first (rounded out to whole sectors).
    pub erase: (Loc, u32),
    /// The copies, all into the erased range.
    pub copies: [Option<CopyStep>; MAX_UPDATE_MODULES],
}

impl Step {
    fn single(copy: CopyStep) -> Self {
        let mut copies = [None; MAX_UPDATE_MODULES];
        copies[0] = Some(copy);
        Step { erase: (copy.to, copy.len), copies }
    }
}

const MAX_STEPS: usize = 1 + MAX_UPDATE_MODULES + MAX_SLOTS;

/// The steps of a job, derived from the state (which the job does not change until it
/// completes, so the derivation is the same after a reset).
pub fn job_steps(profile: &Profile, st: &DeviceState, kind: JobKind) -> ([Option<Step>; MAX_STEPS], usize) {
    let mut steps = [None; MAX_STEPS];
    let mut n = 0;
    let ex = profile.exchange;
    let slot_loc = |slot: usize| -> Option<Loc> {
        let r = profile.slots.get(slot)?.region;
        Some(Loc { dev: r.dev, offset: r.offset })
    };
    let is_boot = |slot: usize| profile.slots.get(slot).is_some_and(|s| s.function == ModuleFunction::Bootloader);
    match kind {
        JobKind::Update { keep_rollback } => {
            // All rollback copies in one step: they share the sectors after the staged
            // modules, so they are erased and written together.
            let (plan, area) = backup_plan(profile, st);
            if let (true, Some(area)) = (keep_rollback, area) {
                let mut copies = [None; MAX_UPDATE_MODULES];
                for (copy, (b, slot)) in copies.iter_mut().zip(plan.iter()).filter_map(|(c, p)| p.map(|p| (c, p))) {
                    if let Some(from) = slot_loc(slot) {
                        *copy = Some(CopyStep {
                            from,
                            to: Loc { dev: ex.dev, offset: ex.offset + b.offset },
                            len: b.module.size,
                            sha256: b.module.sha256,
                        });
                    }
                }
                steps[n] = Some(Step { erase: area, copies });
                n += 1;
            }
            // The bootloader goes last: everything else is in place before the one copy
            // that may not be power-safe on this hardware.
            for last in [false, true] {
                for m in st.staged() {
                    if is_boot(m.slot as usize) != last {
                        continue;
                    }
                    if let Some(to) = slot_loc(m.slot as usize) {
                        steps[n] = Some(Step::single(CopyStep {
                            from: Loc { dev: ex.dev, offset: ex.offset + m.offset },
                            to,
                            len: m.module.size,
                            sha256: m.module.sha256,
                        }));
                        n += 1;
                    }
                }
            }
        }
        JobKind::Rollback => {
            for last in [false, true] {
                for (slot, b) in st.rollback.iter().enumerate() {
                    let Some(b) = b else { continue };
                    if is_boot(slot) != last {
                        continue;
                    }
                    if let Some(to) = slot_loc(slot) {
                        steps[n] = Some(Step::single(CopyStep {
                            from: Loc { dev: ex.dev, offset: ex.offset + b.offset },
                            to,
                            len: b.module.size,
                            sha256: b.module.sha256,
                        }));
                        n += 1;
                    }
                }
            }
        }
        JobKind::FactoryRestore => {
            if let (Some(f), Some(to)) = (st.factory, profile.app_slot().and_then(slot_loc)) {
                steps[n] = Some(Step::single(CopyStep {
                    from: Loc { dev: profile.factory.dev, offset: profile.factory.offset },
                    to,
                    len: f.size,
                    sha256: f.sha256,
                }));
                n += 1;
            }
        }
    }
    (steps, n)
}

/// Where the rollback copies of the modules an update replaces go: packed on block
/// boundaries from the first sector boundary after the staged modules. Returns the plan
/// (by staged module) and the area to erase; all `None` when they do not all fit (the
/// update then keeps none).
#[allow(clippy::type_complexity)]
pub fn backup_plan(
    profile: &Profile,
    st: &DeviceState,
) -> ([Option<(Backup, usize)>; MAX_UPDATE_MODULES], Option<(Loc, u32)>) {
    let none = ([None; MAX_UPDATE_MODULES], None);
    let ex = profile.exchange;
    let Some(dev) = profile.device(ex.dev) else { return none };
    let staged_end = st.staged().map(|m| m.offset.saturating_add(m.module.size)).max().unwrap_or(0);
    let first = match staged_end {
        0 => ex.offset,
        end => match ex.offset.checked_add(end - 1).and_then(|last| dev.sector_at(last)) {
            Some((start, size)) => start + size,
            None => return none,
        },
    };
    let mut plan = [None; MAX_UPDATE_MODULES];
    let mut next = first;
    for (i, m) in st.staged().enumerate() {
        let Some(old) = st.installed.get(m.slot as usize).copied().flatten() else { continue };
        let Some(end) = next.checked_add(old.size).filter(|&end| end <= ex.end()) else { return none };
        plan[i] = Some((Backup { module: old, offset: next - ex.offset }, m.slot as usize));
        next = end.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    }
    let area = (next > first).then_some((Loc { dev: ex.dev, offset: first }, next - first));
    (plan, area)
}

/// How a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepOutcome {
    /// The destination holds the step's images (copied now, or already there).
    Done,
    /// A source does not verify; nothing of the step was erased.
    BadSource,
}

/// Whether every copy of `step` already holds its image at the destination (the step
/// completed before a reset cut the journal write that would have recorded it).
fn step_in_place<S: Storage>(s: &mut S, step: &Step) -> Result<bool, FlashError> {
    for c in step.copies.iter().flatten() {
        if storage::hash(s, c.to, c.len)? != c.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a step copies into the bootloader slot.
fn writes_bootloader(profile: &Profile, step: &Step) -> bool {
    profile.slots.iter().any(|slot| {
        slot.function == ModuleFunction::Bootloader
            && slot.region.dev == step.erase.0.dev
            && slot.region.offset == step.erase.0.offset
    })
}

/// Whether every source of `step` verifies.
fn sources_verify<S: Storage>(s: &mut S, step: &Step) -> Result<bool, FlashError> {
    for c in step.copies.iter().flatten() {
        if storage::hash(s, c.from, c.len)? != c.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn run_step<S: Storage>(s: &mut S, profile: &Profile, step: &Step) -> Result<StepOutcome, BootError> {
    // A bootloader step whose destination already verifies is not redone: on a profile
    // without an immutable first stage (the STM32F2) this keeps sector 0 from being erased
    // again when only the journal write after the bootloader copy was cut. Other steps are
    // redone from the start: the last program of a copy cut by a power loss may read
    // right and still drift, and redoing costs nothing but time.
    if writes_bootloader(profile, step) && step_in_place(s, step)? {
        return Ok(StepOutcome::Done);
    }
    // Never copy anything but a verified module; a bad source is found before the erase.
    if !sources_verify(s, step)? {
        return Ok(StepOutcome::BadSource);
    }
    let copies = || step.copies.iter().flatten();
    // A program or erase that failed silently shows as a destination that does not
    // verify: the step is tried again, a few times, before giving up.
    for _ in 0..COPY_ATTEMPTS {
        storage::erase_covering(s, profile, step.erase.0, step.erase.1)?;
        for c in copies() {
            storage::copy(s, profile, c.from, c.to, c.len)?;
        }
        if step_in_place(s, step)? {
            return Ok(StepOutcome::Done);
        }
    }
    Err(BootError::CopyVerifyFailed)
}

/// Tries of a copy step whose destination does not verify afterwards.
const COPY_ATTEMPTS: usize = 3;

/// Whether step `i` of a job of `kind` writes into a module slot (every step does except
/// the rollback copies of an update, which go to the exchange area).
fn writes_slot(kind: JobKind, i: usize) -> bool {
    !(kind == (JobKind::Update { keep_rollback: true }) && i == 0)
}

/// A copy source failed verification before its step erased anything: the job is
/// abandoned and the device keeps (or falls back from) what it had, the reason recorded
/// as the last result. Returns `false` when no safe way out exists: an update without
/// rollback copies that already replaced a slot.
fn abandon(profile: &Profile, st: &mut DeviceState, job: Job, failed_step: usize, started: bool) -> bool {
    let slots_touched = started && (0..failed_step).any(|i| writes_slot(job.kind, i));
    let drop_staged = |st: &mut DeviceState| {
        st.phase = UpdatePhase::Idle;
        st.staged = [None; MAX_UPDATE_MODULES];
        st.staged_count = 0;
        st.last_result = UpdateResult::VerifyFailed;
    };
    match job.kind {
        JobKind::Update { keep_rollback: true } if failed_step == 0 && !slots_touched => {
            // An installed module (a rollback source) no longer verifies: install without
            // rollback copies instead; nothing was erased.
            st.job = Some(Job { kind: JobKind::Update { keep_rollback: false }, step: 0 });
        }
        JobKind::Update { .. } if !slots_touched => {
            // A staged module changed since it was verified: drop the update and keep the
            // installed modules.
            st.job = None;
            drop_staged(st);
        }
        JobKind::Update { keep_rollback: true } => {
            // Part of the update is in place: restore what it replaced from the rollback
            // copies step 0 made.
            let (plan, _) = backup_plan(profile, st);
            st.rollback = [None; MAX_SLOTS];
            for (b, slot) in plan.iter().flatten() {
                st.rollback[*slot] = Some(*b);
            }
            drop_staged(st);
            st.job = Some(Job { kind: JobKind::Rollback, step: 0 });
        }
        JobKind::Update { keep_rollback: false } => return false,
        JobKind::Rollback => {
            // A rollback copy changed: restore the factory image instead, or disable the
            // application. The slots the rollback already restored are recorded as such;
            // the others keep what they hold.
            let (steps, n) = job_steps(profile, st, JobKind::Rollback);
            let done = if started { failed_step } else { 0 };
            for c in steps.iter().take(n.min(done)).flatten().flat_map(|step| step.copies.iter().flatten()) {
                let slot =
                    profile.slots.iter().position(|d| d.region.dev == c.to.dev && d.region.offset == c.to.offset);
                if let Some(slot) = slot {
                    st.installed[slot] = st.rollback[slot].map(|b| b.module);
                }
            }
            st.job = None;
            st.rollback = [None; MAX_SLOTS];
            st.boot = BootState::Testing { origin: Origin::Rollback, attempts: 0, power_cycles: 0 };
            fail(profile, st, UpdateResult::RolledBackInvalid);
        }
        JobKind::FactoryRestore => {
            // The factory image no longer verifies: it is forgotten. A restore on request
            // leaves the application running; a restore as the last fallback disables it.
            st.job = None;
            st.factory = None;
            if slots_touched || st.last_result != UpdateResult::FactoryRestoredOnRequest {
                st.boot = BootState::Disabled(DisableReason::FactoryFailed);
            }
            st.last_result = UpdateResult::VerifyFailed;
        }
    }
    true
}

/// Runs the job recorded in the state from its next step, then applies its effect.
fn run_job<S: Storage>(
    s: &mut S,
    profile: &Profile,
    stored: &mut Stored,
    ev: &mut BootEvents,
) -> Result<(), BootError> {
    let Some(job) = stored.state.job else { return Ok(()) };
    let (steps, n) = job_steps(profile, &stored.state, job.kind);
    if job.step == 0 {
        // Every source is checked before the job's first erase, so that a bad one leaves
        // every slot as it was.
        for (i, step) in steps.iter().enumerate().take(n) {
            if let Some(step) = step {
                if !sources_verify(s, step)? {
                    abandon(profile, &mut stored.state, job, i, false);
                    stored.save(s, profile)?;
                    return Ok(());
                }
            }
        }
    }
    for (i, step) in steps.iter().enumerate().take(n).skip(job.step as usize) {
        if let Some(step) = step {
            if run_step(s, profile, step)? == StepOutcome::BadSource {
                if !abandon(profile, &mut stored.state, job, i, true) {
                    return Err(BootError::CopyVerifyFailed);
                }
                stored.save(s, profile)?;
                return Ok(());
            }
        }
        stored.state.job = Some(Job { kind: job.kind, step: i as u8 + 1 });
        if i + 1 < n {
            stored.save(s, profile)?;
        }
    }
    let st = &mut stored.state;
    match job.kind {
        JobKind::Update { keep_rollback } => {
            let (plan, _) = backup_plan(profile, st);
            st.rollback = [None; MAX_SLOTS];
            if keep_rollback {
                for (b, slot) in plan.iter().flatten() {
                    st.rollback[*slot] = Some(*b);
                }
            }
            let staged = st.staged;
            for m in staged.iter().take(st.staged_count as usize).flatten() {
                st.installed[m.slot as usize] = Some(m.module);
            }
            st.security_counter = st.security_counter.max(st.update_counter);
            st.phase = UpdatePhase::Idle;
            st.staged = [None; MAX_UPDATE_MODULES];
            st.staged_count = 0;
            st.boot = BootState::Testing { origin: Origin::Update, attempts: 0, power_cycles: 0 };
            st.last_result = UpdateResult::Installed;
            ev.installed_update = true;
        }
        JobKind::Rollback => {
            let rollback = st.rollback;
            for (slot, b) in rollback.iter().enumerate() {
                if let Some(b) = b {
                    st.installed[slot] = Some(b.module);
                }
            }
            st.rollback = [None; MAX_SLOTS];
            st.boot = BootState::Testing { origin: Origin::Rollback, attempts: 0, power_cycles: 0 };
            ev.rolled_back = true;
        }
        JobKind::FactoryRestore => {
            if let Some(app) = profile.app_slot() {
                st.installed[app] = st.factory;
            }
            st.rollback = [None; MAX_SLOTS];
            st.boot = BootState::Testing { origin: Origin::Factory, attempts: 0, power_cycles: 0 };
            ev.factory_restored = true;
        }
    }
    st.job = None;
    stored.save(s, profile)?;
    Ok(())
}

/// The application failed (not confirmed in time, repeated faults, or invalid): pick the
/// next fallback and record it as a job, or disable the application.
fn fail(profile: &Profile, st: &mut DeviceState, result: UpdateResult) {
    let origin = match st.boot {
        BootState::Testing { origin, .. } => origin,
        _ => Origin::Update,
    };
    let has_rollback = st.rollback.iter().any(Option::is_some);
    let app_is_factory = profile.app_slot().and_then(|a| st.installed[a]).zip(st.factory).is_some_and(|(a, f)| a == f);
    if origin == Origin::Update && has_rollback {
        st.job = Some(Job { kind: JobKind::Rollback, step: 0 });
        st.last_result = result;
    } else if origin != Origin::Factory && st.factory.is_some() && !app_is_factory {
        st.job = Some(Job { kind: JobKind::FactoryRestore, step: 0 });
        st.last_result = UpdateResult::FactoryRestored;
    } else {
        st.boot = BootState::Disabled(if st.factory.is_some() {
            DisableReason::FactoryFailed
        } else {
            DisableReason::NoFallback
        });
    }
}

/// Whether module `dep` is satisfied by what is installed.
fn satisfied(profile: &Profile, st: &DeviceState, dep: &Dependency) -> bool {
    if dep.function == ModuleFunction::None {
        return true;
    }
    profile
        .slot_for(dep.function, dep.index)
        .and_then(|slot| st.installed[slot])
        .is_some_and(|m| dep.is_satisfied_by(m.function, m.index, m.version))
}

/// Verifies slot `slot` against its installed record.
pub fn slot_is_valid<S: Storage>(
    s: &mut S,
    profile: &Profile,
    st: &DeviceState,
    slot: usize,
) -> Result<bool, FlashError> {
    let (Some(m), Some(def)) = (st.installed.get(slot).copied().flatten(), profile.slots.get(slot)) else {
        return Ok(false);
    };
    if m.size > def.region.size {
        return Ok(false);
    }
    Ok(storage::hash(s, Loc { dev: def.region.dev, offset: def.region.offset }, m.size)? == m.sha256)
}

/// Whether the factory image in its own region still hashes to what the state records.
fn factory_is_valid<S: Storage>(s: &mut S, profile: &Profile, st: &DeviceState) -> Result<bool, FlashError> {
    let Some(f) = st.factory else { return Ok(false) };
    if f.size > profile.factory.size {
        return Ok(false);
    }
    let at = Loc { dev: profile.factory.dev, offset: profile.factory.offset };
    Ok(storage::hash(s, at, f.size)? == f.sha256)
}

/// [`boot`] with the reset cause and watchdog wired to a [`Platform`].
pub fn boot_platform<S: Storage, P: Platform>(
    s: &mut S,
    profile: &Profile,
    platform: &mut P,
) -> Result<BootDecision, BootError> {
    let decision = boot(s, profile, platform.reset_cause())?;
    if let Some(ms) = decision.watchdog_ms {
        platform.start_watchdog(ms);
    }
    Ok(decision)
}

/// Runs the boot flow (see the module docs). A fuzz entry point: any flash contents
/// yield a decision or an error, never a panic.
pub fn boot<S: Storage>(s: &mut S, profile: &Profile, cause: ResetCause) -> Result<BootDecision, BootError> {
    // Every index into the state's per-slot tables relies on the profile being consistent.
    profile.check().map_err(|_| BootError::BadProfile)?;
    let mut stored = match state::load(s, profile) {
        Ok(stored) => stored,
        Err(LoadError::NoState | LoadError::WrongLayout) => return Err(BootError::NoState),
        Err(LoadError::Flash(e)) => return Err(BootError::Flash(e)),
    };
    // An erase the agent journaled and a reset interrupted is finished before anything
    // reads the range: cells a cut erase left may read erased and still drift.
    stored.finish_erase(s, profile)?;
    // After a power loss the newest record may be the one whose program the loss cut at
    // its very end: it reads right now and may drift later, which would bring back the
    // state before it. Writing the state again (a program, rarely an erase: the record is
    // a log) makes a record written with the power on the newest.
    if cause == ResetCause::PowerOn {
        stored.save(s, profile)?;
    }
    let mut ev = BootEvents::default();
    let mut counted = false;
    let mut factory_retried = false;
    // Each pass either returns or records a job that moves the state forward; six passes
    // cover update → rollback → factory → disabled with room to spare.
    for pass in 0..8 {
        if stored.state.job.is_some() {
            ev.resumed_job |= pass == 0;
            run_job(s, profile, &mut stored, &mut ev)?;
            continue;
        }
        let st = &mut stored.state;
        if st.factory_requested {
            st.factory_requested = false;
            if st.factory.is_some() {
                st.job = Some(Job { kind: JobKind::FactoryRestore, step: 0 });
                st.last_result = UpdateResult::FactoryRestoredOnRequest;
            }
            stored.save(s, profile)?;
            continue;
        }
        if st.phase == UpdatePhase::Staged {
            let keep = backup_plan(profile, st).0.iter().flatten().count()
                == st.staged().filter(|m| st.installed[m.slot as usize].is_some()).count();
            st.job = Some(Job { kind: JobKind::Update { keep_rollback: keep }, step: 0 });
            stored.save(s, profile)?;
            continue;
        }
        let app = profile.app_slot();
        // System modules must be intact and consistent; the application is judged apart.
        for slot in 0..profile.slots.len() {
            if Some(slot) == app || stored.state.installed[slot].is_none() {
                continue;
            }
            if !slot_is_valid(s, profile, &stored.state, slot)? {
                return Err(BootError::NoBootableSystem);
            }
            let m = stored.state.installed[slot].ok_or(BootError::NoBootableSystem)?;
            if !m.dependencies.iter().flatten().all(|d| satisfied(profile, &stored.state, d)) {
                return Err(BootError::NoBootableSystem);
            }
        }
        if stored.state.safe_mode_requested {
            // One-shot: the request is cleared before safe mode starts, so a reset
            // returns to the application.
            stored.state.safe_mode_requested = false;
            stored.save(s, profile)?;
            return Ok(safe(SafeModeReason::Requested, ev));
        }
        if let BootState::Disabled(reason) = stored.state.boot {
            return Ok(safe(SafeModeReason::Disabled(reason), ev));
        }
        let Some(app) = app else { return Ok(safe(SafeModeReason::NoApplication, ev)) };
        let Some(app_module) = stored.state.installed[app] else {
            let st = &mut stored.state;
            if st.factory.is_some() {
                st.job = Some(Job { kind: JobKind::FactoryRestore, step: 0 });
                st.last_result = UpdateResult::FactoryRestored;
                stored.save(s, profile)?;
                continue;
            }
            return Ok(safe(SafeModeReason::NoApplication, ev));
        };
        if !slot_is_valid(s, profile, &stored.state, app)? {
            // The running application is the factory copy and its slot no longer verifies
            // (flash drifted, not the image misbehaving): copy the factory image again, once
            // per boot, if the factory image itself still verifies. A second failure in the
            // same boot disables the application as before.
            let st = &stored.state;
            let app_is_factory = st.installed[app].zip(st.factory).is_some_and(|(a, f)| a == f);
            if app_is_factory && !factory_retried && factory_is_valid(s, profile, st)? {
                factory_retried = true;
                let st = &mut stored.state;
                st.job = Some(Job { kind: JobKind::FactoryRestore, step: 0 });
                st.last_result = UpdateResult::FactoryRestored;
                stored.save(s, profile)?;
                continue;
            }
            fail(profile, &mut stored.state, UpdateResult::RolledBackInvalid);
            stored.save(s, profile)?;
            continue;
        }
        if let Some(dep) = app_module.dependencies.iter().flatten().find(|d| !satisfied(profile, &stored.state, d)) {
            // Safe mode does not run the application, so it does not count as a test boot.
            return Ok(safe(SafeModeReason::DependencyUnmet(*dep), ev));
        }
        let st = &mut stored.state;
        match st.boot {
            BootState::Testing { origin, attempts, power_cycles } if !counted => {
                counted = true;
                // A power-on reset (a cut, a brown-out) is not the application's doing:
                // it counts against its own, higher limit, so power cuts between a test
                // boot's count and its confirmation cannot fail a good application.
                let power_on = cause == ResetCause::PowerOn;
                if attempts >= profile.boot.max_test_boots || power_cycles >= state::MAX_TEST_POWER_CYCLES {
                    fail(profile, st, UpdateResult::RolledBackUnconfirmed);
                    stored.save(s, profile)?;
                    continue;
                }
                st.boot = if power_on {
                    BootState::Testing { origin, attempts, power_cycles: power_cycles + 1 }
                } else {
                    BootState::Testing { origin, attempts: attempts + 1, power_cycles }
                };
                stored.save(s, profile)?;
            }
            BootState::Confirmed { fault_resets } if !counted => {
                counted = true;
                let faulted = matches!(cause, ResetCause::Panic | ResetCause::Watchdog);
                if faulted && fault_resets + 1 >= profile.boot.max_fault_resets {
                    fail(profile, st, UpdateResult::RolledBackFaults);
                    stored.save(s, profile)?;
                    continue;
                }
                let next = if faulted { fault_resets + 1 } else { 0 };
                if next != fault_resets {
                    st.boot = BootState::Confirmed { fault_resets: next };
                    stored.save(s, profile)?;
                }
            }
            _ => {}
        }
        let test = matches!(stored.state.boot, BootState::Testing { .. });
        return Ok(BootDecision {
            run: Run::Application { test },
            watchdog_ms: test.then_some(profile.boot.test_watchdog_ms),
            events: ev,
        });
    }
    Err(BootError::NoBootableSystem)
}

fn safe(reason: SafeModeReason, events: BootEvents) -> BootDecision {
    BootDecision { run: Run::SafeMode(reason), watchdog_ms: None, events }
}
