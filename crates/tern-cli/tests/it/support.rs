//! Running the `tern` binary from tests.

use std::path::Path;
use std::process::{Command, Output};

/// The result of one `tern` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `tern` binary with `args`.
pub fn tern<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("the tern binary runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `tern` and asserts success, returning stdout.
pub fn tern_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let run = tern(args);
    assert_eq!(run.code, 0, "tern failed: {}{}", run.stdout, run.stderr);
    run.stdout
}

/// Runs `tern`, asserts it failed with a single-line error naming `file`, and returns it.
pub fn tern_err<I, S>(args: I, file: &Path) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let run = tern(args);
    assert_ne!(run.code, 0, "tern unexpectedly succeeded: {}", run.stdout);
    let stderr = run.stderr.trim_end();
    assert!(!stderr.contains("panicked"), "tern panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "error should be one line: {stderr:?}");
    assert!(stderr.contains(&file.display().to_string()), "error should name {}: {stderr}", file.display());
    stderr.to_string()
}
