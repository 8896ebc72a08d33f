//! Test support shared by Tern's crates.
//!
//! - [`corpus`]: where the real third-party firmware corpus lives (`../shared/corpus` beside
//!   the repository, or `$TERN_CORPUS`).
//! - [`peer`]: a third-party tool used as an oracle (imgtool, binary-version-reader, …),
//!   installed by `scripts/install-peers.sh` into `.peers/`. Outside CI a missing peer
//!   skips the test with a message on stderr; in CI (`CI=true`) it fails the test, so an
//!   oracle test can never pass by not running.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the testkit crate sits two levels below the repository root")
}

/// Whether the tests run in CI, where every peer must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The corpus directory. Panics with a clear message when it is missing: the corpus is
/// part of the checkout's surroundings, not an optional peer.
pub fn corpus() -> PathBuf {
    let dir =
        std::env::var_os("TERN_CORPUS").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/corpus"));
    assert!(dir.is_dir(), "the firmware corpus is missing at {} (set TERN_CORPUS)", dir.display());
    dir
}

/// Every file under `corpus()/sub`, sorted, recursively.
pub fn corpus_files(sub: &str) -> Vec<PathBuf> {
    files_under(&corpus().join(sub))
}

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// The directory peers are installed into (`$TERN_PEERS` or `<repo>/.peers`).
pub fn peers_dir() -> PathBuf {
    std::env::var_os("TERN_PEERS").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".peers"))
}

/// Finds a peer tool at `path` (relative to the repository root unless absolute).
///
/// Returns `None` (and says so on stderr) when it is missing outside CI; panics when it is
/// missing in CI.
pub fn peer(path: impl AsRef<Path>) -> Option<PathBuf> {
    let path = path.as_ref();
    let full = if path.is_absolute() { path.to_path_buf() } else { repo_root().join(path) };
    if full.exists() {
        return Some(full);
    }
    let msg = format!("peer tool missing: {} (run `bash scripts/install-peers.sh`)", full.display());
    if in_ci() {
        panic!("{msg}; CI=true, so oracle tests must run");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A Python tool from the peers venv (`.peers/venv/bin/NAME`).
pub fn python_tool(name: &str) -> Option<PathBuf> {
    peer(peers_dir().join("venv/bin").join(name))
}

/// A scratch directory unique to this test process and `name`, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}
