//! Running the real `tern-server` binary on ephemeral loopback ports, and talking to it
//! over HTTP (ureq), MQTT (raw sockets with the rumqttc codec, and the mosquitto
//! command-line clients) and plain TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
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
        finish(self.send(method, path, Body::Json(body.unwrap_or(Value::Null)), authorization))
    }

    /// `method` on `path` with a JSON body (`Value::Null`: none) or raw bytes; `None` when
    /// the server does not answer (it died: the crash tests expect that).
    pub fn try_call(&self, method: &str, path: &str, body: Body) -> Option<(u16, Value)> {
        try_finish(self.send(method, path, body, None))
    }

    /// Sends `body` (none for GET and DELETE) with the `Authorization` header given
    /// verbatim (`None`: the client's own token).
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Body,
        authorization: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let header = match authorization {
            Some(value) => Some(value.to_owned()),
            None => self.token.as_ref().map(|t| format!("Bearer {t}")),
        };
        let without = |request: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &header {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        let request = match method {
            "GET" => return without(agent().get(&url)).call(),
            "DELETE" => return without(agent().delete(&url)).call(),
            "POST" => agent().post(&url),
            "PUT" => agent().put(&url),
            "PATCH" => agent().patch(&url),
            other => panic!("no method {other} in these tests"),
        };
        let request = match &header {
            Some(value) => request.header("Authorization", value),
            None => request,
        };
        match body {
            Body::Json(value) => request.send_json(value),
            Body::Bytes(bytes) => request.header("Content-Type", "application/octet-stream").send(&bytes[..]),
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

/// Sends `bytes` on a plain TCP connection to `127.0.0.1:port` and returns everything read
/// until the server closes it (or 5 s pass).
pub fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the listener accepts");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// An MQTT CONNECT packet laid out by hand (MQTT 3.1.1 §3.1), for the protocol names and
/// levels a codec will not write: clean session, keep-alive 60 s, no will, no login.
///
/// | bytes | field |
/// |---|---|
/// | `10` | packet type CONNECT, no flags |
/// | 1 | remaining length (the packets here stay under 128 bytes) |
/// | 2 + n | protocol name, length-prefixed (`MQTT`; `MQIsdp` for 3.1) |
/// | 1 | protocol level (3 for 3.1, 4 for 3.1.1, 5 for 5) |
/// | `02` | connect flags: clean session |
/// | `00 3c` | keep-alive, 60 s |
/// | 2 + n | client identifier, length-prefixed |
pub fn connect_packet(protocol: &str, level: u8, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(protocol.len() as u16).to_be_bytes());
    body.extend_from_slice(protocol.as_bytes());
    body.extend_from_slice(&[level, 0x02, 0x00, 0x3c]);
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    assert!(body.len() < 128, "a one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[test]
fn connect_packets_are_laid_out_as_the_specification_says() {
    // Worked out by hand from MQTT 3.1.1 §3.1 and MQTT 3.1 §3.1.
    let cases: [(&str, u8, &str, &[u8]); 3] = [
        (
            "MQIsdp",
            3,
            "abcd",
            &[
                0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x04, b'a',
                b'b', b'c', b'd',
            ],
        ),
        ("MQTT", 3, "x", &[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3c, 0x00, 0x01, b'x']),
        ("MQTT", 4, "", &[0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00]),
    ];
    for (protocol, level, client_id, expected) in cases {
        assert_eq!(connect_packet(protocol, level, client_id), expected, "{protocol} level {level}");
    }
}

/// One MQTT connection to the gateway's plain port on a raw socket; packets are written and
/// read with the rumqttc codec, or written as the bytes given.
pub struct Mqtt {
    stream: TcpStream,
    buf: BytesMut,
}

impl Mqtt {
    /// Opens a connection to the gateway; nothing is sent yet.
    pub fn open(server: &Server) -> Mqtt {
        let stream = TcpStream::connect(("127.0.0.1", server.mqtt_port)).expect("the gateway accepts");
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        stream.set_nodelay(true).unwrap();
        Mqtt { stream, buf: BytesMut::new() }
    }

    /// Opens a connection and logs in as `device` with `secret` (keep-alive 60 s): the
    /// connection and the CONNACK return code.
    pub fn connect(server: &Server, device: &str, secret: &str) -> (Mqtt, u8) {
        let mut mqtt = Mqtt::open(server);
        let code = mqtt.login(device, secret, 60);
        (mqtt, code)
    }

    /// Sends CONNECT as `device` with `secret` and this keep-alive (seconds); the CONNACK
    /// return code (panics when the answer is no CONNACK).
    pub fn login(&mut self, device: &str, secret: &str, keep_alive: u16) -> u8 {
        let mut connect = Connect::new(format!("{device}-raw"));
        connect.keep_alive = keep_alive;
        connect.login = Some(Login::new(device, secret));
        self.send(Packet::Connect(connect));
        match self.next(Duration::from_secs(5)) {
            Ok(Some(Packet::ConnAck(ack))) => ack.code as u8,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes one packet.
    pub fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).expect("the packet encodes");
        self.stream.write_all(&out).expect("the gateway reads");
    }

    /// Writes bytes as they are (already encoded packets, or garbage).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("the gateway reads");
    }

    /// The next packet; `Ok(None)` when the server closed the connection, `Err` on timeout.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Packet>, ()> {
        let start = Instant::now();
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return Ok(Some(packet)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(err) => panic!("the server sent a malformed packet: {err}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Ok(None),
            }
            if start.elapsed() > timeout {
                return Err(());
            }
        }
    }

    /// Whether the server closes this connection within `within` (packets before the close
    /// are read and passed over).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            match self.next(within.saturating_sub(start.elapsed())) {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(()) => return false,
            }
        }
        false
    }

    /// Panics unless the server closes this connection within `within`.
    pub fn expect_closed(&mut self, within: Duration) {
        assert!(self.closed_within(within), "the connection stayed open for {within:?}");
    }

    /// Whether the connection still answers a ping.
    pub fn alive(&mut self) -> bool {
        self.send(Packet::PingReq);
        matches!(self.next(Duration::from_secs(2)), Ok(Some(Packet::PingResp)))
    }
}

/// The CBOR bytes of a protocol message.
pub fn encode(message: &tern_proto::Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let n = message.encode(&mut buf).expect("sized by encoded_len");
    buf.truncate(n);
    buf
}
