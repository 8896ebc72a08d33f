//! Status: counts per phase, failure rate against the threshold, failing devices.

use tern_rollout::{
    summary, Counts,
    MemberState::{self, AlreadyThere, Excluded, Failed, Healthy, Pending, Soaking, Updating},
    PauseReason, PhaseSize, Rollout, RolloutState,
    WaitReason::{Budget, Offline},
    WaitingCounts,
};

use crate::{member, rollout, spec, waiting};

#[test]
fn counts_per_phase_and_the_failure_rate() {
    let mut r: Rollout = rollout(spec(&[PhaseSize::Count(3), PhaseSize::Percent(100)]), 1);
    r.state = RolloutState::Paused { reason: PauseReason::Operator { by: "ops".into() } };
    let mut f1 = member("f1", 0, Failed);
    f1.reason = Some("panic".into());
    let mut f2 = member("f2", 1, Failed);
    f2.reason = Some("rolled back after confirmation".into());
    let members = vec![
        member("a", 0, Healthy),
        f1,
        member("c", 0, AlreadyThere),
        member("d", 1, Soaking),
        member("e", 1, Updating),
        member("g", 1, waiting(Offline)),
        member("h", 1, waiting(Budget)),
        member("i", 1, Pending),
        member("j", 1, MemberState::Expired),
        member("k", 1, Excluded(tern_rollout::Exclusion::Development)),
        member("l", 1, Healthy),
        f2,
    ];
    let s = summary(&r, &members);
    assert_eq!(s.failed, 2);
    assert_eq!(s.finished, 4, "healthy and failed; not already-there or expired");
    assert_eq!(s.failure_rate_percent, Some(50));
    assert_eq!(s.threshold_percent, 50);
    assert_eq!(
        s.failing,
        vec![("f1".to_string(), "panic".to_string()), ("f2".into(), "rolled back after confirmation".into())]
    );
    assert_eq!(s.phases.len(), 2);
    assert_eq!(s.phases[0].counts, Counts { total: 3, healthy: 1, failed: 1, already_there: 1, ..Counts::default() });
    assert!(s.phases[0].open && s.phases[0].completed);
    assert_eq!(
        s.phases[1].counts,
        Counts {
            total: 9,
            pending: 1,
            waiting: WaitingCounts { offline: 1, budget: 1, ..WaitingCounts::default() },
            updating: 1,
            soaking: 1,
            healthy: 1,
            failed: 1,
            expired: 1,
            excluded: 1,
            ..Counts::default()
        }
    );
    assert!(s.phases[1].open && !s.phases[1].completed);
    assert_eq!(s.total.total, 12);
    assert_eq!(s.total.waiting.total(), 2);
}

#[test]
fn nothing_finished_has_no_rate() {
    let r = rollout(spec(&[PhaseSize::Count(3), PhaseSize::Percent(100)]), 0);
    let s = summary(&r, &[member("a", 0, Updating), member("b", 1, Pending)]);
    assert_eq!(s.failure_rate_percent, None);
    assert!(s.phases[0].open && !s.phases[0].completed);
    assert!(!s.phases[1].open && !s.phases[1].completed);
}
