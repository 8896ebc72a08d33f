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
    /// Cut power at every flash operation of every scenario (and tear writes and erases),
    /// reboot, and check the device never bricks. Exits non-zero on any brick or violation.
    Powercut(PowercutArgs),
    /// Flash cost per scenario: erases and bytes programmed, next to the minimum the layout
    /// allows and MCUboot's swap-move and swap-scratch.
    Cost(Selection),
    /// Simulated devices connected to a server (`tern sim device`, `tern sim fleet`).
    #[command(flatten)]
    Fleet(crate::fleet::SimCommand),
}

/// Which scenarios to run.
#[derive(Args)]
pub struct Selection {
    /// Only this profile: a platform name (photon, p1, electron, argon, boron, esomx, bsom,
    /// tracker) or a generic one (stm32f2 = photon, nrf52840 = argon).
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
    let all = scenario::all(corpus.as_deref()).map_err(anyhow::Error::msg)?;
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

/// Runs a `tern sim` command.
pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Fleet(cmd) => crate::fleet::run(cmd),
        Command::Powercut(args) => {
            let scenarios = select(&args.selection)?;
            let config = Config { seed: args.seed, random_runs: args.random_runs, ..Config::default() };
            let report = explore_all(&scenarios, &config);
            if args.selection.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{:<38} {:<9} {:>6} {:>7} {:>7} {:>10} {:>8}",
                    "scenario", "profile", "ops", "faults", "bricked", "violations", "residual"
                );
                for s in &report.scenarios {
                    println!(
                        "{:<38} {:<9} {:>6} {:>7} {:>7} {:>10} {:>8}",
                        s.name, s.profile, s.flash_ops, s.faults_injected, s.bricked, s.violations, s.residual_risk
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
                    "total: {} faults injected, {} bricked, {} violations, {} in the documented bootloader window (see docs/device.md)",
                    report.total_faults_injected, report.total_bricked, report.total_violations, report.total_residual_risk
                );
            }
            Ok(if report.total_bricked == 0 && report.total_violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Cost(sel) => {
            let reports: Vec<_> = select(&sel)?.iter().map(tern_sim::cost::report).collect();
            if sel.json {
                println!("{}", serde_json::to_string(&serde_json::json!({ "scenarios": reports }))?);
            } else {
                println!(
                    "{:<38} {:<9} {:>9} | {:>6} {:>10} | {:>6} {:>10} | {:>6} {:>10}",
                    "scenario", "profile", "image B", "erases", "tern B", "min er", "min B", "mcuboot", "swap B"
                );
                for r in &reports {
                    println!(
                        "{:<38} {:<9} {:>9} | {:>6} {:>10} | {:>6} {:>10} | {:>6} {:>10}",
                        r.name,
                        r.profile,
                        r.image_bytes,
                        r.tern.erases,
                        r.tern.bytes_programmed,
                        r.minimum.erases,
                        r.minimum.bytes_programmed,
                        r.mcuboot_swap_move.erases,
                        r.mcuboot_swap_move.bytes_programmed
                    );
                }
                println!("MCUboot swap-move and swap-scratch cost the same erases and bytes (MCUboot docs/design.md); see docs/device.md.");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
