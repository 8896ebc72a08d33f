//! What the server does with messages from devices, whatever link carried them.
//!
//! Payloads are decoded with `tern_proto` here, once. A message that does not decode, or
//! whose kind disagrees with its topic, is logged, counted and turned into an event; it
//! never stops the loop. A Describe replaces the device's inventory in the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;
use tern_proto::{Describe, Message, UpdateResult};
use tokio::sync::mpsc;

use crate::auth::now_millis;
use crate::events::EventHub;
use crate::link::LinkEvent;
use crate::plans::Planner;
use crate::store::{
    CapacityRecord, DependencyRecord, InstalledModuleRecord, Inventory, ResultRecord, Store, StoreError,
};
use crate::updates::{UpdateInput, Updates};

/// Counters of the uplink handler, shown by `/api/stats`.
#[derive(Default)]
pub struct UplinkCounters {
    /// Messages decoded and handled.
    pub handled: AtomicU64,
    /// Messages that did not decode or did not match their topic.
    pub malformed: AtomicU64,
    /// Messages from devices unknown to the store (deleted while connected).
    pub unknown_device: AtomicU64,
}

/// A snapshot of [`UplinkCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UplinkStats {
    /// Messages decoded and handled.
    pub handled: u64,
    /// Messages that did not decode or did not match their topic.
    pub malformed: u64,
    /// Messages from devices unknown to the store.
    pub unknown_device: u64,
}

impl UplinkCounters {
    /// The current values.
    pub fn snapshot(&self) -> UplinkStats {
        UplinkStats {
            handled: self.handled.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            unknown_device: self.unknown_device.load(Ordering::Relaxed),
        }
    }
}

/// Reads link events until the link closes its channel.
pub async fn run(
    mut events: mpsc::Receiver<LinkEvent>,
    hub: EventHub,
    counters: Arc<UplinkCounters>,
    updates: Updates,
    planner: Planner,
) {
    while let Some(event) = events.recv().await {
        if let Err(err) = handle(&event, &hub, &counters, &updates, &planner).await {
            // The store failing is the one thing that can go wrong here; the message is
            // lost but the device will describe itself again on its next connect.
            tracing::error!("handling {event:?} failed: {err}");
        }
    }
}

async fn handle(
    event: &LinkEvent,
    hub: &EventHub,
    counters: &UplinkCounters,
    updates: &Updates,
    planner: &Planner,
) -> Result<(), StoreError> {
    let store = hub.store().clone();
    match event {
        LinkEvent::Connected { device } => {
            store.touch_device(device, now_millis()).await?;
            hub.publish(Some(device), "device.connected", json!({})).await?;
            updates.send(UpdateInput::Connected(device.clone())).await;
        }
        LinkEvent::Disconnected { device, clean } => {
            store.touch_device(device, now_millis()).await?;
            hub.publish(Some(device), "device.disconnected", json!({ "clean": clean })).await?;
        }
        LinkEvent::Message { device, kind, payload } => {
            let message = match Message::decode(payload) {
                Ok(message) if message.kind() == *kind => message,
                Ok(message) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    let error = format!("{:?} message on the {} topic", message.kind(), kind.topic_name());
                    tracing::warn!(device, "malformed device message: {error}");
                    hub.publish(Some(device), "device.malformed_message", json!({ "error": error })).await?;
                    return Ok(());
                }
                Err(err) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        device,
                        topic = kind.topic_name(),
                        bytes = payload.len(),
                        "malformed device message: {err}"
                    );
                    let data = json!({ "topic": kind.topic_name(), "error": err.to_string(), "bytes": payload.len() });
                    hub.publish(Some(device), "device.malformed_message", data).await?;
                    return Ok(());
                }
            };
            if store.get_device(device).await?.is_none() {
                counters.unknown_device.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device, "message from a device not in the store");
                return Ok(());
            }
            counters.handled.fetch_add(1, Ordering::Relaxed);
            if let Some(described) = handle_message(device, &message, hub, &*store).await? {
                // A device in safe mode may be healed; a failure here is the planner's to
                // report, never a reason to drop the Describe.
                if let Err(err) = planner.on_describe(device, &described).await {
                    tracing::error!(device, "heal check failed: {err}");
                }
            }
            let input = match message {
                Message::Describe(m) => Some(UpdateInput::Describe(device.clone(), Box::new(m))),
                Message::BlockRequest(m) => Some(UpdateInput::BlockRequest(device.clone(), m)),
                Message::Progress(m) => Some(UpdateInput::Progress(device.clone(), m)),
                Message::Result(m) => Some(UpdateInput::Result(device.clone(), m)),
                Message::UpdateOffer(_) | Message::Block(_) | Message::Command(_) => None,
            };
            if let Some(input) = input {
                updates.send(input).await;
            }
        }
    }
    Ok(())
}

/// Stores and announces what `message` says; returns the inventory a Describe recorded.
async fn handle_message(
    device: &str,
    message: &Message<'_>,
    hub: &EventHub,
    store: &dyn Store,
) -> Result<Option<Inventory>, StoreError> {
    match message {
        Message::Describe(describe) => {
            let inventory = inventory(describe, now_millis());
            store.record_inventory(device, &inventory).await?;
            hub.publish(Some(device), "device.described", serde_json::to_value(&inventory)?).await?;
            return Ok(Some(inventory));
        }
        Message::Progress(progress) => {
            store.touch_device(device, now_millis()).await?;
            let data = json!({
                "attempt": progress.attempt,
                "phase": progress.phase.name(),
                "bytes_done": progress.bytes_done,
                "bytes_total": progress.bytes_total,
            });
            hub.publish(Some(device), "device.progress", data).await?;
        }
        Message::Result(result) => {
            store.touch_device(device, now_millis()).await?;
            hub.publish(Some(device), "device.result", serde_json::to_value(result_record(result))?).await?;
        }
        // Served by the update task (`crate::updates`); too frequent to store one by one.
        Message::BlockRequest(_) => {}
        // Down kinds never arrive here: the gateway only accepts up topics, and the topic
        // and payload kinds were checked to agree.
        Message::UpdateOffer(_) | Message::Block(_) | Message::Command(_) => {}
    }
    Ok(None)
}

/// The stored form of a Describe.
pub fn inventory(describe: &Describe, described_at: i64) -> Inventory {
    Inventory {
        described_at,
        platform_id: describe.platform,
        boot_reason: describe.boot_reason.name().to_owned(),
        safe_mode: describe.safe_mode.map(|cause| cause.name().to_owned()),
        unmet: describe.unmet.map(|dep| DependencyRecord::from(&dep)),
        confirmed: describe.confirmed,
        modules: describe
            .modules
            .iter()
            .map(|m| InstalledModuleRecord {
                function: m.function.code(),
                function_name: m.function.name().to_owned(),
                index: m.index,
                version: m.version,
                sha256: hex::encode(m.sha256),
                size: m.size,
                integrity: integrity_name(m.integrity).to_owned(),
                dependencies_met: m.dependencies_met,
            })
            .collect(),
        last_result: describe.last_result.as_ref().map(result_record),
        capacity: describe.capacity.map(|c| CapacityRecord {
            staging_bytes: c.staging_bytes,
            max_modules: c.max_modules,
            block_size: c.block_size,
            patches: c.patches,
            max_block: c.link.map(|l| l.max_block),
            compact_topics: c.link.is_some_and(|l| l.compact_topics),
        }),
        security_counter: describe.security_counter,
    }
}

fn result_record(result: &UpdateResult) -> ResultRecord {
    let (attempt, stage) = crate::updates::split_stage_attempt_id(result.attempt);
    ResultRecord {
        attempt,
        stage,
        outcome: result.outcome.name().to_owned(),
        reason: result.reason.name().to_owned(),
        reason_code: result.reason.code(),
        module: result.module,
    }
}

/// The lowercase name of an integrity verdict, as used in JSON.
pub fn integrity_name(integrity: tern_image::Integrity) -> &'static str {
    match integrity {
        tern_image::Integrity::Valid => "valid",
        tern_image::Integrity::Invalid => "invalid",
        tern_image::Integrity::Unchecked => "unchecked",
    }
}
