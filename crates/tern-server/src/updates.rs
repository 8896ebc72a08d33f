//! Update attempts in flight: one [`tern_proto::attempt::Attempt`] per device, pumped over
//! the device link, persisted on every change.
//!
//! A single task owns every in-flight attempt, so their state needs no locks: the API and
//! the uplink handler send it [`UpdateInput`]s. It reads module bytes from the blob store
//! for each block request, and restores unfinished attempts from the store at start, so an
//! attempt survives a server restart and continues when the device reconnects.
//!
//! Around each protocol machine the task keeps a [`Watch`], which owns the clock of the
//! attempt: the offer is re-sent with back-off (from `offer_retry_ms`, doubling up to
//! [`AttemptLimits::reoffer_max_ms`]) in every unfinished state while the attempt makes no
//! progress, and at once when the device reconnects, so a device that finished without the
//! server hearing it answers with its result; the attempt times out after
//! `give_up_after_ms` without *progress* (a further state, more bytes held by the device,
//! new bytes sent — a Describe or any other message alone is not progress), and in any case
//! [`AttemptLimits::deadline_ms`] after its creation. A timed-out attempt is sent a cancel,
//! so the device stops receiving, and records why (`no_progress` or `deadline`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tern_proto::attempt::{Attempt, AttemptEvent, AttemptState, TransferConfig, TransferStats, Transmit};
use tern_proto::{
    Action, BlockRequest, BootReason, Capacity, Command, Describe, InstalledModule, LinkCapacity, List, Message,
    MessageKind, OfferedModule, Outcome, Phase, Progress, Reason, Topic, TopicForm, Transfer, UpdateOffer,
    UpdateResult, MAX_MODULES,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::now_millis;
use crate::blob::BlobStore;
use crate::events::EventHub;
use crate::link::DeviceLink;
use crate::store::{AttemptRecord, AttemptStatus, CapacityRecord, PlannedModule, Store};

/// What the update task is told.
#[derive(Debug)]
pub enum UpdateInput {
    /// A new attempt, already stored: start offering it (boxed: a record is large next
    /// to the other inputs).
    Start(Box<AttemptRecord>),
    /// The operator cancels attempt `id`; the reply says whether it was in flight.
    Cancel(i64, oneshot::Sender<bool>),
    /// A device connected.
    Connected(String),
    /// A device asked for a block.
    BlockRequest(String, BlockRequest),
    /// A device reported progress.
    Progress(String, Progress),
    /// A device reported a result.
    Result(String, UpdateResult),
    /// A device described itself (boxed: a Describe is large next to the other inputs).
    Describe(String, Box<Describe>),
}

/// A handle on the update task; cheap to clone.
#[derive(Clone)]
pub struct Updates {
    tx: mpsc::Sender<UpdateInput>,
}

impl Updates {
    /// Hands `input` to the update task (waits if its queue is full).
    pub async fn send(&self, input: UpdateInput) {
        // The task only stops when the process does.
        let _ = self.tx.send(input).await;
    }
}

/// Persist the transfer counters at least every this many block requests, so that a kill
/// loses little of the re-sent-bytes record.
const PERSIST_EVERY: u64 = 32;

/// Bytes of a TLS 1.3 record's framing with AES-GCM (RFC 8446 §5.2): a 5-byte header, the
/// 1-byte inner content type and a 16-byte authentication tag.
pub const TLS_RECORD_OVERHEAD: u64 = 5 + 1 + 16;
/// The most plaintext one TLS record carries (RFC 8446 §5.1).
pub const TLS_RECORD_PAYLOAD: u64 = 16 * 1024;
/// An MQTT PUBACK: fixed header, remaining length 2, packet id.
const MQTT_PUBACK: u64 = 4;
/// Bytes held between two Progress messages of a device (its default
/// `progress_every_bytes`).
const PROGRESS_EVERY_BYTES: u64 = 32 * 1024;
/// A typical attempt id for the estimate (ids are database row ids; the CBOR encoding of
/// the id is all that matters, 3 bytes for ids up to 65 535).
const ESTIMATE_ATTEMPT: i64 = 1000;

/// What an estimate of an attempt's bytes on the air assumes about the device's link,
/// negotiated from its Describe ([`AirTerms::for_device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AirTerms {
    /// Data bytes per block message.
    pub max_block: u32,
    /// Bytes one block request covers (`None`: one block of 1 KiB per request, for a
    /// device that does not announce its link).
    pub max_request: Option<u32>,
    /// Whether the device uses the compact topics.
    pub compact_topics: bool,
    /// How many modules its Describe lists (the Describes of the confirmation are counted).
    pub described_modules: usize,
    /// Whether every MQTT packet travels in TLS records ([`TLS_RECORD_OVERHEAD`]).
    pub tls_records: bool,
}

impl AirTerms {
    /// The transfer the server agrees with a device whose Describe said `capacity`: blocks
    /// as large as its link takes (whole KiB, at most the server's `max_block`), windows of
    /// the server's `max_request`, its topic form. A device that does not announce its
    /// link gets what devices always got: 1 KiB blocks, one per request, long topics.
    pub fn for_device(config: &TransferConfig, capacity: Option<&CapacityRecord>, described_modules: usize) -> Self {
        let unit = 1024u32;
        let link = capacity.and_then(|c| c.max_block.map(|b| (b, c.compact_topics)));
        let (max_block, max_request, compact_topics) = match link {
            Some((device_block, compact)) => {
                let block = (device_block.min(config.max_block) / unit).max(1) * unit;
                let probe = TransferConfig { max_block: block, ..*config };
                let request = Attempt::new(0, List::new(), probe, 0).max_request();
                (block, Some(request), compact)
            }
            None => (unit, None, false),
        };
        AirTerms { max_block, max_request, compact_topics, described_modules, tls_records: config.count_tls_records }
    }

    /// The transfer settings of an attempt made with these terms.
    pub fn transfer(&self, config: &TransferConfig) -> TransferConfig {
        TransferConfig { max_block: self.max_block, max_request: self.max_request.unwrap_or(self.max_block), ..*config }
    }

    /// Bytes on the connection of one MQTT packet of `len` bytes (with its TLS records).
    fn packet(&self, len: u64) -> u64 {
        let records = if self.tls_records { len.div_ceil(TLS_RECORD_PAYLOAD).max(1) } else { 0 };
        len + records * TLS_RECORD_OVERHEAD
    }
}

/// Bytes of an MQTT 3.1.1 PUBLISH (§3.3) with a `topic`-byte topic and `payload` bytes:
/// fixed header, remaining length, topic, packet id at QoS 1.
fn mqtt_publish(topic: usize, payload: usize, qos1: bool) -> u64 {
    let remaining = (2 + topic + if qos1 { 2 } else { 0 } + payload) as u64;
    1 + varint_len(remaining) + remaining
}

/// Bytes of MQTT's variable-length "remaining length" (§2.2.3).
fn varint_len(n: u64) -> u64 {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Bytes of a CBOR byte-string header for `n` bytes (RFC 8949 §3.1).
fn bstr_header(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=255 => 2,
        256..=65_535 => 3,
        _ => 5,
    }
}

/// Estimates the bytes stage `stage` of an attempt puts on the device's connection on a
/// clean link: the offer, the block requests and blocks as the device pulls them (windows
/// of `max_request`, blocks of `max_block`), the device's Progress messages, and the
/// confirmation (the reconnect after the install, the offer sent again then, the device's
/// Results and Describes) — every MQTT packet with its framing and acknowledgement
/// (downlinks at QoS 1 but blocks at QoS 0, uplinks at QoS 0), and TLS records when
/// `terms` says so. Re-sent
/// blocks (a lossy link), keep-alive pings and periodic Describes are not in it.
pub fn estimate_air_bytes(
    device: &str,
    plan: &[PlannedModule],
    signed_len: usize,
    stage: u32,
    terms: &AirTerms,
) -> u64 {
    let form = if terms.compact_topics { TopicForm::Compact } else { TopicForm::Long };
    let topic = |kind| Topic::with_form(device, kind, form).len();
    let down =
        |kind, payload: usize| terms.packet(mqtt_publish(topic(kind), payload, true)) + terms.packet(MQTT_PUBACK);
    // Blocks go at QoS 0 (the gateway's rule): no packet id, no acknowledgement.
    let block = |payload: usize| terms.packet(mqtt_publish(topic(MessageKind::Block), payload, false));
    let up = |kind, payload: usize| terms.packet(mqtt_publish(topic(kind), payload, false));
    let attempt = stage_attempt_id(ESTIMATE_ATTEMPT, stage, false);

    // The offer goes out when the attempt starts and again when the device reconnects
    // after installing.
    let document = vec![0u8; signed_len];
    let mut signed = List::new();
    let _ = signed.push(document.as_slice());
    let offer = UpdateOffer {
        attempt,
        signed,
        modules: offered_modules(plan).unwrap_or_default(),
        air_bytes: u64::from(u32::MAX),
        window: u8::MAX,
        max_block: terms.max_block,
        max_request: terms.max_request,
    };
    let mut bytes = 2 * down(MessageKind::UpdateOffer, Message::UpdateOffer(offer).encoded_len());

    // Requests of whole windows from each module's start, each answered with its blocks.
    let request_len = terms.max_request.unwrap_or(1024).max(1);
    let max_block = terms.max_block.max(1);
    let mut total = 0u64;
    for (i, m) in plan.iter().enumerate() {
        let len = m.transfer_len();
        total += u64::from(len);
        let module = u8::try_from(i).unwrap_or(u8::MAX);
        let mut offset = 0u32;
        while offset < len {
            let length = request_len.min(len - offset);
            let request = BlockRequest { attempt, module, offset, length };
            bytes += up(MessageKind::BlockRequest, Message::BlockRequest(request).encoded_len());
            let mut at = offset;
            while at < offset + length {
                let n = max_block.min(offset + length - at) as usize;
                // An empty block of the same offset: the message without its data (whose
                // byte-string header, one byte when empty, grows with the data).
                let empty = tern_proto::Block { attempt, module, offset: at, data: &[] };
                let header = Message::Block(empty).encoded_len() - 1;
                bytes += block(header + bstr_header(n) + n);
                at += n as u32;
            }
            offset += length;
        }
    }

    // Progress: downloading when the offer is taken and every 32 KiB held, then
    // verifying, staged, rebooting.
    let progress = |phase| {
        let p = Progress { attempt, phase, bytes_done: total, bytes_total: total };
        up(MessageKind::Progress, Message::Progress(p).encoded_len())
    };
    bytes += (1 + total / PROGRESS_EVERY_BYTES) * progress(Phase::Downloading);
    bytes += progress(Phase::Verifying) + progress(Phase::Staged) + progress(Phase::Rebooting);

    // The confirmation: the device reconnects (CONNECT with its id as client id and user
    // name and a 32-byte secret, CONNACK, SUBSCRIBE to its downlink, SUBACK), then sends
    // its Result and a Describe, and both again in answer to the offer sent on reconnect.
    let filter = Topic::downlink_filter(device, form).to_string().len() as u64;
    let connect = 2 + 10 + (2 + 9 + device.len() as u64) + (2 + device.len() as u64) + (2 + 32);
    let subscribe = 2 + 2 + 2 + filter + 1;
    bytes += terms.packet(connect) + terms.packet(4) + terms.packet(subscribe) + terms.packet(5);
    let result = UpdateResult { attempt, outcome: Outcome::Confirmed, reason: Reason::None, module: None };
    let installed = InstalledModule {
        function: tern_image::ModuleFunction::SystemPart,
        index: 1,
        version: 4100,
        sha256: [0; 32],
        size: 500_000,
        integrity: tern_image::Integrity::Valid,
        dependencies_met: true,
    };
    let mut modules = List::new();
    for _ in 0..terms.described_modules.min(MAX_MODULES) {
        let _ = modules.push(installed);
    }
    let link =
        terms.max_request.map(|_| LinkCapacity { max_block: terms.max_block, compact_topics: terms.compact_topics });
    let describe = Describe {
        platform: 12,
        boot_reason: BootReason::Normal,
        safe_mode: None,
        unmet: None,
        confirmed: true,
        modules,
        last_result: Some(result),
        capacity: Some(Capacity { staging_bytes: 1 << 20, max_modules: 4, block_size: 1024, patches: true, link }),
        security_counter: Some(0),
    };
    bytes += 2 * up(MessageKind::Result, Message::Result(result).encoded_len());
    bytes += 2 * up(MessageKind::Describe, Message::Describe(describe).encoded_len());
    bytes
}

/// Server-side limits on every attempt, beyond the protocol machine's transfer settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptLimits {
    /// The longest wait between two offers of an attempt that shows no progress (the
    /// first wait is the transfer's `offer_retry_ms`; each next one doubles).
    pub reoffer_max_ms: u64,
    /// The longest an attempt lasts from its creation, progress or not: then it is
    /// `timed_out` with reason `deadline`.
    pub deadline_ms: u64,
}

impl Default for AttemptLimits {
    fn default() -> Self {
        AttemptLimits { reoffer_max_ms: 60_000, deadline_ms: 6 * 3_600_000 }
    }
}

/// Reason recorded for an attempt that timed out without progress.
pub const REASON_NO_PROGRESS: &str = "no_progress";
/// Reason recorded for an attempt that reached [`AttemptLimits::deadline_ms`].
pub const REASON_DEADLINE: &str = "deadline";

/// The clock of one attempt (see the module docs): progress, re-offers, the end.
#[derive(Clone, Copy, Debug)]
struct Watch {
    /// When the attempt last made progress (task clock, ms).
    progress_at: u64,
    /// How far the current stage got: state rank, bytes the device said it holds, bytes
    /// sent for the first time.
    rank: u8,
    bytes_done: u64,
    bytes_new: u64,
    /// The current wait between re-offers, and when the next is due.
    backoff: u64,
    next_offer: u64,
    /// When the attempt ends whatever happens (task clock, ms).
    deadline_at: u64,
    /// Offers this watch sent (the machine counts its own).
    offers: u32,
    /// An offer to send at the next pump (the device reconnected).
    offer_now: bool,
    /// Why the watch ended the attempt.
    gave_up: Option<&'static str>,
}

impl Watch {
    fn new(ctx: &Context, record: &AttemptRecord, state: AttemptState) -> Watch {
        let now = ctx.now();
        let age = u64::try_from(now_millis().saturating_sub(record.created_at)).unwrap_or(0);
        let backoff = ctx.config.offer_retry_ms.max(1);
        Watch {
            progress_at: now,
            rank: rank(state),
            bytes_done: 0,
            bytes_new: 0,
            backoff,
            next_offer: now.saturating_add(backoff),
            deadline_at: now.saturating_add(ctx.limits.deadline_ms.saturating_sub(age)),
            offers: 0,
            offer_now: false,
            gave_up: None,
        }
    }

    /// The attempt moved forward at `now`: the give-up timer and the back-off restart.
    fn progressed(&mut self, ctx: &Context, now: u64) {
        self.progress_at = now;
        self.backoff = ctx.config.offer_retry_ms.max(1);
        self.next_offer = now.saturating_add(self.backoff);
    }

    fn give_up_at(&self, ctx: &Context) -> u64 {
        self.progress_at.saturating_add(ctx.config.give_up_after_ms).min(self.deadline_at)
    }

    /// When the watch next needs the clock.
    fn due(&self, ctx: &Context) -> u64 {
        self.next_offer.min(self.give_up_at(ctx))
    }
}

/// How far along an unfinished state is.
fn rank(state: AttemptState) -> u8 {
    match state {
        AttemptState::Offered => 0,
        AttemptState::Downloading => 1,
        AttemptState::Verifying => 2,
        AttemptState::Staged => 3,
        AttemptState::Rebooting => 4,
        _ => 5,
    }
}

/// An attempt in flight: the protocol machine of its current stage.
struct Active {
    watch: Watch,
    attempt: Attempt,
    record: AttemptRecord,
    /// Every signed document of the attempt, in order (one per module, or one manifest).
    signed: Vec<Vec<u8>>,
    /// The modules of the current stage, in offer order.
    stage_plan: Vec<PlannedModule>,
    persisted_requests: u64,
}

/// The protocol attempt id of stage `stage` of attempt `id`: stage 0 is the attempt id
/// itself, later stages carry their number in the top 16 bits, so that a device never
/// mistakes one stage's offer, blocks or result for another's. A stage offered again with
/// whole modules after its patches could not be used (`whole`) sets bit 47: to the device
/// it is a new offer, not the one whose failure it already reported.
pub fn stage_attempt_id(id: i64, stage: u32, whole: bool) -> u64 {
    (id as u64 & STAGE_ID_MASK) | (u64::from(stage) << 48) | if whole { WHOLE_BIT } else { 0 }
}

/// The attempt id and stage a protocol attempt id names (inverse of [`stage_attempt_id`]).
pub fn split_stage_attempt_id(id: u64) -> (u64, u32) {
    (id & STAGE_ID_MASK, u32::try_from(id >> 48).unwrap_or(u32::MAX))
}

/// The bits of a protocol attempt id that hold the attempt's own id.
const STAGE_ID_MASK: u64 = (1 << 47) - 1;
/// The bit of a protocol attempt id that marks a stage re-offered with whole modules.
const WHOLE_BIT: u64 = 1 << 47;

/// Module bytes of the stages before the current one: what the device already holds of
/// a staged attempt.
fn done_before_stage(record: &AttemptRecord) -> u64 {
    record.plan.iter().filter(|m| m.stage < record.stage).map(|m| u64::from(m.size)).sum()
}

/// How many stages an attempt has (a record without stages is one stage).
fn stage_count(record: &AttemptRecord) -> u32 {
    u32::try_from(record.stages.len()).unwrap_or(u32::MAX).max(1)
}

/// The modules of stage `stage`, in offer order.
fn stage_plan(record: &AttemptRecord, stage: u32) -> Vec<PlannedModule> {
    record.plan.iter().filter(|m| m.stage == stage).cloned().collect()
}

/// The signed documents stage `stage` offers: its modules' statements, or the release
/// manifest (which every stage carries; the offer's module list selects the stage).
fn stage_documents<'a>(record: &AttemptRecord, signed: &'a [Vec<u8>], stage: u32) -> Vec<&'a [u8]> {
    if signed.len() == record.plan.len() {
        record.plan.iter().zip(signed).filter(|(m, _)| m.stage == stage).map(|(_, d)| d.as_slice()).collect()
    } else {
        signed.iter().map(Vec::as_slice).collect()
    }
}

/// A protocol machine for stage `stage` of `record`, new (`stats` none) or resumed.
fn stage_machine(
    ctx: &Context,
    record: &AttemptRecord,
    stage: u32,
    resumed: Option<(AttemptState, TransferStats)>,
) -> Option<(Attempt, Vec<PlannedModule>)> {
    let plan = stage_plan(record, stage);
    let modules = offered_modules(&plan)?;
    let whole = plan.iter().any(|m| m.patch_dropped.is_some());
    let id = stage_attempt_id(record.id, stage, whole);
    let config = stage_transfer(&ctx.config, record, stage);
    let mut attempt = match resumed {
        None => Attempt::new(id, modules, config, ctx.now()),
        Some((state, stats)) => Attempt::resume(id, modules, config, state, stats, &record.sent_record, ctx.now()),
    };
    let last = stage + 1 >= stage_count(record);
    let safe_mode = record.stages.get(stage as usize).is_some_and(|s| s.expect == "safe_mode");
    attempt.accept_safe_mode(!last && safe_mode);
    Some((attempt, plan))
}

/// The transfer settings of stage `stage`: the block size and windows its plan agreed with
/// the device (1 KiB blocks, one per request, for records from before).
fn stage_transfer(config: &TransferConfig, record: &AttemptRecord, stage: u32) -> TransferConfig {
    let agreed = record.stages.get(stage as usize);
    let max_block = agreed.map_or(0, |s| s.max_block);
    let max_block = if max_block == 0 { 1024 } else { max_block };
    let max_request = agreed.map_or(0, |s| s.max_request).max(max_block);
    TransferConfig { max_block, max_request, ..*config }
}

/// Whether stage `stage` of `record` offers windows (its device announced its link).
fn stage_windows(record: &AttemptRecord, stage: u32) -> bool {
    record.stages.get(stage as usize).is_some_and(|s| s.max_request > 0)
}

/// Everything the update task uses.
struct Context {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    hub: EventHub,
    link: Arc<dyn DeviceLink>,
    config: TransferConfig,
    limits: AttemptLimits,
    epoch: Instant,
}

impl Context {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn offered_modules(plan: &[PlannedModule]) -> Option<List<OfferedModule, MAX_MODULES>> {
    let mut list = List::new();
    for m in plan {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(&m.sha256, &mut sha256).ok()?;
        let function = tern_image::ModuleFunction::from_code(m.function);
        let transfer = match &m.patch {
            None => Transfer::Raw,
            Some(patch) => {
                let source = match &patch.source {
                    Some(hex) => {
                        let mut source = [0u8; 32];
                        hex::decode_to_slice(hex, &mut source).ok()?;
                        Some(source)
                    }
                    None => None,
                };
                Transfer::Patch { source, length: patch.length }
            }
        };
        let module = OfferedModule { function, index: m.index, version: m.version, size: m.size, sha256, transfer };
        list.push(module).ok()?;
    }
    Some(list)
}

fn parse_state(status: AttemptStatus, reason_code: Option<u16>) -> Option<AttemptState> {
    let reason = tern_proto::Reason::from_code(reason_code.unwrap_or(0));
    Some(match status {
        // Stored by the API just before the task took it over: not offered yet.
        AttemptStatus::Queued | AttemptStatus::Offered => AttemptState::Offered,
        AttemptStatus::Downloading => AttemptState::Downloading,
        AttemptStatus::Verifying => AttemptState::Verifying,
        AttemptStatus::Staged => AttemptState::Staged,
        AttemptStatus::Rebooting => AttemptState::Rebooting,
        AttemptStatus::Confirmed => AttemptState::Confirmed,
        AttemptStatus::Failed => AttemptState::Failed(reason),
        AttemptStatus::RolledBack => AttemptState::RolledBack(reason),
        AttemptStatus::TimedOut => AttemptState::TimedOut,
        AttemptStatus::Cancelled => AttemptState::Cancelled,
    })
}

/// Starts the update task, resuming every unfinished attempt in the store.
pub async fn start(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    hub: EventHub,
    link: Arc<dyn DeviceLink>,
    config: TransferConfig,
    limits: AttemptLimits,
) -> anyhow::Result<Updates> {
    let ctx = Context { store, blobs, hub, link, config, limits, epoch: Instant::now() };
    let mut active = HashMap::new();
    for record in ctx.store.unfinished_attempts().await? {
        let id = record.id;
        match resume(&ctx, record).await {
            Ok(entry) => {
                tracing::info!(
                    attempt = id,
                    device = entry.record.device,
                    state = entry.record.state.name(),
                    "resumed attempt"
                );
                active.insert(entry.record.device.clone(), entry);
            }
            Err(err) => tracing::error!(attempt = id, "cannot resume attempt: {err}"),
        }
    }
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(ctx, active, rx));
    Ok(Updates { tx })
}

async fn resume(ctx: &Context, record: AttemptRecord) -> anyhow::Result<Active> {
    let state = parse_state(record.state, record.reason_code)
        .ok_or_else(|| anyhow::anyhow!("stored state {} is unknown", record.state))?;
    // The machine counts the current stage only; the record holds every stage's.
    let base = record.stage_base;
    let stats = TransferStats {
        offers_sent: record.offers_sent.saturating_sub(base.offers_sent),
        requests: record.requests.saturating_sub(base.requests),
        requests_ignored: 0,
        bytes_sent: record.bytes_sent.saturating_sub(base.bytes_sent),
        bytes_resent: record.bytes_resent.saturating_sub(base.bytes_resent),
    };
    let signed = documents(ctx, &record).await?;
    let (attempt, stage_plan) = stage_machine(ctx, &record, record.stage, Some((state, stats)))
        .ok_or_else(|| anyhow::anyhow!("stored plan is invalid"))?;
    let watch = Watch::new(ctx, &record, state);
    Ok(Active { watch, persisted_requests: stats.requests, attempt, record, signed, stage_plan })
}

/// Reads the signed documents of an attempt's offer from the blob store.
async fn documents(ctx: &Context, record: &AttemptRecord) -> anyhow::Result<Vec<Vec<u8>>> {
    if record.signed.is_empty() || record.signed.len() > MAX_MODULES {
        anyhow::bail!("attempt {} lists {} signed documents", record.id, record.signed.len());
    }
    let mut documents = Vec::with_capacity(record.signed.len());
    for address in &record.signed {
        let document = ctx.blobs.get(address).await?;
        documents.push(document.ok_or_else(|| anyhow::anyhow!("signed document {address} is missing"))?);
    }
    Ok(documents)
}

async fn run(ctx: Context, mut active: HashMap<String, Active>, mut rx: mpsc::Receiver<UpdateInput>) {
    loop {
        // The watches own every attempt's clock: the machines' own timers (a re-offer
        // without back-off, a give-up on silence) are never run.
        let deadline = active.values().map(|a| a.watch.due(&ctx)).min();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(ctx.epoch + Duration::from_millis(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { return };
                if let UpdateInput::Cancel(id, reply) = input {
                    // Answer only once the cancellation is stored and sent.
                    let device = active.values().find(|a| a.record.id == id).map(|a| a.record.device.clone());
                    if let Some(device) = &device {
                        if let Some(entry) = active.get_mut(device) {
                            entry.attempt.cancel();
                        }
                        pump(&ctx, &mut active, device).await;
                    }
                    let _ = reply.send(device.is_some());
                    continue;
                }
                if let Some(device) = handle(&ctx, &mut active, input).await {
                    pump(&ctx, &mut active, &device).await;
                }
            }
            () = sleep => {
                let now = ctx.now();
                let devices: Vec<String> = active.keys().cloned().collect();
                for device in devices {
                    if let Some(entry) = active.get_mut(&device) {
                        if entry.watch.due(&ctx) > now {
                            continue;
                        }
                        supervise(&ctx, entry, now);
                    }
                    pump(&ctx, &mut active, &device).await;
                }
            }
        }
    }
}

/// Feeds one input to its attempt; returns the device whose attempt may have output.
async fn handle(ctx: &Context, active: &mut HashMap<String, Active>, input: UpdateInput) -> Option<String> {
    let now = ctx.now();
    match input {
        UpdateInput::Start(record) => {
            let record = *record;
            let device = record.device.clone();
            let signed = match documents(ctx, &record).await {
                Ok(signed) => signed,
                Err(err) => {
                    tracing::error!(attempt = record.id, "{err}");
                    return None;
                }
            };
            let (attempt, stage_plan) = stage_machine(ctx, &record, 0, None)?;
            let watch = Watch::new(ctx, &record, AttemptState::Offered);
            active.insert(device.clone(), Active { watch, attempt, persisted_requests: 0, record, signed, stage_plan });
            Some(device)
        }
        // Handled by `run`, which answers after storing the change.
        UpdateInput::Cancel(..) => None,
        UpdateInput::Connected(device) => {
            let entry = active.get_mut(&device)?;
            entry.attempt.handle_connected(now);
            // The machine offers again while offered or downloading; past that the device
            // may have finished while the server did not hear it (or lost its flash since):
            // the offer asks it, and it answers with its result or resumes.
            if !matches!(entry.attempt.state(), AttemptState::Offered | AttemptState::Downloading) {
                entry.watch.offer_now = true;
            }
            entry.watch.backoff = ctx.config.offer_retry_ms.max(1);
            entry.watch.next_offer = now.saturating_add(entry.watch.backoff);
            Some(device)
        }
        UpdateInput::BlockRequest(device, request) => {
            let entry = active.get_mut(&device)?;
            if let Err(ignored) = entry.attempt.handle_block_request(&request, now) {
                tracing::debug!(device, "block request ignored: {ignored:?}");
            }
            Some(device)
        }
        UpdateInput::Progress(device, progress) => {
            let _ = active.get_mut(&device)?.attempt.handle_progress(&progress, now);
            Some(device)
        }
        UpdateInput::Result(device, result) => {
            let _ = active.get_mut(&device)?.attempt.handle_result(&result, now);
            Some(device)
        }
        UpdateInput::Describe(device, describe) => {
            let _ = active.get_mut(&device)?.attempt.handle_describe(&describe, now);
            Some(device)
        }
    }
}

/// The watch's clock has come for `entry`: give up (the machine ends `timed_out`, the
/// device is told to cancel) or offer again with a longer back-off.
fn supervise(ctx: &Context, entry: &mut Active, now: u64) {
    let watch = &mut entry.watch;
    if entry.attempt.state().is_final() {
        return;
    }
    if now >= watch.give_up_at(ctx) {
        watch.gave_up = Some(if now >= watch.deadline_at { REASON_DEADLINE } else { REASON_NO_PROGRESS });
        // The machine times out on silence; at the end of time every attempt is silent.
        entry.attempt.handle_timeout(u64::MAX);
        return;
    }
    if now >= watch.next_offer {
        watch.offer_now = true;
        watch.backoff = watch.backoff.saturating_mul(2).min(ctx.limits.reoffer_max_ms.max(1));
        watch.next_offer = now.saturating_add(watch.backoff);
    }
}

fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; message.encoded_len()];
    let written = message.encode(&mut buf).expect("buffer sized by encoded_len");
    buf.truncate(written);
    buf
}

/// Sends what the device's attempt wants sent, persists and publishes what changed, moves
/// a staged attempt to its next stage when one is confirmed, and retires a finished
/// attempt.
async fn pump(ctx: &Context, active: &mut HashMap<String, Active>, device: &str) {
    let Some(entry) = active.get_mut(device) else { return };
    loop {
        let mut offered = false;
        while let Some(transmit) = entry.attempt.poll_transmit() {
            offered |= transmit == Transmit::Offer;
            transmit_one(ctx, entry, transmit).await;
        }
        if std::mem::take(&mut entry.watch.offer_now) && !offered && !entry.attempt.state().is_final() {
            entry.watch.offers += 1;
            transmit_one(ctx, entry, Transmit::Offer).await;
        }
        let mut progressed = false;
        let mut next_stage = false;
        let mut fallback = None;
        let now = ctx.now();
        while let Some(event) = entry.attempt.poll_event() {
            match event {
                AttemptEvent::State(AttemptState::Failed(reason @ (Reason::DeltaSource | Reason::DeltaFailed)))
                    if entry.stage_plan.iter().any(|m| m.patch.is_some()) && fallback.is_none() =>
                {
                    fallback = Some(reason);
                }
                AttemptEvent::State(AttemptState::Confirmed) if entry.record.stage + 1 < stage_count(&entry.record) => {
                    next_stage = true;
                }
                AttemptEvent::State(state) => {
                    if rank(state) > entry.watch.rank && !state.is_final() {
                        entry.watch.progressed(ctx, now);
                    }
                    entry.watch.rank = rank(state);
                    entry.record.state = AttemptStatus::of(state);
                    entry.record.reason = state.reason().map(|r| r.name().to_owned());
                    if state == AttemptState::TimedOut {
                        entry.record.reason = Some(entry.watch.gave_up.unwrap_or(REASON_NO_PROGRESS).to_owned());
                    }
                    entry.record.reason_code = state.reason().map(|r| r.code());
                    entry.record.finished = state.is_final();
                    let data = json!({
                        "attempt": entry.record.id,
                        "state": entry.record.state,
                        "reason": entry.record.reason,
                        "stage": entry.record.stage,
                        "stages": stage_count(&entry.record),
                    });
                    persist(ctx, entry, Some(("attempt.state", data))).await;
                }
                AttemptEvent::Progress { bytes_done, bytes_total: _ } => {
                    if bytes_done > entry.watch.bytes_done {
                        entry.watch.progressed(ctx, now);
                    }
                    entry.watch.bytes_done = bytes_done;
                    entry.record.bytes_done = done_before_stage(&entry.record) + bytes_done;
                    progressed = true;
                    let data = json!({
                        "attempt": entry.record.id,
                        "bytes_done": entry.record.bytes_done,
                        "bytes_total": entry.record.bytes_total,
                        "stage": entry.record.stage,
                    });
                    let _ = ctx.hub.publish(Some(device), "attempt.progress", data).await;
                }
            }
        }
        let stats = entry.attempt.stats();
        let bytes_new = stats.bytes_sent.saturating_sub(stats.bytes_resent);
        if bytes_new > entry.watch.bytes_new {
            entry.watch.bytes_new = bytes_new;
            entry.watch.progressed(ctx, now);
        }
        if next_stage {
            advance_stage(ctx, entry).await;
            // The next stage's offer is waiting to be sent.
            continue;
        }
        if let Some(reason) = fallback {
            if fall_back(ctx, entry, device, reason).await {
                // The stage's offer with whole modules is waiting to be sent.
                continue;
            }
        }
        if progressed || entry.attempt.stats().requests >= entry.persisted_requests + PERSIST_EVERY {
            persist(ctx, entry, None).await;
        }
        break;
    }
    if entry.attempt.state().is_final() {
        if entry.watch.gave_up.is_some() {
            // The device may still be receiving (or hold a staged update): stop it.
            transmit_one(ctx, entry, Transmit::Cancel).await;
        }
        active.remove(device);
    }
}

/// The current stage is confirmed and another follows: fold the stage's counters into the
/// record, start the next stage's machine (its offer goes out at once), persist with the
/// event that announces it.
async fn advance_stage(ctx: &Context, entry: &mut Active) {
    let finished = entry.record.stage;
    entry.record.stage += 1;
    entry.record.bytes_done = done_before_stage(&entry.record);
    let stages = stage_count(&entry.record);
    let data = json!({
        "attempt": entry.record.id,
        "stage": entry.record.stage,
        "stages": stages,
        "completed": finished,
        "message": format!(
            "stage {} of {stages} confirmed on the device; stage {} of {stages} offered",
            finished + 1,
            entry.record.stage + 1
        ),
    });
    restart_stage(ctx, entry, ("attempt.stage", data)).await;
}

/// Folds the current stage machine's counters into the record and starts a new machine
/// for `entry.record.stage` (its offer goes out at once), with a new watch; persists with
/// `event`. `false` when the stored plan cannot make one (logged).
async fn restart_stage(ctx: &Context, entry: &mut Active, event: (&str, serde_json::Value)) -> bool {
    let stats = entry.attempt.stats();
    let base = &mut entry.record.stage_base;
    base.offers_sent += stats.offers_sent + std::mem::take(&mut entry.watch.offers);
    base.requests += stats.requests;
    base.bytes_sent += stats.bytes_sent;
    base.bytes_resent += stats.bytes_resent;
    entry.record.sent_record.clear();
    let stage = entry.record.stage;
    let Some((attempt, stage_plan)) = stage_machine(ctx, &entry.record, stage, None) else {
        tracing::error!(attempt = entry.record.id, stage, "stage plan is invalid");
        return false;
    };
    entry.attempt = attempt;
    entry.stage_plan = stage_plan;
    entry.persisted_requests = 0;
    entry.watch = Watch::new(ctx, &entry.record, AttemptState::Offered);
    // The new machine announces `offered` first; that is the record's state now.
    while let Some(event) = entry.attempt.poll_event() {
        if let AttemptEvent::State(state) = event {
            entry.record.state = AttemptStatus::of(state);
        }
    }
    persist(ctx, entry, Some(event)).await;
    true
}

/// The device could not use the current stage's patches (`reason`: `delta_source`, the
/// module it runs is not the patch's source; `delta_failed`, a patch did not apply): the
/// stage is offered again with whole modules, under a new protocol id, with the reason
/// recorded on each module and in an event. On a device whose bytes the operator confirms
/// (cellular), more bytes than were confirmed are never sent: the attempt ends failed with
/// the reason instead, and the next plan for the device sends whole modules. Returns
/// whether the stage was offered again.
async fn fall_back(ctx: &Context, entry: &mut Active, device: &str, reason: Reason) -> bool {
    let confirms = match ctx.store.get_device(device).await {
        Ok(Some(d)) => d.policy.confirms_cost(),
        // Unknown: the safe side is not to send unconfirmed bytes.
        _ => true,
    };
    let stage = entry.record.stage;
    if confirms {
        entry.record.state = AttemptStatus::Failed;
        entry.record.reason = Some(reason.name().to_owned());
        entry.record.reason_code = Some(reason.code());
        entry.record.finished = true;
        let data = json!({
            "attempt": entry.record.id,
            "state": entry.record.state,
            "reason": entry.record.reason,
            "stage": stage,
            "stages": stage_count(&entry.record),
            "message": format!(
                "the device could not use a patch ({}); whole modules cost more than the confirmed \
                 estimate, so nothing more is sent: plan again (whole modules) and confirm",
                reason.name()
            ),
        });
        persist(ctx, entry, Some(("attempt.state", data))).await;
        return false;
    }
    let mut dropped = Vec::new();
    for m in entry.record.plan.iter_mut().filter(|m| m.stage == stage) {
        if let Some(patch) = m.patch.take() {
            m.patch_dropped = Some(reason.name().to_owned());
            dropped.push(json!({ "module": m.sha256, "kind": patch.kind(), "patch_bytes": patch.length }));
        }
    }
    let data = json!({
        "attempt": entry.record.id,
        "stage": stage,
        "reason": reason.name(),
        "dropped": dropped,
        "message": format!(
            "the device could not use a patch ({}); stage {} offered again with whole modules",
            reason.name(),
            stage + 1
        ),
    });
    restart_stage(ctx, entry, ("attempt.delta_fallback", data)).await
}

/// Saves the attempt's record, with the event (kind, data) that records the change if
/// there is one, in one transaction.
async fn persist(ctx: &Context, entry: &mut Active, event: Option<(&str, serde_json::Value)>) {
    let stats = entry.attempt.stats();
    let base = entry.record.stage_base;
    entry.record.bytes_sent = base.bytes_sent + stats.bytes_sent;
    entry.record.bytes_resent = base.bytes_resent + stats.bytes_resent;
    entry.record.requests = base.requests + stats.requests;
    entry.record.offers_sent = base.offers_sent + stats.offers_sent + entry.watch.offers;
    entry.record.sent_record = entry.attempt.sent_record().to_vec();
    entry.record.updated_at = now_millis();
    entry.persisted_requests = stats.requests;
    let record = &entry.record;
    let saved = async {
        let mut change = ctx.hub.begin().await?;
        change.update_attempt(record).await?;
        if let Some((kind, data)) = event {
            change.publish(Some(&record.device), kind, data).await?;
        }
        change.commit().await
    };
    if let Err(err) = saved.await {
        tracing::error!(attempt = entry.record.id, "cannot save attempt: {err}");
    }
}

async fn transmit_one(ctx: &Context, entry: &Active, transmit: Transmit) {
    let device = &entry.record.device;
    let (kind, payload) = match transmit {
        Transmit::Offer => {
            let mut signed = List::new();
            for document in stage_documents(&entry.record, &entry.signed, entry.record.stage) {
                // `documents` checked that they fit.
                let _ = signed.push(document);
            }
            let air_bytes =
                entry.record.stages.get(entry.record.stage as usize).map_or(entry.record.air_bytes, |s| s.air_bytes);
            let offer = UpdateOffer {
                attempt: entry.attempt.id(),
                signed,
                modules: *entry.attempt.modules(),
                air_bytes,
                window: entry.attempt.config().window,
                max_block: entry.attempt.config().max_block,
                max_request: stage_windows(&entry.record, entry.record.stage).then(|| entry.attempt.max_request()),
            };
            (MessageKind::UpdateOffer, encode(&Message::UpdateOffer(offer)))
        }
        Transmit::Block { module, offset, length } => {
            let Some(planned) = entry.stage_plan.get(usize::from(module)) else { return };
            let address = planned.patch.as_ref().map_or(&planned.sha256, |p| &p.address);
            let data = match ctx.blobs.read_range(address, u64::from(offset), length as usize).await {
                Ok(Some(data)) => data,
                other => {
                    tracing::error!(
                        attempt = entry.record.id,
                        module = planned.sha256,
                        "module bytes unavailable: {other:?}"
                    );
                    return;
                }
            };
            let block = tern_proto::Block { attempt: entry.attempt.id(), module, offset, data: &data };
            (MessageKind::Block, encode(&Message::Block(block)))
        }
        Transmit::Cancel => {
            let command =
                Command { id: now_millis() as u32, action: Action::CancelUpdate, attempt: Some(entry.attempt.id()) };
            (MessageKind::Command, encode(&Message::Command(command)))
        }
    };
    if let Err(err) = ctx.link.send(device, kind, payload.into()).await {
        // Offline or busy: the device asks again (or gets the offer again) when it is back.
        tracing::debug!(device, "not sent: {err}");
    }
}
