//! `/metrics` and JSON logs on a real server. The scrape is parsed by the Prometheus
//! project's own Python client (`prometheus_client`, installed into the peers venv by
//! `scripts/install-peers.sh`), and every counter is checked against what the test did:
//! the bytes its MQTT client wrote and read, the messages it published, the requests it made.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use serde_json::{json, Value};
use tern_proto::{BootReason, Message};

use crate::gateway::sample_describe;
use crate::support::{encode, wait_for, Api, Server};

/// The venv's Python when it has `prometheus_client`; `None` (skipped) outside CI, a
/// failure in CI.
fn parser() -> Option<PathBuf> {
    let python = tern_testkit::python_tool("python")?;
    let has = Command::new(&python).args(["-c", "import prometheus_client"]).status().is_ok_and(|s| s.success());
    if has {
        return Some(python);
    }
    let msg = "prometheus_client is missing from the peers venv (run `bash scripts/install-peers.sh`)";
    assert!(!tern_testkit::in_ci(), "{msg}; CI=true, so the metrics oracle must run");
    eprintln!("SKIPPED: {msg}");
    None
}

/// Parses an exposition with `prometheus_client`'s text parser (it raises on anything
/// that is not the text format) into `{family: (type, [(sample name, labels, value)])}`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.name not in out, "family %s appears twice" % family.name
    out[family.name] = [family.type, [[s.name, s.labels, s.value] for s in family.samples]]
print(json.dumps(out))
"#;

/// What the parser prints: `{family: [type, [[sample name, labels, value]]]}`.
type Parsed = BTreeMap<String, (String, Vec<(String, BTreeMap<String, String>, f64)>)>;

/// One scrape, parsed: `(sample name with sorted labels) -> value`, and family types.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(python: &Path, text: &str) -> Scrape {
        let mut child = Command::new(python)
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python runs");
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Parsed = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
        let mut scrape = Scrape { samples: BTreeMap::new(), types: BTreeMap::new() };
        for (family, (kind, samples)) in parsed {
            scrape.types.insert(family, kind);
            for (name, labels, value) in samples {
                let key = key(&name, &labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
                assert!(scrape.samples.insert(key.clone(), value).is_none(), "{key} appears twice");
            }
        }
        scrape
    }

    /// The value of `name{labels}`; 0 when the series is absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    /// Every series of `name`, by its labels.
    fn series(&self, name: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{");
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) || *k == name)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// The HTTP requests the test made, as the histogram should count them:
/// `(method, route template, status class) -> count`.
#[derive(Default)]
struct Requests(BTreeMap<(String, String, String), u64>);

impl Requests {
    fn note(&mut self, method: &str, route: &str, status: u16) {
        *self.0.entry((method.into(), route.into(), format!("{}xx", status / 100))).or_default() += 1;
    }
}

/// GET `/metrics` with `api`'s token: the status, content type and body.
fn get_metrics(api: &Api) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.get(&format!("{}/metrics", api.base));
    if let Some(token) = &api.token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().expect("the server answers");
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, kind, response.body_mut().read_to_string().expect("a text body"))
}

/// An MQTT 3.1.1 device that counts every byte it writes and reads.
struct CountingDevice {
    stream: TcpStream,
    buf: BytesMut,
    written: u64,
    read: u64,
}

impl CountingDevice {
    fn connect(server: &Server, device: &str, secret: &str) -> CountingDevice {
        let stream = TcpStream::connect(("127.0.0.1", server.mqtt_port)).expect("the gateway accepts");
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut this = CountingDevice { stream, buf: BytesMut::new(), written: 0, read: 0 };
        let mut connect = Connect::new(device);
        connect.keep_alive = 600;
        connect.login = Some(Login::new(device, secret));
        this.send(Packet::Connect(connect));
        assert!(matches!(this.next(), Packet::ConnAck(ack) if ack.code as u8 == 0), "CONNACK accepted");
        this
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).expect("the packet encodes");
        self.stream.write_all(&out).expect("the gateway reads");
        self.written += out.len() as u64;
    }

    fn publish(&mut self, topic_kind: &str, payload: Vec<u8>) {
        let topic = format!("tern/v1/d/m1/up/{topic_kind}");
        self.send(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, payload)));
    }

    /// The next packet from the server (within 10 s).
    fn next(&mut self) -> Packet {
        let start = Instant::now();
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return packet,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(err) => panic!("the server sent a malformed packet: {err}"),
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no packet from the server within 10 s");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.read += n as u64;
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading from the gateway failed: {e}"),
            }
        }
    }
}

/// Bytes of the files directly or indirectly under `dir`, `.tmp-` files left out.
fn bytes_under(dir: &Path) -> u64 {
    tern_testkit::files_under(dir)
        .iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

const BURST: usize = 5;

#[test]
fn metrics_count_exactly_what_happened() {
    let Some(python) = parser() else { return };
    let dir = tern_testkit::scratch("metrics-exact");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // No refill: a device's first BURST messages pass, every later one is dropped.
    std::fs::write(data.join("tern.toml"), format!("[bounds]\nmessages_per_second = 0\nmessage_burst = {BURST}\n"))
        .unwrap();
    let server = Server::start(&data);
    let admin = server.api();
    let mut requests = Requests::default();
    let scrape = |requests: &mut Requests, api: &Api| {
        let (status, kind, text) = get_metrics(api);
        requests.note("GET", "/metrics", status);
        assert_eq!((status, kind.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"), "{text}");
        Scrape::parse(&python, &text)
    };

    // Without a token: refused (and counted).
    let (status, _, _) = get_metrics(&admin.with_token(None));
    requests.note("GET", "/metrics", status);
    assert_eq!(status, 401);
    let first = scrape(&mut requests, &admin);
    for (name, kind) in [
        ("tern_devices_connected", "gauge"),
        ("tern_mqtt_messages_received", "counter"),
        ("tern_device_messages_malformed", "counter"),
        ("tern_database_size_bytes", "gauge"),
        ("tern_http_request_duration_seconds", "histogram"),
    ] {
        assert_eq!(first.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // Every sample sits under the TYPE line of its family (else the parser says `unknown`).
    assert!(first.types.values().all(|kind| kind != "unknown"), "{:?}", first.types);
    assert_eq!(first.get("tern_devices_connected", &[]), 0.0);
    assert_eq!(first.get("tern_blob_store_size_bytes", &[]), 0.0);
    assert!(first.series("tern_update_attempts").is_empty());

    // A viewer token is enough to scrape.
    let secret = server.add_device("m1", "photon");
    requests.note("POST", "/api/devices", 201);
    let (status, reply) = admin.post_json("/api/tokens", json!({ "name": "prometheus", "role": "viewer" }));
    requests.note("POST", "/api/tokens", status);
    assert_eq!(status, 201, "{reply}");
    let viewer = admin.with_token(reply["token"].as_str());

    // An upload into the empty blob store: exactly its bytes.
    let module =
        std::fs::read(tern_testkit::corpus().join("particle/releases/photon-bootloader@1.5.2+lto.bin")).unwrap();
    let (status, reply) = admin.post_bytes("/api/modules", &module);
    requests.note("POST", "/api/modules", status);
    assert_eq!(status, 201, "{reply}");
    let after_upload = scrape(&mut requests, &viewer);
    assert_eq!(after_upload.get("tern_blob_store_size_bytes", &[]), module.len() as f64);

    // An attempt, cancelled while the device is offline: one attempt, in the state and
    // with the reason the API shows.
    let (bundle, _, _) = crate::update::bundle(6, &["photon-bootloader@1.5.2+lto.bin"]);
    let (status, created) = admin.post_bytes("/api/devices/m1/attempts", &bundle);
    requests.note("POST", "/api/devices/{id}/attempts", status);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let (status, _) = admin.post_json(&format!("/api/attempts/{id}/cancel"), json!({}));
    requests.note("POST", "/api/attempts/{id}/cancel", status);
    let (status, attempt) = admin.get(&format!("/api/attempts/{id}"));
    requests.note("GET", "/api/attempts/{id}", status);
    let state = attempt["state"].as_str().unwrap().to_owned();
    let reason = attempt["reason"].as_str().unwrap_or("none").to_owned();
    assert_eq!(state, "cancelled");
    // Two 404s and an unknown route: counted by template, and as `unmatched`.
    let (status, _) = admin.get("/api/devices/nobody");
    requests.note("GET", "/api/devices/{id}", status);
    let (status, _) = admin.get("/api/no/such/route");
    requests.note("GET", "unmatched", status);
    assert_eq!(status, 404);

    // A device: connects, subscribes, publishes a Describe, a payload that does not
    // decode, a Describe on the result topic, then Describes until the burst is spent.
    let mut device = CountingDevice::connect(&server, "m1", &secret);
    device.send(Packet::Subscribe(Subscribe::new("tern/v1/d/m1/down/#", QoS::AtMostOnce)));
    assert!(matches!(device.next(), Packet::SubAck(_)));
    let describe = encode(&Message::Describe(sample_describe(BootReason::Normal)));
    device.publish("describe", describe.clone());
    device.publish("progress", b"\xff\x00 not a message".to_vec());
    device.publish("result", describe.clone());
    // BURST + 2 messages in all: the last two Describes are dropped.
    let describes = BURST - 1;
    for _ in 0..describes {
        device.publish("describe", describe.clone());
    }
    let sent = 3 + describes;
    wait_for("every message handled or dropped", Duration::from_secs(20), || {
        let s = scrape(&mut requests, &viewer);
        let dropped: f64 = s.series("tern_device_messages_rate_limited_total").values().sum();
        let malformed: f64 = s.series("tern_device_messages_malformed_total").values().sum();
        (s.get("tern_device_messages_handled_total", &[]) + dropped + malformed) as usize == sent
    });
    // A command from the API goes down to the device.
    let (status, reply) = admin.post_json("/api/devices/m1/commands", json!({ "action": "reboot" }));
    requests.note("POST", "/api/devices/{id}/commands", status);
    assert_eq!(status, 202, "{reply}");
    match device.next() {
        Packet::Publish(publish) => assert_eq!(publish.topic, "tern/v1/d/m1/down/command"),
        other => panic!("expected the command, got {other:?}"),
    }

    // The gateway counts a delivery once its write returns, which may be just after the
    // device has read it.
    wait_for("the command counted", Duration::from_secs(10), || {
        scrape(&mut requests, &viewer).get("tern_mqtt_messages_sent_total", &[("kind", "command")]) == 1.0
    });
    let s = scrape(&mut requests, &viewer);
    assert_eq!(s.get("tern_devices_connected", &[]), 1.0);
    assert_eq!(s.get("tern_mqtt_connections_total", &[]), 1.0);
    let kinds = ["describe", "offer", "block-request", "block", "progress", "result", "command", "other"];
    let expect = |table: &[(&str, usize)], kind: &str| table.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n);
    let received = [("describe", 1 + describes), ("progress", 1), ("result", 1)];
    let malformed = [("progress", 1), ("result", 1)];
    let limited = [("describe", describes + 3 - BURST)];
    let delivered = [("command", 1)];
    for kind in kinds {
        let k = [("kind", kind)];
        assert_eq!(s.get("tern_mqtt_messages_received_total", &k), expect(&received, kind) as f64, "received {kind}");
        assert_eq!(
            s.get("tern_device_messages_malformed_total", &k),
            expect(&malformed, kind) as f64,
            "malformed {kind}"
        );
        assert_eq!(
            s.get("tern_device_messages_rate_limited_total", &k),
            expect(&limited, kind) as f64,
            "limited {kind}"
        );
        assert_eq!(s.get("tern_mqtt_messages_sent_total", &k), expect(&delivered, kind) as f64, "sent {kind}");
    }
    assert_eq!(s.series("tern_mqtt_messages_received_total").len(), kinds.len(), "one series per kind, no more");
    assert_eq!(s.get("tern_device_messages_handled_total", &[]), (BURST - 2) as f64);
    // Bytes on the air: exactly what this device wrote and read.
    assert_eq!(s.get("tern_mqtt_received_bytes_total", &[]), device.written as f64);
    assert_eq!(s.get("tern_mqtt_sent_bytes_total", &[]), device.read as f64);
    // Attempts: one, as the API shows it.
    assert_eq!(s.types.get("tern_update_attempts").map(String::as_str), Some("gauge"));
    let attempts = s.series("tern_update_attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(s.get("tern_update_attempts", &[("state", &state), ("reason", &reason)]), 1.0, "{attempts:?}");
    // Sizes: the database files and the blob files as they are on disk.
    let db: u64 = ["tern.db", "tern.db-wal", "tern.db-shm"]
        .iter()
        .map(|f| std::fs::metadata(data.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(s.get("tern_database_size_bytes", &[]), db as f64);
    assert_eq!(s.get("tern_blob_store_size_bytes", &[]), bytes_under(&data.join("blobs")) as f64);
    assert!(s.get("tern_blob_store_size_bytes", &[]) > module.len() as f64, "the bundle's signed document was stored");
    // Latencies: one observation per request the test made (this scrape aside: it is
    // counted once it has been answered), by method, route template and status class.
    let (status, _, _) = get_metrics(&viewer);
    requests.note("GET", "/metrics", status);
    let last = scrape(&mut requests, &viewer);
    let mut counted = BTreeMap::new();
    for (key, value) in last.series("tern_http_request_duration_seconds_count") {
        counted.insert(key, value as u64);
    }
    let mut expected = BTreeMap::new();
    if let Some(n) = requests.0.get_mut(&("GET".into(), "/metrics".into(), "2xx".into())) {
        *n -= 1;
    }
    for ((method, route, status), n) in &requests.0 {
        let labels = [("method", method.as_str()), ("route", route.as_str()), ("status", status.as_str())];
        expected.insert(key("tern_http_request_duration_seconds_count", &labels), *n);
    }
    assert_eq!(counted, expected);
    let buckets = last.series("tern_http_request_duration_seconds_bucket");
    let inf = key(
        "tern_http_request_duration_seconds_bucket",
        &[("le", "+Inf"), ("method", "POST"), ("route", "/api/modules"), ("status", "2xx")],
    );
    assert_eq!(buckets.get(&inf), Some(&1.0), "{buckets:?}");

    // The device leaves: no longer connected.
    drop(device);
    wait_for("the device counted as gone", Duration::from_secs(10), || {
        scrape(&mut requests, &viewer).get("tern_devices_connected", &[]) == 0.0
    });
}

/// Starts the binary itself (not `Server`: its logs are the subject here) with `args` and
/// `env`, waits until it listens and returns the process and the paths of its stdout and
/// stderr.
fn start_logging(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, PathBuf, PathBuf) {
    let stderr = data.with_extension("stderr");
    let stdout = data.with_extension("stdout");
    let child = Command::new(env!("CARGO_BIN_EXE_tern-server"))
        .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .env("TERN_LOG", "info")
        .env_remove("TERN_LOG_FORMAT")
        .env_remove("TERN_CONFIG")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("tern-server starts");
    wait_for("the HTTP line", Duration::from_secs(30), || {
        std::fs::read_to_string(&stdout).unwrap_or_default().contains("HTTP API on ")
    });
    (child, stdout, stderr)
}

/// Connects to the gateway named on `stdout` with a wrong secret, and waits until the
/// warning about it is in `stderr`.
fn provoke_warning(stdout: &Path, stderr: &Path) {
    let port = std::fs::read_to_string(stdout)
        .unwrap()
        .split("mqtt://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the MQTT line");
    let mut mqtt = TcpStream::connect(("127.0.0.1", port)).unwrap();
    mqtt.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut connect = Connect::new("ghost");
    connect.login = Some(Login::new("ghost", "wrong"));
    let mut out = BytesMut::new();
    Packet::Connect(connect).write(&mut out, 1 << 10).unwrap();
    mqtt.write_all(&out).unwrap();
    let _ = mqtt.read(&mut [0u8; 16]);
    wait_for("the warning logged", Duration::from_secs(10), || {
        std::fs::read_to_string(stderr).unwrap_or_default().contains("bad credentials")
    });
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tern_testkit::scratch("metrics-json-logs");
    // The flag, the environment and the file each turn it on.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        ("flag", &["--log-format", "json"], &[], ""),
        ("env", &[], &[("TERN_LOG_FORMAT", "json")], ""),
        ("file", &[], &[], "[log]\nformat = \"json\"\n"),
    ];
    for (name, args, env, file) in cases {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        if !file.is_empty() {
            std::fs::write(data.join("tern.toml"), file).unwrap();
        }
        let (mut child, stdout, stderr) = start_logging(&data, args, env);
        provoke_warning(&stdout, &stderr);
        let _ = child.kill();
        let _ = child.wait();

        let text = std::fs::read_to_string(&stderr).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}")))
            .collect();
        assert!(!lines.is_empty(), "{name}: {text}");
        for line in &lines {
            for field in ["timestamp", "level", "target", "message"] {
                assert!(line[field].is_string(), "{name}: no {field} in {line}");
            }
        }
        let warning = lines
            .iter()
            .find(|line| line["message"] == "mqtt: bad credentials")
            .unwrap_or_else(|| panic!("{name}: no warning in {text}"));
        assert_eq!(warning["level"], "WARN");
        assert_eq!(warning["target"], "tern_server::gateway::connection");
        assert!(warning["peer"].as_str().is_some_and(|peer| peer.starts_with("127.0.0.1:")), "{warning}");
    }

    // The default stays for people: not JSON.
    let data = dir.join("text");
    std::fs::create_dir_all(&data).unwrap();
    let (mut child, stdout, stderr) = start_logging(&data, &[], &[]);
    provoke_warning(&stdout, &stderr);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(text.lines().all(|line| serde_json::from_str::<Value>(line).is_err()), "{text}");
}

#[test]
fn public_metrics_need_no_token_and_only_on_loopback() {
    let dir = tern_testkit::scratch("metrics-public");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tern.toml"), "[metrics]\npublic = true\n").unwrap();
    let server = Server::start(&data);
    let (status, kind, text) = get_metrics(&server.api().with_token(None));
    assert_eq!((status, kind.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    assert!(text.contains("\ntern_devices_connected 0\n"), "{text}");
    // Other routes still need their token.
    assert_eq!(server.api().with_token(None).get("/api/devices").0, 401);
    // The OpenAPI document lists the route.
    let (_, doc) = server.api().with_token(None).get("/api/openapi.json");
    assert!(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object(), "{doc}");

    // (file, env, flag) -> the log format, or the error named.
    let file_path = dir.join("check.toml");
    type Case<'a> = (&'a str, Option<&'a str>, Option<tern_server::config::LogFormat>, Result<&'a str, &'a str>);
    let cases: [Case; 7] = [
        ("", None, None, Ok("text")),
        ("[log]\nformat = \"json\"\n", None, None, Ok("json")),
        ("[log]\nformat = \"json\"\n", Some("text"), None, Ok("text")),
        ("", Some("JSON"), None, Ok("json")),
        ("", Some("json"), Some(tern_server::config::LogFormat::Text), Ok("text")),
        ("", Some("yaml"), None, Err("TERN_LOG_FORMAT=yaml: not a log format")),
        ("[log]\nformat = \"xml\"\n", None, None, Err("unknown variant `xml`")),
    ];
    for (file, env, flag, expected) in cases {
        std::fs::write(&file_path, file).unwrap();
        let args = tern_server::ServerArgs { config: Some(file_path.clone()), log_format: flag, ..Default::default() };
        let got = tern_server::Config::resolve(&args, |name| {
            (name == "TERN_LOG_FORMAT").then_some(env).flatten().map(str::to_owned)
        });
        match (got, expected) {
            (Ok(config), Ok(format)) => {
                assert_eq!(format!("{:?}", config.log_format).to_lowercase(), format, "{file:?} {env:?} {flag:?}")
            }
            (Err(err), Err(message)) => assert!(format!("{err:#}").contains(message), "{err:#}"),
            (got, _) => panic!("{file:?} {env:?} {flag:?}: {got:?}"),
        }
    }
    // A public /metrics on an address others can reach is refused at start.
    std::fs::write(&file_path, "allow_plain_public = true\nhttp = \"0.0.0.0:8080\"\n[metrics]\npublic = true\n")
        .unwrap();
    let args = tern_server::ServerArgs { config: Some(file_path.clone()), ..Default::default() };
    let err = tern_server::Config::resolve(&args, |_| None).expect_err("refused");
    assert!(format!("{err:#}").contains("only when the HTTP listener is on a loopback address"), "{err:#}");
}
