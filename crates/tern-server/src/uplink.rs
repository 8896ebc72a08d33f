//! What the server does with messages from devices, whatever link carried them.
//!
//! Payloads are decoded with `tern_proto` here, once. A message that does not decode, or
//! whose kind disagrees with its topic, is logged, counted and turned into an event (the
//! first ten per device per report window; the rest are counted in the next one); it
//! never stops the loop. A Describe replaces the device's inventory in the store.
//!
//! Bounds: one dispatcher reads the link and hands each device's events to that device's
//! own task (its lane), so a device whose messages are slow to handle, or that floods,
//! delays only itself. Before anything is queued, each device's messages pass a token
//! bucket (block requests have their own, larger one: a transfer sends one per block);
//! what exceeds it, or finds the device's queue full, is dropped and counted, and the
//! device's history gets one `device.rate_limited` event per report window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_proto::{Describe, Message, MessageKind, UpdateResult};
use tokio::sync::mpsc;

use crate::auth::now_millis;
use crate::events::EventHub;
use crate::link::{KindCounts, LinkEvent};
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
    /// Messages dropped because their device exceeded its rate or filled its queue.
    pub rate_limited: AtomicU64,
    /// `malformed` by the kind their topic named.
    pub malformed_by_kind: KindCounts,
    /// `rate_limited` by the kind their topic named.
    pub rate_limited_by_kind: KindCounts,
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
    /// Messages dropped because their device exceeded its rate or filled its queue.
    #[serde(default)]
    pub rate_limited: u64,
}

impl UplinkCounters {
    /// The current values.
    pub fn snapshot(&self) -> UplinkStats {
        UplinkStats {
            handled: self.handled.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            unknown_device: self.unknown_device.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// How much each device may send, and how long events are kept (`[bounds]` in the
/// configuration file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bounds {
    /// Messages per second a device may send, block requests aside (sustained).
    pub messages_per_second: u32,
    /// Messages a device may send at once above its rate.
    pub message_burst: u32,
    /// Block requests per second a device may send (sustained).
    pub block_requests_per_second: u32,
    /// Block requests a device may send at once above its rate.
    pub block_request_burst: u32,
    /// Messages of one device that may wait to be handled; more are dropped.
    pub queue: usize,
    /// At most one `device.rate_limited` and one `device.malformed_message` event per
    /// device per this many milliseconds.
    pub report_every_ms: u64,
    /// Events older than this many days are deleted.
    pub event_max_age_days: u32,
    /// At most this many events are kept (the oldest go first).
    pub event_max_count: u64,
    /// How often old events are deleted, in milliseconds.
    pub prune_every_ms: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            messages_per_second: 5,
            message_burst: 20,
            block_requests_per_second: 2000,
            block_request_burst: 4000,
            queue: 512,
            report_every_ms: 10_000,
            event_max_age_days: 30,
            event_max_count: 1_000_000,
            prune_every_ms: 60_000,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket { tokens: burst, rate: f64::from(rate), burst, at: now }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a device's task is given.
enum Work {
    Link(LinkEvent),
    /// `dropped` messages were refused since the last report.
    RateLimited {
        dropped: u64,
    },
}

/// The dispatcher's record of one device.
struct Lane {
    work: mpsc::UnboundedSender<Work>,
    /// Messages queued and not yet handled.
    queued: Arc<AtomicUsize>,
    messages: Bucket,
    block_requests: Bucket,
    dropped: u64,
    reported: Option<Instant>,
}

/// Everything a device's task needs.
#[derive(Clone)]
struct Context {
    hub: EventHub,
    counters: Arc<UplinkCounters>,
    updates: Updates,
    planner: Planner,
    report_every: Duration,
}

/// Reads link events until the link closes its channel, handing each device's to its own
/// task after the rate check.
pub async fn run(
    mut events: mpsc::Receiver<LinkEvent>,
    hub: EventHub,
    counters: Arc<UplinkCounters>,
    updates: Updates,
    planner: Planner,
    bounds: Bounds,
) {
    let report_every = Duration::from_millis(bounds.report_every_ms);
    let context = Context { hub, counters: counters.clone(), updates, planner, report_every };
    let mut lanes: HashMap<String, Lane> = HashMap::new();
    while let Some(event) = events.recv().await {
        let device = match &event {
            LinkEvent::Connected { device } | LinkEvent::Disconnected { device, .. } => device,
            LinkEvent::Message { device, .. } => device,
        };
        let now = Instant::now();
        let lane = match lanes.get_mut(device) {
            Some(lane) => lane,
            None => lanes.entry(device.clone()).or_insert_with(|| spawn_lane(device.clone(), &context, &bounds, now)),
        };
        if let LinkEvent::Message { kind, .. } = &event {
            let bucket = if *kind == MessageKind::BlockRequest { &mut lane.block_requests } else { &mut lane.messages };
            if !bucket.take(now) || lane.queued.load(Ordering::Relaxed) >= bounds.queue {
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                counters.rate_limited_by_kind.add(*kind);
                lane.dropped += 1;
                if lane.reported.is_none_or(|at| now.duration_since(at) >= report_every) {
                    lane.reported = Some(now);
                    let _ = lane.work.send(Work::RateLimited { dropped: std::mem::take(&mut lane.dropped) });
                }
                continue;
            }
            lane.queued.fetch_add(1, Ordering::Relaxed);
        }
        // Control events (connect, disconnect) are never dropped: the gateway makes them
        // at most once per connection.
        let _ = lane.work.send(Work::Link(event));
    }
}

fn spawn_lane(device: String, context: &Context, bounds: &Bounds, now: Instant) -> Lane {
    let (work, mut inbox) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let lane = Lane {
        work,
        queued: queued.clone(),
        messages: Bucket::new(bounds.messages_per_second, bounds.message_burst, now),
        block_requests: Bucket::new(bounds.block_requests_per_second, bounds.block_request_burst, now),
        dropped: 0,
        reported: None,
    };
    let context = context.clone();
    tokio::spawn(async move {
        let mut malformed = Reports::default();
        while let Some(work) = inbox.recv().await {
            match work {
                Work::Link(event) => {
                    let message = matches!(event, LinkEvent::Message { .. });
                    if let Err(err) = handle(&event, &context, &mut malformed).await {
                        // The store failing is the one thing that can go wrong here; the
                        // message is lost but the device will describe itself again on its
                        // next connect.
                        tracing::error!("handling {event:?} failed: {err}");
                    }
                    if message {
                        queued.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Work::RateLimited { dropped } => {
                    tracing::warn!(device, dropped, "device exceeds its message rate; messages dropped");
                    let data = json!({ "dropped": dropped });
                    if let Err(err) = context.hub.publish(Some(&device), "device.rate_limited", data).await {
                        tracing::error!(device, "recording a rate limit failed: {err}");
                    }
                }
            }
        }
    });
    lane
}

/// How many malformed messages of one device are recorded one by one per report window;
/// the rest of the window's are only counted, in the next record's `suppressed`.
const MALFORMED_PER_WINDOW: u32 = 10;

/// The malformed messages of one device recorded in the current report window.
#[derive(Default)]
struct Reports {
    window: Option<Instant>,
    recorded: u32,
    suppressed: u64,
    /// When a Progress or Result last updated the device's `last_seen` (at most once a
    /// second, so a chatty device costs fewer writes).
    touched: Option<Instant>,
}

impl Reports {
    /// Whether to record this one (`Some(suppressed since the last record)`) or only count it.
    fn due(&mut self, every: Duration) -> Option<u64> {
        let now = Instant::now();
        if self.window.is_none_or(|start| now.duration_since(start) >= every) {
            self.window = Some(now);
            self.recorded = 0;
        }
        if self.recorded >= MALFORMED_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.recorded += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

async fn handle(event: &LinkEvent, context: &Context, malformed: &mut Reports) -> Result<(), StoreError> {
    let Context { hub, counters, updates, planner, report_every } = context;
    let store = hub.store().clone();
    match event {
        LinkEvent::Connected { device } => {
            let mut change = hub.begin().await?;
            change.touch_device(device, now_millis()).await?;
            change.publish(Some(device), "device.connected", json!({})).await?;
            change.commit().await?;
            updates.send(UpdateInput::Connected(device.clone())).await;
        }
        LinkEvent::Disconnected { device, clean } => {
            let mut change = hub.begin().await?;
            change.touch_device(device, now_millis()).await?;
            change.publish(Some(device), "device.disconnected", json!({ "clean": clean })).await?;
            change.commit().await?;
        }
        LinkEvent::Message { device, kind, payload } => {
            let message = match Message::decode(payload) {
                Ok(message) if message.kind() == *kind => message,
                Ok(message) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    counters.malformed_by_kind.add(*kind);
                    let error = format!("{:?} message on the {} topic", message.kind(), kind.topic_name());
                    if let Some(suppressed) = malformed.due(*report_every) {
                        tracing::warn!(device, "malformed device message: {error}");
                        let data = json!({ "error": error, "suppressed": suppressed });
                        hub.publish(Some(device), "device.malformed_message", data).await?;
                    }
                    return Ok(());
                }
                Err(err) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    counters.malformed_by_kind.add(*kind);
                    if let Some(suppressed) = malformed.due(*report_every) {
                        tracing::warn!(
                            device,
                            topic = kind.topic_name(),
                            bytes = payload.len(),
                            "malformed device message: {err}"
                        );
                        let data = json!({
                            "topic": kind.topic_name(),
                            "error": err.to_string(),
                            "bytes": payload.len(),
                            "suppressed": suppressed,
                        });
                        hub.publish(Some(device), "device.malformed_message", data).await?;
                    }
                    return Ok(());
                }
            };
            if store.get_device(device).await?.is_none() {
                counters.unknown_device.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device, "message from a device not in the store");
                return Ok(());
            }
            counters.handled.fetch_add(1, Ordering::Relaxed);
            if let Some(described) = handle_message(device, &message, hub, &mut malformed.touched).await? {
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

/// Deletes events past their age or count (see [`Bounds`]) now and every
/// `prune_every_ms`, then gives the space back (a WAL checkpoint that truncates).
pub fn spawn_retention(store: Arc<dyn Store>, bounds: &Bounds) {
    let every = Duration::from_millis(bounds.prune_every_ms.max(100));
    let max_age = i64::from(bounds.event_max_age_days).saturating_mul(86_400_000);
    let max_count = bounds.event_max_count;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let pruned = async {
                let mut writes = store.begin().await?;
                let deleted = writes.prune_events(now_millis().saturating_sub(max_age), max_count).await?;
                // Nothing to delete: nothing to commit (dropping the transaction ends it).
                if deleted > 0 {
                    writes.commit().await?;
                }
                Ok::<_, StoreError>(deleted)
            };
            match pruned.await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "events past their retention deleted");
                    if let Err(err) = store.compact().await {
                        tracing::warn!("checkpointing the database failed: {err}");
                    }
                }
                Err(err) => tracing::warn!("deleting old events failed: {err}"),
            }
        }
    });
}

/// Stores and announces what `message` says; returns the inventory a Describe recorded.
async fn handle_message(
    device: &str,
    message: &Message<'_>,
    hub: &EventHub,
    touched: &mut Option<Instant>,
) -> Result<Option<Inventory>, StoreError> {
    let mut touch = || {
        let now = Instant::now();
        let due = touched.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            *touched = Some(now);
        }
        due
    };
    match message {
        Message::Describe(describe) => {
            let inventory = inventory(describe, now_millis());
            let mut change = hub.begin().await?;
            change.record_inventory(device, &inventory).await?;
            change.publish(Some(device), "device.described", serde_json::to_value(&inventory)?).await?;
            change.commit().await?;
            return Ok(Some(inventory));
        }
        Message::Progress(progress) => {
            let mut change = hub.begin().await?;
            if touch() {
                change.touch_device(device, now_millis()).await?;
            }
            let data = json!({
                "attempt": progress.attempt,
                "phase": progress.phase.name(),
                "bytes_done": progress.bytes_done,
                "bytes_total": progress.bytes_total,
            });
            change.publish(Some(device), "device.progress", data).await?;
            change.commit().await?;
        }
        Message::Result(result) => {
            let mut change = hub.begin().await?;
            if touch() {
                change.touch_device(device, now_millis()).await?;
            }
            change.publish(Some(device), "device.result", serde_json::to_value(result_record(result))?).await?;
            change.commit().await?;
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
