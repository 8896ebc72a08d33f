//! The device link: how the server core reaches devices, whatever carries the bytes.
//!
//! The built-in MQTT gateway ([`crate::gateway`]) implements [`DeviceLink`] and feeds
//! [`LinkEvent`]s into a channel the core reads. An external broker cluster would do the
//! same from a client holding a shared subscription (`$share/tern/tern/v1/d/+/up/#`), so
//! several server instances can split the devices' traffic; the core does not change.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tern_proto::MessageKind;

/// Something that happened on the link.
#[derive(Clone, Debug)]
pub enum LinkEvent {
    /// A device authenticated and connected.
    Connected {
        /// The device.
        device: String,
    },
    /// A device's connection ended.
    Disconnected {
        /// The device.
        device: String,
        /// Whether the device said goodbye (MQTT DISCONNECT) rather than vanishing.
        clean: bool,
    },
    /// A device published a message on one of its `up` topics.
    Message {
        /// The device (proven by its credentials, not taken from the payload).
        device: String,
        /// The kind named by the topic.
        kind: MessageKind,
        /// The raw payload, not yet decoded.
        payload: Bytes,
    },
}

/// Why a message could not be handed to the link.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The device is not connected to this link.
    NotConnected,
    /// The link is shutting down or its buffers are full.
    Unavailable,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::NotConnected => f.write_str("device not connected"),
            LinkError::Unavailable => f.write_str("device link unavailable"),
        }
    }
}

impl std::error::Error for LinkError {}

/// Counters a link keeps, shown by `/api/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Devices connected now.
    pub connected: u64,
    /// Connections accepted since start (authenticated or not).
    pub connections_total: u64,
    /// Connections refused for bad credentials.
    pub auth_failures: u64,
    /// Publishes or subscriptions refused by the access rules.
    pub acl_denied: u64,
    /// Subscriptions granted.
    pub subscriptions: u64,
    /// Connections closed for MQTT protocol errors.
    pub protocol_errors: u64,
    /// Messages received from devices.
    pub messages_in: u64,
    /// Messages delivered to devices.
    pub messages_out: u64,
    /// MQTT bytes received from authenticated devices (every packet after CONNACK).
    pub bytes_in: u64,
    /// MQTT bytes sent to authenticated devices (every packet after CONNACK).
    pub bytes_out: u64,
    /// [`LinkStats::messages_in`] by kind (for `/metrics`; not in `/api/stats`).
    #[serde(skip)]
    pub messages_in_by_kind: Vec<(&'static str, u64)>,
    /// [`LinkStats::messages_out`] by kind (for `/metrics`; not in `/api/stats`).
    #[serde(skip)]
    pub messages_out_by_kind: Vec<(&'static str, u64)>,
}

/// Message counters by [`MessageKind`], lock-free. The kinds are the protocol's fixed set,
/// never text a device chose, so whoever shows them by kind shows a bounded set; a kind this
/// table has no slot for (a newer protocol) is counted as `other`.
#[derive(Debug, Default)]
pub struct KindCounts {
    /// Slot 0 is `other`; slot `n` is the kind with wire code `n`.
    slots: [AtomicU64; KindCounts::SLOTS],
}

impl KindCounts {
    const SLOTS: usize = 16;

    /// Counts one message of `kind`.
    pub fn add(&self, kind: MessageKind) {
        let slot = usize::from(kind.code());
        let slot = if slot < Self::SLOTS { slot } else { 0 };
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind's count, zeros included, by the kind's topic name, then `other`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let kind_of = |slot: usize| MessageKind::ALL.into_iter().find(|kind| usize::from(kind.code()) == slot);
        let mut out: Vec<(&'static str, u64)> = Vec::with_capacity(MessageKind::ALL.len() + 1);
        let mut other = 0u64;
        for (slot, count) in self.slots.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            match kind_of(slot) {
                Some(kind) => out.push((kind.topic_name(), count)),
                None => other = other.saturating_add(count),
            }
        }
        out.push(("other", other));
        out
    }
}

/// The server core's view of the link to its devices.
#[async_trait]
pub trait DeviceLink: Send + Sync {
    /// Publishes `payload` (an encoded [`tern_proto::Message`]) on `device`'s `down` topic
    /// for `kind`.
    async fn send(&self, device: &str, kind: MessageKind, payload: Bytes) -> Result<(), LinkError>;
    /// Whether `device` is connected now.
    fn is_online(&self, device: &str) -> bool;
    /// The link's counters.
    fn stats(&self) -> LinkStats;
    /// Closes `device`'s connection, if it has one (its secret was rotated, or it was
    /// disabled or removed); `true` when one was closed.
    fn disconnect(&self, device: &str) -> bool {
        let _ = device;
        false
    }
}
