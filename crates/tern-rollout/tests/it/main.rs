//! Integration tests of the rollout engine, one binary: tables of cases per area.

mod engine;
mod fleet;
mod spec;
mod summary;
mod window;

use tern_rollout::{
    AttemptView, Budget, DeviceFacts, Member, MemberState, PhaseSize, Rollout, RolloutState, Spec, Standing, WaitReason,
};

/// A device that may update now: eligible, online, in its window, within budget, not
/// yet running the release, no attempt.
pub fn dev(id: &str) -> DeviceFacts {
    DeviceFacts {
        device: id.to_string(),
        standing: Standing::Eligible,
        online: true,
        runs_release: false,
        in_window: true,
        budget: Budget::Ok,
        attempt: None,
        rolled_back_since_confirm: false,
    }
}

/// Builder methods on facts.
pub trait FactsExt {
    /// Not connected.
    fn offline(self) -> Self;
    /// Runs the release.
    fn runs(self) -> Self;
    /// Outside its windows.
    fn outside(self) -> Self;
    /// Over budget.
    fn over_budget(self, needed: u64, left: u64) -> Self;
    /// Over budget, approved.
    fn approved(self) -> Self;
    /// With this standing.
    fn standing(self, standing: Standing) -> Self;
    /// With this attempt.
    fn attempt(self, attempt: AttemptView) -> Self;
    /// Rolled back after confirming.
    fn rolled_back(self) -> Self;
}

impl FactsExt for DeviceFacts {
    fn offline(mut self) -> Self {
        self.online = false;
        self
    }
    fn runs(mut self) -> Self {
        self.runs_release = true;
        self
    }
    fn outside(mut self) -> Self {
        self.in_window = false;
        self
    }
    fn over_budget(mut self, needed: u64, left: u64) -> Self {
        self.budget = Budget::Exceeded { needed, left };
        self
    }
    fn approved(mut self) -> Self {
        self.budget = Budget::Approved;
        self
    }
    fn standing(mut self, standing: Standing) -> Self {
        self.standing = standing;
        self
    }
    fn attempt(mut self, attempt: AttemptView) -> Self {
        self.attempt = Some(attempt);
        self
    }
    fn rolled_back(mut self) -> Self {
        self.rolled_back_since_confirm = true;
        self
    }
}

/// A member of `phase` in `state` since 0; due since 0 unless pending.
pub fn member(id: &str, phase: u32, state: MemberState) -> Member {
    let mut m = Member::new(id, phase, 0);
    if state != MemberState::Pending {
        m.due_since = Some(0);
    }
    m.state = state;
    m
}

/// Builder methods on members.
pub trait MemberExt {
    /// In its state since `t`.
    fn since(self, t: u64) -> Self;
    /// Due since `t`.
    fn due(self, t: u64) -> Self;
    /// Started at `t`.
    fn started(self, t: u64) -> Self;
    /// After `tries` busy answers, not before `next`.
    fn backing_off(self, tries: u32, next: u64) -> Self;
}

impl MemberExt for Member {
    fn since(mut self, t: u64) -> Self {
        self.since = t;
        self
    }
    fn due(mut self, t: u64) -> Self {
        self.due_since = Some(t);
        self
    }
    fn started(mut self, t: u64) -> Self {
        self.started_at = Some(t);
        self
    }
    fn backing_off(mut self, tries: u32, next: u64) -> Self {
        self.tries = tries;
        self.next_try_at = next;
        self
    }
}

/// A spec for tests: the given phases, no brakes but a threshold of 50% over 3, no soak,
/// no expiry, no caps.
pub fn spec(phases: &[PhaseSize]) -> Spec {
    Spec {
        phases: phases.to_vec(),
        failure_threshold_percent: 50,
        min_finished: 3,
        max_concurrent: 0,
        rate_per_minute: 0,
        soak_ms: 0,
        expiry_ms: 0,
        busy_backoff_ms: 1_000,
    }
}

/// A running rollout of `spec` in `phase`, started at 0.
pub fn rollout(spec: Spec, phase: u32) -> Rollout {
    let mut r = Rollout::new(spec, 0);
    r.phase = phase;
    r
}

/// The same rollout in another state.
pub fn in_state(mut r: Rollout, state: RolloutState) -> Rollout {
    r.state = state;
    r
}

/// Shorthand for a waiting state.
pub fn waiting(reason: WaitReason) -> MemberState {
    MemberState::Waiting(reason)
}

/// The members after a step: the old ones with the step's changes applied, by device.
pub fn merged(members: &[Member], changed: &[Member]) -> Vec<Member> {
    let mut all: std::collections::BTreeMap<String, Member> =
        members.iter().map(|m| (m.device.clone(), m.clone())).collect();
    for m in changed {
        all.insert(m.device.clone(), m.clone());
    }
    all.into_values().collect()
}
