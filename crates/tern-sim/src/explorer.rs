//! The power-cut explorer: for each scenario, a clean run counts the flash operations;
//! then every operation index is faulted with every selected fault kind that applies to
//! it (by default the power losses: a cut before any operation, a torn write at a
//! program, a torn erase at an erase; [`Config::kinds`] adds the others of
//! [`FaultKind`]), each from the same initial state, and the device is rebooted until it
//! settles; the invariants of [`crate::scenario`] are checked.
//!
//! Operations that only happen during recovery are faulted systematically too: from each
//! single-fault run, *chains* cut power again at each of the next [`Config::chain_window`]
//! operations the recovery performs, and from each of those once more (nearby pairs and
//! triples: the class of faults that cut a test boot between its count and its
//! confirmation several times). [`Config::all_pairs`] instead adds a second fault of every
//! selected kind at every later operation of every single-fault run, and the third cuts
//! after the nearby ones of those pairs (a long run). Seeded
//! random runs add several faults anywhere in one run.
//!
//! A staged scenario (an upgrade installed in several offers) is swept stage by stage:
//! every operation of every stage is faulted, each stage starting from the flash a clean
//! run of the stages before it leaves (the simulation is deterministic, so this is the
//! same state a full replay reaches, at a fraction of the time). The random multi-fault
//! runs replay the whole upgrade, so their faults can fall into several stages.

use serde::Serialize;

use crate::flash::{FaultKind, Rng, POWER_FAULTS};
use crate::scenario::{self, Outcome, Scenario};

/// The result for one scenario on one profile.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// Profile name.
    pub profile: String,
    /// Program/erase operations in the clean run (of all stages).
    pub flash_ops: u64,
    /// Program/erase operations of each stage's clean run (one entry when not staged).
    pub stage_ops: Vec<u64>,
    /// The modules the scenario's updates install (file names for corpus modules).
    pub modules: Vec<String>,
    /// Faults injected (exhaustive single faults plus those of the random runs).
    pub faults_injected: u64,
    /// Runs that ended with a device that cannot boot.
    pub bricked: u64,
    /// Runs that broke an invariant.
    pub violations: u64,
    /// Faults inside the documented bootloader-copy window of a profile without an
    /// immutable first stage: the device needs the MCU's ROM bootloader to recover.
    pub residual_risk: u64,
    /// Seeded random multi-fault runs.
    pub random_runs: u64,
    /// Runs with two or three faults (chains, or every pair).
    pub multi_fault_runs: u64,
    /// Runs that ended with a worn-out sector the device could no longer use: it must
    /// keep running complete modules, but need not finish the update.
    pub degraded: u64,
    /// The first few problems, with the faults that caused them.
    pub examples: Vec<String>,
}

/// The whole report, in the shape `tern sim powercut --json` prints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Sum of faults injected.
    pub total_faults_injected: u64,
    /// Sum of bricked runs.
    pub total_bricked: u64,
    /// Sum of runs with violations.
    pub total_violations: u64,
    /// Sum of residual-risk faults.
    pub total_residual_risk: u64,
    /// Sum of multi-fault runs (chains or pairs).
    pub total_multi_fault_runs: u64,
    /// Sum of degraded runs (worn-out sectors).
    pub total_degraded: u64,
}

/// Explorer settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the random multi-fault runs.
    pub seed: u64,
    /// Random runs per scenario.
    pub random_runs: u64,
    /// Largest number of faults in one random run.
    pub max_faults: u64,
    /// The fault kinds injected (each where it applies).
    pub kinds: Vec<FaultKind>,
    /// Chains: after each single fault, a cut at each of the next this-many operations,
    /// and from each of those a third cut as near (0 turns chains off).
    pub chain_window: u64,
    /// Every pair: after each single fault, every selected kind at every later operation
    /// of that run; the nearby triples then grow from the pairs whose second fault is
    /// within [`Config::chain_window`] of the first. Multi-fault runs (pairs and chains) grow on the synthetic scenarios
    /// only: the staged real-module ones have thousands of operations per stage.
    pub all_pairs: bool,
    /// Retention flips and wear-out at every program and erase, not only in the exchange
    /// area: installed slots, the factory image, the state banks and the progress markers
    /// too (docs/device.md lists what the design cannot survive there).
    pub stored_anywhere: bool,
    /// Threads the single faults of a stage (and the runs grown from them) are split over.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            random_runs: 20,
            max_faults: 4,
            kinds: POWER_FAULTS.to_vec(),
            chain_window: 4,
            all_pairs: false,
            stored_anywhere: false,
            threads: 2,
        }
    }
}

/// Whether a fault kind is injected at `op` of a scenario on `profile`. Retention flips
/// and wear-out are injected where Tern stores images it copies from (the exchange area),
/// unless [`Config::stored_anywhere`]: a flip in the only copy of the bootloader or of a
/// system part cannot be survived by a copy-based design (see docs/device.md).
fn eligible(config: &Config, profile: &tern_device::profile::Profile, op: &crate::flash::Op, kind: FaultKind) -> bool {
    if !kind.applies_to(op.kind) {
        return false;
    }
    match kind {
        FaultKind::Retention | FaultKind::WearOut if !config.stored_anywhere => {
            let ex = profile.exchange;
            op.dev == ex.dev && ex.offset <= op.offset && op.offset < ex.end()
        }
        _ => true,
    }
}

fn tally(sc: &Scenario, rep: &mut ScenarioReport, out: &Outcome, faults: &[(u64, FaultKind)]) {
    if let Some(why) = &out.bricked {
        // A stop in the bootloader window is the documented residual risk only if a
        // fault hit an operation on the bootloader slot (the last one, or an earlier one
        // that left cells to drift: a program cut at its very end reads right, so the
        // copy is not redone, and drifts after a later power-on).
        let in_window = out.residual_risk
            && out
                .injected
                .iter()
                .filter_map(|(i, _)| out.log.get(*i as usize))
                .any(|op| scenario::touches_bootloader(sc.profile, op));
        if in_window {
            rep.residual_risk += 1;
        } else {
            rep.bricked += 1;
            if rep.examples.len() < 5 {
                rep.examples.push(format!("bricked by {faults:?}: {why}"));
            }
        }
    }
    if out.degraded {
        rep.degraded += 1;
    }
    if !out.violations.is_empty() {
        rep.violations += 1;
        if rep.examples.len() < 5 {
            rep.examples.push(format!("{faults:?}: {}", out.violations.join("; ")));
        }
    }
}

/// Explores one scenario.
pub fn explore(sc: &Scenario, config: &Config) -> ScenarioReport {
    let device = sc.provisioned();
    let mut base = device.bench.borrow().clone();
    // The random runs pick operations blindly: retention and wear-out take effect only
    // where the single faults put them (see `eligible`).
    if !config.stored_anywhere {
        let ex = sc.profile.exchange;
        base.stored_faults_in = vec![(ex.dev, ex.offset, ex.end())];
    }
    let mut rep = ScenarioReport { name: sc.name.clone(), profile: sc.profile.name.to_string(), ..Default::default() };
    rep.modules = sc
        .tasks
        .iter()
        .flat_map(|t| match t {
            scenario::Task::Update { modules, .. } => modules.iter().map(|m| m.name.clone()).collect(),
            scenario::Task::FactoryRestore => Vec::new(),
        })
        .collect();
    let stages = match scenario::stages(sc, &base) {
        Ok(stages) => stages,
        Err(why) => {
            rep.violations += 1;
            rep.examples.push(why);
            return rep;
        }
    };
    // Multi-fault runs grow from every single fault of the synthetic scenarios; the staged
    // real-module upgrades (thousands of operations per stage) take the single faults and
    // the random runs.
    let multi = !sc.staged;
    for (stage, start) in &stages {
        let part = sweep(stage, start, config, multi);
        rep.flash_ops += part.flash_ops;
        rep.stage_ops.push(part.flash_ops);
        rep.faults_injected += part.faults_injected;
        rep.bricked += part.bricked;
        rep.violations += part.violations;
        rep.residual_risk += part.residual_risk;
        rep.multi_fault_runs += part.multi_fault_runs;
        rep.degraded += part.degraded;
        rep.examples.extend(part.examples);
    }
    rep.examples.truncate(5);
    let mut rng = Rng(config.seed
        ^ sc.name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)));
    let span = rep.flash_ops + rep.flash_ops / 2 + 1;
    let mut runner = scenario::Runner::new(&base);
    for _ in 0..config.random_runs {
        let n = 2 + rng.below(config.max_faults.saturating_sub(1).max(1));
        let mut faults: Vec<(u64, FaultKind)> = (0..n)
            .map(|_| {
                let kind = config.kinds[rng.below(config.kinds.len() as u64) as usize];
                (rng.below(span), kind)
            })
            .collect();
        faults.sort();
        faults.dedup_by_key(|f| f.0);
        let out = runner.run(sc, &faults);
        rep.random_runs += 1;
        rep.faults_injected += out.injected.len() as u64;
        tally(sc, &mut rep, &out, &faults);
    }
    rep
}

/// The clean run of one stage, then every operation index × every selected fault kind,
/// then the multi-fault runs that grow from each single fault; split over
/// [`Config::threads`] threads.
fn sweep(sc: &Scenario, base: &crate::flash::Bench, config: &Config, multi: bool) -> ScenarioReport {
    let mut rep = ScenarioReport::default();
    let clean = scenario::run(sc, base, &[]);
    rep.flash_ops = clean.ops;
    tally(sc, &mut rep, &clean, &[]);
    let cases: Vec<(u64, FaultKind)> = clean
        .log
        .iter()
        .enumerate()
        .flat_map(|(i, op)| {
            config.kinds.iter().filter(|k| eligible(config, sc.profile, op, **k)).map(move |k| (i as u64, *k))
        })
        .collect();
    let half = cases.len().div_ceil(config.threads.max(1)).max(1);
    let parts: Vec<ScenarioReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .chunks(half)
            .map(|chunk| {
                scope.spawn(move || {
                    let mut part = ScenarioReport::default();
                    let mut runner = scenario::Runner::new(base);
                    for fault in chunk {
                        let faults = [*fault];
                        let out = runner.run(sc, &faults);
                        part.faults_injected += out.injected.len() as u64;
                        tally(sc, &mut part, &out, &faults);
                        if !multi || out.injected.is_empty() {
                            continue;
                        }
                        follow_ups(sc, &mut runner, config, &faults, &out, 2, &mut part);
                    }
                    part
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("explorer threads do not panic")).collect()
    });
    for part in parts {
        rep.faults_injected += part.faults_injected;
        rep.bricked += part.bricked;
        rep.violations += part.violations;
        rep.residual_risk += part.residual_risk;
        rep.multi_fault_runs += part.multi_fault_runs;
        rep.degraded += part.degraded;
        rep.examples.extend(part.examples);
    }
    rep
}

/// The multi-fault runs grown from a run with `faults` (whose outcome is `out`): a cut at
/// each of the next [`Config::chain_window`] operations after the last fault (then, up to
/// three faults, recursively), or with [`Config::all_pairs`] every selected kind at every
/// later operation, and a third cut as in a chain after the pairs whose second fault is
/// within the chain window of the first (the nearby triples).
fn follow_ups(
    sc: &Scenario,
    runner: &mut scenario::Runner<'_>,
    config: &Config,
    faults: &[(u64, FaultKind)],
    out: &scenario::Outcome,
    depth: usize,
    part: &mut ScenarioReport,
) {
    let Some(&(last, _)) = faults.last() else { return };
    let later = |n: u64| {
        (last + 1..out.ops.min(last.saturating_add(1).saturating_add(n)))
            .filter_map(|j| out.log.get(j as usize).map(|op| (j, op)))
    };
    let mut next: Vec<(u64, FaultKind)> = Vec::new();
    if config.all_pairs && depth == 2 {
        for (j, op) in later(u64::MAX) {
            next.extend(config.kinds.iter().filter(|k| eligible(config, sc.profile, op, **k)).map(|k| (j, *k)));
        }
    } else if config.chain_window > 0 {
        next.extend(later(config.chain_window).map(|(j, _)| (j, FaultKind::Cut)));
    }
    for fault in next {
        let mut more = faults.to_vec();
        more.push(fault);
        let o = runner.run(sc, &more);
        part.multi_fault_runs += 1;
        part.faults_injected += o.injected.len() as u64;
        tally(sc, part, &o, &more);
        // Triples stay nearby: with every pair, a third cut follows only the pairs whose
        // second fault lies within the chain window of the first.
        let nearby = fault.0 <= last.saturating_add(config.chain_window);
        if depth < 3 && config.chain_window > 0 && o.injected.len() == more.len() && nearby {
            follow_ups(sc, runner, config, &more, &o, depth + 1, part);
        }
    }
}

/// Explores every scenario given.
pub fn explore_all(scenarios: &[Scenario], config: &Config) -> Report {
    let mut report = Report::default();
    for sc in scenarios {
        let r = explore(sc, config);
        report.total_faults_injected += r.faults_injected;
        report.total_bricked += r.bricked;
        report.total_violations += r.violations;
        report.total_residual_risk += r.residual_risk;
        report.total_multi_fault_runs += r.multi_fault_runs;
        report.total_degraded += r.degraded;
        report.scenarios.push(r);
    }
    report
}
