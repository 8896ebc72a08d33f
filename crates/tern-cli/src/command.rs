//! `tern device reboot | safe-mode | factory-restore | cancel ID [--wait]`: device commands.
//!
//! A command goes to the device over MQTT (`POST /api/devices/{id}/commands`; `cancel`
//! goes through `POST /api/attempts/{id}/cancel`, which stores the cancellation and sends
//! the device a cancel command). With `--wait` the CLI follows the server's event stream
//! for the device's answer — the Describe it sends after rebooting, or for `cancel` the
//! Result it reports for the attempt — and prints the outcome in one line. The exit status
//! is 0 only when the device answered with the outcome asked for.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::ops::{print_json, query_value, typed, Client};
use tern_server::api::types::DeviceDetail;
use tern_server::store::{AttemptRecord, AttemptStatus, Event, Inventory, ResultRecord};

/// Arguments shared by `reboot`, `safe-mode` and `factory-restore`.
#[derive(Args)]
pub struct CommandArgs {
    /// Device id.
    id: String,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Arguments of `tern device cancel`.
#[derive(Args)]
pub struct CancelArgs {
    /// Device id: its update attempt in flight is cancelled.
    id: String,
    #[command(flatten)]
    wait: WaitArgs,
}

/// How to follow the device's answer.
#[derive(Args)]
pub struct WaitArgs {
    /// Wait for the device's answer and report the outcome; exit non-zero when it never
    /// answers or the outcome is not the one asked for.
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
    /// Print JSON: the command sent (or the cancelled attempt), and with --wait the
    /// outcome and the device's answer.
    #[arg(long)]
    json: bool,
}

/// The commands that reboot the device, each with the outcome it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reboot into the application.
    Reboot,
    /// Reboot into safe mode once.
    SafeMode,
    /// Restore the factory (backup) application, then boot it.
    FactoryRestore,
}

impl Action {
    /// The action's name in the API.
    fn api_name(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::SafeMode => "safe_mode",
            Action::FactoryRestore => "factory_restore",
        }
    }
}

/// Runs `tern device reboot | safe-mode | factory-restore`.
pub fn run(client: &Client, action: Action, args: CommandArgs) -> anyhow::Result<ExitCode> {
    let CommandArgs { id, wait } = args;
    let device_path = format!("/api/devices/{}", query_value(&id));
    // Events after this one are news: the device's answer is the first Describe among them.
    let since = latest_event(client, &device_path).with_context(|| format!("device {id}"))?;
    let sent = client
        .post_json(&format!("{device_path}/commands"), json!({ "action": action.api_name() }))
        .with_context(|| format!("device {id}"))?;
    if !wait.wait {
        if wait.json {
            print_json(&sent)?;
        } else {
            println!(
                "{} sent to {id} (command {}); follow it with `tern events --device {id}`",
                action.api_name(),
                sent["command_id"]
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    // The answer is the first Describe after the server announced the command. A Describe
    // can also overtake that announcement (the device reboots faster than the server
    // stores the event): one that already shows the outcome asked for is the answer; any
    // other one before the announcement is the device's periodic Describe of its old state.
    let mut announced = false;
    let answered = next_event(client, &id, since, deadline, |e| match e.kind.as_str() {
        // Event data is per kind: a command's announcement names the command it sent.
        "device.command_sent" if e.data["command_id"] == sent["command_id"] => {
            announced = true;
            false
        }
        "device.described" => announced || described(e).is_some_and(|i| judge(action, &id, &i).0),
        _ => false,
    })?;
    let Some(event) = answered else {
        let line =
            format!("{id} did not describe itself within {} s after the {} command", wait.timeout, action.api_name());
        return answer(&wait, &id, &sent, None, false, &line);
    };
    let inventory = described(&event).ok_or_else(|| anyhow!("the server sent a Describe it cannot read"))?;
    let (ok, line) = judge(action, &id, &inventory);
    answer(&wait, &id, &sent, Some(&event.data), ok, &line)
}

/// The inventory a `device.described` event carries.
fn described(event: &Event) -> Option<Inventory> {
    serde_json::from_value(event.data.clone()).ok()
}

/// Prints the outcome (one line, or JSON) and turns it into the exit status.
fn answer(
    wait: &WaitArgs,
    id: &str,
    sent: &Value,
    inventory: Option<&Value>,
    ok: bool,
    line: &str,
) -> anyhow::Result<ExitCode> {
    if wait.json {
        print_json(&json!({ "device": id, "command": sent, "ok": ok, "outcome": line, "inventory": inventory }))?;
    } else if ok {
        println!("{line}");
    }
    if !ok {
        eprintln!("error: {line}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Whether the Describe `inventory` is the outcome `action` asked for, and the line that
/// says what the device did.
pub fn judge(action: Action, id: &str, inventory: &Inventory) -> (bool, String) {
    let boot = inventory.boot_reason.as_str();
    let cause = inventory.safe_mode.as_deref();
    let app = application(inventory);
    match (action, boot) {
        (Action::SafeMode, "safe_mode") if cause == Some("requested") => (
            true,
            format!("{id} in safe mode (requested){}", app.map(|a| format!(", {a} installed")).unwrap_or_default()),
        ),
        (Action::FactoryRestore, "factory_restore") => {
            (true, format!("{id} factory image restored: {}", app.unwrap_or_else(|| "no application".into())))
        }
        (_, "safe_mode") => (
            false,
            format!(
                "{id} rebooted in safe mode ({}){}",
                cause.unwrap_or("unknown cause"),
                if action == Action::SafeMode { "" } else { ", not running its application" }
            ),
        ),
        (Action::Reboot, _) => (true, format!("{id} rebooted: {}, {}", boot_words(boot), app_state(inventory, app))),
        (Action::SafeMode, _) => {
            (false, format!("{id} rebooted but not in safe mode: {}, {}", boot_words(boot), app_state(inventory, app)))
        }
        (Action::FactoryRestore, _) => (
            false,
            format!(
                "{id} rebooted without restoring a factory image (does it hold one?): {}, {}",
                boot_words(boot),
                app_state(inventory, app)
            ),
        ),
    }
}

fn boot_words(boot: &str) -> String {
    match boot {
        "normal" => "normal boot".into(),
        "test_boot" => "test boot".into(),
        "rollback" => "rolled back".into(),
        "factory_restore" => "factory image restored".into(),
        other => format!("boot {other}"),
    }
}

/// `application v7 confirmed` / `… on test`, or that there is none.
fn app_state(inventory: &Inventory, app: Option<String>) -> String {
    match app {
        Some(app) if inventory.confirmed => format!("{app} confirmed"),
        Some(app) => format!("{app} not confirmed yet"),
        None => "no application".into(),
    }
}

/// `application v7` for the described application module (user part 1), if any.
fn application(inventory: &Inventory) -> Option<String> {
    let user_part = tern_image::ModuleFunction::UserPart.code();
    inventory.modules.iter().find(|m| m.function == user_part).map(|m| format!("application v{}", m.version))
}

/// Runs `tern device cancel`.
pub fn cancel(client: &Client, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let CancelArgs { id, wait } = args;
    let device_path = format!("/api/devices/{}", query_value(&id));
    let device: DeviceDetail = typed(client.get(&device_path).with_context(|| format!("device {id}"))?)?;
    let Some(in_flight) = device.attempts.iter().find(|a| !a.finished) else {
        let last =
            device.attempts.first().map(|a| format!(" (last: attempt {} {})", a.id, a.state)).unwrap_or_default();
        bail!("device {id} has no update attempt in flight{last}");
    };
    let attempt_id = in_flight.id;
    let since = latest_event(client, &device_path)?;
    let answer = client
        .post_json(&format!("/api/attempts/{attempt_id}/cancel"), json!({}))
        .with_context(|| format!("device {id}: attempt {attempt_id}"))?;
    let attempt: AttemptRecord = typed(answer.clone())?;
    let state = attempt.state;
    let progress = format!("{} of {} bytes", attempt.bytes_done, attempt.bytes_total);
    if !wait.wait {
        if wait.json {
            print_json(&answer)?;
        } else {
            println!("{id}: attempt {attempt_id} {state} ({progress} delivered); the device was told to drop it");
        }
        return Ok(if state == AttemptStatus::Cancelled { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    // The device acknowledges with its Result for the attempt.
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let wanted = attempt_id as u64;
    let result: Option<ResultRecord> = next_event(client, &id, since, deadline, |e| {
        e.kind == "device.result"
            && serde_json::from_value::<ResultRecord>(e.data.clone()).is_ok_and(|r| r.attempt == wanted)
    })?
    .and_then(|e| serde_json::from_value(e.data).ok());
    let answer = client.get(&format!("/api/attempts/{attempt_id}")).unwrap_or(answer);
    let state = typed::<AttemptRecord>(answer.clone()).map_or(state, |a| a.state);
    let (ok, line) = match &result {
        Some(r) if r.outcome == "cancelled" && state == AttemptStatus::Cancelled => {
            (true, format!("{id}: attempt {attempt_id} cancelled ({progress} delivered); the device dropped it"))
        }
        Some(r) => {
            (false, format!("{id}: attempt {attempt_id} is {state}; the device reported {} ({})", r.outcome, r.reason))
        }
        None => (
            false,
            format!(
                "{id}: attempt {attempt_id} is {state}, but the device did not acknowledge within {} s",
                wait.timeout
            ),
        ),
    };
    if wait.json {
        print_json(&json!({ "device": id, "attempt": answer, "ok": ok, "outcome": line, "result": result }))?;
    } else if ok {
        println!("{line}");
    }
    if !ok {
        eprintln!("error: {line}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The id of the device's newest stored event (0 when it has none).
fn latest_event(client: &Client, device_path: &str) -> anyhow::Result<i64> {
    let device: DeviceDetail = typed(client.get(device_path)?)?;
    Ok(device.history.iter().map(|e| e.id).max().unwrap_or(0))
}

/// The first event of `device` after event `since` that `wanted` accepts, or `None` when
/// none arrives before `deadline`.
fn next_event(
    client: &Client,
    device: &str,
    since: i64,
    deadline: Instant,
    mut wanted: impl FnMut(&Event) -> bool,
) -> anyhow::Result<Option<Event>> {
    let events = client.event_stream(Some(device), Some(since))?;
    // The stream blocks between events: a reader thread hands them over, so the deadline
    // holds however long the server stays silent.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(events).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else { continue };
            if tx.send(serde_json::from_str::<Event>(data.trim())).is_err() {
                break;
            }
        }
    });
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(event)) if wanted(&event) => return Ok(Some(event)),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => bail!("event stream: bad event: {err}"),
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the server's event stream ended"),
        }
    }
}
