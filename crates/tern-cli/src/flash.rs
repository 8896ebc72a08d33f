//! `tern flash DEVICE [FILE...] [--target VERSION] [--heal] [--yes] [--dry-run] [--wait]
//! [--json]`: update one device.
//!
//! Module files go into the server's catalog (with their signed statements); the server
//! builds the install plan — the modules asked for plus every missing module their
//! dependencies need, whole Device OS releases, in dependency order, split into stages
//! that fit what the device can stage at once — against what the device last described,
//! and the plan is printed with its estimated bytes on the air before anything is sent. A
//! cellular device sends nothing until the operator types that number (or passes `--yes`).
//! A release bundle (`tern release build`) is planned the same way: only the modules the
//! device does not already run, under the same rules.
//!
//! Starting the plan carries a client key (`Idempotency-Key`; `--client-key`, else a new
//! random one). When the connection to the server breaks — while planning, starting or
//! following the attempt — `tern flash` reconnects (for up to `--reconnect-for` seconds)
//! and asks again with the same key, so it finds the attempt its first request started
//! instead of starting a second one, and says what happened before it exits; if the
//! server stays unreachable it says the outcome is unknown (exit status 4) and how to find
//! it out.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::ops::{is_unreachable, module_line, print_json, query_value, typed, upload_module_with, Client};
use tern_server::api::types::DeviceDetail;
use tern_server::store::{AttemptRecord, AttemptStatus, PlanRecord};

/// `tern flash`.
#[derive(Args)]
pub struct FlashArgs {
    /// Device id.
    device: String,
    /// Module files to install (the plan adds the system modules they need), or one
    /// signed release bundle (`tern release build`: the modules the device does not run).
    files: Vec<PathBuf>,
    /// Bring the device to this Device OS release, like `particle update --target`: a
    /// release name ("2.3.1") or a system module version ("2302"). Every system part of
    /// that release goes (with the bootloader it needs), from the catalog.
    #[arg(long, value_name = "VERSION")]
    target: Option<String>,
    /// Allow --target (or the files) to install Device OS modules older than the device's.
    #[arg(long)]
    allow_downgrade: bool,
    /// Heal the device: send whatever its installed modules are missing (no FILE needed).
    #[arg(long)]
    heal: bool,
    /// Private key to sign statements for modules that have none (PEM).
    #[arg(long, env = "TERN_KEY", value_name = "KEY")]
    key: Option<PathBuf>,
    /// Send without asking, even to a cellular device.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Show the plan and stop: nothing is sent.
    #[arg(long)]
    dry_run: bool,
    /// Wait until the attempt ends, with a progress bar; exit 0 only if the device
    /// confirmed the update, non-zero with the reason otherwise.
    #[arg(long)]
    wait: bool,
    /// Print the attempt as JSON (with --wait: the final attempt, including its plan).
    #[arg(long)]
    json: bool,
    /// With --wait, give up waiting after this many seconds (the attempt goes on).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// The client key the start carries (default: a new random one). Running `tern flash`
    /// again for the same device with the same key starts nothing new: it reports the
    /// attempt the first run started.
    #[arg(long, value_name = "KEY")]
    client_key: Option<String>,
    /// When the server cannot be reached, keep reconnecting for this many seconds before
    /// giving up (exit status 4: the outcome is unknown).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    reconnect_for: u64,
}

/// Exit status when the operator did not confirm (nothing was sent).
const NOT_CONFIRMED: u8 = 3;
/// Exit status when the server could not be reached again: whether the update started, or
/// how it ended, is unknown.
const UNKNOWN: u8 = 4;

/// A new random client key.
fn new_client_key() -> String {
    use rand_core::RngCore;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!("tern-flash-{}", hex::encode(bytes))
}

/// Calls `call` until it gets an answer from the server, reconnecting with back-off while
/// the server is unreachable, for up to `--reconnect-for` seconds; says so on stderr
/// (`what` names the step). Returns the answer and whether it took a reconnection; an
/// unreachable server after that time is the error (see [`is_unreachable`]).
fn reconnecting<T>(
    args: &FlashArgs,
    client: &Client,
    what: &str,
    mut call: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, bool)> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut lost = false;
    loop {
        match call() {
            Ok(value) => {
                if lost {
                    eprintln!("reconnected to {}", client.server());
                }
                return Ok((value, lost));
            }
            Err(err) if is_unreachable(&err) => {
                if !lost {
                    eprintln!("lost the server while {what} ({err:#}); reconnecting to find out what happened");
                    lost = true;
                }
                if start.elapsed() >= Duration::from_secs(args.reconnect_for) {
                    return Err(err);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// The error of a plan that could not be made: when the server stayed unreachable, says
/// that nothing was started (a plan is only made, never sent, before the start).
fn plan_not_made(args: &FlashArgs, client: &Client, what: &str, err: anyhow::Error) -> anyhow::Error {
    if is_unreachable(&err) {
        anyhow!(
            "{what}: device {}: {} stayed unreachable for {} s while making the plan: nothing was started \
             ({err:#})",
            args.device,
            client.server(),
            args.reconnect_for
        )
    } else {
        anyhow!("{what}: device {}: {err:#}", args.device)
    }
}

fn is_bundle(path: &Path) -> anyhow::Result<bool> {
    let mut magic = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let n = std::io::Read::read(&mut file, &mut magic).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    Ok(n == magic.len() && magic == tern_image::bundle::MAGIC)
}

/// Runs `tern flash`.
pub fn run(args: FlashArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect()?;
    let device_path = format!("/api/devices/{}", query_value(&args.device));
    let bundles: Vec<bool> = args.files.iter().map(|f| is_bundle(f)).collect::<anyhow::Result<_>>()?;
    if let (true, Some(i)) = (args.files.len() > 1, bundles.iter().position(|&b| b)) {
        bail!("{}: a release bundle cannot be combined with other files", args.files[i].display());
    }
    let plan = match (args.files.as_slice(), bundles.as_slice()) {
        ([], _) if !args.heal && args.target.is_none() => {
            bail!("nothing to flash: name module files (or a release bundle), --target VERSION, or --heal")
        }
        ([single], [true]) => {
            if args.heal || args.target.is_some() {
                bail!(
                    "{}: a release bundle is sent as built: --heal and --target apply to module files",
                    single.display()
                );
            }
            let bytes = std::fs::read(single).map_err(|e| anyhow!("{}: cannot read: {e}", single.display()))?;
            // Making a plan changes nothing on the device: asking again is harmless.
            reconnecting(&args, &client, "making the plan", || {
                client.post_bytes(&format!("{device_path}/plans"), &bytes)
            })
            .map_err(|e| plan_not_made(&args, &client, &single.display().to_string(), e))?
            .0
        }
        (files, _) => {
            let key = args.key.as_deref().map(crate::key::load_signing_key).transpose()?;
            // Statements signed here name the device's platform (an asset declares none).
            let mut target = crate::release::SigningTarget::default();
            if key.is_some() && !files.is_empty() {
                let device = client.get(&device_path).with_context(|| format!("device {}", args.device))?;
                target.platform = Some(typed::<DeviceDetail>(device)?.summary.platform_id);
            }
            let mut hashes = Vec::new();
            for file in files {
                let module = upload_module_with(&client, file, key.as_ref(), &target)
                    .map_err(|e| anyhow!("{}: {e:#}", file.display()))?;
                if !args.json {
                    println!("{}: {}", file.display(), module_line(&module));
                }
                hashes.push(module.sha256);
            }
            let mut request = json!({ "modules": hashes, "allow_downgrade": args.allow_downgrade });
            if let Some(target) = &args.target {
                request["device_os"] = json!(target);
            }
            reconnecting(&args, &client, "making the plan", || {
                client.post_json(&format!("{device_path}/plans"), request.clone())
            })
            .map_err(|e| plan_not_made(&args, &client, "tern flash", e))?
            .0
        }
    };
    let record: PlanRecord = typed(plan.clone())?;
    print_plan(&record, args.json);
    if args.dry_run {
        if args.json {
            print_json(&plan)?;
        }
        eprintln!("plan {} not sent (--dry-run)", record.id);
        return Ok(ExitCode::SUCCESS);
    }
    let air_bytes = record.air_bytes;
    let mut body = json!({});
    if record.confirm_required {
        if !args.yes && !confirm(&args.device, &record, air_bytes)? {
            eprintln!("error: not confirmed: nothing was sent to {} (plan {} stays proposed)", args.device, record.id);
            return Ok(ExitCode::from(NOT_CONFIRMED));
        }
        body["confirm_air_bytes"] = json!(air_bytes);
    }
    let key = args.client_key.clone().unwrap_or_else(new_client_key);
    let start_path = format!("/api/plans/{}/start", record.id);
    let started = reconnecting(&args, &client, &format!("starting plan {}", record.id), || {
        client.post_json_keyed(&start_path, body.clone(), &key)
    });
    let ((status, attempt), reconnected) = match started {
        Ok(answer) => answer,
        Err(err) if is_unreachable(&err) => {
            eprintln!(
                "error: {} stayed unreachable for {} s: whether plan {} started on device {} is unknown. Run the \
                 same command with --client-key {key} to find out without starting it twice, or see `tern device \
                 show {}`",
                client.server(),
                args.reconnect_for,
                record.id,
                args.device,
                args.device
            );
            return Ok(ExitCode::from(UNKNOWN));
        }
        Err(err) => return Err(err.context(format!("device {}", args.device))),
    };
    let id = typed::<AttemptRecord>(attempt.clone())?.id;
    let said = match (status, reconnected) {
        // 200: an earlier request with this key had started it.
        (200, _) => format!("attempt {id} on device {} was already started (client key {key})", args.device),
        (_, true) => format!("attempt {id} started on device {} (the first request had not started it)", args.device),
        _ => format!("attempt {id} started on device {}", args.device),
    };
    if args.json {
        eprintln!("{said}");
    } else {
        println!("{said}");
    }
    if !args.wait {
        if args.json {
            print_json(&attempt)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let attempt = match wait(&client, id, &args) {
        Ok(attempt) => attempt,
        Err(err) if is_unreachable(&err) => {
            eprintln!(
                "error: {} stayed unreachable for {} s while following attempt {id} on device {}: it was started; \
                 how it ends is unknown. See `tern device show {}` when the server is back",
                client.server(),
                args.reconnect_for,
                args.device,
                args.device
            );
            return Ok(ExitCode::from(UNKNOWN));
        }
        Err(err) => return Err(err),
    };
    if args.json {
        print_json(&attempt)?;
    }
    let attempt: AttemptRecord = typed(attempt)?;
    match attempt.state {
        AttemptStatus::Confirmed => {
            if !args.json {
                println!("attempt {id}: confirmed by device {}", args.device);
            }
            Ok(ExitCode::SUCCESS)
        }
        state => {
            let reason = attempt.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            eprintln!("error: attempt {id} on device {} ended {state}{reason}", args.device);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Asks the operator to type the plan's bytes on the air; `true` when they did.
fn confirm(device: &str, plan: &PlanRecord, air_bytes: u64) -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    writeln!(
        err,
        "device {device} is {}: this update puts about {air_bytes} bytes ({}) on the air.",
        plan.connectivity.name(),
        human_bytes(air_bytes)
    )?;
    write!(err, "Type {air_bytes} to send it (anything else cancels): ")?;
    err.flush()?;
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line).context("cannot read the confirmation")?;
    if read == 0 {
        eprintln!();
        eprintln!("(no input: pass --yes to send without asking)");
        return Ok(false);
    }
    let typed: String = line.trim().chars().filter(|c| !matches!(c, ',' | '_' | ' ' | '\'')).collect();
    Ok(typed == air_bytes.to_string())
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Prints a plan: each module with why it is sent and, when the update goes in several
/// stages, what each stage carries, costs and leaves the device running.
fn print_plan(plan: &PlanRecord, to_stderr: bool) {
    let mut lines = Vec::new();
    lines.push(format!("plan {} for device {}:", plan.id, plan.device));
    let stages = &plan.stages;
    let staged = stages.len() > 1;
    let mut shown_stage = None;
    for (i, m) in plan.steps.iter().enumerate() {
        let stage = m.stage;
        if staged && shown_stage != Some(stage) {
            shown_stage = Some(stage);
            let s = &stages[usize::try_from(stage).unwrap_or(0).min(stages.len() - 1)];
            let after = match s.expect.as_str() {
                "safe_mode" => {
                    format!("then safe mode ({})", s.expect_detail.as_deref().unwrap_or("until a later stage"))
                }
                _ => "then runs normally".to_owned(),
            };
            lines.push(format!(
                "  stage {} of {}: {} bytes, about {} bytes on the air, one reboot; {after}",
                stage + 1,
                stages.len(),
                s.bytes,
                s.air_bytes
            ));
        }
        lines.push(format!(
            "  {}. {:<13} {:>2} v{:<6} {:>8} bytes at {:#010x}  {}",
            i + 1,
            m.function_name,
            m.index,
            m.version,
            m.size,
            m.start_address,
            m.reason.as_deref().unwrap_or(""),
        ));
        if let Some(patch) = &m.patch {
            let from = match &patch.source {
                Some(source) => format!("from the installed {}", &source[..12.min(source.len())]),
                None => "no usable source on the device".to_owned(),
            };
            lines.push(format!(
                "     sent as a {} patch of {} bytes ({:.1}% of the module; {from})",
                patch.kind(),
                patch.length,
                100.0 * f64::from(patch.length) / f64::from(m.size.max(1))
            ));
        }
    }
    let air = plan.air_bytes;
    let in_stages = if staged { format!(" in {} stages", stages.len()) } else { String::new() };
    lines.push(format!(
        "  {} bytes of modules{in_stages}, about {air} bytes ({}) on the air over {}",
        plan.bytes_total,
        human_bytes(air),
        plan.connectivity.name()
    ));
    if plan.air_bytes_full > air {
        lines.push(format!(
            "  whole modules would cost about {} bytes ({}): patches save {:.1}%",
            plan.air_bytes_full,
            human_bytes(plan.air_bytes_full),
            100.0 * (plan.air_bytes_full - air) as f64 / plan.air_bytes_full as f64
        ));
    }
    for line in lines {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Follows attempt `id` to its end with a progress bar (hidden when stderr is not a
/// terminal; state changes are printed as lines either way unless `--json`).
fn wait(client: &Client, id: i64, args: &FlashArgs) -> anyhow::Result<Value> {
    let deadline = args.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let bar = if std::io::stderr().is_terminal() && !args.json { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut last_state = String::new();
    let attempt = loop {
        let path = format!("/api/attempts/{id}");
        let (answer, _) = reconnecting(args, client, &format!("following attempt {id}"), || client.get(&path))?;
        let attempt: AttemptRecord = typed(answer.clone())?;
        let state = attempt.state.name().to_owned();
        bar.set_length(attempt.bytes_total);
        bar.set_position(attempt.bytes_done);
        bar.set_message(state.clone());
        let stages = attempt.stages.len();
        let state = if stages > 1 && !attempt.finished {
            format!("stage {} of {stages}: {state}", attempt.stage + 1)
        } else {
            state
        };
        if state != last_state && !args.json {
            let done = attempt.bytes_done;
            let total = attempt.bytes_total.max(1);
            bar.suspend(|| println!("attempt {id}: {state} ({}%)", done * 100 / total));
            last_state = state;
        }
        if attempt.finished {
            break answer;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bar.finish_and_clear();
            bail!(
                "attempt {id} is still {last_state} after {} s (it goes on; see `tern device show`)",
                args.timeout.unwrap_or(0)
            );
        }
        bar.tick();
        std::thread::sleep(Duration::from_millis(250));
    };
    bar.finish_and_clear();
    Ok(attempt)
}
