//! Clean runs of every scenario, and the exhaustive power-cut sweep.

use tern_sim::explorer::{explore_all, Config};
use tern_sim::scenario::{self, run};

fn scenarios() -> Vec<scenario::Scenario> {
    scenario::all(Some(&tern_testkit::corpus())).expect("corpus scenarios load")
}

#[test]
fn every_scenario_succeeds_without_faults() {
    for sc in scenarios() {
        let base = sc.provisioned().bench.borrow().clone();
        let out = run(&sc, &base, &[]);
        assert!(
            out.bricked.is_none() && out.violations.is_empty(),
            "{} on {}: {:?} {:?}",
            sc.name,
            sc.profile.name,
            out.bricked,
            out.violations
        );
        assert!(out.ops > 0, "{}: no flash operations", sc.name);
        println!(
            "{:<40} {:<9} ops {:>5} boots {:>3} blocks {:>4}",
            sc.name, sc.profile.name, out.ops, out.boots, out.blocks_sent
        );
    }
}

/// Acceptance: every scenario × both profiles × every operation index × every fault kind,
/// plus seeded random multi-fault runs: nothing bricks, no invariant breaks.
#[test]
fn exhaustive_power_cut_sweep() {
    let report = explore_all(&scenarios(), &Config::default());
    for s in &report.scenarios {
        println!(
            "{:<40} {:<9} ops {:>5} faults {:>6} bricked {} violations {} residual {} {:?}",
            s.name, s.profile, s.flash_ops, s.faults_injected, s.bricked, s.violations, s.residual_risk, s.examples
        );
        // Every operation index received a cut and a torn fault.
        assert!(s.faults_injected >= 2 * s.flash_ops, "{}: not every operation was faulted", s.name);
        // The residual risk exists only where documented: the bootloader copy, which no
        // profile hands to an immutable first stage (docs/device.md).
        let documented = s.name.contains("bootloader");
        assert_eq!(s.residual_risk > 0, documented, "{} on {}: residual risk {}", s.name, s.profile, s.residual_risk);
    }
    println!(
        "total faults {} bricked {} violations {} residual {}",
        report.total_faults_injected, report.total_bricked, report.total_violations, report.total_residual_risk
    );
    assert_eq!(report.total_bricked, 0);
    assert_eq!(report.total_violations, 0);
    // The staged real-module upgrades ran, stage by stage, with every operation faulted.
    let staged =
        |name: &str| report.scenarios.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} did not run"));
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "photon-1.5.2-to-2.3.1-bootloader-and-system-parts-staged",
            "photon",
            &["photon-bootloader@2.3.1+lto.bin", "photon-system-part1@2.3.1.bin", "photon-system-part2@2.3.1.bin"],
        ),
        (
            "boron-1.5.2-to-2.0.1-bootloader-softdevice-system-part-staged",
            "boron",
            &["boron-bootloader@2.0.1.bin", "boron-softdevice@1.4.1.bin", "boron-system-part1@2.0.1.bin"],
        ),
    ];
    for (name, profile, modules) in cases {
        let s = staged(name);
        assert_eq!(s.profile, *profile);
        assert_eq!(s.modules, *modules, "{name}: real modules");
        // One stage per offer; each stage copies at least its modules (so real modules of
        // hundreds of KiB make thousands of operations, not a handful).
        let stages = if *profile == "photon" { 3 } else { 2 };
        assert_eq!(s.stage_ops.len(), stages, "{name}: {:?}", s.stage_ops);
        assert!(s.stage_ops.iter().all(|&ops| ops > 50), "{name}: {:?}", s.stage_ops);
        assert_eq!(s.stage_ops.iter().sum::<u64>(), s.flash_ops);
        assert!(s.flash_ops > 2000, "{name}: {} operations", s.flash_ops);
        assert!(s.faults_injected >= 2 * s.flash_ops + s.random_runs, "{name}: {}", s.faults_injected);
        assert_eq!((s.bricked, s.violations), (0, 0), "{name}: {:?}", s.examples);
    }
}

/// `--all-pairs` runs a second fault at every later operation of every single-fault run
/// (it once ran none: the range end overflowed), and the nearby triples after the pairs
/// whose faults lie within the chain window; counted here independently of the explorer.
#[test]
fn all_pairs_runs_every_pair() {
    use tern_sim::flash::FaultKind;
    let sc = scenario::synthetic(&tern_device::profile::STM32F2)
        .into_iter()
        .find(|s| s.name == "app-update")
        .expect("app-update exists");
    let base = sc.provisioned().bench.borrow().clone();
    let clean = run(&sc, &base, &[]);
    let (mut pairs, mut triples) = (0u64, 0u64);
    for i in 0..clean.ops {
        let single = run(&sc, &base, &[(i, FaultKind::Cut)]);
        pairs += single.ops - i - 1;
        for j in i + 1..single.ops.min(i + 3) {
            let pair = run(&sc, &base, &[(i, FaultKind::Cut), (j, FaultKind::Cut)]);
            if pair.injected.len() == 2 {
                triples += pair.ops.min(j + 3) - j - 1;
            }
        }
    }
    let config =
        Config { kinds: vec![FaultKind::Cut], all_pairs: true, chain_window: 2, random_runs: 0, ..Config::default() };
    let rep = tern_sim::explorer::explore(&sc, &config);
    assert!(pairs > 10 * clean.ops, "{pairs} pairs for {} operations", clean.ops);
    assert_eq!(rep.multi_fault_runs, pairs + triples);
    assert_eq!((rep.bricked, rep.violations), (0, 0), "{:?}", rep.examples);
}

/// Runs from one base that restore only the sectors the previous run changed end exactly
/// as runs from a full copy of the base.
#[test]
fn runner_restores_what_a_full_copy_gives() {
    use tern_sim::flash::ALL_FAULTS;
    for sc in scenario::synthetic(&tern_device::profile::NRF52840).into_iter().take(4) {
        let base = sc.provisioned().bench.borrow().clone();
        let clean = run(&sc, &base, &[]);
        let mut runner = scenario::Runner::new(&base);
        for (k, kind) in ALL_FAULTS.iter().enumerate() {
            let faults = [((k as u64 * 7) % clean.ops, *kind), ((k as u64 * 7) % clean.ops + 3, *kind)];
            let a = runner.run(&sc, &faults);
            let b = run(&sc, &base, &faults);
            let key = |o: &scenario::Outcome| {
                (o.log.clone(), o.injected.clone(), o.boots, o.blocks_sent, o.cost.clone(), o.sector_erases.clone())
            };
            assert!(key(&a) == key(&b), "{} {faults:?}", sc.name);
            assert_eq!((&a.bricked, &a.violations), (&b.bricked, &b.violations), "{} {faults:?}", sc.name);
        }
    }
}
