//! A simulated server pumping the engine over a simulated fleet, with the server
//! killed at chosen points between deciding and recording: no device is updated twice,
//! none is skipped, and the counts come out exact.

use std::collections::BTreeMap;

use tern_rollout::{
    step, summary, AttemptView, Budget, DeviceFacts, Event, Member, MemberState, PauseReason,
    PhaseSize::{Count, Percent},
    Rollout, RolloutState, Spec, Standing,
};

const TICK: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Healthy,
    Panics,
    BusyOnce,
}

struct Device {
    id: String,
    behaviour: Behaviour,
    standing: Standing,
    runs_release: bool,
    said_busy: bool,
    online_from: u64,
    joins_at: u64,
}

fn device(id: String, behaviour: Behaviour) -> Device {
    Device {
        id,
        behaviour,
        standing: Standing::Eligible,
        runs_release: false,
        said_busy: false,
        online_from: 0,
        joins_at: 0,
    }
}

/// Where the server dies in a step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Crash {
    /// Records the step and creates the attempts.
    None,
    /// Records the step, dies before creating the attempts.
    BeforeAttempts,
    /// Creates the attempts, dies before recording the step.
    BeforeRecords,
}

struct Sim {
    rollout: Rollout,
    members: BTreeMap<String, Member>,
    devices: Vec<Device>,
    attempts: BTreeMap<String, (u64, AttemptView)>,
    created: BTreeMap<String, u32>,
    events: Vec<Event>,
    now: u64,
}

impl Sim {
    fn new(spec: Spec, devices: Vec<Device>) -> Sim {
        Sim {
            rollout: Rollout::new(spec, 0),
            members: BTreeMap::new(),
            devices,
            attempts: BTreeMap::new(),
            created: BTreeMap::new(),
            events: Vec::new(),
            now: 0,
        }
    }

    /// Devices act on their running attempts: two ticks after it started, an online
    /// device confirms, panics at boot (and stays on its old release), or says busy once.
    fn devices_act(&mut self) {
        for d in &mut self.devices {
            if self.now < d.online_from {
                continue;
            }
            let Some((started, view)) = self.attempts.get_mut(&d.id) else { continue };
            if *view != AttemptView::Running || self.now < *started + 2 * TICK {
                continue;
            }
            *view = match d.behaviour {
                Behaviour::BusyOnce if !d.said_busy => {
                    d.said_busy = true;
                    AttemptView::Busy
                }
                Behaviour::Healthy | Behaviour::BusyOnce => {
                    d.runs_release = true;
                    AttemptView::Confirmed { at: self.now }
                }
                Behaviour::Panics => AttemptView::Failed { reason: "panic at boot".into() },
            };
        }
    }

    fn facts(&self) -> Vec<DeviceFacts> {
        self.devices
            .iter()
            .filter(|d| self.now >= d.joins_at)
            .map(|d| DeviceFacts {
                device: d.id.clone(),
                standing: d.standing.clone(),
                online: self.now >= d.online_from,
                runs_release: d.runs_release,
                in_window: true,
                budget: Budget::Ok,
                attempt: self.attempts.get(&d.id).map(|(_, v)| v.clone()),
                rolled_back_since_confirm: false,
            })
            .collect()
    }

    fn tick(&mut self, crash: Crash) {
        self.devices_act();
        let members: Vec<Member> = self.members.values().cloned().collect();
        let out = step(&self.rollout, &members, &self.facts(), self.now);
        for device in &out.start {
            // The server's guarantee, and what the engine must never ask to break:
            // at most one unfinished attempt per device.
            let running = matches!(self.attempts.get(device), Some((_, AttemptView::Running)));
            assert!(!running, "t={}: {device} started while its attempt runs", self.now);
        }
        if crash != Crash::BeforeRecords {
            self.rollout = out.rollout.clone();
            for m in &out.members {
                self.members.insert(m.device.clone(), m.clone());
            }
            self.events.extend(out.events.iter().cloned());
        }
        if crash != Crash::BeforeAttempts {
            for device in &out.start {
                self.attempts.insert(device.clone(), (self.now, AttemptView::Running));
                *self.created.entry(device.clone()).or_default() += 1;
            }
        }
        if crash == Crash::None {
            // A restart right here changes nothing: stepping again over what was
            // recorded, with the attempts created, decides nothing new.
            let members: Vec<Member> = self.members.values().cloned().collect();
            let again = step(&self.rollout, &members, &self.facts(), self.now);
            assert!(
                again.members.is_empty() && again.start.is_empty() && again.events.is_empty(),
                "t={}: a second step decided {again:?}",
                self.now
            );
            assert_eq!(again.rollout, self.rollout, "t={}", self.now);
        }
        self.now += TICK;
    }

    fn run(&mut self, crash_at: impl Fn(u64) -> Crash, until: impl Fn(&Sim) -> bool) {
        let mut i = 0;
        while !until(self) {
            assert!(i < 1_000, "no end after {i} ticks: {:?}", self.rollout.state);
            self.tick(crash_at(i));
            i += 1;
        }
    }

    fn state(&self, id: &str) -> MemberState {
        self.members[id].state.clone()
    }
}

fn fleet_spec() -> Spec {
    Spec {
        phases: vec![Count(3), Percent(30), Percent(100)],
        failure_threshold_percent: 10,
        min_finished: 3,
        max_concurrent: 4,
        rate_per_minute: 6,
        soak_ms: 3 * TICK,
        expiry_ms: 0,
        busy_backoff_ms: 2 * TICK,
    }
}

fn good_fleet() -> Vec<Device> {
    let mut devices: Vec<Device> = (0..40)
        .map(|i| device(format!("dev-{i:02}"), if i % 9 == 4 { Behaviour::BusyOnce } else { Behaviour::Healthy }))
        .collect();
    devices[7].online_from = 60 * TICK; // offline for the first minute
    devices[8].standing = Standing::Pinned { release: 1 };
    devices[9].standing = Standing::Development;
    devices[10].joins_at = 20 * TICK; // joins the product during the rollout
    devices
}

/// Where the server dies at tick i.
type Schedule = fn(u64) -> Crash;

/// Crash schedules: never, and at fixed ticks of each kind.
fn schedules() -> Vec<(&'static str, Schedule)> {
    vec![
        ("no crash", |_| Crash::None),
        ("crash before attempts", |i| if i % 3 == 1 { Crash::BeforeAttempts } else { Crash::None }),
        ("crash before records", |i| if i % 3 == 1 { Crash::BeforeRecords } else { Crash::None }),
        ("both crashes", |i| match i % 5 {
            1 => Crash::BeforeAttempts,
            3 => Crash::BeforeRecords,
            _ => Crash::None,
        }),
    ]
}

#[test]
fn a_good_release_converges_through_crashes() {
    for (name, crash_at) in schedules() {
        let mut sim = Sim::new(fleet_spec(), good_fleet());
        let done = |s: &Sim| {
            s.rollout.state == RolloutState::Completed
                && s.members.len() == 40
                && s.members.values().all(|m| m.state.is_final())
        };
        sim.run(crash_at, done);

        for d in &sim.devices {
            let created = sim.created.get(&d.id).copied().unwrap_or(0);
            match d.standing {
                Standing::Eligible => {
                    assert_eq!(sim.state(&d.id), MemberState::Healthy, "{name}: {}", d.id);
                    // Exactly one update per device; a busy device is asked once more.
                    let expected = if d.behaviour == Behaviour::BusyOnce { 2 } else { 1 };
                    assert_eq!(created, expected, "{name}: attempts for {}", d.id);
                }
                _ => {
                    assert_eq!(created, 0, "{name}: {} is excluded and untouched", d.id);
                    assert!(matches!(sim.state(&d.id), MemberState::Excluded(_)), "{name}: {}", d.id);
                }
            }
        }
        let members: Vec<Member> = sim.members.values().cloned().collect();
        let s = summary(&sim.rollout, &members);
        assert_eq!((s.total.healthy, s.total.excluded, s.failed, s.finished), (38, 2, 0, 38), "{name}");
        assert!(s.phases.iter().all(|p| p.completed), "{name}");
        if name == "no crash" {
            let phase_events: Vec<&Event> =
                sim.events.iter().filter(|e| !matches!(e, Event::MemberFailed { .. })).collect();
            assert_eq!(
                phase_events,
                vec![
                    &Event::PhaseStarted { phase: 0 },
                    &Event::PhaseCompleted { phase: 0 },
                    &Event::PhaseStarted { phase: 1 },
                    &Event::PhaseCompleted { phase: 1 },
                    &Event::PhaseStarted { phase: 2 },
                    &Event::PhaseCompleted { phase: 2 },
                    &Event::Completed,
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn a_bad_release_pauses_during_the_canary() {
    for (name, crash_at) in schedules() {
        let devices: Vec<Device> = (0..40).map(|i| device(format!("dev-{i:02}"), Behaviour::Healthy)).collect();
        let mut sim = Sim::new(fleet_spec(), devices);
        // The first step decides the canary; then two of its three devices turn out bad.
        sim.tick(Crash::None);
        let canary: Vec<String> = sim.members.values().filter(|m| m.phase == 0).map(|m| m.device.clone()).collect();
        assert_eq!(canary.len(), 3);
        for d in &mut sim.devices {
            if canary[1..].contains(&d.id) {
                d.behaviour = Behaviour::Panics;
            }
        }
        sim.run(crash_at, |s| matches!(s.rollout.state, RolloutState::Paused { .. }));
        // Let time pass: nothing more starts while it is paused.
        let tick_count = sim.now / TICK;
        for _ in 0..50 {
            sim.tick(Crash::None);
        }
        assert!(sim.now / TICK > tick_count);

        let RolloutState::Paused { reason: PauseReason::FailureThreshold { failed, finished, .. } } = sim.rollout.state
        else {
            panic!("{name}: {:?}", sim.rollout.state)
        };
        assert!(failed >= 1 && finished >= 3, "{name}: {failed} of {finished}");
        for (device, created) in &sim.created {
            assert!(canary.contains(device), "{name}: {device} outside the canary got the release");
            assert_eq!(*created, 1, "{name}: {device}");
        }
        assert_eq!(sim.rollout.phase, 0, "{name}");
        let paused: Vec<&Event> = sim.events.iter().filter(|e| matches!(e, Event::Paused { .. })).collect();
        assert_eq!(paused.len(), 1, "{name}: paused once");
        let Event::Paused { failing, .. } = paused[0] else { unreachable!() };
        assert!(!failing.is_empty(), "{name}");
        for (device, reason) in failing {
            assert!(canary[1..].contains(device), "{name}: {device} listed as failing");
            assert_eq!(reason, "panic at boot");
        }
    }
}
