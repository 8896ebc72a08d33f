//! TLS on both listeners, checked with real clients: curl against HTTPS, mosquitto_pub
//! against MQTT over TLS (with and without a device certificate); plaintext refused on the
//! TLS ports; certificates replaced on disk are served without a restart; bytes counted on
//! the socket, beneath TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

use crate::support::{connect_packet, exchange, Server};

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

/// One TLS test's setting: the real clients (curl, mosquitto_pub), a scratch directory and a
/// server certificate for localhost in it; starts servers with TLS on both listeners.
struct Site {
    curl: PathBuf,
    mosquitto_pub: PathBuf,
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Site {
    /// A scratch directory `name` with a server certificate signed by `ca`; `None` (the test
    /// is skipped) where curl or mosquitto_pub is missing outside CI.
    fn new(name: &str, ca: &Ca) -> Option<Site> {
        let curl = tern_testkit::peer("/usr/bin/curl")?;
        let mosquitto_pub = tern_testkit::peer("/usr/bin/mosquitto_pub")?;
        let dir = tern_testkit::scratch(name);
        let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
        ca.write_server(&cert, &key);
        Some(Site { curl, mosquitto_pub, dir, cert, key })
    }

    /// Writes `text` to the file `name` in the scratch directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A server with HTTPS and MQTT over TLS on ephemeral ports, serving the site's
    /// certificate, and these further flags.
    fn start(&self, extra: &[&str]) -> Server {
        let (cert, key) = (self.cert.display().to_string(), self.key.display().to_string());
        let mut args = vec!["--http", "127.0.0.1:0", "--mqtts", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        Server::start_with(&self.dir.join("data"), &args)
    }

    /// `curl` of `url` trusting `ca` (or the system roots with `None`), with a bearer token
    /// and further arguments: (exit ok, what it printed on stdout and stderr).
    fn curl(&self, url: &str, ca: Option<&Path>, token: Option<&str>, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["-sS".to_owned(), "--max-time".into(), "10".into()];
        if let Some(ca) = ca {
            args.extend(["--cacert".into(), ca.display().to_string()]);
        }
        if let Some(token) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {token}")]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(url.to_owned());
        let out = Command::new(&self.curl).args(&args).stdin(Stdio::null()).output().expect("curl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Whether a GET of `url` trusting `ca` succeeds.
    fn trusted(&self, url: &str, ca: &Path) -> bool {
        self.curl(url, Some(ca), None, &[]).0
    }

    /// Registers a device over HTTPS with curl trusting `ca`; returns its secret.
    fn add_device(&self, server: &Server, ca: &Path, id: &str) -> String {
        let body = format!(r#"{{"id":"{id}","platform":"photon"}}"#);
        let url = format!("{}/api/devices", server.http);
        let (_, text) =
            self.curl(&url, Some(ca), Some(&server.token), &["-H", "Content-Type: application/json", "-d", &body]);
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON answer: {text}"));
        body["secret"].as_str().unwrap_or_else(|| panic!("no secret in {body}")).to_owned()
    }

    /// `/api/stats` over HTTPS trusting `ca`.
    fn stats(&self, server: &Server, ca: &Path) -> Value {
        let (ok, body) = self.curl(&format!("{}/api/stats", server.http), Some(ca), Some(&server.token), &[]);
        assert!(ok, "{body}");
        serde_json::from_str(&body).expect("stats are JSON")
    }

    /// Publishes one message as `device` over MQTT/TLS with mosquitto_pub; extra arguments
    /// add credentials, certificates or a CA.
    fn publish(&self, port: u16, device: &str, extra: &[&str]) -> Output {
        let topic = format!("tern/v1/d/{device}/up/progress");
        let port = port.to_string();
        Command::new(&self.mosquitto_pub)
            .args(["-h", "localhost", "-p", &port, "-i", device, "-t", &topic, "-m", "x"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("mosquitto_pub runs")
    }

    /// Waits up to 15 s for curl trusting `ca` to succeed.
    fn until_trusted(&self, url: &str, ca: &Path) -> Duration {
        let start = Instant::now();
        loop {
            if self.trusted(url, ca) {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(15), "the new certificate was never served");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn https_and_mqtt_over_tls_with_real_clients() {
    let ca = Ca::new("test CA");
    let Some(site) = Site::new("tls-clients", &ca) else { return };
    let ca_file = site.write("ca.pem", &ca.pem);
    let other_ca = site.write("other-ca.pem", &Ca::new("another CA").pem);
    let server = site.start(&[]);
    assert!(server.http.starts_with("https://"), "{}", server.http);
    assert_eq!(server.mqtt_port, 0, "no plain MQTT listener unless asked for");
    let mqtts = server.mqtts_port.expect("an MQTT over TLS listener");

    // HTTPS: curl trusting the CA gets an answer; trusting another CA it refuses the server.
    let health = format!("{}/api/health", server.http);
    let (ok, body) = site.curl(&health, Some(&ca_file), None, &[]);
    assert!(ok && body.contains("\"ok\""), "{body}");
    let (ok, body) = site.curl(&health, Some(&other_ca), None, &[]);
    assert!(!ok, "a certificate from another CA must not be trusted: {body}");
    // Plaintext HTTP on the TLS port gets no HTTP answer.
    let plain_url = health.replacen("https://", "http://", 1);
    let (ok, body) = site.curl(&plain_url, None, None, &[]);
    assert!(!ok && !body.contains("\"ok\""), "plain HTTP must be refused: {body}");
    let port: u16 = server.http.rsplit(':').next().unwrap().parse().unwrap();
    let answer = exchange(port, b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));

    // MQTT over TLS with a device secret.
    let secret = site.add_device(&server, &ca_file, "dev-tls");
    let before = site.stats(&server, &ca_file);
    let ca_arg = ca_file.display().to_string();
    let out = site.publish(mqtts, "dev-tls", &["--cafile", &ca_arg, "-u", "dev-tls", "-P", &secret]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Bytes are counted on the socket, beneath TLS: this one publish sent the server a TLS
    // ClientHello (hundreds of bytes) besides ~60 bytes of MQTT, and got the server's
    // certificate back.
    let after = site.stats(&server, &ca_file);
    let grew = |key: &str| after["link"][key].as_u64().unwrap() - before["link"][key].as_u64().unwrap();
    let cert_der_len = der_len(&std::fs::read_to_string(&site.cert).unwrap());
    assert!(grew("bytes_in") > 300, "bytes in: {}", grew("bytes_in"));
    assert!(grew("bytes_out") > cert_der_len as u64, "bytes out {} vs certificate {cert_der_len}", grew("bytes_out"));

    let wrong = site.publish(mqtts, "dev-tls", &["--cafile", &ca_arg, "-u", "dev-tls", "-P", "wrong"]);
    assert!(!wrong.status.success(), "a wrong secret is refused over TLS too");
    // Without the CA the client does not trust the server; without TLS the server does not
    // speak MQTT: a plaintext CONNECT gets no CONNACK.
    let other = other_ca.display().to_string();
    let untrusted = site.publish(mqtts, "dev-tls", &["--cafile", &other, "-u", "dev-tls", "-P", &secret]);
    assert!(!untrusted.status.success());
    let plain = site.publish(mqtts, "dev-tls", &["-u", "dev-tls", "-P", &secret]);
    assert!(!plain.status.success(), "plaintext MQTT on the TLS port must fail");
    let answer = exchange(mqtts, &connect_packet("MQTT", 4, ""));
    assert!(!answer.starts_with(&[0x20, 0x02]), "no CONNACK in plaintext: {answer:02x?}");
}

/// The DER length of the first certificate in a PEM text.
fn der_len(pem: &str) -> usize {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).take_while(|l| !l.is_empty()).collect();
    // Base64: 4 characters for 3 bytes, minus padding.
    body.len() / 4 * 3 - body.bytes().rev().take_while(|&b| b == b'=').count()
}

#[test]
fn replaced_certificates_are_served_without_a_restart() {
    let (first, second, third) = (Ca::new("first CA"), Ca::new("second CA"), Ca::new("third CA"));
    let Some(site) = Site::new("tls-reload", &first) else { return };
    let cas: Vec<PathBuf> = [&first, &second, &third]
        .iter()
        .enumerate()
        .map(|(i, ca)| site.write(&format!("ca{i}.pem"), &ca.pem))
        .collect();
    // Checked for changes every 200 ms.
    let config = site.write("tern.toml", "tls_reload_ms = 200\n");
    let server = site.start(&["--config", &config.display().to_string()]);
    let health = format!("{}/api/health", server.http);
    assert!(site.trusted(&health, &cas[0]));
    let secret = site.add_device(&server, &cas[0], "dev-r");

    // Replaced on disk: new handshakes see the new certificate, on both listeners.
    second.write_server(&site.cert, &site.key);
    let took = site.until_trusted(&health, &cas[1]);
    assert!(!site.trusted(&health, &cas[0]), "the old certificate is no longer served");
    let mqtts = server.mqtts_port.unwrap();
    let with_ca = |ca: &Path| {
        let ca = ca.display().to_string();
        site.publish(mqtts, "dev-r", &["--cafile", &ca, "-u", "dev-r", "-P", &secret]).status.success()
    };
    assert!(with_ca(&cas[1]) && !with_ca(&cas[0]));
    eprintln!("reloaded after {took:?}");

    // A file that does not parse (a key half written) keeps the current certificate.
    std::fs::write(&site.key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(site.trusted(&health, &cas[1]), "a broken file must not take TLS down");

    // SIGHUP reloads at once too.
    third.write_server(&site.cert, &site.key);
    let hup = Command::new("kill").args(["-HUP", &server.pid.to_string()]).status().expect("kill runs");
    assert!(hup.success());
    site.until_trusted(&health, &cas[2]);
    assert!(site.trusted(&health, &cas[2]));
}

#[test]
fn a_device_certificate_replaces_the_secret() {
    let server_ca = Ca::new("server CA");
    let Some(site) = Site::new("tls-mutual", &server_ca) else { return };
    let ca_file = site.write("ca.pem", &server_ca.pem);
    let devices_ca = Ca::new("devices CA");
    let client_ca = site.write("devices-ca.pem", &devices_ca.pem);
    let server = site.start(&["--tls-client-ca", &client_ca.display().to_string()]);
    let mqtts = server.mqtts_port.unwrap();
    let secret = site.add_device(&server, &ca_file, "dev-m1");
    site.add_device(&server, &ca_file, "dev-m2");
    let rogue_ca = Ca::new("rogue CA");

    let pair = |ca: &Ca, name: &str, cn: &str, sans: &[&str]| {
        let (c, k) = ca.issue(cn, sans);
        (site.write(&format!("{name}.pem"), &c), site.write(&format!("{name}-key.pem"), &k))
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
        let out = site.publish(mqtts, device, &args);
        assert_eq!(out.status.success(), accepted, "{what}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
