//! Running the real `tern-server` binary on ephemeral loopback ports, and talking to it
//! over HTTP (ureq) and MQTT (the mosquitto command-line clients).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long the server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `tern-server` process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub http: String,
    /// MQTT port on 127.0.0.1 (0 when the server has no plain MQTT listener).
    pub mqtt_port: u16,
    /// MQTT over TLS port on 127.0.0.1, when TLS is on.
    pub mqtts_port: Option<u16>,
    /// The process id.
    pub pid: u32,
    /// The data directory.
    pub data: PathBuf,
    /// The admin token (from the data directory).
    pub token: String,
}

impl Server {
    /// Starts a server on `data` with ephemeral ports and waits until it listens.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
    }

    /// Starts a server on `data` with these flags (listen addresses included) and waits
    /// until every listener it reports is up.
    pub fn start_with(data: &Path, args: &[&str]) -> Server {
        Server::start_with_env(data, args, &[])
    }

    /// As [`Server::start_with`], with these environment variables set for the server.
    pub fn start_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern-server"))
            .args(args)
            .envs(env.iter().copied())
            .arg("--data")
            .arg(data)
            .env("TERN_LOG", "error")
            .env_remove("TERN_CONFIG")
            .env_remove("TERN_HTTP")
            .env_remove("TERN_MQTT")
            .env_remove("TERN_DATA")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tern-server starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keep draining stdout for the life of the process, even after the test stopped
        // listening, so the server never writes into a full or closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut http, mut mqtt, mut mqtts) = (None, None, None);
        // The HTTP line comes last of the listener lines, after the MQTT ones.
        while http.is_none() {
            let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("tern-server did not report its listeners within {START_TIMEOUT:?}")
            });
            if let Some(rest) = line.split("HTTP API on ").nth(1) {
                http = Some(rest.split_whitespace().next().expect("an address follows").to_owned());
            }
            if let Some(rest) = line.split("MQTT device gateway on mqtt://").nth(1) {
                mqtt = Some(rest.rsplit(':').next().expect("a port").parse().expect("a port number"));
            }
            if let Some(rest) = line.split("MQTT device gateway on mqtts://").nth(1) {
                mqtts = Some(rest.rsplit(':').next().expect("a port").parse().expect("a port number"));
            }
        }
        let token = std::fs::read_to_string(data.join("admin-token")).expect("the admin token file exists");
        Server {
            pid: child.id(),
            child,
            http: http.expect("loop ends with it"),
            mqtt_port: mqtt.unwrap_or(0),
            mqtts_port: mqtts,
            data: data.to_path_buf(),
            token: token.trim().to_owned(),
        }
    }

    /// Kills the process with SIGKILL (no chance to flush or clean up) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to end by itself; whether it did.
    pub fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// An HTTP client authenticated with the admin token.
    pub fn api(&self) -> Api {
        Api { base: self.http.clone(), token: Some(self.token.clone()) }
    }

    /// Registers a device and returns its secret.
    pub fn add_device(&self, id: &str, platform: &str) -> String {
        let (status, body) =
            self.api().post_json("/api/devices", serde_json::json!({ "id": id, "platform": platform }));
        assert_eq!(status, 201, "{body}");
        body["secret"].as_str().expect("a secret").to_owned()
    }

    /// Runs a mosquitto client against the gateway with `args` after the host and port.
    pub fn mosquitto(&self, tool: &Path, args: &[&str]) -> Output {
        let port = self.mqtt_port.to_string();
        Command::new(tool)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the mosquitto client runs")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request body for [`Api::try_call`].
pub enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

/// A minimal JSON HTTP client.
pub struct Api {
    pub base: String,
    pub token: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    try_finish(response).expect("the server answers")
}

/// The status and body, or `None` when no answer came (the server is gone).
fn try_finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Option<(u16, Value)> {
    let mut response = response.ok()?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().ok()?;
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some((status, json))
}

impl Api {
    /// The same server with another (or no) token.
    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api { base: self.base.clone(), token: token.map(str::to_owned) }
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        finish(self.auth(agent().get(&format!("{}{path}", self.base))).call())
    }

    /// POST raw bytes to `path`.
    pub fn post_bytes(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        let request = agent().post(&format!("{}{path}", self.base)).header("Content-Type", "application/octet-stream");
        finish(self.auth(request).send(bytes))
    }

    /// POST raw bytes to `path` with an `Idempotency-Key`.
    pub fn post_bytes_keyed(&self, path: &str, bytes: &[u8], key: &str) -> (u16, Value) {
        let request = agent()
            .post(&format!("{}{path}", self.base))
            .header("Content-Type", "application/octet-stream")
            .header("Idempotency-Key", key);
        finish(self.auth(request).send(bytes))
    }

    /// POST JSON to `path` with an `Idempotency-Key`.
    pub fn post_json_keyed(&self, path: &str, body: Value, key: &str) -> (u16, Value) {
        finish(self.auth(agent().post(&format!("{}{path}", self.base)).header("Idempotency-Key", key)).send_json(body))
    }

    /// POST JSON to `path`.
    pub fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        finish(self.auth(agent().post(&format!("{}{path}", self.base))).send_json(body))
    }

    /// PUT raw bytes to `path`.
    pub fn put_bytes(&self, path: &str, bytes: &[u8]) -> (u16, Value) {
        let request = agent().put(&format!("{}{path}", self.base)).header("Content-Type", "application/octet-stream");
        finish(self.auth(request).send(bytes))
    }

    /// PATCH JSON to `path`.
    pub fn patch_json(&self, path: &str, body: Value) -> (u16, Value) {
        finish(self.auth(agent().patch(&format!("{}{path}", self.base))).send_json(body))
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        finish(self.auth(agent().delete(&format!("{}{path}", self.base))).call())
    }

    /// Any method on `path` with a JSON body (none for GET and DELETE) and the
    /// `Authorization` header given verbatim (`None`: the client's own token).
    pub fn call(&self, method: &str, path: &str, body: Option<Value>, authorization: Option<&str>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let header = match authorization {
            Some(value) => Some(value.to_owned()),
            None => self.token.as_ref().map(|t| format!("Bearer {t}")),
        };
        let with = |request: ureq::RequestBuilder<ureq::typestate::WithBody>| match &header {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        let without = |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &header {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        let body = body.unwrap_or(Value::Null);
        match method {
            "GET" => finish(without(agent().get(&url)).call()),
            "DELETE" => finish(without(agent().delete(&url)).call()),
            "POST" => finish(with(agent().post(&url)).send_json(body)),
            "PUT" => finish(with(agent().put(&url)).send_json(body)),
            "PATCH" => finish(with(agent().patch(&url)).send_json(body)),
            other => panic!("no method {other} in these tests"),
        }
    }

    /// `method` on `path` with a JSON body (`Value::Null`: none) or raw bytes; `None` when
    /// the server does not answer (it died: the crash tests expect that).
    pub fn try_call(&self, method: &str, path: &str, body: Body) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        match (method, body) {
            ("GET", _) => try_finish(self.auth(agent().get(&url)).call()),
            ("DELETE", _) => try_finish(self.auth(agent().delete(&url)).call()),
            ("POST", Body::Json(value)) => try_finish(self.auth(agent().post(&url)).send_json(value)),
            ("POST", Body::Bytes(bytes)) => try_finish(self.auth(agent().post(&url)).send(&bytes[..])),
            ("PUT", Body::Json(value)) => try_finish(self.auth(agent().put(&url)).send_json(value)),
            ("PUT", Body::Bytes(bytes)) => try_finish(self.auth(agent().put(&url)).send(&bytes[..])),
            ("PATCH", Body::Json(value)) => try_finish(self.auth(agent().patch(&url)).send_json(value)),
            (other, _) => panic!("no {other} with that body in these tests"),
        }
    }

    /// GET `path` and the value of its `Link` header (the next page), if any.
    pub fn get_page(&self, path: &str) -> (u16, Value, Option<String>) {
        let mut response = self.auth(agent().get(&format!("{}{path}", self.base))).call().expect("the server answers");
        let link = response.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a text body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), link)
    }

    /// Opens the event stream at `path` and returns its lines as they arrive.
    pub fn stream_lines(&self, path: &str) -> mpsc::Receiver<String> {
        let response = self.auth(agent().get(&format!("{}{path}", self.base))).call().expect("the stream opens");
        assert_eq!(response.status().as_u16(), 200);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(response.into_body().into_reader()).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// Waits until `condition` holds, polling; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `bytes` to a file in `dir` and returns its path (for `mosquitto_pub -f`).
pub fn payload_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch is writable");
    path
}
