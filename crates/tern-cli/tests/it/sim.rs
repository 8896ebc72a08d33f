//! `tern sim powercut` and `tern sim cost`: JSON shape, exit codes, errors.

use crate::support::{tern, tern_ok};

#[test]
fn powercut_json_shape_and_exit_code() {
    let out = tern_ok([
        "sim",
        "powercut",
        "--profile",
        "nrf52840",
        "--scenario",
        "bad-app-rollback",
        "--random-runs",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let scenarios = v["scenarios"].as_array().expect("scenarios array");
    assert_eq!(scenarios.len(), 1);
    let s = &scenarios[0];
    for key in ["name", "profile", "flash_ops", "faults_injected", "bricked", "violations"] {
        assert!(s.get(key).is_some(), "missing {key}");
    }
    assert_eq!(s["name"], "bad-app-rollback");
    assert_eq!(s["profile"], "argon", "the generic name selects the Argon profile");
    let ops = s["flash_ops"].as_u64().expect("number");
    assert!(s["faults_injected"].as_u64().expect("number") >= 2 * ops);
    assert_eq!(v["total_bricked"], 0);
    assert_eq!(v["total_violations"], 0);
    assert_eq!(v["total_faults_injected"], s["faults_injected"]);
}

#[test]
fn cost_lists_every_selected_scenario() {
    let out = tern_ok(["sim", "cost", "--profile", "stm32f2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    let rows = v["scenarios"].as_array().expect("scenarios");
    assert!(rows.len() >= 8);
    for r in rows {
        assert!(
            r["tern"]["erases"].as_u64().is_some() && r["mcuboot_swap_move"]["bytes_programmed"].as_u64().is_some()
        );
    }
}

#[test]
fn unknown_scenario_is_a_one_line_error() {
    let run = tern(["sim", "powercut", "--scenario", "no-such-thing"]);
    assert_ne!(run.code, 0);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("no scenario matches"), "{}", run.stderr);
    let run = tern(["sim", "cost", "--corpus", "/no/such/dir"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("/no/such/dir"), "{}", run.stderr);
}

/// `--profile` names any profile, not only the two of the default run: the synthetic
/// scenarios are laid out on it (the Electron's three system parts, the P1's external
/// flash, the Tracker's 8 MiB) and swept.
#[test]
fn powercut_runs_the_synthetic_scenarios_on_any_profile() {
    for profile in ["electron", "p1", "tracker"] {
        let out = tern_ok([
            "sim",
            "powercut",
            "--profile",
            profile,
            "--scenario",
            "app-update",
            "--random-runs",
            "2",
            "--chain-window",
            "0",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        let s = &v["scenarios"][0];
        assert_eq!(s["profile"], profile);
        assert!(s["faults_injected"].as_u64().expect("number") > 0, "{profile}: {s}");
        assert_eq!(v["total_bricked"], 0, "{profile}");
        assert_eq!(v["total_violations"], 0, "{profile}");
    }
}
