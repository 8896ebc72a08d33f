//! `tern sim`: the simulator's power-cut explorer and flash cost report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use tern_sim::explorer::{explore_all, Config};
use tern_sim::scenario::{self, Scenario};

/// Simulator commands.
#[derive(Subcommand)]
pub enum Command {
    /// Cut power at every flash operation of every scenario (and tear writes and erases, or
    /// inject the other fault kinds of --faults), plus nearby multi-fault chains, reboot,
    /// and check the device never bricks. Exits non-zero on any brick or violation.
    Powercut(PowercutArgs),
    /// Flash cost per scenario: erases and bytes programmed, next to the minimum the layout
    /// allows and MCUboot's swap-move and swap-scratch; erases of the most-erased state
    /// sector per update, and the most-erased sector of the run.
    Cost(Selection),
    /// Simulated devices connected to a server (`tern sim device`, `tern sim fleet`).
    #[command(flatten)]
    Fleet(crate::fleet::SimCommand),
}

/// Which scenarios to run.
#[derive(Args)]
pub struct Selection {
    /// Only this profile: a platform name (photon, p1, electron, argon, boron, esomx, bsom,
    /// tracker) or a generic one (stm32f2 = photon, nrf52840 = argon). Without it the
    /// synthetic scenarios run on photon and argon (one per MCU family); with it, on the
    /// profile named.
    #[arg(long)]
    profile: Option<String>,
    /// Only this scenario.
    #[arg(long)]
    scenario: Option<String>,
    /// The firmware corpus, for the real-binary scenarios (default: $TERN_CORPUS).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Arguments of `tern sim powercut`.
#[derive(Args)]
pub struct PowercutArgs {
    #[command(flatten)]
    selection: Selection,
    /// Seed of the random multi-fault runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random multi-fault runs per scenario.
    #[arg(long, default_value_t = 20)]
    random_runs: u64,
    /// Fault kinds to inject, comma-separated, or `all`: cut, torn_write, torn_erase
    /// (power losses), scatter_tear (a torn program whose bits land anywhere in the page),
    /// fail_program, fail_erase (an error with the power on), silent_program,
    /// silent_erase (no error, wrong result), marginal_program, marginal_erase (reads right,
    /// drifts after a later reboot), retention (a bit of a stored image flips),
    /// wear_out (the erased sectors fail from then on).
    #[arg(long, default_value = "cut,torn_write,torn_erase")]
    faults: String,
    /// Nearby multi-fault chains: after each single fault, cut power at each of the next N
    /// operations (the recovery's), and once more from each of those (0: off).
    #[arg(long, default_value_t = 4)]
    chain_window: u64,
    /// Every pair of faults on the synthetic scenarios: after each single fault, every
    /// selected kind at every later operation (a long run; replaces the chains' second
    /// fault), and a third cut at each of the next --chain-window operations after the
    /// pairs whose second fault is within --chain-window of the first (nearby triples).
    #[arg(long)]
    all_pairs: bool,
    /// Inject retention and wear_out at every program and erase (installed slots, factory
    /// image, state banks, progress markers), not only in the exchange area; a flip in the
    /// only copy of the bootloader or of a system part bricks by design (docs/device.md).
    #[arg(long)]
    stored_faults_anywhere: bool,
    /// Threads each scenario's faults are split over.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
}

fn fault_kinds(list: &str) -> Result<Vec<tern_sim::flash::FaultKind>> {
    if list == "all" {
        return Ok(tern_sim::flash::ALL_FAULTS.to_vec());
    }
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(kind) = tern_sim::flash::FaultKind::from_name(name) else {
            let known: Vec<&str> = tern_sim::flash::ALL_FAULTS.iter().map(|k| k.name()).collect();
            bail!("--faults {name}: unknown fault kind (known: {}, or all)", known.join(", "));
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        bail!("--faults: no fault kind given");
    }
    Ok(kinds)
}

fn select(sel: &Selection) -> Result<Vec<Scenario>> {
    let corpus = sel.corpus.clone().or_else(|| std::env::var_os("TERN_CORPUS").map(PathBuf::from));
    if let Some(dir) = &corpus {
        if !dir.is_dir() {
            bail!("{}: corpus directory not found", dir.display());
        }
    }
    let profile = match sel.profile.as_deref() {
        Some(name) => Some(tern_device::profile::by_name(name).ok_or_else(|| {
            let known: Vec<&str> = tern_device::profile::names().collect();
            anyhow::anyhow!("--profile {name}: unknown profile (known: {})", known.join(", "))
        })?),
        None => None,
    };
    let mut all = scenario::all(corpus.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(p) = profile.filter(|p| !all.iter().any(|s| s.profile.name == p.name)) {
        all.extend(scenario::synthetic(p));
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| profile.is_none_or(|p| s.profile.name == p.name))
        .filter(|s| sel.scenario.as_deref().is_none_or(|n| s.name == n))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario matches the given --profile/--scenario");
    }
    Ok(chosen)
}

/// Updates in a row of the steady-state wear figure of `tern sim cost`.
const ENDURANCE_UPDATES: u64 = 24;

/// Runs a `tern sim` command.
pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Fleet(cmd) => crate::fleet::run(cmd),
        Command::Powercut(args) => {
            let kinds = fault_kinds(&args.faults)?;
            let scenarios = select(&args.selection)?;
            let config = Config {
                seed: args.seed,
                random_runs: args.random_runs,
                kinds,
                chain_window: args.chain_window,
                all_pairs: args.all_pairs,
                threads: args.threads as usize,
                stored_anywhere: args.stored_faults_anywhere,
                ..Config::default()
            };
            let report = explore_all(&scenarios, &config);
            if args.selection.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{:<38} {:<9} {:>6} {:>7} {:>7} {:>7} {:>10} {:>8} {:>8}",
                    "scenario", "profile", "ops", "faults", "multi", "bricked", "violations", "residual", "degraded"
                );
                for s in &report.scenarios {
                    println!(
                        "{:<38} {:<9} {:>6} {:>7} {:>7} {:>7} {:>10} {:>8} {:>8}",
                        s.name,
                        s.profile,
                        s.flash_ops,
                        s.faults_injected,
                        s.multi_fault_runs,
                        s.bricked,
                        s.violations,
                        s.residual_risk,
                        s.degraded
                    );
                    if s.stage_ops.len() > 1 {
                        let ops: Vec<String> = s.stage_ops.iter().map(u64::to_string).collect();
                        println!(
                            "    {} stages (ops {}): {}",
                            s.stage_ops.len(),
                            ops.join(" + "),
                            s.modules.join(", ")
                        );
                    }
                    for e in &s.examples {
                        println!("    {e}");
                    }
                }
                println!(
                    "total: {} faults injected, {} multi-fault runs, {} bricked, {} violations, {} in the documented bootloader window (see docs/device.md), {} degraded by wear-out",
                    report.total_faults_injected,
                    report.total_multi_fault_runs,
                    report.total_bricked,
                    report.total_violations,
                    report.total_residual_risk,
                    report.total_degraded
                );
                let mut residual: Vec<(&str, u64)> = Vec::new();
                for s in &report.scenarios {
                    match residual.iter_mut().find(|(p, _)| *p == s.profile) {
                        Some((_, n)) => *n += s.residual_risk,
                        None => residual.push((&s.profile, s.residual_risk)),
                    }
                }
                let per: Vec<String> = residual.iter().map(|(p, n)| format!("{p} {n}")).collect();
                println!("residual bootloader-window faults per profile: {}", per.join(", "));
            }
            Ok(if report.total_bricked == 0 && report.total_violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Cost(sel) => {
            let chosen = select(&sel)?;
            let reports: Vec<_> = chosen.iter().map(tern_sim::cost::report).collect();
            let mut profiles: Vec<&'static tern_device::profile::Profile> = Vec::new();
            for sc in &chosen {
                if !profiles.iter().any(|p| p.name == sc.profile.name) {
                    profiles.push(sc.profile);
                }
            }
            let endurance: Vec<_> = profiles.iter().map(|p| tern_sim::cost::endurance(p, ENDURANCE_UPDATES)).collect();
            if sel.json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({ "scenarios": reports, "endurance": endurance }))?
                );
            } else {
                println!(
                    "{:<38} {:<9} {:>9} | {:>6} {:>10} | {:>6} {:>10} | {:>6} {:>10} | {:>9} {:<22}",
                    "scenario",
                    "profile",
                    "image B",
                    "erases",
                    "tern B",
                    "min er",
                    "min B",
                    "mcuboot",
                    "swap B",
                    "state/upd",
                    "hottest sector (erases)"
                );
                for r in &reports {
                    println!(
                        "{:<38} {:<9} {:>9} | {:>6} {:>10} | {:>6} {:>10} | {:>6} {:>10} | {:>9.2} {:<22}",
                        r.name,
                        r.profile,
                        r.image_bytes,
                        r.tern.erases,
                        r.tern.bytes_programmed,
                        r.minimum.erases,
                        r.minimum.bytes_programmed,
                        r.mcuboot_swap_move.erases,
                        r.mcuboot_swap_move.bytes_programmed,
                        r.state_sector_erases_per_update,
                        format!("{} ({})", r.hottest_sector.0, r.hottest_sector.1)
                    );
                }
                println!("MCUboot swap-move and swap-scratch cost the same erases and bytes (MCUboot docs/design.md); see docs/device.md.");
                println!("state/upd: erases of the most-erased state-bank sector per update offered.");
                for e in &endurance {
                    println!(
                        "state record wear, {} application updates in a row on {}: {} state writes, most-erased state sector {} erases = {:.3} per update",
                        e.updates, e.profile, e.state_writes, e.state_sector_erases, e.state_sector_erases_per_update
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
