//! `tern rollout start | status | list | pause | resume | abort | approve`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use tern_rollout::{Counts, RolloutState};
use tern_server::rollouts::RolloutView;
use tern_server::store::{RolloutRecord, RolloutStatus};

use crate::ops::{print_json, query_value, typed, Client};

/// `tern rollout …`.
#[derive(Subcommand)]
pub enum Command {
    /// Roll a release out to a product (or one of its groups), phase by phase.
    #[command(after_help = "Each phase is cumulative: `--phases 5,25%,100%` updates a canary of 5 devices, \
                            then up to a quarter of the eligible devices, then all of them. A phase opens \
                            when every device of the earlier phases is healthy (confirmed, still running \
                            the release and online after the soak), failed, expired or excluded. The \
                            rollout pauses itself when failures reach the threshold; pinned and development \
                            devices are never touched. Starting a rollout replaces the product's live one.")]
    Start(StartArgs),
    /// Show a rollout: per phase counts, failure rate against the threshold, the devices
    /// that need attention and why, bytes on the air so far and projected.
    #[command(after_help = "With --wait: exit 0 when the rollout completed, 2 when it paused (the reason \
                            is printed), 1 when it was aborted or the wait timed out.")]
    Status(StatusArgs),
    /// List rollouts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause a rollout: no new device starts; updates in flight finish.
    Pause(IdArgs),
    /// Resume a paused rollout (after a threshold pause, the failures so far are accepted).
    Resume(IdArgs),
    /// Abort a rollout for good.
    Abort(IdArgs),
    /// Let one device's update exceed its data budget.
    Approve {
        /// Rollout id.
        id: i64,
        /// Device id.
        device: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tern rollout start`.
#[derive(Args)]
pub struct StartArgs {
    /// The product.
    #[arg(long)]
    product: u32,
    /// The release of the product to bring devices to.
    #[arg(long)]
    release: u32,
    /// Limit the rollout to this group of the product.
    #[arg(long)]
    group: Option<String>,
    /// Cumulative phases: device counts (5) or percentages (25%); the last is 100%.
    #[arg(long, value_delimiter = ',', default_value = "5,25%,100%")]
    phases: Vec<String>,
    /// Pause when this share of finished devices failed (0 to 100; 0: any failure).
    #[arg(long, value_name = "PERCENT", default_value_t = 10)]
    threshold: u32,
    /// …once at least this many devices finished.
    #[arg(long, default_value_t = 3)]
    min_finished: u32,
    /// Devices updating at once (0: no limit).
    #[arg(long, default_value_t = 50)]
    max_concurrent: u32,
    /// Updates started per minute (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How long a device must stay healthy after confirming, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    soak: u64,
    /// Report a device that did not get the update within this many hours as expired.
    #[arg(long, value_name = "HOURS", default_value_t = 168)]
    expiry: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `tern rollout status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Rollout id.
    id: i64,
    /// Wait until the rollout completes, pauses or is aborted.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A rollout id.
#[derive(Args)]
pub struct IdArgs {
    /// Rollout id.
    id: i64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let client = Client::connect()?;
    match cmd {
        Command::Start(args) => {
            let body = json!({
                "product": args.product,
                "release": args.release,
                "group": args.group,
                "phases": args.phases,
                "failure_threshold_percent": args.threshold,
                "min_finished": args.min_finished,
                "max_concurrent": args.max_concurrent,
                "rate_per_minute": args.rate,
                "soak_seconds": args.soak,
                "expiry_hours": args.expiry,
            });
            let answer = client.post_json("/api/rollouts", body).context("rollout")?;
            if args.json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let view: RolloutView = typed(answer)?;
            println!(
                "rollout {} started: release {} to product {}{}",
                view.record.id,
                view.record.release,
                view.record.product,
                view.record.group.as_deref().map(|g| format!(" (group {g})")).unwrap_or_default()
            );
            println!("follow it with `tern rollout status {} --wait`", view.record.id);
        }
        Command::Status(args) => return status(&client, &args),
        Command::List { json } => {
            let answer = client.get_all("/api/rollouts")?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            let rollouts: Vec<RolloutRecord> = typed(answer)?;
            println!("{:<4} {:<8} {:<8} {:<12} {:<10} PHASE", "ID", "PRODUCT", "RELEASE", "GROUP", "STATE");
            for r in rollouts {
                println!(
                    "{:<4} {:<8} {:<8} {:<12} {:<10} {}/{}",
                    r.id,
                    r.product,
                    r.release,
                    r.group.as_deref().unwrap_or("-"),
                    r.status,
                    r.engine.phase + 1,
                    r.engine.spec.phases.len()
                );
            }
        }
        Command::Pause(args) => return control(&client, args, "pause"),
        Command::Resume(args) => return control(&client, args, "resume"),
        Command::Abort(args) => return control(&client, args, "abort"),
        Command::Approve { id, device, json } => {
            let answer = client
                .post_json(&format!("/api/rollouts/{id}/approve"), json!({ "device": device }))
                .with_context(|| format!("rollout {id}, device {}", query_value(&device)))?;
            if json {
                return print_json(&answer).map(|()| ExitCode::SUCCESS);
            }
            println!("device {device} may exceed its data budget for rollout {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn control(client: &Client, args: IdArgs, action: &str) -> Result<ExitCode> {
    let answer = client.post_json(&format!("/api/rollouts/{}/{action}", args.id), json!({}))?;
    if args.json {
        return print_json(&answer).map(|()| ExitCode::SUCCESS);
    }
    let view: RolloutView = typed(answer)?;
    println!("rollout {}: {}", args.id, state_text(&view.record.engine.state));
    Ok(ExitCode::SUCCESS)
}

fn state_text(state: &RolloutState) -> String {
    match state {
        RolloutState::Running => "running".to_owned(),
        RolloutState::Paused { reason } => format!("paused — {reason}"),
        RolloutState::Completed => "completed".to_owned(),
        RolloutState::Aborted => "aborted".to_owned(),
    }
}

fn status(client: &Client, args: &StatusArgs) -> Result<ExitCode> {
    let path = format!("/api/rollouts/{}", args.id);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last_line = String::new();
    loop {
        let answer = client.get(&path)?;
        let view: RolloutView = typed(answer.clone())?;
        let done = match view.record.status {
            RolloutStatus::Completed => Some(ExitCode::SUCCESS),
            RolloutStatus::Paused => Some(ExitCode::from(2)),
            RolloutStatus::Aborted => Some(ExitCode::FAILURE),
            RolloutStatus::Running => None,
        };
        if !args.wait || done.is_some() {
            if args.json {
                print_json(&answer)?;
            } else {
                print_view(&view);
            }
            return Ok(if args.wait { done.unwrap_or(ExitCode::SUCCESS) } else { ExitCode::SUCCESS });
        }
        if !args.json {
            let t = &view.summary.total;
            let line = format!(
                "rollout {}: phase {}/{} — {} healthy, {} soaking, {} updating, {} waiting, {} failed of {}",
                view.record.id,
                view.summary.phase + 1,
                view.summary.phases.len(),
                t.healthy + t.already_there,
                t.soaking,
                t.updating,
                t.waiting.total() + t.pending,
                t.failed,
                t.total
            );
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
        }
        if Instant::now() >= deadline {
            bail!("rollout {} still running after {} s", args.id, args.timeout);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_view(view: &RolloutView) {
    let r = &view.record;
    let s = &view.summary;
    println!(
        "rollout {} — release {} to product {}{} — {}",
        r.id,
        r.release,
        r.product,
        r.group.as_deref().map(|g| format!(" (group {g})")).unwrap_or_default(),
        state_text(&r.engine.state)
    );
    println!("started by {}", r.created_by);
    println!(
        "{:<6} {:<11} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>6} {:>7} {:>8} {:>8}",
        "PHASE",
        "SIZE",
        "DEVICES",
        "HEALTHY",
        "THERE",
        "UPDATING",
        "SOAKING",
        "WAITING",
        "FAILED",
        "EXPIRED",
        "EXCLUDED",
        "PENDING"
    );
    for p in &s.phases {
        let mark = if p.completed {
            "done"
        } else if p.open {
            "open"
        } else {
            ""
        };
        print_counts(&format!("{} {mark}", p.phase + 1), &p.size.to_string(), &p.counts);
    }
    print_counts("all", "", &s.total);
    let w = &s.total.waiting;
    if w.total() > 0 {
        println!(
            "waiting: {} offline, {} outside window, {} budget_exceeded, {} busy, {} capacity, {} rate, {} halted",
            w.offline, w.window, w.budget, w.busy, w.capacity, w.rate, w.halted
        );
    }
    let rate = s.failure_rate_percent.map_or("-".to_owned(), |p| format!("{p}%"));
    println!(
        "failures: {} of {} finished ({rate}); pauses at {}% once {} finished",
        s.failed, s.finished, s.threshold_percent, s.min_finished
    );
    println!("bytes on the air: {} so far, {} projected", view.air_bytes_so_far, view.air_bytes_projected);
    if !view.attention.is_empty() {
        println!("devices needing attention:");
        for m in &view.attention {
            println!(
                "  {:<20} phase {}  {:<24} {}",
                m.device,
                m.phase + 1,
                m.state,
                m.reason.as_deref().unwrap_or_default()
            );
        }
    }
}

fn print_counts(phase: &str, size: &str, c: &Counts) {
    println!(
        "{:<6} {:<11} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>6} {:>7} {:>8} {:>8}",
        phase,
        size,
        c.total,
        c.healthy,
        c.already_there,
        c.updating,
        c.soaking,
        c.waiting.total(),
        c.failed,
        c.expired,
        c.excluded,
        c.pending
    );
}
