//! `tern-server`: the server alone, for deployments that do not want the whole CLI.
//! Same flags as `tern server`.

use clap::Parser;

/// Tern server: HTTP API, event stream and MQTT device gateway.
#[derive(Parser)]
#[command(name = "tern-server", version, about)]
struct Cli {
    #[command(flatten)]
    args: tern_server::ServerArgs,
}

fn main() -> std::process::ExitCode {
    match tern_server::run_blocking(Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
