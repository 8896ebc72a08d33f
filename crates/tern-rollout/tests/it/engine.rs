//! The step function, one table row per rule: given records and facts → step → expected
//! starts, states and events. Every row also checks that the step is deterministic
//! (inputs in another order give the same step) and idempotent (stepping again over the
//! persisted output, with the attempts the server created, changes nothing).

use tern_rollout::{
    abort, pause, resume, spread, step, AttemptView, DeviceFacts, Event, Exclusion, Member, MemberState, PauseReason,
    PhaseSize::{Count, Percent},
    Rollout, RolloutState, Spec, Standing, Step, TransitionError, WaitReason,
};

use crate::{dev, in_state, member, merged, rollout, spec, waiting, FactsExt, MemberExt};

use MemberState::{AlreadyThere, Expired, Failed, Healthy, Pending, Soaking, Updating};
use WaitReason::{Budget, Busy, Capacity, Halted, Offline, Rate, Window};

struct Case {
    name: &'static str,
    rollout: Rollout,
    members: Vec<Member>,
    facts: Vec<DeviceFacts>,
    now: u64,
    start: Vec<&'static str>,
    states: Vec<(&'static str, MemberState)>,
    phases: Vec<(&'static str, u32)>,
    due: Vec<(&'static str, u64)>,
    events: Vec<Event>,
    rollout_state: Option<RolloutState>,
    phase: Option<u32>,
}

fn case(name: &'static str, rollout: Rollout, members: Vec<Member>, facts: Vec<DeviceFacts>, now: u64) -> Case {
    Case {
        name,
        rollout,
        members,
        facts,
        now,
        start: vec![],
        states: vec![],
        phases: vec![],
        due: vec![],
        events: vec![],
        rollout_state: None,
        phase: None,
    }
}

impl Case {
    fn starts(mut self, devices: &[&'static str]) -> Self {
        self.start = devices.to_vec();
        self
    }
    fn state(mut self, device: &'static str, state: MemberState) -> Self {
        self.states.push((device, state));
        self
    }
    fn in_phase(mut self, device: &'static str, phase: u32) -> Self {
        self.phases.push((device, phase));
        self
    }
    fn due(mut self, device: &'static str, since: u64) -> Self {
        self.due.push((device, since));
        self
    }
    fn events(mut self, events: Vec<Event>) -> Self {
        self.events = events;
        self
    }
    fn then(mut self, state: RolloutState) -> Self {
        self.rollout_state = Some(state);
        self
    }
    fn at_phase(mut self, phase: u32) -> Self {
        self.phase = Some(phase);
        self
    }
}

/// The facts after the server acted on `step`: an attempt runs for every started device.
fn with_attempts(facts: &[DeviceFacts], step: &Step) -> Vec<DeviceFacts> {
    facts
        .iter()
        .map(|f| {
            let mut f = f.clone();
            if step.start.contains(&f.device) {
                f.attempt = Some(AttemptView::Running);
            }
            f
        })
        .collect()
}

fn check(c: Case) {
    let name = c.name;
    let out = step(&c.rollout, &c.members, &c.facts, c.now);
    let starts: Vec<&str> = out.start.iter().map(String::as_str).collect();
    assert_eq!(starts, c.start, "{name}: starts");
    let after = merged(&c.members, &out.members);
    let find = |device: &str| {
        after.iter().find(|m| m.device == device).unwrap_or_else(|| panic!("{name}: no member {device}"))
    };
    for (device, state) in &c.states {
        assert_eq!(&find(device).state, state, "{name}: state of {device}");
    }
    for (device, phase) in &c.phases {
        assert_eq!(find(device).phase, *phase, "{name}: phase of {device}");
    }
    for (device, since) in &c.due {
        assert_eq!(find(device).due_since, Some(*since), "{name}: due since of {device}");
    }
    for device in &c.start {
        assert_eq!(find(device).state, Updating, "{name}: a started member is updating");
        assert_eq!(find(device).started_at, Some(c.now), "{name}: start time of {device}");
    }
    assert_eq!(out.events, c.events, "{name}: events");
    let expected_state = c.rollout_state.clone().unwrap_or(c.rollout.state.clone());
    assert_eq!(out.rollout.state, expected_state, "{name}: rollout state");
    assert_eq!(out.rollout.phase, c.phase.unwrap_or(c.rollout.phase), "{name}: rollout phase");
    // Only changed records are reported.
    for m in &out.members {
        assert!(!c.members.contains(m), "{name}: unchanged member {} reported", m.device);
    }

    // Deterministic: the order of the inputs does not matter.
    let mut members = c.members.clone();
    members.reverse();
    let mut facts = c.facts.clone();
    facts.reverse();
    assert_eq!(step(&c.rollout, &members, &facts, c.now), out, "{name}: input order changed the step");

    // Idempotent: a step over the persisted output, once the server created the
    // attempts, decides nothing new (a restarted server picks up where it was).
    let facts = with_attempts(&c.facts, &out);
    let again = step(&out.rollout, &after, &facts, c.now);
    assert_eq!(again.members, vec![], "{name}: second step changed members");
    assert_eq!(again.start, Vec::<String>::new(), "{name}: second step started devices");
    assert_eq!(again.events, vec![], "{name}: second step emitted events");
    assert_eq!(again.rollout, out.rollout, "{name}: second step changed the rollout");
}

fn three() -> Spec {
    spec(&[Count(2), Percent(50), Percent(100)])
}

fn with(mut s: Spec, f: impl FnOnce(&mut Spec)) -> Spec {
    f(&mut s);
    s
}

fn failed(id: &str, phase: u32, reason: &str) -> Member {
    let mut m = member(id, phase, Failed);
    m.reason = Some(reason.to_string());
    m
}

fn operator_paused(r: Rollout) -> Rollout {
    in_state(r, RolloutState::Paused { reason: PauseReason::Operator { by: "ops".into() } })
}

fn threshold(failed: u32, finished: u32, threshold_percent: u8) -> PauseReason {
    PauseReason::FailureThreshold { failed, finished, threshold_percent }
}

fn failing(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(d, r)| (d.to_string(), r.to_string())).collect()
}

fn member_failed(device: &str, reason: &str) -> Event {
    Event::MemberFailed { device: device.into(), reason: reason.into() }
}

use Event::{Completed, PhaseCompleted, PhaseStarted};

#[test]
fn phases_open_one_after_another() {
    let soak = with(three(), |s| s.soak_ms = 1_000);
    for c in [
        case(
            "canary only: later phases stay pending while the canary updates",
            rollout(three(), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating), member("c", 1, Pending), member("d", 2, Pending)],
            vec![dev("a").attempt(AttemptView::Running), dev("b").attempt(AttemptView::Running), dev("c"), dev("d")],
            10,
        )
        .state("c", Pending)
        .state("d", Pending),
        case(
            "a healthy canary opens phase 1, which starts",
            rollout(three(), 0),
            vec![member("a", 0, Healthy), member("b", 0, Healthy), member("c", 1, Pending), member("d", 2, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("c"), dev("d")],
            10,
        )
        .starts(&["c"])
        .state("d", Pending)
        .events(vec![PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
        case(
            "a soaking canary member holds phase 1 back",
            rollout(soak, 0),
            vec![member("a", 0, Healthy), member("b", 0, Soaking).since(5), member("c", 1, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("c")],
            10,
        )
        .state("b", Soaking)
        .state("c", Pending),
        case(
            "a failure below the threshold is final: the phase completes",
            rollout(three(), 0),
            vec![member("a", 0, Healthy), member("b", 0, Updating), member("x", 0, Healthy), member("c", 1, Pending)],
            vec![
                dev("a").runs(),
                dev("b").attempt(AttemptView::Failed { reason: "panic at boot".into() }),
                dev("x").runs(),
                dev("c"),
            ],
            10,
        )
        .starts(&["c"])
        .state("b", Failed)
        .events(vec![member_failed("b", "panic at boot"), PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
        case(
            "the last phase completing completes the rollout",
            rollout(three(), 2),
            vec![member("a", 0, Healthy), member("b", 1, AlreadyThere), member("c", 2, Soaking)],
            vec![dev("a").runs(), dev("b").runs(), dev("c").runs()],
            10,
        )
        .state("c", Healthy)
        .events(vec![PhaseCompleted { phase: 2 }, Completed])
        .then(RolloutState::Completed),
        case(
            "an empty phase opens and completes in the same step",
            rollout(spec(&[Count(2), Percent(10), Percent(100)]), 0),
            vec![member("a", 0, Healthy), member("b", 0, Healthy), member("d", 2, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("d")],
            10,
        )
        .starts(&["d"])
        .events(vec![
            PhaseCompleted { phase: 0 },
            PhaseStarted { phase: 1 },
            PhaseCompleted { phase: 1 },
            PhaseStarted { phase: 2 },
        ])
        .at_phase(2),
        case(
            "a paused rollout opens no phase",
            operator_paused(rollout(three(), 0)),
            vec![member("a", 0, Healthy), member("b", 0, Healthy), member("c", 1, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("c")],
            10,
        )
        .state("c", Pending),
        case(
            "members already running the release cost nothing and complete their phase",
            rollout(three(), 0),
            vec![member("a", 0, Pending), member("b", 0, Pending), member("c", 1, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("c")],
            10,
        )
        .starts(&["c"])
        .state("a", AlreadyThere)
        .state("b", AlreadyThere)
        .events(vec![PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
    ] {
        check(c);
    }
}

#[test]
fn failure_threshold_pauses_the_rollout() {
    let canary = with(spec(&[Count(4), Percent(100)]), |s| s.min_finished = 3);
    let zero = with(canary.clone(), |s| {
        s.failure_threshold_percent = 0;
        s.min_finished = 0;
    });
    let mut resumed = rollout(canary.clone(), 0);
    resumed.accepted_failures = 2;
    for c in [
        case(
            "two of three finished canary members failed: paused, failing devices listed, nothing more starts",
            rollout(canary.clone(), 0),
            vec![
                member("a", 0, Updating),
                member("b", 0, Healthy),
                member("c", 0, Updating),
                member("d", 0, Pending),
                member("e", 1, Pending),
            ],
            vec![
                dev("a").attempt(AttemptView::Failed { reason: "panic".into() }),
                dev("b").runs(),
                dev("c").attempt(AttemptView::Failed { reason: "hang".into() }),
                dev("d"),
                dev("e"),
            ],
            10,
        )
        .state("a", Failed)
        .state("c", Failed)
        .state("d", waiting(Halted))
        .state("e", Pending)
        .events(vec![
            member_failed("a", "panic"),
            member_failed("c", "hang"),
            Event::Paused { reason: threshold(2, 3, 50), failing: failing(&[("a", "panic"), ("c", "hang")]) },
        ])
        .then(RolloutState::Paused { reason: threshold(2, 3, 50) }),
        case(
            "min_finished: one failure out of one finished does not pause yet",
            rollout(canary.clone(), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating), member("c", 1, Pending)],
            vec![
                dev("a").attempt(AttemptView::Failed { reason: "panic".into() }),
                dev("b").attempt(AttemptView::Running),
                dev("c"),
            ],
            10,
        )
        .state("a", Failed)
        .state("c", Pending)
        .events(vec![member_failed("a", "panic")]),
        case(
            "threshold 0: any failure pauses",
            rollout(zero.clone(), 0),
            vec![member("a", 0, Updating), member("b", 0, Healthy), member("c", 0, Healthy)],
            vec![dev("a").attempt(AttemptView::Failed { reason: "x".into() }), dev("b").runs(), dev("c").runs()],
            10,
        )
        .events(vec![
            member_failed("a", "x"),
            Event::Paused { reason: threshold(1, 3, 0), failing: failing(&[("a", "x")]) },
        ])
        .then(RolloutState::Paused { reason: threshold(1, 3, 0) }),
        case(
            "threshold 0 without failures goes on",
            rollout(zero, 0),
            vec![member("a", 0, Healthy), member("b", 0, Healthy), member("c", 1, Pending)],
            vec![dev("a").runs(), dev("b").runs(), dev("c")],
            10,
        )
        .starts(&["c"])
        .events(vec![PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
        case(
            "already-there and expired members are not finished: the minimum is not reached",
            rollout(with(canary.clone(), |s| s.min_finished = 2), 0),
            vec![failed("a", 0, "x"), member("b", 0, AlreadyThere), member("c", 0, Expired), member("d", 0, Updating)],
            vec![dev("a"), dev("b").runs(), dev("c").offline(), dev("d").attempt(AttemptView::Running)],
            10,
        ),
        case(
            "below the threshold the rollout goes on",
            rollout(canary.clone(), 0),
            vec![failed("a", 0, "x"), member("b", 0, Healthy), member("c", 0, Healthy), member("d", 0, Pending)],
            vec![dev("a"), dev("b").runs(), dev("c").runs(), dev("d")],
            10,
        )
        .starts(&["d"]),
        case(
            "after a resume the accepted failures do not pause again",
            resumed.clone(),
            vec![failed("a", 0, "x"), member("b", 0, Healthy), failed("c", 0, "y"), member("e", 0, waiting(Halted))],
            vec![dev("a"), dev("b").runs(), dev("c"), dev("e")],
            10,
        )
        .starts(&["e"]),
        case(
            "after a resume one more failure pauses again, counting the whole rollout",
            resumed,
            vec![failed("a", 0, "x"), member("b", 0, Healthy), failed("c", 0, "y"), member("f", 0, Updating)],
            vec![dev("a"), dev("b").runs(), dev("c"), dev("f").attempt(AttemptView::Failed { reason: "z".into() })],
            10,
        )
        .events(vec![
            member_failed("f", "z"),
            Event::Paused { reason: threshold(3, 4, 50), failing: failing(&[("a", "x"), ("c", "y"), ("f", "z")]) },
        ])
        .then(RolloutState::Paused { reason: threshold(3, 4, 50) }),
        case(
            "paused: outcomes are still recorded, ready members are halted, nothing starts",
            operator_paused(rollout(canary.clone(), 0)),
            vec![member("a", 0, Updating), member("b", 0, waiting(Capacity)), member("c", 0, Updating)],
            vec![
                dev("a").runs().attempt(AttemptView::Confirmed { at: 3 }),
                dev("b"),
                dev("c").attempt(AttemptView::Failed { reason: "z".into() }),
            ],
            10,
        )
        .state("a", Healthy)
        .state("b", waiting(Halted))
        .state("c", Failed)
        .events(vec![member_failed("c", "z")]),
        case(
            "aborted: nothing starts, members not started stay as they are, outcomes recorded",
            in_state(rollout(with(canary, |s| s.soak_ms = 1_000), 0), RolloutState::Aborted),
            vec![member("a", 0, Updating), member("b", 0, waiting(Capacity)), member("c", 1, Pending)],
            vec![dev("a").runs().attempt(AttemptView::Confirmed { at: 3 }), dev("b"), dev("c")],
            10,
        )
        .state("a", Soaking)
        .state("b", waiting(Capacity))
        .state("c", Pending),
    ] {
        check(c);
    }
}

#[test]
fn busy_devices_back_off_and_never_fail() {
    let zero = with(spec(&[Percent(100)]), |s| {
        s.failure_threshold_percent = 0;
        s.min_finished = 0;
    });
    for c in [
        case(
            "busy is not a failure: it backs off, even threshold 0 does not pause",
            rollout(zero.clone(), 0),
            vec![member("a", 0, Updating)],
            vec![dev("a").attempt(AttemptView::Busy)],
            100,
        )
        .state("a", waiting(Busy)),
        case(
            "backing off: not started before next_try_at",
            rollout(zero.clone(), 0),
            vec![member("a", 0, waiting(Busy)).backing_off(1, 1_100)],
            vec![dev("a").attempt(AttemptView::Busy)],
            1_099,
        )
        .state("a", waiting(Busy)),
        case(
            "backed off: started again at next_try_at",
            rollout(zero, 0),
            vec![member("a", 0, waiting(Busy)).backing_off(1, 1_100)],
            vec![dev("a").attempt(AttemptView::Busy)],
            1_100,
        )
        .starts(&["a"]),
    ] {
        check(c);
    }
}

#[test]
fn busy_back_off_doubles_up_to_sixteen_times() {
    // (busy answers so far, back-off after this one) with a first back-off of 1 s.
    for (tries, backoff) in [(0, 1_000), (1, 2_000), (2, 4_000), (3, 8_000), (4, 16_000), (5, 16_000), (40, 16_000)] {
        let r = rollout(spec(&[Percent(100)]), 0);
        let m = member("a", 0, Updating).backing_off(tries, 0);
        let out = step(&r, &[m], &[dev("a").attempt(AttemptView::Busy)], 500);
        let a = &out.members[0];
        assert_eq!(a.state, waiting(Busy), "tries {tries}");
        assert_eq!(a.tries, tries + 1, "tries {tries}");
        assert_eq!(a.next_try_at, 500 + backoff, "tries {tries}");
        assert_eq!(out.events, vec![], "tries {tries}: busy is never reported as a failure");
    }
}

#[test]
fn caps_and_reasons_hold_members_back() {
    let capped = with(spec(&[Percent(100)]), |s| s.max_concurrent = 2);
    let rated = with(spec(&[Percent(100)]), |s| s.rate_per_minute = 2);
    let one = with(spec(&[Percent(100)]), |s| s.max_concurrent = 1);
    for c in [
        case(
            "max_concurrent caps the members updating at once; ties by device id",
            rollout(capped, 0),
            vec![member("a", 0, Updating), member("b", 0, Pending), member("c", 0, Pending), member("d", 0, Pending)],
            vec![dev("a").attempt(AttemptView::Running), dev("d"), dev("c"), dev("b")],
            10,
        )
        .starts(&["b"])
        .state("c", waiting(Capacity))
        .state("d", waiting(Capacity)),
        case(
            "rate caps starts per rolling minute; a start 60 s ago no longer counts",
            rollout(rated, 0),
            vec![
                member("a", 0, Healthy).started(50_000),
                failed("z", 0, "x").started(40_000),
                member("b", 0, Pending),
                member("c", 0, Pending),
                member("d", 0, Pending),
            ],
            vec![dev("a").runs(), dev("z"), dev("b"), dev("c"), dev("d")],
            100_000,
        )
        .starts(&["b"])
        .state("c", waiting(Rate))
        .state("d", waiting(Rate)),
        case(
            "a member started again within the minute counts once toward the rate",
            rollout(with(spec(&[Percent(100)]), |s| s.rate_per_minute = 2), 0),
            vec![
                member("a", 0, waiting(Busy)).started(50_000).backing_off(1, 90_000),
                member("b", 0, Pending),
                member("c", 0, Pending),
            ],
            vec![dev("a").attempt(AttemptView::Busy), dev("b"), dev("c")],
            100_000,
        )
        .starts(&["a", "b"])
        .state("c", waiting(Rate)),
        case(
            "no caps: everything due starts",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("b", 0, Pending), member("c", 0, Pending), member("d", 0, Pending)],
            vec![dev("b"), dev("c"), dev("d")],
            10,
        )
        .starts(&["b", "c", "d"]),
        case(
            "the most specific reason first: offline, window, budget, busy, capacity",
            rollout(one, 0),
            vec![
                member("b", 0, Pending),
                member("c", 0, Pending),
                member("d", 0, Pending),
                member("e", 0, waiting(Busy)).backing_off(1, 1_000),
                member("f", 0, Updating),
                member("g", 0, Pending),
            ],
            vec![
                dev("b").offline().outside().over_budget(10, 5),
                dev("c").outside().over_budget(10, 5),
                dev("d").over_budget(10, 5),
                dev("e").attempt(AttemptView::Busy),
                dev("f").attempt(AttemptView::Running),
                dev("g"),
            ],
            10,
        )
        .state("b", waiting(Offline))
        .state("c", waiting(Window))
        .state("d", waiting(Budget))
        .state("e", waiting(Busy))
        .state("g", waiting(Capacity))
        .events(vec![Event::WaitingBudget { device: "d".into(), needed: 10, left: 5 }]),
        case(
            "over budget: the wait is reported once",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, waiting(Budget))],
            vec![dev("a").over_budget(10, 5)],
            10,
        )
        .state("a", waiting(Budget)),
        case(
            "over budget but approved: starts",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, waiting(Budget))],
            vec![dev("a").approved()],
            10,
        )
        .starts(&["a"]),
        case(
            "outside the maintenance window waits; inside it starts",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, Pending), member("b", 0, waiting(Window))],
            vec![dev("a").outside(), dev("b")],
            10,
        )
        .starts(&["b"])
        .state("a", waiting(Window)),
    ] {
        check(c);
    }
}

#[test]
fn standing_excludes_and_readmits() {
    for c in [
        case(
            "pinned, development and removed devices are excluded; an updating one finishes",
            rollout(three(), 0),
            vec![
                member("a", 0, Pending),
                member("b", 0, waiting(Offline)),
                member("c", 0, Pending),
                member("d", 0, Updating),
            ],
            vec![
                dev("a").standing(Standing::Pinned { release: 7 }),
                dev("b").offline().standing(Standing::Development),
                dev("d").standing(Standing::Pinned { release: 7 }).attempt(AttemptView::Running),
            ],
            10,
        )
        .state("a", MemberState::Excluded(Exclusion::Pinned { release: 7 }))
        .state("b", MemberState::Excluded(Exclusion::Development))
        .state("c", MemberState::Excluded(Exclusion::Removed))
        .state("d", Updating),
        case(
            "an excluded device eligible again rejoins the current phase",
            rollout(three(), 1),
            vec![
                member("a", 0, Healthy),
                member("b", 2, MemberState::Excluded(Exclusion::Development)),
                member("c", 1, Updating),
            ],
            vec![dev("a").runs(), dev("b"), dev("c").attempt(AttemptView::Running)],
            10,
        )
        .starts(&["b"])
        .in_phase("b", 1),
        case(
            "a late joiner goes in the current phase",
            rollout(three(), 0),
            vec![member("a", 0, Updating), member("b", 1, Pending)],
            vec![dev("a").attempt(AttemptView::Running), dev("b"), dev("n")],
            10,
        )
        .starts(&["n"])
        .in_phase("n", 0),
        case(
            "a late joiner after the current phase completed goes in the last phase",
            rollout(three(), 0),
            vec![member("a", 0, Healthy), member("b", 1, Pending)],
            vec![dev("a").runs(), dev("b"), dev("n")],
            10,
        )
        .starts(&["b"])
        .state("n", Pending)
        .in_phase("n", 2)
        .events(vec![PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
        case(
            "a completed rollout still converges late joiners, without phase events",
            in_state(rollout(three(), 2), RolloutState::Completed),
            vec![member("a", 0, Healthy), member("b", 2, Healthy)],
            vec![dev("a").runs(), dev("b").runs(), dev("n"), dev("m").runs()],
            10,
        )
        .starts(&["n"])
        .in_phase("n", 2)
        .state("m", AlreadyThere),
    ] {
        check(c);
    }
}

#[test]
fn expiry_reports_members_that_never_updated() {
    let expiring = with(three(), |s| {
        s.expiry_ms = 1_000;
        s.soak_ms = 1_000;
    });
    let mut resumed = rollout(with(three(), |s| s.expiry_ms = 3_000), 0);
    resumed.paused_at = Some(1_000);
    for c in [
        case(
            "a due member not updated within expiry_ms is expired and reported",
            rollout(expiring.clone(), 0),
            vec![member("a", 0, waiting(Offline)).due(0), member("b", 0, waiting(Offline)).due(1)],
            vec![dev("a").offline(), dev("b").offline()],
            1_001,
        )
        .state("a", Expired)
        .state("b", waiting(Offline))
        .events(vec![Event::MemberExpired { device: "a".into() }]),
        case(
            "members in flight never expire",
            rollout(expiring.clone(), 0),
            vec![member("a", 0, Updating).due(0), member("b", 0, Soaking).due(0).since(4_999)],
            vec![dev("a").attempt(AttemptView::Running), dev("b").runs()],
            5_000,
        )
        .state("a", Updating)
        .state("b", Soaking),
        case(
            "expiry 0: never",
            rollout(three(), 0),
            vec![member("a", 0, waiting(Offline)).due(0)],
            vec![dev("a").offline()],
            u64::MAX / 2,
        )
        .state("a", waiting(Offline)),
        case(
            "paused: nothing expires",
            operator_paused(rollout(expiring.clone(), 0)),
            vec![member("a", 0, waiting(Offline)).due(0)],
            vec![dev("a").offline()],
            5_000,
        )
        .state("a", waiting(Offline)),
        case(
            "after a resume the time paused does not count toward expiry",
            resumed,
            vec![member("a", 0, waiting(Offline)).due(0), member("b", 0, waiting(Offline)).due(2_000)],
            vec![dev("a").offline(), dev("b").offline()],
            5_000,
        )
        .state("a", waiting(Offline))
        .due("a", 4_000)
        .due("b", 5_000),
        case(
            "expiring the last waiting member completes its phase",
            rollout(expiring, 0),
            vec![member("a", 0, Healthy), member("b", 0, waiting(Offline)).due(0), member("c", 1, Pending)],
            vec![dev("a").runs(), dev("b").offline(), dev("c")],
            1_001,
        )
        .starts(&["c"])
        .state("b", Expired)
        .events(vec![
            Event::MemberExpired { device: "b".into() },
            PhaseCompleted { phase: 0 },
            PhaseStarted { phase: 1 },
        ])
        .at_phase(1),
    ] {
        check(c);
    }
}

#[test]
fn health_is_judged_after_the_soak() {
    let soak = with(spec(&[Percent(100)]), |s| s.soak_ms = 1_000);
    for c in [
        case(
            "confirmed: soaks from the confirmation time",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Updating)],
            vec![dev("a").runs().attempt(AttemptView::Confirmed { at: 90 })],
            100,
        )
        .state("a", Soaking),
        case(
            "confirmed long ago (the server was down): healthy at once",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating)],
            vec![dev("a").runs().attempt(AttemptView::Confirmed { at: 90 }), dev("b").attempt(AttemptView::Running)],
            1_090,
        )
        .state("a", Healthy),
        case(
            "soaked long enough, online, still running the release: healthy",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Soaking), member("b", 0, Soaking)],
            vec![dev("a").runs(), dev("b").runs()],
            1_000,
        )
        .state("a", Healthy)
        .state("b", Healthy)
        .events(vec![PhaseCompleted { phase: 0 }, Completed])
        .then(RolloutState::Completed),
        case(
            "not soaked long enough: still soaking",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Soaking)],
            vec![dev("a").runs()],
            999,
        )
        .state("a", Soaking),
        case(
            "rolled back during the soak: failed at once",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Soaking), member("b", 0, Soaking)],
            vec![dev("a").rolled_back(), dev("b").runs()],
            10,
        )
        .state("a", Failed)
        .events(vec![member_failed("a", "rolled back after confirmation")]),
        case(
            "no longer running the release at the end of the soak: failed",
            rollout(soak.clone(), 0),
            vec![member("a", 0, Soaking), member("b", 0, Soaking).since(500)],
            vec![dev("a"), dev("b").runs()],
            1_000,
        )
        .state("a", Failed)
        .events(vec![member_failed("a", "no longer runs the release")]),
        case(
            "offline at the end of the soak: soaking until it is seen again",
            rollout(soak, 0),
            vec![member("a", 0, Soaking)],
            vec![dev("a").runs().offline()],
            5_000,
        )
        .state("a", Soaking),
        case(
            "soak 0: confirmed and healthy in the same step",
            rollout(spec(&[Count(1), Percent(100)]), 0),
            vec![member("a", 0, Updating), member("b", 1, Pending)],
            vec![dev("a").runs().attempt(AttemptView::Confirmed { at: 5 }), dev("b")],
            10,
        )
        .starts(&["b"])
        .state("a", Healthy)
        .events(vec![PhaseCompleted { phase: 0 }, PhaseStarted { phase: 1 }])
        .at_phase(1),
    ] {
        check(c);
    }
}

#[test]
fn attempts_are_the_truth() {
    let soak = with(spec(&[Percent(100)]), |s| s.soak_ms = 1_000);
    for c in [
        case(
            "a failed attempt fails the member with its reason",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating)],
            vec![
                dev("a").attempt(AttemptView::Failed { reason: "test boot failed".into() }),
                dev("b").attempt(AttemptView::Running),
            ],
            10,
        )
        .state("a", Failed)
        .events(vec![member_failed("a", "test boot failed")]),
        case(
            "a cancelled attempt fails the member",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating)],
            vec![dev("a").attempt(AttemptView::Cancelled), dev("b").attempt(AttemptView::Running)],
            10,
        )
        .state("a", Failed)
        .events(vec![member_failed("a", "cancelled")]),
        case(
            "a lost attempt starts again (or waits for its device)",
            rollout(spec(&[Percent(100)]), 0),
            vec![member("a", 0, Updating), member("b", 0, Updating)],
            vec![dev("a"), dev("b").offline()],
            10,
        )
        .starts(&["a"])
        .state("b", waiting(Offline)),
        case(
            "an attempt the member's record missed is adopted, never started twice",
            rollout(soak, 0),
            vec![member("a", 0, waiting(Capacity)), member("b", 0, Pending)],
            vec![dev("a").attempt(AttemptView::Running), dev("b").runs().attempt(AttemptView::Confirmed { at: 5 })],
            10,
        )
        .state("a", Updating)
        .state("b", Soaking),
    ] {
        check(c);
    }
}

/// FNV-1a 64 written out from its definition, as the oracle for [`spread`].
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(14_695_981_039_346_656_037u64, |h, b| (h ^ u64::from(b)).wrapping_mul(1_099_511_628_211))
}

#[test]
fn spread_is_fnv1a_64() {
    // Published FNV-1a 64 test vectors.
    for (text, hash) in
        [("", 0xcbf2_9ce4_8422_2325u64), ("a", 0xaf63_dc4c_8601_ec8c), ("foobar", 0x8594_4171_f739_67e8)]
    {
        assert_eq!(spread(text), hash, "{text:?}");
        assert_eq!(fnv1a(text), hash, "oracle {text:?}");
    }
}

#[test]
fn first_step_cuts_the_eligible_devices_into_phases_by_hash() {
    let ids: Vec<String> = (0..20).map(|i| format!("dev-{i:02}")).collect();
    let mut facts: Vec<DeviceFacts> = ids.iter().map(|id| dev(id)).collect();
    facts.push(dev("pinned").standing(Standing::Pinned { release: 3 }));
    facts.push(dev("devel").standing(Standing::Development));
    let r = rollout(spec(&[Count(2), Percent(50), Percent(100)]), 0);
    let out = step(&r, &[], &facts, 7);

    let mut by_hash = ids.clone();
    by_hash.sort_by_key(|id| (fnv1a(id), id.clone()));
    let phase_of = |id: &str| out.members.iter().find(|m| m.device == id).map(|m| m.phase);
    // Excluded devices take no place: 2, then 50% of 20 = 10 in all, then the rest.
    for (rank, id) in by_hash.iter().enumerate() {
        let expected = match rank {
            0..=1 => 0,
            2..=9 => 1,
            _ => 2,
        };
        assert_eq!(phase_of(id), Some(expected), "{id} at rank {rank}");
    }
    let excluded = |id: &str| out.members.iter().find(|m| m.device == id).map(|m| m.state.clone());
    assert_eq!(excluded("pinned"), Some(MemberState::Excluded(Exclusion::Pinned { release: 3 })));
    assert_eq!(excluded("devel"), Some(MemberState::Excluded(Exclusion::Development)));
    assert_eq!(out.members.len(), 22);
    // Only the canary starts.
    let mut canary = by_hash[..2].to_vec();
    canary.sort();
    assert_eq!(out.start, canary);
    assert_eq!(out.events, vec![PhaseStarted { phase: 0 }]);
    for m in &out.members {
        let canary = m.phase == 0 && !matches!(m.state, MemberState::Excluded(_));
        assert_eq!(m.due_since, canary.then_some(7), "{}: only the canary is due", m.device);
    }
}

#[test]
fn first_step_of_an_empty_product_completes() {
    let out = step(&rollout(three(), 0), &[], &[], 1);
    assert_eq!(out.rollout.state, RolloutState::Completed);
    assert_eq!(
        out.events,
        vec![
            PhaseStarted { phase: 0 },
            PhaseCompleted { phase: 0 },
            PhaseStarted { phase: 1 },
            PhaseCompleted { phase: 1 },
            PhaseStarted { phase: 2 },
            PhaseCompleted { phase: 2 },
            Completed
        ]
    );
}

#[test]
fn operator_transitions() {
    let running = rollout(three(), 1);
    let paused = pause(&running, "alice").expect("a running rollout pauses");
    assert_eq!(paused.state, RolloutState::Paused { reason: PauseReason::Operator { by: "alice".into() } });
    assert_eq!(paused.phase, 1);
    assert_eq!(pause(&paused, "bob"), Err(TransitionError::NotRunning));
    assert_eq!(resume(&running), Err(TransitionError::NotPaused));
    let resumed = resume(&paused).expect("a paused rollout resumes");
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.accepted_failures, 0, "an operator pause accepts no failures");

    let tripped = in_state(running.clone(), RolloutState::Paused { reason: threshold(4, 9, 30) });
    let resumed = resume(&tripped).expect("a threshold pause resumes");
    assert_eq!(resumed.accepted_failures, 4);
    assert_eq!(resumed.state, RolloutState::Running);

    let completed = in_state(running.clone(), RolloutState::Completed);
    assert_eq!(pause(&completed, "alice"), Err(TransitionError::NotRunning));
    for r in [running, paused, completed] {
        let aborted = abort(&r).expect("aborts");
        assert_eq!(aborted.state, RolloutState::Aborted);
        assert_eq!(abort(&aborted), Err(TransitionError::AlreadyAborted));
        assert_eq!(resume(&aborted), Err(TransitionError::NotPaused));
    }
    assert_eq!(TransitionError::NotPaused.to_string(), "the rollout is not paused", "errors read as one clear line");
}

#[test]
fn records_round_trip_as_json() {
    let r = rollout(three(), 0);
    let facts = [dev("a"), dev("b").over_budget(5, 1), dev("c").standing(Standing::Pinned { release: 2 })];
    let out = step(&r, &[], &facts, 3);
    let text = serde_json::to_string(&out).expect("serializes");
    let back: Step = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, out);
    // Records saved before the added fields still load.
    let old = r#"{"device":"a","phase":0,"state":"pending","since":1,"due_since":null,"tries":0,"next_try_at":0,"reason":null}"#;
    let m: Member = serde_json::from_str(old).expect("old member loads");
    assert_eq!(m.started_at, None);
}
