//! Operator commands against a real `tern server` on loopback: login, devices, events.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn tern_cmd(config_home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.env("XDG_CONFIG_HOME", config_home).env_remove("TERN_SERVER").env_remove("TERN_TOKEN").stdin(Stdio::null());
    cmd
}

fn run(config_home: &Path, args: &[&str]) -> Output {
    tern_cmd(config_home).args(args).output().expect("tern runs")
}

fn ok(config_home: &Path, args: &[&str]) -> String {
    let out = run(config_home, args);
    assert!(out.status.success(), "tern {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `tern`, expects failure with exactly one `error:` line containing `needle`.
fn fails(config_home: &Path, args: &[&str], needle: &str) {
    let out = run(config_home, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tern {args:?} succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "tern {args:?}: {stderr} should say {needle}");
}

/// `tern server` on ephemeral ports; killed on drop.
struct Server {
    child: Child,
    url: String,
    mqtt_port: u16,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(config_home: &Path, data: &Path) -> Server {
    let mut child = tern_cmd(config_home)
        .args(["server", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("TERN_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tern server starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut url, mut mqtt, mut token) = (None, None, None);
    let mut token_next = false;
    while url.is_none() || mqtt.is_none() || token.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("tern server reports its listeners and token");
        if token_next {
            token = Some(line.trim().to_owned());
            token_next = false;
        }
        if let Some(rest) = line.split("HTTP API on ").nth(1) {
            url = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.split("MQTT device gateway on mqtt://").nth(1) {
            mqtt = rest.rsplit(':').next().and_then(|p| p.parse().ok());
        }
        token_next |= line.contains("created the first admin token");
    }
    Server { child, url: url.unwrap(), mqtt_port: mqtt.unwrap(), token: token.unwrap() }
}

#[test]
fn login_then_manage_devices_and_follow_events() {
    let dir = tern_testkit::scratch("cli-ops");
    let home = dir.join("config");
    // Attempts time out after 1.5 s of device silence here, so `tern flash --wait` ends fast.
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/tern.toml"), "give_up_after_ms = 1500\n").unwrap();
    let server = start_server(&home, &dir.join("data"));
    assert_eq!(
        std::fs::read_to_string(dir.join("data/admin-token")).unwrap().trim(),
        server.token,
        "the printed token is the saved one"
    );

    fails(&home, &["device", "list"], "not logged in");
    fails(&home, &["login", &server.url, "--token", "tern_wrong"], "unknown token");
    let said = ok(&home, &["login", &server.url, "--token", &server.token]);
    assert!(said.contains("logged in"), "{said}");
    let saved = std::fs::read_to_string(home.join("tern/config.toml")).expect("login saved the server");
    assert!(saved.contains(&server.url) && saved.contains(&server.token), "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("tern/config.toml")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the token file is private");
    }

    let added = ok(&home, &["device", "add", "bench-1", "--platform", "photon"]);
    let secret = added
        .lines()
        .find_map(|l| l.strip_prefix("MQTT password (shown only now): "))
        .unwrap_or_else(|| panic!("no secret in {added}"))
        .to_owned();
    assert_eq!(secret.len(), 64);
    ok(&home, &["device", "add", "bench-2", "--platform", "12"]);
    fails(&home, &["device", "add", "bench-1", "--platform", "photon"], "bench-1");
    fails(&home, &["device", "add", "bad/id", "--platform", "photon"], "device id");
    fails(&home, &["device", "add", "bench-3", "--platform", "xenon"], "unknown platform");
    fails(&home, &["device", "add", "bench-3", "--platform", "99"], "unknown platform");
    fails(&home, &["device", "show", "nobody"], "no device nobody");

    let list = ok(&home, &["device", "list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows[0].starts_with("bench-1") && rows[0].contains("photon") && rows[0].contains("offline"), "{list}");
    assert!(rows[1].starts_with("bench-2") && rows[1].contains("argon"), "{list}");
    let listed: Value = serde_json::from_str(&ok(&home, &["device", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // The device describes itself with a real MQTT client; `device show` lists its modules.
    if let Some(publisher) = tern_testkit::peer("/usr/bin/mosquitto_pub") {
        use tern_image::{Integrity, ModuleFunction};
        use tern_proto::{BootReason, Describe, InstalledModule, List, Message};
        let module = |function, index, version, byte| InstalledModule {
            function,
            index,
            version,
            sha256: [byte; 32],
            size: 4096,
            integrity: Integrity::Valid,
            dependencies_met: true,
        };
        let describe = Message::Describe(Describe {
            platform: 6,
            boot_reason: BootReason::Normal,
            safe_mode: None,
            unmet: None,
            confirmed: true,
            modules: List::from_slice(&[
                module(ModuleFunction::SystemPart, 1, 1512, 0xa1),
                module(ModuleFunction::UserPart, 1, 7, 0xb2),
            ])
            .unwrap(),
            capacity: None,
            security_counter: None,
            last_result: None,
        });
        let mut payload = vec![0; describe.encoded_len()];
        describe.encode(&mut payload).unwrap();
        let file = dir.join("describe.cbor");
        std::fs::write(&file, &payload).unwrap();
        let port = server.mqtt_port.to_string();
        let status = Command::new(publisher)
            .args(["-h", "127.0.0.1", "-p", &port, "-u", "bench-1", "-P", &secret, "-q", "1"])
            .args(["-t", "tern/v1/d/bench-1/up/describe", "-f"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let shown = loop {
            let shown = ok(&home, &["device", "show", "bench-1"]);
            if !shown.contains("has not described itself") || Instant::now() > deadline {
                break shown;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(shown.contains(&"a1".repeat(32)) && shown.contains(&"b2".repeat(32)), "{shown}");
        assert!(shown.contains("user_part") && shown.contains("normal, confirmed"), "{shown}");
        let json: Value = serde_json::from_str(&ok(&home, &["device", "show", "bench-1", "--json"])).unwrap();
        assert_eq!(json["application_version"], 7);
        assert_eq!(json["inventory"]["modules"][1]["sha256"], "b2".repeat(32));
    }

    // `tern events` replays from the start and keeps following.
    let mut events = tern_cmd(&home)
        .args(["events", "--device", "bench-2", "--since", "0", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first: Value = serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).expect("an event")).unwrap();
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!((first["kind"].as_str(), first["device"].as_str()), (Some("device.registered"), Some("bench-2")));

    // `tern flash`: a signed bundle built by `tern release build`.
    let key = dir.join("release.pem");
    ok(&home, &["key", "generate", "--output", key.to_str().unwrap()]);
    let module = tern_testkit::corpus().join("particle/releases/photon-bootloader@1.5.2+lto.bin");
    let bundle = dir.join("release.bundle");
    ok(
        &home,
        &[
            "release",
            "build",
            "--key",
            key.to_str().unwrap(),
            "--output",
            bundle.to_str().unwrap(),
            module.to_str().unwrap(),
        ],
    );
    let bundle_arg = bundle.to_str().unwrap();
    fails(&home, &["flash", "bench-2", bundle_arg], "is for platform 6");
    fails(&home, &["flash", "bench-1", "/nonexistent.bundle"], "/nonexistent.bundle");
    // Nobody answers the offer: --wait exits non-zero with the final state, and --json
    // prints the final attempt.
    let out = run(&home, &["flash", "bench-1", bundle_arg, "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let attempt: Value = serde_json::from_slice(&out.stdout).expect("the final attempt as JSON");
    assert_eq!(attempt["state"], "timed_out");
    assert_eq!(attempt["device"], "bench-1");
    assert_eq!(attempt["plan"][0]["function_name"], "bootloader");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The plan goes to stderr (a bundle is planned like module files), then one error line.
    assert!(stderr.contains("1. bootloader") && stderr.contains("on the air"), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("ended timed_out"), "{stderr}");
    // Without --wait: the plan and the estimate, exit 0.
    let said = ok(&home, &["flash", "bench-1", bundle_arg]);
    assert!(said.contains("1. bootloader") && said.contains("on the air"), "{said}");
    fails(&home, &["flash", "bench-1", bundle_arg], "still");
}

#[test]
fn module_upload_and_list() {
    let dir = tern_testkit::scratch("cli-modules");
    let home = dir.join("config");
    let server = start_server(&home, &dir.join("data"));
    ok(&home, &["login", &server.url, "--token", &server.token]);
    let releases = tern_testkit::corpus().join("particle/releases");
    let part1 = releases.join("photon-system-part1@1.5.2.bin");
    let boot = releases.join("argon-bootloader@4.0.2.bin");
    let said = ok(&home, &["module", "upload", part1.to_str().unwrap(), boot.to_str().unwrap()]);
    assert_eq!(said.lines().count(), 2, "{said}");

    // A bad file among good ones: one error line naming it, exit status 1, others kept.
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let out = run(&home, &["module", "upload", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim_end().lines().count() == 1 && stderr.contains("empty.bin"), "{stderr}");

    // The catalog lists both modules with what the files say about themselves.
    let listed: Value = serde_json::from_str(&ok(&home, &["module", "list", "--json"])).unwrap();
    let modules = listed.as_array().expect("a JSON array");
    assert_eq!(modules.len(), 2, "{listed}");
    for file in [&part1, &boot] {
        let info: Value =
            serde_json::from_str(&ok(&home, &["module", "inspect", "--json", file.to_str().unwrap()])).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let entry = modules.iter().find(|m| m["filename"] == name);
        let entry = entry.unwrap_or_else(|| panic!("{} missing from {listed}", file.display()));
        assert_eq!(entry["platform_id"], info["platform_id"], "{entry}");
        assert_eq!(entry["version"], info["version"], "{entry}");
        assert_eq!(entry["index"], info["index"], "{entry}");
        assert_eq!(entry["size"], info["size"], "{entry}");
    }
    let table = ok(&home, &["module", "list"]);
    assert!(table.contains("photon-system-part1@1.5.2.bin") && table.contains("argon-bootloader@4.0.2.bin"), "{table}");
    assert!(modules.iter().all(|m| m["statement"].is_null()), "uploaded without a key: unsigned: {listed}");
    assert!(said.contains("UNSIGNED"), "{said}");

    // With a key (or a FILE.stmt beside the module) the module is signed in the catalog.
    let key = dir.join("release.pem");
    ok(&home, &["key", "generate", "--output", key.to_str().unwrap()]);
    let said = ok(&home, &["module", "upload", "--key", key.to_str().unwrap(), part1.to_str().unwrap()]);
    assert!(said.contains(", signed"), "{said}");
    let copy = dir.join("boot.bin");
    std::fs::copy(&boot, &copy).unwrap();
    ok(&home, &["module", "sign", "--key", key.to_str().unwrap(), copy.to_str().unwrap()]);
    let said = ok(&home, &["module", "upload", copy.to_str().unwrap()]);
    assert!(said.contains(", signed"), "{said}");
    let listed: Value = serde_json::from_str(&ok(&home, &["module", "list", "--json"])).unwrap();
    assert!(listed.as_array().unwrap().iter().all(|m| m["statement"].is_string()), "{listed}");
    // A statement of another module beside a file is refused with the reason.
    std::fs::copy(dir.join("boot.bin.stmt"), dir.join("part1.bin.stmt")).unwrap();
    let part1_copy = dir.join("part1.bin");
    std::fs::copy(&part1, &part1_copy).unwrap();
    let out = run(&home, &["module", "upload", part1_copy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("part1.bin") && stderr.contains("statement"), "{stderr}");

    // Device policy and flash refusals, one clear line each.
    let added = ok(&home, &["device", "add", "cell-1", "--platform", "argon", "--connectivity", "cellular"]);
    assert!(added.contains("cellular, auto-heal off"), "{added}");
    assert!(ok(&home, &["device", "set", "cell-1", "--auto-heal", "on"]).contains("auto-heal on"));
    assert!(ok(&home, &["device", "set", "cell-1", "--auto-heal", "default"]).contains("auto-heal off"));
    fails(&home, &["device", "set", "cell-1"], "nothing to change");
    fails(&home, &["device", "set", "nobody", "--auto-heal", "on"], "no device nobody");
    fails(&home, &["flash", "cell-1"], "nothing to flash");
    fails(&home, &["flash", "cell-1", part1.to_str().unwrap(), "--yes"], "has not described itself");
    fails(&home, &["flash", "nobody", "--heal", "--yes"], "no device nobody");
}

/// Registers `count` devices straight through the API (faster than one `tern` per device).
fn register_many(server: &Server, prefix: &str, count: usize) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    for i in 0..count {
        let response = agent
            .post(&format!("{}/api/devices", server.url))
            .header("Authorization", &format!("Bearer {}", server.token))
            .send_json(serde_json::json!({ "id": format!("{prefix}-{i:04}"), "platform": "argon" }))
            .expect("the server answers");
        assert_eq!(response.status().as_u16(), 201);
    }
}

#[test]
fn tokens_with_roles_and_the_device_credential_commands() {
    let dir = tern_testkit::scratch("cli-tokens");
    let home = dir.join("config");
    let server = start_server(&home, &dir.join("data"));
    ok(&home, &["login", &server.url, "--token", &server.token]);

    let created = ok(&home, &["token", "create", "watcher", "--role", "viewer", "--expires", "30d"]);
    let viewer = created
        .lines()
        .find_map(|l| l.strip_prefix("token (shown only now): "))
        .unwrap_or_else(|| panic!("no token in {created}"))
        .to_owned();
    assert!(created.contains("role viewer"), "{created}");
    fails(&home, &["token", "create", "x", "--role", "root"], "role must be one of viewer, operator, admin");
    fails(&home, &["token", "create", "x", "--role", "viewer", "--expires", "2001-01-01"], "not in the future");
    fails(&home, &["token", "create", "x", "--role", "viewer", "--expires", "soon"], "--expires soon");
    fails(&home, &["token", "revoke", "nobody"], "no token nobody");
    fails(&home, &["token", "revoke", "admin"], "last working admin token");
    let list = ok(&home, &["token", "list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(rows[0].starts_with("admin") && rows[0].contains("admin") && rows[0].contains("never"), "{list}");
    assert!(rows[1].starts_with("watcher") && rows[1].contains("viewer") && rows[1].contains("active"), "{list}");

    // The viewer logs in elsewhere: it reads, and a change is refused with a clear error.
    let viewer_home = dir.join("viewer-config");
    ok(&viewer_home, &["login", &server.url, "--token", &viewer]);
    ok(&home, &["device", "add", "d1", "--platform", "argon"]);
    assert!(ok(&viewer_home, &["device", "list"]).contains("d1"));
    fails(&viewer_home, &["device", "add", "d2", "--platform", "argon"], "has role viewer; this call needs operator");
    fails(&viewer_home, &["token", "list"], "needs admin");

    let rotated = ok(&home, &["token", "rotate", "watcher"]);
    assert!(!rotated.contains(&viewer), "a new token: {rotated}");
    fails(&viewer_home, &["device", "list"], "unknown token");
    ok(&home, &["token", "revoke", "watcher"]);
    assert!(ok(&home, &["token", "list"]).lines().any(|l| l.starts_with("watcher") && l.contains("revoked")));

    // Device credentials: a new secret, disable and enable, removal.
    let said = ok(&home, &["device", "rotate-secret", "d1"]);
    let secret = said.lines().find_map(|l| l.strip_prefix("MQTT password (shown only now): ")).expect("a secret");
    assert_eq!(secret.len(), 64);
    assert!(ok(&home, &["device", "disable", "d1"]).contains("d1 disabled"));
    assert!(ok(&home, &["device", "enable", "d1"]).contains("d1 enabled"));
    assert!(ok(&home, &["device", "remove", "d1"]).contains("d1 removed"));
    fails(&home, &["device", "remove", "d1"], "no device d1");
    fails(&home, &["device", "rotate-secret", "d1"], "no device d1");
    fails(&home, &["device", "disable", "d1"], "no device d1");

    // More devices than one page holds: the list follows the pages.
    register_many(&server, "fleet", 520);
    let list = ok(&home, &["device", "list"]);
    assert_eq!(list.lines().skip(1).count(), 520, "every device, across pages");
    let listed: Value = serde_json::from_str(&ok(&home, &["device", "list", "--json"])).unwrap();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..520).map(|i| format!("fleet-{i:04}")).collect();
    assert_eq!(ids, expected);
}
