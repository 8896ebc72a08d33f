//! `tern module …`: read module files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// Commands on module files.
#[derive(Subcommand)]
pub enum Command {
    /// Show what a module file contains.
    Inspect {
        /// Module files to read.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object per file (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Inspect { files, json } => {
            let _ = (files, json);
            anyhow::bail!("not implemented yet")
        }
    }
}
