//! What `tern rollout status` shows: counts per phase and the failure rate.

use serde::{Deserialize, Serialize};

use crate::engine::{failing, failure_counts};
use crate::model::{Member, MemberState, Rollout, RolloutState, WaitReason};
use crate::spec::PhaseSize;

/// Members by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All members counted here.
    pub total: u32,
    /// Phase not open yet.
    pub pending: u32,
    /// Due and held back, by reason.
    pub waiting: WaitingCounts,
    /// An attempt is running.
    pub updating: u32,
    /// Confirmed, soaking.
    pub soaking: u32,
    /// Healthy after the soak.
    pub healthy: u32,
    /// Ran the release already.
    pub already_there: u32,
    /// Failed.
    pub failed: u32,
    /// Expired.
    pub expired: u32,
    /// Excluded (pinned, development, removed).
    pub excluded: u32,
}

/// Waiting members by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingCounts {
    /// Not connected.
    pub offline: u32,
    /// Outside their maintenance windows.
    pub window: u32,
    /// Over their data budget (`budget_exceeded`).
    pub budget: u32,
    /// Backing off after a busy answer.
    pub busy: u32,
    /// Held by `max_concurrent`.
    pub capacity: u32,
    /// Held by `rate_per_minute`.
    pub rate: u32,
    /// Ready, but the rollout is paused or aborted.
    pub halted: u32,
}

impl WaitingCounts {
    /// All waiting members.
    pub fn total(&self) -> u32 {
        self.offline + self.window + self.budget + self.busy + self.capacity + self.rate + self.halted
    }
}

impl Counts {
    fn add(&mut self, state: &MemberState) {
        self.total += 1;
        let slot = match state {
            MemberState::Pending => &mut self.pending,
            MemberState::Waiting(reason) => match reason {
                WaitReason::Offline => &mut self.waiting.offline,
                WaitReason::Window => &mut self.waiting.window,
                WaitReason::Budget => &mut self.waiting.budget,
                WaitReason::Busy => &mut self.waiting.busy,
                WaitReason::Capacity => &mut self.waiting.capacity,
                WaitReason::Rate => &mut self.waiting.rate,
                WaitReason::Halted => &mut self.waiting.halted,
            },
            MemberState::Updating => &mut self.updating,
            MemberState::Soaking => &mut self.soaking,
            MemberState::Healthy => &mut self.healthy,
            MemberState::AlreadyThere => &mut self.already_there,
            MemberState::Failed => &mut self.failed,
            MemberState::Expired => &mut self.expired,
            MemberState::Excluded(_) => &mut self.excluded,
        };
        *slot += 1;
    }
}

/// One phase of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// Phase index.
    pub phase: u32,
    /// Its cumulative size as the operator asked for it.
    pub size: PhaseSize,
    /// It has opened.
    pub open: bool,
    /// It has opened and every member of it and the phases before is final.
    pub completed: bool,
    /// Its members by state.
    pub counts: Counts,
}

/// A rollout at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Whether it moves on.
    pub state: RolloutState,
    /// The highest open phase.
    pub phase: u32,
    /// Per phase.
    pub phases: Vec<PhaseSummary>,
    /// Over all members.
    pub total: Counts,
    /// Failed members (the threshold's numerator).
    pub failed: u32,
    /// Healthy or failed members (the threshold's denominator).
    pub finished: u32,
    /// `failed * 100 / finished`, rounded down; `None` before anything finished.
    pub failure_rate_percent: Option<u32>,
    /// The spec's threshold.
    pub threshold_percent: u8,
    /// The spec's minimum of finished members before the threshold applies.
    pub min_finished: u32,
    /// Failures accepted by resuming after a threshold pause.
    pub accepted_failures: u32,
    /// Failed members and their reasons, by device id.
    pub failing: Vec<(String, String)>,
}

/// Summarizes a rollout and its members for status.
pub fn summary(rollout: &Rollout, members: &[Member]) -> Summary {
    let last = rollout.spec.phases.len().saturating_sub(1);
    let mut phases: Vec<PhaseSummary> = rollout
        .spec
        .phases
        .iter()
        .enumerate()
        .map(|(i, size)| PhaseSummary {
            phase: i as u32,
            size: *size,
            open: i as u32 <= rollout.phase,
            completed: false,
            counts: Counts::default(),
        })
        .collect();
    let mut total = Counts::default();
    for m in members {
        total.add(&m.state);
        if let Some(phase) = phases.get_mut((m.phase as usize).min(last)) {
            phase.counts.add(&m.state);
        }
    }
    let mut done_so_far = true;
    for phase in &mut phases {
        let c = &phase.counts;
        done_so_far &= c.pending + c.waiting.total() + c.updating + c.soaking == 0;
        phase.completed = phase.open && done_so_far;
    }
    let (failed, finished) = failure_counts(members.iter());
    Summary {
        state: rollout.state.clone(),
        phase: rollout.phase,
        phases,
        total,
        failed,
        finished,
        failure_rate_percent: (finished > 0).then(|| (u64::from(failed) * 100 / u64::from(finished)) as u32),
        threshold_percent: rollout.spec.failure_threshold_percent,
        min_finished: rollout.spec.min_finished,
        accepted_failures: rollout.accepted_failures,
        failing: failing(members.iter()),
    }
}
