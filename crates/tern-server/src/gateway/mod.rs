//! The built-in MQTT 3.1.1 gateway: devices connect to the server process itself.
//!
//! - Packets are framed and parsed by the MQTT codec of the `rumqttc` crate
//!   (`rumqttc::mqttbytes::v4`); this module only decides what to do with them.
//! - CONNECT must carry username = device id and password = device secret; anything else is
//!   refused with return code 4 (bad user name or password). There are no operator or server
//!   accounts on this listener: the server core is in the same process.
//! - Access rules are in [`acl`]: a device publishes only to its own `up` topics and
//!   subscribes only under its own prefix, in the long or the compact topic form
//!   (`tern_proto::topic`). A downlink goes out on the compact topic when a subscription
//!   of the connection matches it, else on the long one: a device chooses the form by
//!   what it subscribes to.
//! - MQTT 3.1.1 has no topic aliases (an MQTT 5 feature); the compact topics are what
//!   keeps the topic cost per message small. A forbidden publish closes the connection; a
//!   forbidden subscription gets return code 0x80 in SUBACK.
//! - QoS 0 and 1 in both directions (a QoS 2 publish is a protocol error); downlinks go out
//!   at the subscription's QoS, at most 1. Sessions are not persisted: CONNACK always says
//!   "no session present", and the protocol above tolerates what that loses.
//! - Transport: plain TCP, or TLS on its own listener ([`Gateway::listen`] with the
//!   server's [`crate::tls::Reloading`]). With a client CA configured, a device may present
//!   a certificate instead of its secret: CONNECT's username (or, without one, its client
//!   id) must be a device id the certificate names (subject CN or a DNS SAN); the password
//!   is then ignored. Both listeners share one cap on connections (`max_connections`); a
//!   connection past it is closed at once. TLS handshake and CONNECT must finish within
//!   `connect_timeout`.
//! - Bytes are counted on the raw socket ([`crate::transport::Counted`]), beneath TLS: the
//!   `bytes_in`/`bytes_out` counters are what crossed the wire, handshakes included.
//! - CONNECT asking for a protocol other than 3.1.1 (MQTT 3.1's `MQIsdp` level 3, MQTT 5)
//!   gets CONNACK return code 1 (unacceptable protocol version), then the connection closes.
//! - Keep-alive per MQTT 3.1.1 §3.1.2.10: no packet for 1.5 × the keep-alive closes the
//!   connection. A second connection of the same device replaces the first. Will messages
//!   are accepted and never published; retained publishes are not retained.

pub mod acl;
mod connection;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tern_proto::MessageKind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::link::{DeviceLink, KindCounts, LinkError, LinkEvent, LinkStats};
use crate::store::Store;
use crate::tls::Reloading;
use crate::transport::{Admission, Counted, Limits, Traffic};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The largest MQTT packet accepted from a device, in bytes.
    pub max_packet: usize,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// How many downlink messages may wait per connection before `send` reports the link
    /// unavailable.
    pub outbox: usize,
    /// Connections at once, on every listener of this gateway together.
    pub max_connections: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_packet: 64 * 1024,
            connect_timeout: Duration::from_secs(10),
            outbox: 256,
            max_connections: 10_000,
        }
    }
}

/// What the gateway hands a connection task.
enum Outbound {
    /// Deliver a message if the device subscribed to its topic (in either form).
    Publish { kind: MessageKind, payload: Bytes },
    /// Close: the same device connected again.
    Replaced,
}

struct Session {
    connection: u64,
    outbox: mpsc::Sender<Outbound>,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connections_total: AtomicU64,
    auth_failures: AtomicU64,
    acl_denied: AtomicU64,
    subscriptions: AtomicU64,
    protocol_errors: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// `messages_in` by kind.
    messages_in_by_kind: KindCounts,
    /// `messages_out` by kind.
    messages_out_by_kind: KindCounts,
    /// Bytes read from and written to every device socket (raw: TLS records included).
    bytes: Arc<Traffic>,
}

struct Inner {
    config: GatewayConfig,
    store: Arc<dyn Store>,
    events: mpsc::Sender<LinkEvent>,
    sessions: Mutex<HashMap<String, Session>>,
    next_connection: AtomicU64,
    counters: Counters,
    admission: Arc<Admission>,
}

/// The built-in gateway; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// A gateway that checks device credentials against `store` and delivers what they send
    /// to `events`; it accepts devices once [`Gateway::listen`] binds an address.
    pub fn new(config: GatewayConfig, store: Arc<dyn Store>, events: mpsc::Sender<LinkEvent>) -> Gateway {
        // MQTT devices often share a source address (NAT, carrier-grade NAT): no per-source cap.
        let limits = Limits { max_connections: config.max_connections, per_source: 0 };
        let inner = Arc::new(Inner {
            config,
            store,
            events,
            sessions: Mutex::default(),
            next_connection: AtomicU64::new(1),
            counters: Counters::default(),
            admission: Admission::new(limits, 0),
        });
        Gateway { inner }
    }

    /// Binds `addr` and accepts devices there, over TLS when `tls` is given. Returns the
    /// address actually bound (useful with port 0).
    pub async fn listen(&self, addr: SocketAddr, tls: Option<Arc<Reloading>>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let Some((slot, _)) = inner.admission.admit(peer.ip()) else {
                            tracing::warn!(%peer, "mqtt: connection refused, at the connection limit");
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let stream = Counted::new(stream, Some(inner.counters.bytes.clone()));
                        let (inner, tls) = (inner.clone(), tls.clone());
                        tokio::spawn(async move {
                            connection::accept(inner, stream, peer, tls).await;
                            drop(slot);
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("mqtt accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(local)
    }
}

fn sessions(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts
    // and removes), so a poisoned lock is still usable.
    inner.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl DeviceLink for Gateway {
    async fn send(&self, device: &str, kind: MessageKind, payload: Bytes) -> Result<(), LinkError> {
        let outbox = sessions(&self.inner).get(device).map(|s| s.outbox.clone()).ok_or(LinkError::NotConnected)?;
        outbox.try_send(Outbound::Publish { kind, payload }).map_err(|_| LinkError::Unavailable)
    }

    fn is_online(&self, device: &str) -> bool {
        sessions(&self.inner).contains_key(device)
    }

    fn disconnect(&self, device: &str) -> bool {
        // The connection task sees `Replaced`, closes the socket and reports the
        // disconnection; removing the session here means nothing more is sent to it.
        let Some(session) = sessions(&self.inner).remove(device) else { return false };
        self.inner.counters.connected.fetch_sub(1, Ordering::Relaxed);
        let _ = session.outbox.try_send(Outbound::Replaced);
        true
    }

    fn stats(&self) -> LinkStats {
        let c = &self.inner.counters;
        LinkStats {
            connected: c.connected.load(Ordering::Relaxed),
            connections_total: c.connections_total.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            acl_denied: c.acl_denied.load(Ordering::Relaxed),
            subscriptions: c.subscriptions.load(Ordering::Relaxed),
            protocol_errors: c.protocol_errors.load(Ordering::Relaxed),
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_in: c.bytes.received.load(Ordering::Relaxed),
            bytes_out: c.bytes.sent.load(Ordering::Relaxed),
            messages_in_by_kind: c.messages_in_by_kind.snapshot(),
            messages_out_by_kind: c.messages_out_by_kind.snapshot(),
        }
    }
}
