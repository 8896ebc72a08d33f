//! A server in this process on ephemeral loopback ports, simulated devices on threads,
//! signed bundles, and a small HTTP client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::Value;
use tern_fleet::{Faults, FaultyLink, MqttLink, MqttTarget, Settings, SimRuntime, Stats};
use tern_image::manifest::build::Document;
use tern_image::manifest::Kind;
use tern_sim::device::{Image, SimDevice};

/// The release signing key the simulated devices trust.
pub fn release_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// Runs the real `tern` binary against `server` (its address and token in the
/// environment, `home` as HOME, no signing key from the environment) with `stdin` typed in.
pub fn tern_against(server: &Server, home: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::cli::tern())
        .args(args)
        .env("TERN_SERVER", &server.http)
        .env("TERN_TOKEN", &server.token)
        .env("HOME", scratch(home))
        .env_remove("TERN_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern starts");
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).expect("stdin accepts");
    child.wait_with_output().expect("tern runs")
}

/// A server running in this process; stops with the runtime when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// The gateway port.
    pub mqtt_port: u16,
    /// The admin token.
    pub token: String,
    /// With TLS on: the client configuration devices trust the server with (its
    /// self-signed CA); the API is then HTTPS, checked against the same CA.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    agent: ureq::Agent,
    _runtime: Option<tokio::runtime::Runtime>,
    child: Option<std::process::Child>,
}

impl Server {
    /// Starts a server on `data` with ephemeral ports.
    pub fn start(data: &Path) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut config = tern_server::Config {
            data_dir: data.to_path_buf(),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..tern_server::Config::default()
        };
        config.transfer.offer_retry_ms = 1_000;
        config.transfer.window = 8;
        let running = runtime.block_on(tern_server::start(config)).expect("the server starts");
        let token = std::fs::read_to_string(data.join(tern_server::ADMIN_TOKEN_FILE)).expect("admin token");
        Server {
            http: format!("http://{}", running.http),
            mqtt_port: running.mqtt.expect("a plain MQTT listener without TLS").port(),
            token: token.trim().to_owned(),
            tls: None,
            agent: agent(),
            _runtime: Some(runtime),
            child: None,
        }
    }

    /// Starts a server on `data` with TLS on both listeners (a self-signed certificate made
    /// in `data/tls/`), ephemeral ports and no plain listener: devices connect over MQTT/TLS.
    pub fn start_tls(data: &Path) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut config = tern_server::Config {
            data_dir: data.to_path_buf(),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtts: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt: None,
            tls: tern_server::TlsSource::SelfSigned { client_ca: None },
            ..tern_server::Config::default()
        };
        config.transfer.offer_retry_ms = 1_000;
        config.transfer.window = 8;
        let running = runtime.block_on(tern_server::start(config)).expect("the server starts");
        assert!(running.https && running.mqtt.is_none(), "TLS only");
        let ca = running.self_signed_ca.clone().expect("a self-signed CA");
        let token = std::fs::read_to_string(data.join(tern_server::ADMIN_TOKEN_FILE)).expect("admin token");
        let pem = std::fs::read(&ca).expect("the CA file");
        let roots: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots))).build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .tls_config(tls)
            .build()
            .into();
        Server {
            http: format!("https://localhost:{}", running.http.port()),
            mqtt_port: running.mqtts.expect("an MQTT/TLS listener").port(),
            token: token.trim().to_owned(),
            tls: Some(tern_fleet::link::tls_client(&ca).expect("a client configuration from the CA")),
            agent,
            _runtime: Some(runtime),
            child: None,
        }
    }

    /// Starts `tern server` as a separate process on fixed ports (so that a restarted
    /// server is found where devices left it) and waits until it answers.
    pub fn spawn(tern: &Path, data: &Path, http_port: u16, mqtt_port: u16) -> Server {
        let child = std::process::Command::new(tern)
            .arg("server")
            .args(["--http", &format!("127.0.0.1:{http_port}"), "--mqtt", &format!("127.0.0.1:{mqtt_port}")])
            .arg("--data")
            .arg(data)
            .env("TERN_LOG", "error")
            .env_remove("TERN_CONFIG")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("tern server starts");
        let http = format!("http://127.0.0.1:{http_port}");
        let start = Instant::now();
        loop {
            let up = agent().get(&format!("{http}/api/health")).call().is_ok_and(|r| r.status() == 200);
            if up && data.join(tern_server::ADMIN_TOKEN_FILE).exists() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "tern server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let token = std::fs::read_to_string(data.join(tern_server::ADMIN_TOKEN_FILE)).expect("admin token");
        Server {
            http,
            mqtt_port,
            token: token.trim().to_owned(),
            tls: None,
            agent: agent(),
            _runtime: None,
            child: Some(child),
        }
    }

    /// Kills the server process with SIGKILL (no chance to flush anything).
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET `path` (JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        finish(self.agent.get(&format!("{}{path}", self.http)).header("Authorization", &self.bearer()).call())
    }

    /// POST JSON.
    pub fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        finish(self.agent.post(&format!("{}{path}", self.http)).header("Authorization", &self.bearer()).send_json(body))
    }

    /// POST bytes.
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> (u16, Value) {
        finish(
            self.agent
                .post(&format!("{}{path}", self.http))
                .header("Authorization", &self.bearer())
                .header("Content-Type", "application/octet-stream")
                .send(body),
        )
    }

    /// The bytes the gateway has carried on device connections so far, both ways
    /// (`link.bytes_in` + `link.bytes_out` of `/api/stats`; counted on the socket, TLS
    /// records included). Its growth over an attempt of the only device is what that
    /// device's connection carried.
    pub fn link_bytes(&self) -> u64 {
        let (status, stats) = self.get("/api/stats");
        assert_eq!(status, 200, "{stats}");
        let count =
            |key: &str| stats["link"][key].as_u64().unwrap_or_else(|| panic!("/api/stats has link.{key}: {stats}"));
        count("bytes_in") + count("bytes_out")
    }

    /// Where device `id` connects: the gateway on loopback, over TLS when the server has it.
    pub fn device_target(&self, id: &str, secret: &str) -> MqttTarget {
        MqttTarget {
            host: "127.0.0.1".into(),
            port: self.mqtt_port,
            device: id.into(),
            secret: secret.into(),
            tls: self.tls.clone(),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Registers a device; returns its secret.
    pub fn add_device(&self, id: &str, platform: &str) -> String {
        let (status, body) = self.post_json("/api/devices", serde_json::json!({ "id": id, "platform": platform }));
        assert_eq!(status, 201, "{body}");
        body["secret"].as_str().expect("a secret").to_owned()
    }

    /// Starts an attempt with a bundle; returns the attempt id.
    pub fn flash(&self, device: &str, bundle: &[u8]) -> i64 {
        let (status, body) = self.post_bytes(&format!("/api/devices/{device}/attempts"), bundle);
        assert!(status == 201 || status == 200, "{status} {body}");
        body["id"].as_i64().expect("an attempt id")
    }

    /// Waits until attempt `id` is final; returns it.
    pub fn wait_final(&self, id: i64, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (status, a) = self.get(&format!("/api/attempts/{id}"));
            assert_eq!(status, 200, "{a}");
            let state = a["state"].as_str().unwrap_or_default();
            if ["confirmed", "failed", "rolled_back", "timed_out", "cancelled"].contains(&state) {
                return a;
            }
            assert!(start.elapsed() < timeout, "attempt {id} still {state} after {timeout:?}: {a}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("a text body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A module statement for `image` on `platform` (security counter 1), signed with `key`,
/// as `tern module sign` makes it.
pub fn statement_signed_by(image: &Image, platform: u16, key: &SigningKey) -> Vec<u8> {
    Document {
        kind: Kind::ModuleStatement,
        platform_id: platform,
        product_id: 0,
        security_counter: 1,
        created: 1_790_000_000,
        modules: vec![image.entry],
        name: String::new(),
    }
    .sign(key)
    .expect("the statement signs")
}

/// A signed release bundle for `platform` with `modules` in this order.
pub fn bundle(platform: u16, modules: &[&Image], counter: u64) -> Vec<u8> {
    let signed = Document {
        kind: Kind::Release,
        platform_id: platform,
        product_id: 0,
        security_counter: counter,
        created: 1_790_000_000,
        modules: modules.iter().map(|m| m.entry).collect(),
        name: "fleet test".into(),
    }
    .sign(&release_key())
    .expect("the manifest signs");
    let slices: Vec<&[u8]> = modules.iter().map(|m| m.bytes.as_slice()).collect();
    tern_image::bundle::write(&signed, &slices).expect("the bundle writes")
}

/// A simulated device running on its own thread.
pub struct Device {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), String>>>,
    /// Its counters.
    pub stats: Arc<Mutex<Stats>>,
}

impl Device {
    /// Starts a device built by `build` (on the device's thread: a `SimDevice` is not
    /// `Send`), connected to `server` as `id`, optionally through a faulty link.
    pub fn start(
        server: &Server,
        id: &str,
        secret: &str,
        settings: Settings,
        faults: Option<(Faults, u64)>,
        build: impl FnOnce() -> SimDevice + Send + 'static,
    ) -> Device {
        Device::run(server.device_target(id, secret), settings, faults, build)
    }

    /// Starts a device built by `build` connecting to `target` as it says.
    pub fn start_with_target(
        target: MqttTarget,
        settings: Settings,
        build: impl FnOnce() -> SimDevice + Send + 'static,
    ) -> Device {
        Device::run(target, settings, None, build)
    }

    fn run(
        target: MqttTarget,
        settings: Settings,
        faults: Option<(Faults, u64)>,
        build: impl FnOnce() -> SimDevice + Send + 'static,
    ) -> Device {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut runtime = SimRuntime::new(build(), settings);
            let _ = tx.send(runtime.stats());
            let link = MqttLink::new(&target);
            let result = match faults {
                Some((f, seed)) => runtime.run(&mut FaultyLink::new(link, f, seed), &flag),
                None => runtime.run(&mut { link }, &flag),
            };
            result.map_err(|e| e.to_string())
        });
        let stats = rx.recv_timeout(Duration::from_secs(10)).expect("the device thread starts");
        Device { stop, handle: Some(handle), stats }
    }

    /// A copy of its counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Waits until `condition` holds on its counters.
    pub fn wait_for(&self, what: &str, timeout: Duration, condition: impl Fn(&Stats) -> bool) {
        let start = Instant::now();
        while !condition(&self.stats()) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}: {:?}", self.stats());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it and reports how its run ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map(|h| h.join().expect("the device thread does not panic")).unwrap_or(Ok(()))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The module hashes (hex) the server lists as installed on `device`.
pub fn installed_hashes(server: &Server, device: &str) -> Vec<String> {
    let (status, body) = server.get(&format!("/api/devices/{device}"));
    assert_eq!(status, 200, "{body}");
    let modules = inventory_modules(&body);
    modules.iter().filter_map(|m| m["sha256"].as_str().map(str::to_owned)).collect()
}

/// The installed modules in a device record, wherever the record keeps them.
pub fn inventory_modules(device: &Value) -> Vec<Value> {
    for path in [&["inventory", "modules"][..], &["modules"][..], &["describe", "modules"][..]] {
        let mut v = device;
        for k in path {
            v = &v[*k];
        }
        if let Some(a) = v.as_array() {
            return a.clone();
        }
    }
    Vec::new()
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    tern_testkit::scratch(name)
}

/// Waits until the server has stored device `id`'s first Describe (a simulated device
/// counts a Describe when it sends it; the server stores it a moment later) and returns
/// the device record.
pub fn wait_inventory(server: &Server, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (_, record) = server.get(&format!("/api/devices/{id}"));
        if record["inventory"].is_object() {
            return record;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "device {id} never described itself: {record}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
