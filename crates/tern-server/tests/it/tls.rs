//! TLS on both listeners, checked with real clients: curl against HTTPS, mosquitto_pub
//! against MQTT over TLS (with and without a device certificate); plaintext refused on the
//! TLS ports; certificates replaced on disk are served without a restart; bytes counted on
//! the socket, beneath TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

use crate::support::Server;

/// A test CA: its certificate (PEM) and what it signs with.
struct Ca {
    pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, params, key }
    }

    /// A certificate with subject CN `cn` and these subject alternative names, signed by
    /// this CA: (certificate PEM, key PEM).
    fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for localhost/127.0.0.1 to `cert` and `key`, replacing
    /// them in one step each (write beside, then rename), as a certificate renewal does.
    fn write_server(&self, cert: &Path, key: &Path) {
        let (cert_pem, key_pem) = self.issue("localhost", &["localhost", "127.0.0.1"]);
        for (path, text) in [(key, key_pem), (cert, cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(tool: &Path, args: &[&str]) -> Output {
    Command::new(tool).args(args).stdin(Stdio::null()).output().expect("the tool runs")
}

/// `curl` GET of `url` trusting `ca` (or the system roots with `None`): (exit ok, body).
fn curl(curl: &Path, url: &str, ca: Option<&Path>, token: Option<&str>) -> (bool, String) {
    let mut args = vec!["-sS".to_owned(), "--max-time".into(), "10".into()];
    if let Some(ca) = ca {
        args.extend(["--cacert".into(), ca.display().to_string()]);
    }
    if let Some(token) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {token}")]);
    }
    args.push(url.to_owned());
    let out = Command::new(curl).args(&args).stdin(Stdio::null()).output().expect("curl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Registers a device over HTTPS with curl; returns its secret.
fn add_device(curl: &Path, server: &Server, ca: &Path, id: &str) -> String {
    let out = run(
        curl,
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca.display().to_string(),
            "-H",
            &format!("Authorization: Bearer {}", server.token),
            "-H",
            "Content-Type: application/json",
            "-d",
            &format!(r#"{{"id":"{id}","platform":"photon"}}"#),
            &format!("{}/api/devices", server.http),
        ],
    );
    let body: Value = serde_json::from_slice(&out.stdout).expect("a JSON answer");
    body["secret"].as_str().unwrap_or_else(|| panic!("no secret in {body}")).to_owned()
}

/// Publishes one message as `device` over MQTT/TLS with mosquitto_pub; extra arguments add
/// credentials, certificates or a CA.
fn publish(tool: &Path, port: u16, device: &str, extra: &[&str]) -> Output {
    let topic = format!("tern/v1/d/{device}/up/progress");
    let port = port.to_string();
    let mut args = vec!["-h", "localhost", "-p", &port, "-i", device, "-t", &topic, "-m", "x"];
    args.extend_from_slice(extra);
    run(tool, &args)
}

/// Sends `request` on a plain TCP connection and returns everything read until the server
/// closes it (or 5 s pass).
fn plaintext(port: u16, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the listener accepts");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn stats(curl_tool: &Path, server: &Server, ca: &Path) -> Value {
    let (ok, body) = curl(curl_tool, &format!("{}/api/stats", server.http), Some(ca), Some(&server.token));
    assert!(ok, "{body}");
    serde_json::from_str(&body).expect("stats are JSON")
}

#[test]
fn https_and_mqtt_over_tls_with_real_clients() {
    let (Some(curl_tool), Some(pub_tool)) =
        (tern_testkit::peer("/usr/bin/curl"), tern_testkit::peer("/usr/bin/mosquitto_pub"))
    else {
        return;
    };
    let dir = tern_testkit::scratch("tls-clients");
    let ca = Ca::new("test CA");
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    ca.write_server(&cert, &key);
    let ca_file = write(&dir, "ca.pem", &ca.pem);
    let other_ca = write(&dir, "other-ca.pem", &Ca::new("another CA").pem);
    let server = Server::start_with(
        &dir.join("data"),
        &[
            "--http",
            "127.0.0.1:0",
            "--mqtts",
            "127.0.0.1:0",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    assert!(server.http.starts_with("https://"), "{}", server.http);
    assert_eq!(server.mqtt_port, 0, "no plain MQTT listener unless asked for");
    let mqtts = server.mqtts_port.expect("an MQTT over TLS listener");

    // HTTPS: curl trusting the CA gets an answer; trusting another CA it refuses the server.
    let health = format!("{}/api/health", server.http);
    let (ok, body) = curl(&curl_tool, &health, Some(&ca_file), None);
    assert!(ok && body.contains("\"ok\""), "{body}");
    let (ok, body) = curl(&curl_tool, &health, Some(&other_ca), None);
    assert!(!ok, "a certificate from another CA must not be trusted: {body}");
    // Plaintext HTTP on the TLS port gets no HTTP answer.
    let plain_url = health.replacen("https://", "http://", 1);
    let (ok, body) = curl(&curl_tool, &plain_url, None, None);
    assert!(!ok && !body.contains("\"ok\""), "plain HTTP must be refused: {body}");
    let port: u16 = server.http.rsplit(':').next().unwrap().parse().unwrap();
    let answer = plaintext(port, b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));

    // MQTT over TLS with a device secret.
    let secret = add_device(&curl_tool, &server, &ca_file, "dev-tls");
    let before = stats(&curl_tool, &server, &ca_file);
    let ca_arg = ca_file.display().to_string();
    let out = publish(&pub_tool, mqtts, "dev-tls", &["--cafile", &ca_arg, "-u", "dev-tls", "-P", &secret]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Bytes are counted on the socket, beneath TLS: this one publish sent the server a TLS
    // ClientHello (hundreds of bytes) besides ~60 bytes of MQTT, and got the server's
    // certificate back.
    let after = stats(&curl_tool, &server, &ca_file);
    let grew = |key: &str| after["link"][key].as_u64().unwrap() - before["link"][key].as_u64().unwrap();
    let cert_der_len = der_len(&std::fs::read_to_string(&cert).unwrap());
    assert!(grew("bytes_in") > 300, "bytes in: {}", grew("bytes_in"));
    assert!(grew("bytes_out") > cert_der_len as u64, "bytes out {} vs certificate {cert_der_len}", grew("bytes_out"));

    let wrong = publish(&pub_tool, mqtts, "dev-tls", &["--cafile", &ca_arg, "-u", "dev-tls", "-P", "wrong"]);
    assert!(!wrong.status.success(), "a wrong secret is refused over TLS too");
    // Without the CA the client does not trust the server; without TLS the server does not
    // speak MQTT: a plaintext CONNECT gets no CONNACK.
    let other = other_ca.display().to_string();
    let untrusted = publish(&pub_tool, mqtts, "dev-tls", &["--cafile", &other, "-u", "dev-tls", "-P", &secret]);
    assert!(!untrusted.status.success());
    let plain = publish(&pub_tool, mqtts, "dev-tls", &["-u", "dev-tls", "-P", &secret]);
    assert!(!plain.status.success(), "plaintext MQTT on the TLS port must fail");
    let connect = [0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00];
    let answer = plaintext(mqtts, &connect);
    assert!(!answer.starts_with(&[0x20, 0x02]), "no CONNACK in plaintext: {answer:02x?}");
}

/// The DER length of the first certificate in a PEM text.
fn der_len(pem: &str) -> usize {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).take_while(|l| !l.is_empty()).collect();
    // Base64: 4 characters for 3 bytes, minus padding.
    body.len() / 4 * 3 - body.bytes().rev().take_while(|&b| b == b'=').count()
}

/// Waits up to 15 s for curl trusting `ca` to succeed.
fn until_trusted(curl_tool: &Path, url: &str, ca: &Path) -> Duration {
    let start = Instant::now();
    loop {
        if curl(curl_tool, url, Some(ca), None).0 {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replaced_certificates_are_served_without_a_restart() {
    let (Some(curl_tool), Some(pub_tool)) =
        (tern_testkit::peer("/usr/bin/curl"), tern_testkit::peer("/usr/bin/mosquitto_pub"))
    else {
        return;
    };
    let dir = tern_testkit::scratch("tls-reload");
    let (first, second, third) = (Ca::new("first CA"), Ca::new("second CA"), Ca::new("third CA"));
    let cas: Vec<PathBuf> = [&first, &second, &third]
        .iter()
        .enumerate()
        .map(|(i, ca)| write(&dir, &format!("ca{i}.pem"), &ca.pem))
        .collect();
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    first.write_server(&cert, &key);
    // Checked for changes every 200 ms.
    let config = write(&dir, "tern.toml", "tls_reload_ms = 200\n");
    let server = Server::start_with(
        &dir.join("data"),
        &[
            "--config",
            &config.display().to_string(),
            "--http",
            "127.0.0.1:0",
            "--mqtts",
            "127.0.0.1:0",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    let health = format!("{}/api/health", server.http);
    assert!(curl(&curl_tool, &health, Some(&cas[0]), None).0);
    let secret = add_device(&curl_tool, &server, &cas[0], "dev-r");

    // Replaced on disk: new handshakes see the new certificate, on both listeners.
    second.write_server(&cert, &key);
    let took = until_trusted(&curl_tool, &health, &cas[1]);
    assert!(!curl(&curl_tool, &health, Some(&cas[0]), None).0, "the old certificate is no longer served");
    let mqtts = server.mqtts_port.unwrap();
    let with_ca = |ca: &Path| {
        let ca = ca.display().to_string();
        publish(&pub_tool, mqtts, "dev-r", &["--cafile", &ca, "-u", "dev-r", "-P", &secret]).status.success()
    };
    assert!(with_ca(&cas[1]) && !with_ca(&cas[0]));
    eprintln!("reloaded after {took:?}");

    // A file that does not parse (a key half written) keeps the current certificate.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(curl(&curl_tool, &health, Some(&cas[1]), None).0, "a broken file must not take TLS down");

    // SIGHUP reloads at once too.
    third.write_server(&cert, &key);
    let hup = Command::new("kill").args(["-HUP", &server.pid.to_string()]).status().expect("kill runs");
    assert!(hup.success());
    until_trusted(&curl_tool, &health, &cas[2]);
    assert!(curl(&curl_tool, &health, Some(&cas[2]), None).0);
}

#[test]
fn a_device_certificate_replaces_the_secret() {
    let (Some(curl_tool), Some(pub_tool)) =
        (tern_testkit::peer("/usr/bin/curl"), tern_testkit::peer("/usr/bin/mosquitto_pub"))
    else {
        return;
    };
    let dir = tern_testkit::scratch("tls-mutual");
    let server_ca = Ca::new("server CA");
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    server_ca.write_server(&cert, &key);
    let ca_file = write(&dir, "ca.pem", &server_ca.pem);
    let devices_ca = Ca::new("devices CA");
    let client_ca = write(&dir, "devices-ca.pem", &devices_ca.pem);
    let server = Server::start_with(
        &dir.join("data"),
        &[
            "--http",
            "127.0.0.1:0",
            "--mqtts",
            "127.0.0.1:0",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--tls-client-ca",
            &client_ca.display().to_string(),
        ],
    );
    let mqtts = server.mqtts_port.unwrap();
    let secret = add_device(&curl_tool, &server, &ca_file, "dev-m1");
    add_device(&curl_tool, &server, &ca_file, "dev-m2");
    let rogue_ca = Ca::new("rogue CA");

    let pair = |ca: &Ca, name: &str, cn: &str, sans: &[&str]| {
        let (c, k) = ca.issue(cn, sans);
        (write(&dir, &format!("{name}.pem"), &c), write(&dir, &format!("{name}-key.pem"), &k))
    };
    let by_cn = pair(&devices_ca, "by-cn", "dev-m1", &[]);
    let by_san = pair(&devices_ca, "by-san", "some device", &["dev-m2"]);
    let rogue = pair(&rogue_ca, "rogue", "dev-m1", &[]);
    let ca_arg = ca_file.display().to_string();
    // (what, device id as username, certificate, password, accepted)
    type Case<'a> = (&'a str, &'a str, Option<&'a (PathBuf, PathBuf)>, Option<&'a str>, bool);
    let cases: Vec<Case> = vec![
        ("CN names the device, no secret", "dev-m1", Some(&by_cn), None, true),
        ("a DNS SAN names the device, no secret", "dev-m2", Some(&by_san), None, true),
        ("the certificate names another device", "dev-m2", Some(&by_cn), None, false),
        ("a certificate from another CA", "dev-m1", Some(&rogue), None, false),
        ("no certificate, no secret", "dev-m1", None, None, false),
        ("no certificate, the secret", "dev-m1", None, Some(&secret), true),
    ];
    for (what, device, pair, password, accepted) in cases {
        let mut args = vec!["--cafile".to_owned(), ca_arg.clone(), "-u".into(), device.into()];
        if let Some((c, k)) = pair {
            args.extend(["--cert".into(), c.display().to_string(), "--key".into(), k.display().to_string()]);
        }
        if let Some(p) = password {
            args.extend(["-P".into(), p.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = publish(&pub_tool, mqtts, device, &args);
        assert_eq!(out.status.success(), accepted, "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
