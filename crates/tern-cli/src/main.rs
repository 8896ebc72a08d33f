//! `tern`: the Tern command line.
//!
//! Thin glue over the library crates: argument parsing, file IO and output formatting.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod command;
mod delta;
mod flash;
mod fleet;
mod hexfile;
mod image;
mod key;
mod module;
mod ops;
mod products;
mod release;
mod rollout;
mod server;
mod sim;
mod statement;
mod tls;
mod token;
mod up;

/// Tern: over-the-air updates for modular microcontroller firmware.
#[derive(Parser)]
#[command(name = "tern", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect firmware module files (Particle, MCUboot, raw).
    #[command(subcommand)]
    Module(module::Command),
    /// Generate and show ED25519 signing keys.
    #[command(subcommand)]
    Key(key::Command),
    /// Releases: signed bundles (build, inspect, verify) and a product's numbered releases on
    /// the server (create, list, show).
    #[command(subcommand)]
    Release(release::Command),
    /// Write modules or bundles as one Intel HEX file for manufacturing.
    Hex(hexfile::Command),
    /// Sign, verify and inspect MCUboot images.
    #[command(subcommand)]
    Image(image::Command),
    /// Run the Tern server (HTTP API, event stream, MQTT device gateway).
    Server(server::Args),
    /// Remember a server and an operator token for the commands below.
    Login(ops::LoginArgs),
    /// Operator tokens (admin): create with a role and expiry, list, revoke, rotate.
    #[command(subcommand)]
    Token(token::Command),
    /// Register, list and show devices; reboot, safe mode, factory restore, cancel; remove,
    /// rotate a secret, disable and enable.
    #[command(subcommand)]
    Device(ops::DeviceCommand),
    /// Products: devices of one platform running one firmware line, and their releases.
    #[command(subcommand)]
    Product(products::ProductCommand),
    /// Groups: saved filters over a product's devices, with maintenance windows and budgets.
    #[command(subcommand)]
    Group(products::GroupCommand),
    /// Roll a release out to a product or group in phases, with brakes.
    #[command(subcommand)]
    Rollout(rollout::Command),
    /// Follow the server's event stream.
    Events(ops::EventsArgs),
    /// Update a device: the server plans the modules (healing missing system parts), shows
    /// the bytes on the air, and --wait follows the attempt to confirmation.
    #[command(after_help = "Exit status: 0 sent (with --wait: confirmed by the device); 1 an error, or with \
                            --wait the attempt ended failed, rolled_back, timed_out or cancelled (the \
                            reason is printed); 3 the operator did not confirm the bytes on the air \
                            (nothing was sent); 4 the server stayed unreachable (after reconnecting \
                            for --reconnect-for seconds): whether the update started, or how it \
                            ended, is unknown.")]
    Flash(flash::FlashArgs),
    /// Simulated devices: power-cut explorer and flash cost report.
    #[command(subcommand)]
    Sim(sim::Command),
    /// Start the server with a simulated fleet and show updates live (`--demo`).
    Up(up::UpArgs),
    /// Delta patches: make, apply, and bench against the peer tools.
    #[command(subcommand)]
    Delta(delta::Command),
}

/// Exit status of a command whose reader went away (`tern … | head`): 128 + SIGPIPE, as
/// a shell reports a process killed by the signal.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Rust ignores SIGPIPE, so printing to a closed pipe fails, and `println!` panics on that
/// failure. The reader has gone: end quietly, as Unix tools do, instead of reporting a
/// panic; any other panic is reported as usual.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Module(cmd) => module::run(cmd),
        Command::Key(cmd) => key::run(cmd),
        Command::Release(cmd) => release::run(cmd),
        Command::Hex(cmd) => hexfile::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Server(args) => server::run(args),
        Command::Login(args) => ops::login(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Device(cmd) => ops::device(cmd),
        Command::Product(cmd) => products::product(cmd),
        Command::Group(cmd) => products::group(cmd),
        Command::Rollout(cmd) => rollout::run(cmd),
        Command::Events(args) => ops::events(args),
        Command::Flash(args) => flash::run(args),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Up(args) => up::run(args),
        Command::Delta(cmd) => delta::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
