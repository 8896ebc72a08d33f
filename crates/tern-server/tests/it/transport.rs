//! A server no client can exhaust: thousands of idle unauthenticated HTTP sockets (from
//! many loopback source addresses) leave `/api/health` and device connections working, are
//! bounded in number on the server and closed after the header timeout; the per-source
//! cap; MQTT 3.1 clients get CONNACK 1; the data directory is private to the server's user.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{connect_packet, exchange, Mqtt, Server};

/// Idle sockets the flood opens, as many as the probe. The test process lets go of
/// the ones the server has closed as it goes (its open file limit is 20,000 here too).
const FLOOD: usize = 20_000;
/// Sockets per loopback source address in the flood (under the per-source cap).
const PER_SOURCE: usize = 40;

fn open_from(runtime: &tokio::runtime::Runtime, source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream =
            tokio::time::timeout(Duration::from_secs(5), socket.connect(SocketAddr::from(([127, 0, 0, 1], port))))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// Whether the server has closed `stream` (a read sees end of stream or a reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 64];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Whether the server has closed `stream` already (a non-blocking read sees end of stream or
/// a reset).
fn closed_now(stream: &&TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 64];
    let closed = match (&**stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_http_sockets_leave_health_checks_and_devices_working() {
    let dir = tern_testkit::scratch("transport-flood");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("tern.toml");
    std::fs::write(
        &config,
        "max_http_connections = 500\nmax_connections_per_source = 50\nhttp_header_timeout_ms = 2000\n\
         http_idle_timeout_ms = 4000\n",
    )
    .unwrap();
    let server = Server::start_with(
        &dir.join("data"),
        &["--config", &config.display().to_string(), "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"],
    );
    let secret = server.add_device("dev-flood", "photon");
    let port: u16 = server.http.rsplit(':').next().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rss_before = rss_kib(server.pid);

    // Per source: the 51st connection from one address is closed at once.
    let single = Ipv4Addr::new(127, 0, 2, 1);
    let one_source: Vec<TcpStream> = (0..60).map(|_| open_from(&runtime, single, port).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let closed = one_source.iter().filter(closed_now).count();
    assert_eq!(closed, 10, "60 connections from one address with a cap of 50");
    drop(one_source);

    // The flood: idle sockets and slow partial request heads from many source addresses.
    let start = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    let (mut refused, mut evicted) = (0, 0);
    for i in 0..FLOOD {
        let n = i / PER_SOURCE;
        let source = Ipv4Addr::new(127, 0, 1 + (n / 250) as u8 % 200, 1 + (n % 250) as u8);
        match open_from(&runtime, source, port) {
            Ok(mut stream) => {
                if i % 2 == 0 {
                    let _ = stream.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n");
                }
                flood.push(stream);
            }
            Err(_) => refused += 1,
        }
        if i % 500 == 499 {
            let before = flood.len();
            flood.retain(|s| !closed_now(&s));
            evicted += before - flood.len();
        }
    }
    let opened = start.elapsed();
    eprintln!("flood: {FLOOD} sockets tried, {refused} refused, {evicted} closed by the server so far, in {opened:?}");
    assert!(refused <= FLOOD / 10, "the listen queue keeps moving: {refused} refused");

    // While they are open: the server holds a bounded number of them,
    let fds = open_fds(server.pid);
    assert!(fds < 500 + 16 + 100, "the server holds {fds} descriptors");
    // health checks from an address with no other connection are answered,
    let health_start = Instant::now();
    let (status, body) = server.api().get("/api/health");
    assert_eq!(status, 200, "{body}");
    let health = health_start.elapsed();
    // and a device gets its CONNACK.
    let device_start = Instant::now();
    assert_eq!(Mqtt::connect(&server, "dev-flood", &secret).1, 0);
    let device = device_start.elapsed();
    eprintln!("during the flood: {fds} server descriptors, health in {health:?}, CONNACK in {device:?}");
    assert!(health < Duration::from_secs(2) && device < Duration::from_secs(2));

    // Every flood socket is closed by the server by the idle timeout (4 s) plus slack.
    let deadline = start + opened + Duration::from_secs(4) + Duration::from_secs(4);
    let mut open = 0;
    for stream in flood.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        if !closed_within(stream, left) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} idle sockets were still open after the timeouts");
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, fds_after) = (rss_kib(server.pid), open_fds(server.pid));
    eprintln!("after: {fds_after} descriptors, RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(fds_after < 100, "descriptors are given back: {fds_after}");
    assert!(rss_after < rss_before + 64 * 1024, "memory is given back: {rss_before} KiB -> {rss_after} KiB");
    assert_eq!(server.api().get("/api/health").0, 200);
}

#[test]
fn an_mqtt_31_client_gets_connack_1() {
    let dir = tern_testkit::scratch("transport-mqtt31");
    let server = Server::start(&dir.join("data"));
    let secret = server.add_device("dev-31", "photon");
    // CONNECT, protocol name "MQIsdp", level 3 (MQTT 3.1), clean session, keep-alive 60,
    // client id "abcd": CONNACK return code 1, unacceptable protocol version.
    let answer = exchange(server.mqtt_port, &connect_packet("MQIsdp", 3, "abcd"));
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01], "CONNACK 1, then the connection closes");

    // A real MQTT 3.1 client says why.
    let Some(tool) = tern_testkit::peer("/usr/bin/mosquitto_pub") else { return };
    let out = server.mosquitto(&tool, &["-V", "mqttv31", "-u", "dev-31", "-P", &secret, "-t", "t", "-m", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("unacceptable protocol version"), "{stderr}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push((path.display().to_string(), mode(&path)));
        if path.is_dir() {
            modes(&path, out);
        }
    }
}

#[test]
fn the_data_directory_is_private_to_the_server_user() {
    let dir = tern_testkit::scratch("transport-private");
    let data = dir.join("data");
    // An older version's data directory: world-readable directory, database and token.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&data);
    server.add_device("dev-p", "photon");
    let module = tern_testkit::corpus_files("particle/releases")
        .into_iter()
        .find(|f| f.file_name().is_some_and(|n| n == "photon-system-part1@1.5.2.bin"));
    if let Some(module) = module {
        let bytes = std::fs::read(&module).unwrap();
        let (status, body) = server.api().post_bytes("/api/modules?filename=part1.bin", &bytes);
        assert!(status == 201 || status == 200, "{body}");
    }
    let check = |data: &Path, names: &[&str]| {
        assert_eq!(mode(data), 0o700, "the data directory");
        let mut all = Vec::new();
        modes(data, &mut all);
        for name in names {
            assert!(all.iter().any(|(p, _)| p.ends_with(name)), "{name} exists: {all:?}");
        }
        for (path, mode) in &all {
            assert_eq!(mode & 0o077, 0, "{path} has mode {mode:o}");
        }
        all.len()
    };
    let files = check(&data, &["tern.db", "admin-token", "blobs"]);
    eprintln!("{files} files and directories, all private");
    server.kill();

    // Made readable again (copied by hand, restored from a backup): the next start fixes
    // it; with a self-signed certificate, its key is private too.
    for name in ["", "tern.db", "admin-token"] {
        let path = data.join(name);
        let mode = if name.is_empty() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let server = Server::start_with(&data, &["--http", "127.0.0.1:0", "--mqtts", "127.0.0.1:0", "--self-signed"]);
    check(&data, &["tern.db", "admin-token", "blobs", "tls/server-key.pem", "tls/ca.pem"]);
    drop(server);
}
