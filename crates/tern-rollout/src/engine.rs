//! The step function and the operator's transitions.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{
    AttemptView, Budget, DeviceFacts, Event, Exclusion, Member, MemberState, PauseReason, Rollout, RolloutState,
    Standing, Step, WaitReason,
};

/// The rate limit counts starts within this rolling window.
const RATE_WINDOW_MS: u64 = 60_000;
/// Busy back-off doubles up to 2^4 = 16 times the first one.
const MAX_BACKOFF_DOUBLINGS: u32 = 4;

/// A stable 64-bit FNV-1a hash of a device id. It orders devices for phase assignment:
/// the same on every platform and Rust version (unlike `DefaultHasher`), and it spreads
/// the canary across the id space instead of taking the alphabetically first devices.
pub fn spread(device: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn exclusion(standing: &Standing) -> Option<Exclusion> {
    match standing {
        Standing::Eligible => None,
        Standing::Pinned { release } => Some(Exclusion::Pinned { release: *release }),
        Standing::Development => Some(Exclusion::Development),
        Standing::Removed => Some(Exclusion::Removed),
    }
}

/// Members by device id; ids borrow from the step's inputs.
type Members<'a> = BTreeMap<&'a str, Member>;
/// Facts by device id.
type Facts<'a> = BTreeMap<&'a str, &'a DeviceFacts>;

/// Every member of phases `0..=phase` is in a final state.
fn phases_done(members: &Members<'_>, phase: u32) -> bool {
    members.values().filter(|m| m.phase <= phase).all(|m| m.state.is_final())
}

/// Moves `m` to `state` since `now` with `reason`, leaving the record untouched (and
/// so unreported) when nothing changes.
fn enter(m: &mut Member, state: MemberState, reason: Option<String>, now: u64) {
    if m.state != state {
        m.state = state;
        m.since = now;
    }
    m.reason = reason;
}

fn fail(m: &mut Member, reason: String, now: u64, events: &mut Vec<Event>) {
    events.push(Event::MemberFailed { device: m.device.clone(), reason: reason.clone() });
    enter(m, MemberState::Failed, Some(reason), now);
}

/// Records the outcome of an updating member's attempt.
fn record_attempt(m: &mut Member, attempt: Option<&AttemptView>, rollout: &Rollout, now: u64, events: &mut Vec<Event>) {
    match attempt {
        // The server lost the attempt (or never created it): start it again. The
        // server keeps at most one unfinished attempt per device, so this cannot
        // update a device twice.
        None => enter(m, MemberState::Waiting(WaitReason::Halted), Some("attempt lost".into()), now),
        Some(AttemptView::Running) => {}
        Some(AttemptView::Confirmed { at }) => {
            m.state = MemberState::Soaking;
            m.since = *at;
            m.reason = None;
        }
        Some(AttemptView::Failed { reason }) => fail(m, reason.clone(), now, events),
        Some(AttemptView::Cancelled) => fail(m, "cancelled".into(), now, events),
        Some(AttemptView::Busy) => {
            let factor = 1u64 << m.tries.min(MAX_BACKOFF_DOUBLINGS);
            m.next_try_at = now.saturating_add(rollout.spec.busy_backoff_ms.saturating_mul(factor));
            m.tries += 1;
            let reason = format!("busy; tries again at {}", m.next_try_at);
            enter(m, MemberState::Waiting(WaitReason::Busy), Some(reason), now);
        }
    }
}

/// Judges a soaking member: a rollback fails it at once; after the soak time it is
/// healthy if it is online and still runs the release. An offline device stays soaking
/// until it is seen again: health is judged on what the device shows, never assumed.
fn judge_soak(m: &mut Member, facts: &DeviceFacts, rollout: &Rollout, now: u64, events: &mut Vec<Event>) {
    if facts.rolled_back_since_confirm {
        fail(m, "rolled back after confirmation".into(), now, events);
    } else if now.saturating_sub(m.since) >= rollout.spec.soak_ms && facts.online {
        if facts.runs_release {
            enter(m, MemberState::Healthy, None, now);
        } else {
            fail(m, "no longer runs the release".into(), now, events);
        }
    }
}

/// Places devices without a member. At the first step the eligible ones are ordered by
/// [`spread`] (then id) and cut into phases by the spec's cumulative sizes; later,
/// every newcomer joins `join_phase`. Excluded ones are sorted out by the caller.
fn admit<'a>(rollout: &Rollout, all: &mut Members<'a>, facts: &Facts<'a>, first_step: bool, join_phase: u32, now: u64) {
    let mut newcomers: Vec<&DeviceFacts> =
        facts.values().copied().filter(|f| !all.contains_key(f.device.as_str())).collect();
    if !first_step {
        for f in newcomers {
            all.insert(&f.device, Member::new(&f.device, join_phase, now));
        }
        return;
    }
    newcomers.sort_by_cached_key(|f| (spread(&f.device), f.device.as_str()));
    let (eligible, excluded): (Vec<&DeviceFacts>, Vec<&DeviceFacts>) =
        newcomers.into_iter().partition(|f| f.standing == Standing::Eligible);
    let sizes = rollout.spec.phase_sizes(u32::try_from(eligible.len()).unwrap_or(u32::MAX));
    let mut devices = eligible.into_iter();
    for (phase, size) in sizes.into_iter().enumerate() {
        for f in devices.by_ref().take(size as usize) {
            all.insert(&f.device, Member::new(&f.device, phase as u32, now));
        }
    }
    // Excluded devices sit in the last phase: should they become eligible later they
    // move to the phase open then, like any late joiner.
    for f in excluded {
        all.insert(&f.device, Member::new(&f.device, join_phase, now));
    }
}

/// Brings each member up to date with its device's facts: standing (exclusion and
/// re-admission), attempt outcomes and the soak.
fn reconcile(
    rollout: &Rollout,
    all: &mut Members<'_>,
    facts: &Facts<'_>,
    join_phase: u32,
    now: u64,
    events: &mut Vec<Event>,
) {
    for m in all.values_mut() {
        let f = facts.get(m.device.as_str()).copied();
        // No facts: the device left the product or group.
        let standing = f.map_or(Standing::Removed, |f| f.standing.clone());
        match &m.state {
            MemberState::Pending | MemberState::Waiting(_) => {
                if let Some(why) = exclusion(&standing) {
                    let reason = why.to_string();
                    enter(m, MemberState::Excluded(why), Some(reason), now);
                    continue;
                }
                // An attempt the member's record does not know of: the server created
                // it but its copy of the member was not saved. The attempt is the truth.
                // (A busy attempt is the one the member is backing off from.)
                if let Some(attempt) = f.and_then(|f| f.attempt.as_ref()) {
                    if *attempt != AttemptView::Busy {
                        enter(m, MemberState::Updating, None, now);
                    }
                }
            }
            MemberState::Excluded(current) => {
                match exclusion(&standing) {
                    None => {
                        *m = Member::new(&m.device, join_phase, now);
                    }
                    Some(why) if why != *current => {
                        let reason = why.to_string();
                        enter(m, MemberState::Excluded(why), Some(reason), now);
                    }
                    Some(_) => {}
                }
                continue;
            }
            _ => {}
        }
        let Some(f) = f else { continue };
        if m.state == MemberState::Updating {
            record_attempt(m, f.attempt.as_ref(), rollout, now, events);
        }
        if m.state == MemberState::Soaking {
            judge_soak(m, f, rollout, now, events);
        }
    }
}

/// Pauses a running rollout whose failures crossed the threshold (and are more than
/// the operator accepted by resuming).
fn check_threshold(r: &mut Rollout, all: &Members<'_>, now: u64, events: &mut Vec<Event>) {
    if r.state != RolloutState::Running {
        return;
    }
    let (failed, finished) = failure_counts(all.values());
    let threshold = u64::from(r.spec.failure_threshold_percent);
    if failed > r.accepted_failures
        && finished >= r.spec.min_finished
        && u64::from(failed) * 100 >= threshold * u64::from(finished)
    {
        let reason =
            PauseReason::FailureThreshold { failed, finished, threshold_percent: r.spec.failure_threshold_percent };
        r.state = RolloutState::Paused { reason: reason.clone() };
        r.paused_at = Some(now);
        events.push(Event::Paused { reason, failing: failing(all.values()) });
    }
}

/// (failed, finished) over members: finished is healthy or failed.
pub(crate) fn failure_counts<'a>(members: impl Iterator<Item = &'a Member>) -> (u32, u32) {
    let (mut failed, mut finished) = (0u32, 0u32);
    for m in members {
        match m.state {
            MemberState::Failed => {
                failed += 1;
                finished += 1;
            }
            MemberState::Healthy => finished += 1,
            _ => {}
        }
    }
    (failed, finished)
}

/// Failed members and their reasons, by device id.
pub(crate) fn failing<'a>(members: impl Iterator<Item = &'a Member>) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = members
        .filter(|m| m.state == MemberState::Failed)
        .map(|m| (m.device.clone(), m.reason.clone().unwrap_or_default()))
        .collect();
    list.sort();
    list
}

/// Opens phases whose predecessors completed, makes their members due, and settles
/// due members that need no update (already there) or waited too long (expired),
/// until nothing more changes — settling can complete a phase.
fn settle(r: &mut Rollout, all: &mut Members<'_>, facts: &Facts<'_>, now: u64, events: &mut Vec<Event>) {
    let last = last_phase(r);
    loop {
        let mut opened = false;
        while r.state == RolloutState::Running && phases_done(all, r.phase) {
            events.push(Event::PhaseCompleted { phase: r.phase });
            if r.phase == last {
                r.state = RolloutState::Completed;
                events.push(Event::Completed);
            } else {
                r.phase += 1;
                events.push(Event::PhaseStarted { phase: r.phase });
                opened = true;
            }
        }
        if r.state == RolloutState::Aborted {
            return;
        }
        let expiring = r.spec.expiry_ms > 0 && matches!(r.state, RolloutState::Running | RolloutState::Completed);
        let mut settled = false;
        for m in all.values_mut() {
            if m.phase > r.phase || !matches!(m.state, MemberState::Pending | MemberState::Waiting(_)) {
                continue;
            }
            let Some(f) = facts.get(m.device.as_str()) else { continue };
            let due_since = *m.due_since.get_or_insert(now);
            if f.runs_release {
                enter(m, MemberState::AlreadyThere, None, now);
                settled = true;
            } else if expiring && now.saturating_sub(due_since) > r.spec.expiry_ms {
                events.push(Event::MemberExpired { device: m.device.clone() });
                let reason = format!("not updated within {} ms of becoming due", r.spec.expiry_ms);
                enter(m, MemberState::Expired, Some(reason), now);
                settled = true;
            }
        }
        if !(opened || settled) {
            return;
        }
    }
}

/// Starts the due members that may start now, by phase and device id, and gives the
/// others the most specific reason they wait.
fn decide(r: &Rollout, all: &mut Members<'_>, facts: &Facts<'_>, now: u64, events: &mut Vec<Event>) -> Vec<String> {
    let mut start = Vec::new();
    if r.state == RolloutState::Aborted {
        return start;
    }
    let spec = &r.spec;
    let mut updating = all.values().filter(|m| m.state == MemberState::Updating).count() as u64;
    // The rate counts members started within the last minute; a member started again
    // within the minute (after a busy answer or a lost attempt) counts once, so that
    // the count is the same whenever it is taken.
    let recently = |m: &Member| m.started_at.is_some_and(|t| t <= now && now - t < RATE_WINDOW_MS);
    let mut recent = all.values().filter(|m| recently(m)).count() as u64;
    let mut due: Vec<(u32, &str)> = all
        .iter()
        .filter(|(_, m)| m.phase <= r.phase && matches!(m.state, MemberState::Pending | MemberState::Waiting(_)))
        .map(|(device, m)| (m.phase, *device))
        .collect();
    due.sort_unstable();
    for (_, device) in due {
        let (Some(m), Some(f)) = (all.get_mut(device), facts.get(device)) else { continue };
        let wait = if !f.online {
            Some((WaitReason::Offline, "offline".to_string()))
        } else if !f.in_window {
            Some((WaitReason::Window, "outside its maintenance windows".to_string()))
        } else if let Budget::Exceeded { needed, left } = f.budget {
            if m.state != MemberState::Waiting(WaitReason::Budget) {
                events.push(Event::WaitingBudget { device: device.to_string(), needed, left });
            }
            Some((WaitReason::Budget, format!("budget_exceeded: needs {needed} bytes, {left} left")))
        } else if now < m.next_try_at {
            Some((WaitReason::Busy, format!("busy; tries again at {}", m.next_try_at)))
        } else if matches!(r.state, RolloutState::Paused { .. }) {
            Some((WaitReason::Halted, "rollout paused".to_string()))
        } else if spec.max_concurrent > 0 && updating >= u64::from(spec.max_concurrent) {
            Some((WaitReason::Capacity, format!("{} devices updating at once", spec.max_concurrent)))
        } else if spec.rate_per_minute > 0 && recent >= u64::from(spec.rate_per_minute) {
            Some((WaitReason::Rate, format!("{} updates started in the last minute", spec.rate_per_minute)))
        } else {
            None
        };
        match wait {
            Some((reason, text)) => enter(m, MemberState::Waiting(reason), Some(text), now),
            None => {
                if !recently(m) {
                    recent += 1;
                }
                enter(m, MemberState::Updating, None, now);
                m.started_at = Some(now);
                updating += 1;
                start.push(device.to_string());
            }
        }
    }
    start
}

fn last_phase(r: &Rollout) -> u32 {
    u32::try_from(r.spec.phases.len().max(1) - 1).unwrap_or(u32::MAX)
}

/// One step of the rollout at `now`: the rollout record and its members as persisted,
/// and the facts about every device of the product or group. Deterministic: the same
/// inputs give the same step. See the crate documentation for the rules.
pub fn step(rollout: &Rollout, members: &[Member], facts: &[DeviceFacts], now: u64) -> Step {
    let mut r = rollout.clone();
    let mut events = Vec::new();
    let last = last_phase(&r);
    r.phase = r.phase.min(last);

    // Duplicates in either list: the first one counts.
    let mut by_device: Facts<'_> = BTreeMap::new();
    for f in facts {
        by_device.entry(f.device.as_str()).or_insert(f);
    }
    let mut before: BTreeMap<&str, &Member> = BTreeMap::new();
    for m in members {
        before.entry(m.device.as_str()).or_insert(m);
    }
    let mut all: Members<'_> = before.iter().map(|(device, m)| (*device, (*m).clone())).collect();
    for m in all.values_mut() {
        m.phase = m.phase.min(last);
    }

    // Expiry does not count time spent paused: on the first step after a resume, due
    // members' clocks move on by the pause (members that became due while paused start
    // counting now).
    match r.state {
        RolloutState::Paused { .. } | RolloutState::Aborted => {
            r.paused_at.get_or_insert(now);
        }
        RolloutState::Running | RolloutState::Completed => {
            if let Some(paused_at) = r.paused_at.take() {
                let pause = now.saturating_sub(paused_at);
                for m in all.values_mut() {
                    if matches!(m.state, MemberState::Pending | MemberState::Waiting(_)) {
                        if let Some(due) = m.due_since.as_mut() {
                            *due = if *due >= paused_at { now } else { due.saturating_add(pause) };
                        }
                    }
                }
            }
        }
    }

    let first_step = before.is_empty();
    if first_step && r.state == RolloutState::Running {
        events.push(Event::PhaseStarted { phase: r.phase });
    }
    // Late joiners (and re-admitted devices) join the current phase while it runs,
    // else the last phase: they converge without reopening anything.
    let join_phase = if first_step || phases_done(&all, r.phase) { last } else { r.phase };
    admit(&r, &mut all, &by_device, first_step, join_phase, now);
    reconcile(&r, &mut all, &by_device, join_phase, now, &mut events);
    check_threshold(&mut r, &all, now, &mut events);
    settle(&mut r, &mut all, &by_device, now, &mut events);
    let start = decide(&r, &mut all, &by_device, now, &mut events);

    let members = all.into_values().filter(|m| before.get(m.device.as_str()).is_none_or(|b| *b != m)).collect();
    Step { rollout: r, members, start, events }
}

/// Why an operator's pause, resume or abort was refused; the rollout is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionError {
    /// Pause: the rollout is not running.
    NotRunning,
    /// Resume: the rollout is not paused.
    NotPaused,
    /// Abort: the rollout was aborted already.
    AlreadyAborted,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransitionError::NotRunning => "the rollout is not running (paused, completed or aborted)",
            TransitionError::NotPaused => "the rollout is not paused",
            TransitionError::AlreadyAborted => "the rollout was aborted already",
        })
    }
}

impl std::error::Error for TransitionError {}

/// Pauses a running rollout on an operator's word: no more starts; running attempts
/// continue and their outcomes are recorded.
pub fn pause(rollout: &Rollout, by: &str) -> Result<Rollout, TransitionError> {
    if rollout.state != RolloutState::Running {
        return Err(TransitionError::NotRunning);
    }
    let mut r = rollout.clone();
    r.state = RolloutState::Paused { reason: PauseReason::Operator { by: by.to_string() } };
    Ok(r)
}

/// Resumes a paused rollout. Counting goes on over the whole rollout; after a threshold
/// pause the failures so far count as accepted, so the rollout pauses again only when
/// one more member fails while the rate is still at or over the threshold.
pub fn resume(rollout: &Rollout) -> Result<Rollout, TransitionError> {
    let RolloutState::Paused { reason } = &rollout.state else {
        return Err(TransitionError::NotPaused);
    };
    let mut r = rollout.clone();
    if let PauseReason::FailureThreshold { failed, .. } = reason {
        r.accepted_failures = r.accepted_failures.max(*failed);
    }
    r.state = RolloutState::Running;
    Ok(r)
}

/// Stops a rollout for good: no more starts; members not started stay as they are;
/// outcomes of running attempts are still recorded.
pub fn abort(rollout: &Rollout) -> Result<Rollout, TransitionError> {
    if rollout.state == RolloutState::Aborted {
        return Err(TransitionError::AlreadyAborted);
    }
    let mut r = rollout.clone();
    r.state = RolloutState::Aborted;
    Ok(r)
}
