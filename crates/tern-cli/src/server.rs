//! `tern server`: runs the server in the foreground (see the tern-server crate).

use std::process::ExitCode;

/// Flags of `tern server`: `--data DIR`, `--http ADDR`, `--mqtt ADDR`, `--config FILE`.
pub type Args = tern_server::ServerArgs;

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    tern_server::run_blocking(args)?;
    Ok(ExitCode::SUCCESS)
}
