//! The API contract: schemathesis, a real OpenAPI fuzzer, runs every check it has against a
//! live server with the document the server serves, and must find nothing.
//!
//! Installed by `scripts/install-peers.sh` into `.peers/schemathesis/` (a venv of its own).
//! Outside CI a missing schemathesis skips the test; with `CI=true` it fails.
//! `TERN_SCHEMATHESIS_EXAMPLES` and `TERN_SCHEMATHESIS_SECONDS` widen the run (defaults keep
//! it near two minutes on two cores); `TERN_SCHEMATHESIS_SEED` picks another seed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::json;

use crate::support::Server;

/// The operations that can take the run's own token away (revoke or rotate it): the
/// first pass leaves them out so that everything else is tested with a working token, the
/// second pass tests them alone (once it has revoked its token, 401 is the documented
/// answer to the rest of that pass).
const TOKEN_KILLERS: &str = r"^/api/tokens/\{name\}";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Gives the run something to find: a device, a module, a product with the device in
/// it, a group and a second token.
fn seed(server: &Server) {
    let api = server.api();
    server.add_device("st-device", "argon");
    let module =
        tern_testkit::corpus().join("particle/fixtures/cli_assets_knownApps_argon_tinker_tinker-0.8.0-rc.27-argon.bin");
    let bytes = std::fs::read(&module).unwrap_or_else(|e| panic!("{}: {e}", module.display()));
    let (status, body) = api.post_bytes("/api/modules", &bytes);
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post_json("/api/products", json!({ "id": 7, "platform": "argon", "name": "st" }));
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.patch_json("/api/devices/st-device/fleet", json!({ "product": 7 }));
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        api.call("PUT", "/api/groups/st-group", Some(json!({ "name": "st-group", "product": 7 })), None);
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post_json("/api/tokens", json!({ "name": "st-viewer", "role": "viewer" }));
    assert_eq!(status, 201, "{body}");
}

/// Runs schemathesis once with every check; returns its exit success and its report.
fn schemathesis(
    st: &Path,
    server: &Server,
    token: &str,
    filter: &[&str],
    examples: u64,
    seconds: u64,
    scratch: &Path,
) -> (bool, String) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let seed = env_or("TERN_SCHEMATHESIS_SEED", 20261130);
    let output = Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/openapi.json", server.http))
        .args(["--checks", "all", "--workers", "2", "--no-color", "--request-timeout", "10"])
        .args(["--max-examples", &examples.to_string(), "--max-time", &seconds.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(filter)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Its cache (`.schemathesis/`) goes to the scratch directory, not the source tree.
        .current_dir(scratch)
        .output()
        .expect("schemathesis runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), report)
}

/// The closing lines of a report: the summary and the count of cases.
fn summary(report: &str) -> &str {
    report.find("=== SUMMARY").map_or(report, |at| &report[report[..at].rfind('\n').unwrap_or(0)..])
}

#[test]
fn schemathesis_finds_no_failure() {
    let Some(st) = tern_testkit::peer(tern_testkit::peers_dir().join("schemathesis/bin/st")) else {
        return;
    };
    let dir = tern_testkit::scratch("schemathesis");
    let server = Server::start(&dir.join("data"));
    seed(&server);
    let examples = env_or("TERN_SCHEMATHESIS_EXAMPLES", 15);
    let seconds = env_or("TERN_SCHEMATHESIS_SECONDS", 100);
    let start = Instant::now();

    let (ok, report) =
        schemathesis(&st, &server, &server.token, &["--exclude-path-regex", TOKEN_KILLERS], examples, seconds, &dir);
    assert!(ok, "schemathesis found failures (everything but token revocation):\n{report}");
    eprintln!("schemathesis, all but {TOKEN_KILLERS}:{}", summary(&report));

    // The token operations with a token of their own.
    let (status, body) = server.api().post_json("/api/tokens", json!({ "name": "st-admin", "role": "admin" }));
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("a token").to_owned();
    let (ok, report) =
        schemathesis(&st, &server, &token, &["--include-path-regex", TOKEN_KILLERS], examples, seconds / 4, &dir);
    assert!(ok, "schemathesis found failures (token revocation):\n{report}");
    eprintln!("schemathesis, {TOKEN_KILLERS}:{}", summary(&report));
    eprintln!("schemathesis: {:.0} s in all", start.elapsed().as_secs_f64());
}
