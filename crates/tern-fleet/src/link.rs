//! The device's link to the server: MQTT for real, and a fault-injecting wrapper for tests.
//!
//! The runtime only needs "send this message kind" and "what arrived": [`Link`]. The MQTT
//! link subscribes to the device's `down` topics on every connection (the gateway keeps
//! no sessions) and reports each (re)connection so the runtime can describe itself again.
//! [`Intermittent`] takes a link down and up again on a schedule (devices that go offline).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS, RecvTimeoutError, TlsConfiguration, Transport};
use tern_proto::{Direction, MessageKind, Topic, TopicForm};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::fleet::Offline;

/// Something that happened on the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The link (re)connected; the device is subscribed to its downlink.
    Connected,
    /// The link was lost; it reconnects by itself.
    Disconnected,
    /// A downlink message's payload (a `tern-proto` message).
    Message(Vec<u8>),
}

/// A bidirectional message link to the server.
pub trait Link {
    /// Sends one uplink message. Best effort: the protocol tolerates loss.
    fn send(&mut self, kind: MessageKind, payload: Vec<u8>);
    /// The next event, waiting at most `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<Incoming>;
    /// The topic form the link publishes and subscribes on (what the device announces).
    fn topic_form(&self) -> TopicForm {
        TopicForm::Long
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct MqttTarget {
    /// Gateway host (also the name its TLS certificate must carry).
    pub host: String,
    /// Gateway port.
    pub port: u16,
    /// Device id (the MQTT username).
    pub device: String,
    /// The device's secret (the MQTT password).
    pub secret: String,
    /// MQTT over TLS, trusting these roots; `None`: plain MQTT.
    pub tls: Option<Arc<ClientConfig>>,
}

impl MqttTarget {
    /// Parses `mqtt://HOST:PORT`, `HOST:PORT`, or `mqtts://HOST:PORT` (TLS, trusting the
    /// CA certificates of `ca_file`, PEM, which is then required).
    pub fn parse(url: &str, device: &str, secret: &str, ca_file: Option<&Path>) -> Result<Self, String> {
        let (tls, rest) = match url.strip_prefix("mqtts://") {
            Some(rest) => {
                let ca = ca_file.ok_or_else(|| {
                    format!(
                        "{url}: MQTT over TLS needs the server's CA certificate (PEM): give it with --ca-file \
                         or TERN_CA_FILE (a server started with --self-signed keeps it in DATA/tls/ca.pem)"
                    )
                })?;
                (Some(tls_client(ca)?), rest)
            }
            None => (None, url.strip_prefix("mqtt://").unwrap_or(url)),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{url}: expected mqtt://HOST:PORT"))?;
        let port = port.parse().map_err(|_| format!("{url}: bad port"))?;
        Ok(MqttTarget { host: host.to_owned(), port, device: device.to_owned(), secret: secret.to_owned(), tls })
    }
}

/// A TLS client configuration trusting only the CA certificates in `ca_file` (PEM).
pub fn tls_client(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let shown = ca_file.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{shown}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{shown}: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: no certificate in it"));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How long [`MqttLink::recv`] waits at least while not connected.
const CONNECT_WAIT: Duration = Duration::from_secs(1);

/// The real link: an MQTT 3.1.1 client (rumqttc) to the server's gateway.
pub struct MqttLink {
    device: String,
    client: Client,
    connection: Connection,
    connected: bool,
    form: TopicForm,
}

impl MqttLink {
    /// Creates the client; it connects on the first [`Link::recv`].
    pub fn new(target: &MqttTarget) -> Self {
        let mut options = MqttOptions::new(format!("tern-sim-{}", target.device), target.host.clone(), target.port);
        options.set_credentials(target.device.clone(), target.secret.clone());
        options.set_keep_alive(Duration::from_secs(10));
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        if let Some(tls) = &target.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls.clone())));
        }
        let (client, connection) = Client::new(options, 256);
        MqttLink { device: target.device.clone(), client, connection, connected: false, form: TopicForm::Compact }
    }

    /// The same link on topics of `form` (compact by default; long as devices from before
    /// the compact form).
    pub fn with_topic_form(mut self, form: TopicForm) -> Self {
        self.form = form;
        self
    }
}

impl Link for MqttLink {
    fn send(&mut self, kind: MessageKind, payload: Vec<u8>) {
        if !self.connected {
            return;
        }
        let topic = Topic::with_form(&self.device, kind, self.form).to_string();
        // A full queue means the link is stalled; dropping is what the protocol expects.
        let _ = self.client.try_publish(topic, QoS::AtMostOnce, false, payload);
    }

    fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        // A timeout cancels the client's poll, and with it a connection in progress; give
        // connecting (TCP, CONNECT, CONNACK) time to finish on a busy machine.
        let timeout = if self.connected { timeout } else { timeout.max(CONNECT_WAIT) };
        match self.connection.recv_timeout(timeout) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == rumqttc::ConnectReturnCode::Success => {
                let filter = Topic::downlink_filter(&self.device, self.form).to_string();
                let _ = self.client.try_subscribe(filter, QoS::AtLeastOnce);
                self.connected = true;
                Some(Incoming::Connected)
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let topic = Topic::parse(&p.topic);
                match topic {
                    Some(t) if t.device == self.device && t.direction == Direction::Down => {
                        Some(Incoming::Message(p.payload.to_vec()))
                    }
                    _ => None,
                }
            }
            Ok(Ok(_)) => None,
            Ok(Err(_)) => {
                // The event loop reconnects on the next poll; do not spin.
                std::thread::sleep(Duration::from_millis(200).min(timeout));
                if std::mem::replace(&mut self.connected, false) {
                    Some(Incoming::Disconnected)
                } else {
                    None
                }
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }

    fn topic_form(&self) -> TopicForm {
        self.form
    }
}

/// Fault rates in per-mille for [`FaultyLink`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Messages lost.
    pub drop: u16,
    /// Messages delivered twice.
    pub duplicate: u16,
    /// Messages held back and delivered after the next one.
    pub reorder: u16,
}

/// Counts of what [`FaultyLink`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages dropped.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages reordered.
    pub reordered: u64,
}

/// A link that loses, duplicates and reorders messages in both directions, from a seed
/// (so a failing run can be replayed). Connection events pass through untouched.
pub struct FaultyLink<L> {
    inner: L,
    faults: Faults,
    rng: u64,
    held_up: Option<(MessageKind, Vec<u8>)>,
    held_down: Option<Vec<u8>>,
    ready: VecDeque<Incoming>,
    /// What was done so far.
    pub counts: FaultCounts,
}

impl<L: Link> FaultyLink<L> {
    /// Wraps `inner`.
    pub fn new(inner: L, faults: Faults, seed: u64) -> Self {
        FaultyLink {
            inner,
            faults,
            rng: seed | 1,
            held_up: None,
            held_down: None,
            ready: VecDeque::new(),
            counts: FaultCounts::default(),
        }
    }

    fn roll(&mut self, per_mille: u16) -> bool {
        // xorshift64*: plenty for choosing faults.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % 1000 < u64::from(per_mille)
    }
}

impl<L: Link> Link for FaultyLink<L> {
    fn send(&mut self, kind: MessageKind, payload: Vec<u8>) {
        if self.roll(self.faults.drop) {
            self.counts.dropped += 1;
            return;
        }
        if self.held_up.is_none() && self.roll(self.faults.reorder) {
            self.counts.reordered += 1;
            self.held_up = Some((kind, payload));
            return;
        }
        if self.roll(self.faults.duplicate) {
            self.counts.duplicated += 1;
            self.inner.send(kind, payload.clone());
        }
        self.inner.send(kind, payload);
        if let Some((k, p)) = self.held_up.take() {
            self.inner.send(k, p);
        }
    }

    fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        if let Some(ready) = self.ready.pop_front() {
            return Some(ready);
        }
        match self.inner.recv(timeout)? {
            Incoming::Message(payload) => {
                if self.roll(self.faults.drop) {
                    self.counts.dropped += 1;
                    return None;
                }
                if self.held_down.is_none() && self.roll(self.faults.reorder) {
                    self.counts.reordered += 1;
                    self.held_down = Some(payload);
                    return None;
                }
                if self.roll(self.faults.duplicate) {
                    self.counts.duplicated += 1;
                    self.ready.push_back(Incoming::Message(payload.clone()));
                }
                if let Some(held) = self.held_down.take() {
                    self.ready.push_back(Incoming::Message(held));
                }
                Some(Incoming::Message(payload))
            }
            other => Some(other),
        }
    }

    fn topic_form(&self) -> TopicForm {
        self.inner.topic_form()
    }
}

/// A link that is down while an [`Offline`] plan says so: going offline drops the inner
/// link (closing its connection, so the server sees the device go), coming back makes a
/// new one, which connects by itself. What is sent while offline is lost.
pub struct Intermittent<L> {
    make: Box<dyn FnMut() -> L + Send>,
    inner: Option<L>,
    /// The topic form of the links `make` makes.
    form: TopicForm,
    plan: Offline,
    start: Instant,
    connected: bool,
}

impl<L: Link> Intermittent<L> {
    /// A link following `plan` from `start` (the fleet's start), made by `make` whenever
    /// it comes online.
    pub fn new(plan: Offline, start: Instant, mut make: Box<dyn FnMut() -> L + Send>) -> Self {
        // A link connects on its first `recv`: making one to ask its form costs nothing.
        let form = make().topic_form();
        Intermittent { make, inner: None, form, plan, start, connected: false }
    }
}

impl<L: Link> Link for Intermittent<L> {
    fn send(&mut self, kind: MessageKind, payload: Vec<u8>) {
        if let Some(inner) = &mut self.inner {
            inner.send(kind, payload);
        }
    }

    fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        if !self.plan.online(self.start.elapsed()) {
            if self.inner.take().is_some() && std::mem::replace(&mut self.connected, false) {
                return Some(Incoming::Disconnected);
            }
            // Never a busy loop, even when the caller's timer is due.
            std::thread::sleep(timeout.max(Duration::from_millis(20)));
            return None;
        }
        let inner = self.inner.get_or_insert_with(|| (self.make)());
        let event = inner.recv(timeout);
        match event {
            Some(Incoming::Connected) => self.connected = true,
            Some(Incoming::Disconnected) => self.connected = false,
            _ => {}
        }
        event
    }

    fn topic_form(&self) -> TopicForm {
        self.form
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::fleet::Periodic;

    /// A link that connects at once and counts what is sent through it.
    struct Fake {
        greeted: bool,
        sent: Arc<AtomicUsize>,
    }

    impl Link for Fake {
        fn send(&mut self, _: MessageKind, _: Vec<u8>) {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        fn recv(&mut self, _: Duration) -> Option<Incoming> {
            (!std::mem::replace(&mut self.greeted, true)).then_some(Incoming::Connected)
        }
    }

    #[test]
    fn mqtts_without_a_ca_file_says_how_to_give_one() {
        let Err(err) = MqttTarget::parse("mqtts://127.0.0.1:8883", "d1", "secret", None) else {
            panic!("MQTT over TLS without a CA is refused")
        };
        for hint in ["--ca-file", "TERN_CA_FILE", "tls/ca.pem"] {
            assert!(err.contains(hint), "{err}");
        }
    }

    #[test]
    fn intermittent_link_follows_its_plan() {
        let ms = Duration::from_millis;
        // Offline for the first 100 ms, then offline 100 ms out of every 300 ms from 300 ms.
        let plan = Offline {
            at_start: Some(ms(100)),
            periodic: Some(Periodic { down: ms(100), every: ms(300), phase: ms(0) }),
        };
        let (made, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (m, s) = (made.clone(), sent.clone());
        let start = Instant::now();
        let make = Box::new(move || {
            m.fetch_add(1, Ordering::Relaxed);
            Fake { greeted: false, sent: s.clone() }
        });
        let mut link = Intermittent::new(plan, start, make);
        let mut events = Vec::new();
        let mut tries = 0;
        while start.elapsed() < ms(550) {
            link.send(MessageKind::Describe, vec![1]);
            tries += 1;
            if let Some(e) = link.recv(ms(10)) {
                events.push((start.elapsed().as_millis() / 100, e));
            }
        }
        // Connected after the start period, lost at 300 ms, connected again at 400 ms.
        let kinds: Vec<&Incoming> = events.iter().map(|(_, e)| e).collect();
        assert_eq!(kinds, [&Incoming::Connected, &Incoming::Disconnected, &Incoming::Connected], "{events:?}");
        assert_eq!(events.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 3, 4], "{events:?}");
        // One link made at the start only to learn its topic form (never polled, so never
        // connected), then a new one per online period.
        assert_eq!(made.load(Ordering::Relaxed), 3, "a new inner link per online period");
        // What is sent while offline is lost; while online it goes through.
        let through = sent.load(Ordering::Relaxed);
        assert!(through > 0 && through < tries, "{through} of {tries} sends went through");
    }
}
