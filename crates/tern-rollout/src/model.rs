//! The records the engine reads and writes: facts about devices (in), members and the
//! rollout (persisted by the server), events (out).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::Spec;

/// What the server knows about a device's relation to the rollout now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// It may be updated.
    Eligible,
    /// Excluded: locked to a release.
    Pinned {
        /// The release it is locked to.
        release: u32,
    },
    /// Excluded: a development device.
    Development,
    /// No longer in the rollout's product or group.
    Removed,
}

/// The device's update attempt for this rollout, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptView {
    /// Offered, downloading, staged, rebooting or testing.
    Running,
    /// The device confirmed the update at `at` (ms).
    Confirmed {
        /// When it confirmed.
        at: u64,
    },
    /// Rolled back, rejected, failed its test boot …
    Failed {
        /// Why, for the operator.
        reason: String,
    },
    /// The device said "not now". Never a failure.
    Busy,
    /// The server (or an operator) cancelled it.
    Cancelled,
}

/// A device's cellular data budget, as it applies to this update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// The update fits (or the device has no budget).
    Ok,
    /// The update needs more bytes than are left this month.
    Exceeded {
        /// Bytes the update would send.
        needed: u64,
        /// Bytes left in the budget.
        left: u64,
    },
    /// Over budget, but the operator approved this update.
    Approved,
}

/// One device of the rollout's product or group, as the server sees it at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Device id.
    pub device: String,
    /// Whether it may be updated.
    pub standing: Standing,
    /// Connected now, and described itself since it registered (the server knows what
    /// it runs, so a plan can be made).
    pub online: bool,
    /// Its last description shows every module of the release.
    pub runs_release: bool,
    /// One of its maintenance windows is open now, or it has none ([`crate::in_window`]).
    pub in_window: bool,
    /// Its data budget for this update.
    pub budget: Budget,
    /// The member's current attempt, if any.
    pub attempt: Option<AttemptView>,
    /// It described a rollback or safe mode after confirming the update.
    pub rolled_back_since_confirm: bool,
}

/// Why a due member is held back, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Not connected.
    Offline,
    /// Outside its maintenance windows.
    Window,
    /// The update would exceed its data budget (`budget_exceeded`).
    Budget,
    /// It said busy; backing off until `next_try_at`.
    Busy,
    /// `max_concurrent` devices are updating.
    Capacity,
    /// `rate_per_minute` updates started in the last minute.
    Rate,
    /// Ready, but the rollout is paused or aborted (added to the contract).
    Halted,
}

impl WaitReason {
    /// The reason as one snake_case word, as status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Offline => "offline",
            WaitReason::Window => "window",
            WaitReason::Budget => "budget_exceeded",
            WaitReason::Busy => "busy",
            WaitReason::Capacity => "capacity",
            WaitReason::Rate => "rate",
            WaitReason::Halted => "halted",
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a member is left out of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Locked to a release.
    Pinned {
        /// The release it is locked to.
        release: u32,
    },
    /// A development device.
    Development,
    /// No longer in the product or group (or the server sent no facts for it).
    Removed,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Pinned { release } => write!(f, "pinned to release {release}"),
            Exclusion::Development => f.write_str("development device"),
            Exclusion::Removed => f.write_str("removed from the product or group"),
        }
    }
}

/// Where a member is in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Its phase has not opened.
    Pending,
    /// Due, held back.
    Waiting(WaitReason),
    /// An attempt is running.
    Updating,
    /// Confirmed at `since`; healthy if still fine after `soak_ms`.
    Soaking,
    /// Confirmed and still running the release, online and not rolled back after the soak.
    Healthy,
    /// It ran the release when it became due: cost nothing.
    AlreadyThere,
    /// The update failed, or the device rolled back during the soak (`reason`).
    Failed,
    /// It never got the update within `expiry_ms` of becoming due.
    Expired,
    /// Left out of the rollout.
    Excluded(Exclusion),
}

impl MemberState {
    /// Final states: Healthy, AlreadyThere, Failed, Expired and Excluded. A phase is
    /// complete when all its members are in one.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            MemberState::Healthy
                | MemberState::AlreadyThere
                | MemberState::Failed
                | MemberState::Expired
                | MemberState::Excluded(_)
        )
    }

    /// Updating or soaking: the update is on the device and its outcome is pending.
    pub fn is_in_flight(&self) -> bool {
        matches!(self, MemberState::Updating | MemberState::Soaking)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberState::Pending => f.write_str("pending"),
            MemberState::Waiting(reason) => write!(f, "waiting ({reason})"),
            MemberState::Updating => f.write_str("updating"),
            MemberState::Soaking => f.write_str("soaking"),
            MemberState::Healthy => f.write_str("healthy"),
            MemberState::AlreadyThere => f.write_str("already there"),
            MemberState::Failed => f.write_str("failed"),
            MemberState::Expired => f.write_str("expired"),
            MemberState::Excluded(why) => write!(f, "excluded ({why})"),
        }
    }
}

/// One device's place in a rollout, persisted by the server per (rollout, device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Device id.
    pub device: String,
    /// Index into the spec's phases.
    pub phase: u32,
    /// Where it is.
    pub state: MemberState,
    /// When it entered `state` (ms).
    pub since: u64,
    /// When its phase opened for it (expiry counts from here).
    pub due_since: Option<u64>,
    /// Busy back-offs so far.
    pub tries: u32,
    /// Not started again before this (after a busy answer).
    pub next_try_at: u64,
    /// Failure or wait reason, for status.
    pub reason: Option<String>,
    /// When its latest update was started (the rate limit counts these; added to the
    /// contract).
    #[serde(default)]
    pub started_at: Option<u64>,
}

impl Member {
    /// A new member of `phase`, pending since `now`.
    pub fn new(device: &str, phase: u32, now: u64) -> Member {
        Member {
            device: device.to_string(),
            phase,
            state: MemberState::Pending,
            since: now,
            due_since: None,
            tries: 0,
            next_try_at: 0,
            reason: None,
            started_at: None,
        }
    }
}

/// Whether the rollout moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Phases open and devices start as the rules allow.
    Running,
    /// No starts; running attempts continue and their outcomes are recorded.
    Paused {
        /// Who or what paused it.
        reason: PauseReason,
    },
    /// Every phase completed; late joiners still converge.
    Completed,
    /// Stopped for good: no more starts; outcomes of running attempts are recorded.
    Aborted,
}

/// Why a rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// Too many members failed.
    FailureThreshold {
        /// Failed members when it paused.
        failed: u32,
        /// Finished (healthy or failed) members when it paused.
        finished: u32,
        /// The threshold it crossed.
        threshold_percent: u8,
    },
    /// An operator paused it.
    Operator {
        /// Who.
        by: String,
    },
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::FailureThreshold { failed, finished, threshold_percent } => write!(
                f,
                "failure threshold reached: {failed} of {finished} finished devices failed (threshold {threshold_percent}%)"
            ),
            PauseReason::Operator { by } => write!(f, "paused by {by}"),
        }
    }
}

/// The rollout record, persisted by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// What the operator asked for.
    pub spec: Spec,
    /// Whether it moves on.
    pub state: RolloutState,
    /// The highest phase opened so far (index into `spec.phases`).
    pub phase: u32,
    /// When it started (ms).
    pub started_at: u64,
    /// Failures an operator accepted by resuming after a threshold pause: the threshold
    /// pauses again only when a further member fails (added to the contract).
    #[serde(default)]
    pub accepted_failures: u32,
    /// While paused or aborted: when the engine first saw it so; expiry does not count
    /// paused time (added to the contract).
    #[serde(default)]
    pub paused_at: Option<u64>,
}

impl Rollout {
    /// A running rollout of `spec` starting at `now`, in its first phase.
    pub fn new(spec: Spec, now: u64) -> Rollout {
        Rollout { spec, state: RolloutState::Running, phase: 0, started_at: now, accepted_failures: 0, paused_at: None }
    }
}

/// Something the operator should hear about, in the order it happened within a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A phase opened.
    PhaseStarted {
        /// Phase index.
        phase: u32,
    },
    /// Every member of a phase reached a final state.
    PhaseCompleted {
        /// Phase index.
        phase: u32,
    },
    /// The rollout paused itself.
    Paused {
        /// Why.
        reason: PauseReason,
        /// The failed members and their reasons, by device id.
        failing: Vec<(String, String)>,
    },
    /// The last phase completed.
    Completed,
    /// A member failed.
    MemberFailed {
        /// Device id.
        device: String,
        /// Why.
        reason: String,
    },
    /// A member expired without getting the update.
    MemberExpired {
        /// Device id.
        device: String,
    },
    /// A member waits because the update exceeds its data budget (once per wait).
    WaitingBudget {
        /// Device id.
        device: String,
        /// Bytes the update would send.
        needed: u64,
        /// Bytes left in the budget.
        left: u64,
    },
}

/// The engine's decisions for one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The new rollout record.
    pub rollout: Rollout,
    /// Every member whose record changed, new ones included, by device id. Devices in
    /// `start` are here already in `Updating`.
    pub members: Vec<Member>,
    /// Devices to start an update for now, by phase and device id.
    pub start: Vec<String>,
    /// What happened, in order.
    pub events: Vec<Event>,
}
