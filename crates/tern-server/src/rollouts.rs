//! Rollouts: the server side of `tern-rollout`'s engine. This module only gathers facts,
//! persists and pumps; every decision (who is due, who starts, when a phase opens, when
//! to pause) is the engine's.
//!
//! One step of a rollout: read the rollout, its members, the release and every device of
//! its product (or group) from the store; turn each device into [`DeviceFacts`] (online,
//! runs the release, in a maintenance window, data budget, its attempt's outcome); call
//! [`tern_rollout::step`]; store the new records in one transaction; then start what the
//! engine asked for through the planner (the one path that creates attempts, so the
//! device's plan heals, stages and confirms as any other), and store the attempt ids.
//!
//! Crash safety: a member is stored `Updating` *before* its attempt is created. A server
//! killed in between leaves a member updating with no attempt: the next step adopts the
//! device's attempt made by this rollout if there is one, else the engine starts it again
//! (the database's one-unfinished-attempt rule means a device never gets two).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tern_rollout::{AttemptView, Budget, DeviceFacts, Event, Member, MemberState, Standing, WaitReason};
use tokio::sync::Notify;

use crate::auth::now_millis;
use crate::events::EventHub;
use crate::fleet;
use crate::link::DeviceLink;
use crate::plans::{PlanError, PlanOptions, Planner};
use crate::store::{
    AttemptRecord, AttemptStatus, DeviceRecord, GroupRecord, MemberRecord, PlanOrigin, ReleaseRecord, RolloutRecord,
    RolloutStatus, Store, StoreError,
};

/// Why a rollout operation was refused.
#[derive(Debug)]
pub enum RolloutError {
    /// Something named does not exist.
    NotFound(String),
    /// The request is malformed or contradicts itself (`422`).
    Invalid {
        /// Machine-readable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// The rollout's state does not allow it (`409`).
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// Storage failed.
    Store(StoreError),
}

impl From<StoreError> for RolloutError {
    fn from(err: StoreError) -> Self {
        RolloutError::Store(err)
    }
}

impl std::fmt::Display for RolloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutError::NotFound(m) => f.write_str(m),
            RolloutError::Invalid { message, .. } | RolloutError::Conflict { message, .. } => f.write_str(message),
            RolloutError::Store(err) => write!(f, "{err}"),
        }
    }
}

/// What an operator asks for when starting a rollout.
#[derive(Clone, Debug)]
pub struct NewRollout {
    /// The product.
    pub product: u32,
    /// Limit it to this group of the product.
    pub group: Option<String>,
    /// The release to bring devices to.
    pub release: u32,
    /// Phases, threshold, caps, soak, expiry.
    pub spec: tern_rollout::Spec,
}

/// A rollout with its progress, as `tern rollout status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutView {
    /// The rollout.
    #[serde(flatten)]
    pub record: RolloutRecord,
    /// Counts per phase, failure rate, failing devices.
    pub summary: tern_rollout::Summary,
    /// Members that are neither healthy nor pending, with their state and reason
    /// (what an operator looks at).
    pub attention: Vec<MemberView>,
    /// Bytes on the air of its attempts so far.
    pub air_bytes_so_far: u64,
    /// Estimated bytes on the air when every member not yet updated is (their average
    /// so far, times the members left).
    pub air_bytes_projected: u64,
}

/// One member, for status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// Device id.
    pub device: String,
    /// Phase index.
    pub phase: u32,
    /// State, as words (`waiting (budget_exceeded)`).
    pub state: String,
    /// Why, when known.
    pub reason: Option<String>,
    /// Its attempt.
    pub attempt: Option<i64>,
}

/// The rollout pump; cheap to clone.
#[derive(Clone)]
pub struct Rollouts {
    store: Arc<dyn Store>,
    planner: Planner,
    hub: EventHub,
    link: Arc<dyn DeviceLink>,
    wake: Arc<Notify>,
    /// Serialises steps and operator changes, so a pause is never overwritten by a step
    /// computed before it.
    lock: Arc<tokio::sync::Mutex<()>>,
}

fn ms(now: i64) -> u64 {
    u64::try_from(now).unwrap_or(0)
}

impl Rollouts {
    /// A pump over the server's parts.
    pub fn new(store: Arc<dyn Store>, planner: Planner, hub: EventHub, link: Arc<dyn DeviceLink>) -> Self {
        Rollouts {
            store,
            planner,
            hub,
            link,
            wake: Arc::new(Notify::new()),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs the pump: steps every live rollout each `tick`, or sooner when woken.
    pub fn spawn(&self, tick: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = this.step_all().await {
                    tracing::warn!("rollouts: {err}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = this.wake.notified() => {}
                }
            }
        })
    }

    /// Steps again soon (after an operator change).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Steps every rollout that is not aborted, once.
    pub async fn step_all(&self) -> Result<(), RolloutError> {
        let _guard = self.lock.lock().await;
        let rollouts = self.store.list_rollouts().await?;
        if rollouts.iter().all(|r| r.status == RolloutStatus::Aborted) {
            return Ok(());
        }
        let devices = self.store.list_devices().await?;
        let groups = self.store.list_groups().await?;
        for rollout in rollouts.into_iter().filter(|r| r.status != RolloutStatus::Aborted) {
            if let Err(err) = self.step(rollout, &devices, &groups).await {
                tracing::warn!("rollout step: {err}");
            }
        }
        Ok(())
    }

    /// Starts a rollout. A live rollout of the same product is aborted (replaced): one
    /// desired release per product at a time.
    pub async fn create(&self, new: NewRollout, by: &str) -> Result<RolloutRecord, RolloutError> {
        new.spec.validate().map_err(|e| RolloutError::Invalid { code: "bad_rollout", message: e.to_string() })?;
        let product = self
            .store
            .get_product(new.product)
            .await?
            .ok_or_else(|| RolloutError::NotFound(format!("no product {}", new.product)))?;
        let release =
            self.store.get_release(product.id, new.release).await?.ok_or_else(|| {
                RolloutError::NotFound(format!("product {} has no release {}", product.id, new.release))
            })?;
        if let Some(group) = &new.group {
            let g = self
                .store
                .get_group(group)
                .await?
                .ok_or_else(|| RolloutError::NotFound(format!("no group {group}")))?;
            if g.product != product.id {
                return Err(RolloutError::Invalid {
                    code: "wrong_product",
                    message: format!("group {group} belongs to product {}, not {}", g.product, product.id),
                });
            }
        }
        let _guard = self.lock.lock().await;
        let now = now_millis();
        // The rollouts it replaces end, and it starts, in one transaction.
        let mut change = self.hub.begin().await?;
        for old in self.store.list_rollouts().await? {
            if old.product == product.id && old.status != RolloutStatus::Aborted {
                let mut old = old;
                old.engine = tern_rollout::abort(&old.engine).unwrap_or(old.engine);
                old.status = RolloutStatus::Aborted;
                old.updated_at = now;
                change.save_rollout(&old, &[]).await?;
                change.publish(None, "rollout.replaced", tagged(&old, json!({ "by_release": release.number }))).await?;
            }
        }
        let mut record = RolloutRecord {
            id: 0,
            product: product.id,
            group: new.group.clone(),
            release: release.number,
            status: RolloutStatus::Running,
            engine: tern_rollout::Rollout::new(new.spec, ms(now)),
            created_by: by.to_owned(),
            created_at: now,
            updated_at: now,
        };
        record.id = change.create_rollout(&record).await?;
        let phases: Vec<String> = record.engine.spec.phases.iter().map(ToString::to_string).collect();
        let data = json!({ "release": release.number, "phases": phases, "by": by });
        change.publish(None, "rollout.started", tagged(&record, data)).await?;
        change.commit().await?;
        drop(_guard);
        self.wake();
        Ok(record)
    }

    /// Pauses, resumes or aborts rollout `id`.
    pub async fn control(&self, id: i64, action: Control, by: &str) -> Result<RolloutRecord, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut record = self.get(id).await?;
        let changed = match action {
            Control::Pause => tern_rollout::pause(&record.engine, by),
            Control::Resume => tern_rollout::resume(&record.engine),
            Control::Abort => tern_rollout::abort(&record.engine),
        }
        .map_err(|e| RolloutError::Conflict { code: "bad_state", message: format!("rollout {id}: {e}") })?;
        record.engine = changed;
        record.status = RolloutStatus::of(&record.engine.state);
        record.updated_at = now_millis();
        let kind = match action {
            Control::Pause => "rollout.paused",
            Control::Resume => "rollout.resumed",
            Control::Abort => "rollout.aborted",
        };
        self.save(&record, &[], vec![(kind, json!({ "by": by }))]).await?;
        drop(_guard);
        self.wake();
        Ok(record)
    }

    /// Approves device `device`'s update in rollout `id` beyond its data budget.
    pub async fn approve(&self, id: i64, device: &str, by: &str) -> Result<MemberRecord, RolloutError> {
        let _guard = self.lock.lock().await;
        let record = self.get(id).await?;
        let mut member = self
            .store
            .rollout_members(id)
            .await?
            .into_iter()
            .find(|m| m.member.device == device)
            .ok_or_else(|| RolloutError::NotFound(format!("device {device} is not in rollout {id}")))?;
        member.budget_approved = true;
        let event = ("rollout.budget_approved", json!({ "device": device, "by": by }));
        self.save(&record, std::slice::from_ref(&member), vec![event]).await?;
        drop(_guard);
        self.wake();
        Ok(member)
    }

    /// Rollout `id`, or `NotFound`.
    pub async fn get(&self, id: i64) -> Result<RolloutRecord, RolloutError> {
        self.store.get_rollout(id).await?.ok_or_else(|| RolloutError::NotFound(format!("no rollout {id}")))
    }

    /// Rollout `id` with its progress.
    pub async fn view(&self, id: i64) -> Result<RolloutView, RolloutError> {
        let record = self.get(id).await?;
        let members = self.store.rollout_members(id).await?;
        let engine_members: Vec<Member> = members.iter().map(|m| m.member.clone()).collect();
        let summary = tern_rollout::summary(&record.engine, &engine_members);
        let mut so_far = 0u64;
        let mut updated = 0u64;
        for m in members.iter().filter(|m| m.attempt.is_some()) {
            if let Some(a) = self.store.get_attempt(m.attempt.unwrap_or_default()).await? {
                so_far += a.bytes_sent.max(if a.finished { 0 } else { a.air_bytes });
                updated += 1;
            }
        }
        let left = members
            .iter()
            .filter(|m| m.attempt.is_none() && matches!(m.member.state, MemberState::Pending | MemberState::Waiting(_)))
            .count() as u64;
        let projected = so_far + so_far.checked_div(updated).unwrap_or(0) * left;
        let attention = members
            .iter()
            .filter(|m| {
                !matches!(m.member.state, MemberState::Healthy | MemberState::Pending | MemberState::AlreadyThere)
            })
            .map(|m| MemberView {
                device: m.member.device.clone(),
                phase: m.member.phase,
                state: m.member.state.to_string(),
                reason: m.member.reason.clone(),
                attempt: m.attempt,
            })
            .collect();
        Ok(RolloutView { record, summary, attention, air_bytes_so_far: so_far, air_bytes_projected: projected })
    }

    /// Saves the rollout's record and `members` with the events that record the change,
    /// in one transaction.
    async fn save(
        &self,
        record: &RolloutRecord,
        members: &[MemberRecord],
        events: Vec<(&'static str, serde_json::Value)>,
    ) -> Result<(), StoreError> {
        let mut change = self.hub.begin().await?;
        change.save_rollout(record, members).await?;
        for (kind, data) in events {
            change.publish(None, kind, tagged(record, data)).await?;
        }
        change.commit().await
    }

    /// One step of one rollout.
    async fn step(
        &self,
        mut record: RolloutRecord,
        devices: &[DeviceRecord],
        groups: &[GroupRecord],
    ) -> Result<(), RolloutError> {
        let now = now_millis();
        let release = self
            .store
            .get_release(record.product, record.release)
            .await?
            .ok_or_else(|| RolloutError::NotFound(format!("release {} vanished", record.release)))?;
        let group = match &record.group {
            Some(name) => Some(
                groups
                    .iter()
                    .find(|g| &g.name == name)
                    .ok_or_else(|| RolloutError::NotFound(format!("group {name} vanished")))?,
            ),
            None => None,
        };
        let mut stored: HashMap<String, MemberRecord> =
            self.store.rollout_members(record.id).await?.into_iter().map(|m| (m.member.device.clone(), m)).collect();
        let month = fleet::month_start(now);
        let mut facts = Vec::new();
        for device in devices.iter().filter(|d| d.fleet.product == Some(record.product)) {
            if group.is_some_and(|g| !fleet::in_group(device, g)) {
                continue;
            }
            let member = stored.get_mut(&device.id);
            let attempt = match member {
                Some(m) => self.attempt_view(m, &record, device).await?,
                None => None,
            };
            let approved = stored.get(&device.id).is_some_and(|m| m.budget_approved);
            let needed = stored.get(&device.id).and_then(|m| m.needed_bytes);
            let budget = match (approved, fleet::budget_of(device, groups), needed) {
                (true, _, _) => Budget::Approved,
                // What an update needs is known once its plan is made (see `start`, which
                // holds the device back when it does not fit).
                (false, Some(limit), Some(needed)) => {
                    let left = limit.saturating_sub(self.store.air_bytes_since(&device.id, month).await?);
                    match needed > left {
                        true => Budget::Exceeded { needed, left },
                        false => Budget::Ok,
                    }
                }
                _ => Budget::Ok,
            };
            let standing = match (&device.fleet, device.fleet.pinned_release) {
                (m, _) if m.development => Standing::Development,
                (_, Some(release)) => Standing::Pinned { release },
                _ => Standing::Eligible,
            };
            let confirmed_state = device.inventory.as_ref().map(|i| i.boot_reason.as_str());
            facts.push(DeviceFacts {
                device: device.id.clone(),
                standing,
                // A device that connected but has not described itself yet cannot be
                // planned for: it waits as an offline one does.
                online: self.link.is_online(&device.id) && device.inventory.is_some(),
                runs_release: fleet::runs_release(device, &release),
                in_window: fleet::in_window(device, groups, ms(now)),
                budget,
                attempt,
                rolled_back_since_confirm: [
                    tern_proto::BootReason::Rollback.name(),
                    tern_proto::BootReason::SafeMode.name(),
                ]
                .iter()
                .any(|reason| confirmed_state == Some(*reason))
                    && stored.get(&device.id).is_some_and(|m| m.member.state == MemberState::Soaking),
            });
        }
        let members: Vec<Member> = stored.values().map(|m| m.member.clone()).collect();
        let step = tern_rollout::step(&record.engine, &members, &facts, ms(now));
        record.engine = step.rollout;
        record.status = RolloutStatus::of(&record.engine.state);
        record.updated_at = now;
        let mut changed: Vec<MemberRecord> = step
            .members
            .into_iter()
            .map(|member| {
                let old = stored.get(&member.device);
                // A member leaving `Updating` keeps its attempt id for status; one
                // re-entering it gets a new one below.
                let attempt = match member.state {
                    MemberState::Updating if step.start.contains(&member.device) => None,
                    _ => old.and_then(|o| o.attempt),
                };
                MemberRecord {
                    member,
                    attempt,
                    budget_approved: old.is_some_and(|o| o.budget_approved),
                    needed_bytes: old.and_then(|o| o.needed_bytes),
                }
            })
            .collect();
        // Adopted attempts (see `attempt_view`) are saved too.
        for m in stored.values() {
            if !changed.iter().any(|c| c.member.device == m.member.device) && m.attempt.is_some() {
                changed.push(m.clone());
            }
        }
        // Members are stored as updating before their attempts exist (crash safety).
        self.save(&record, &changed, step.events.iter().map(engine_event).collect()).await?;
        if step.start.is_empty() {
            return Ok(());
        }
        let mut started = Vec::new();
        let mut events = Vec::new();
        for device_id in &step.start {
            let Some(mut m) = changed.iter().find(|m| &m.member.device == device_id).cloned() else { continue };
            let Some(device) = devices.iter().find(|d| &d.id == device_id) else { continue };
            events.extend(self.start(&record, &release, device, groups, &mut m, now).await?);
            started.push(m);
        }
        self.save(&record, &started, events).await?;
        Ok(())
    }

    /// Makes and starts the device's plan for the release, or says why not in the member
    /// (and in the event it returns, to store with the member).
    async fn start(
        &self,
        record: &RolloutRecord,
        release: &ReleaseRecord,
        device: &DeviceRecord,
        groups: &[GroupRecord],
        m: &mut MemberRecord,
        now: i64,
    ) -> Result<Option<(&'static str, serde_json::Value)>, RolloutError> {
        let requested: Vec<String> = release.modules.iter().map(|r| r.sha256.clone()).collect();
        let plan = match self.planner.build(device, &requested, PlanOrigin::Rollout, &PlanOptions::default()).await {
            Ok(plan) => plan,
            Err(PlanError::Rejected { code: "already_installed", .. }) => {
                set_state(&mut m.member, MemberState::AlreadyThere, None, now);
                return Ok(None);
            }
            Err(PlanError::Store(err)) => return Err(err.into()),
            // It connected again and has not described itself since this step began.
            Err(PlanError::Rejected { code: "not_described", message }) => {
                set_state(&mut m.member, MemberState::Waiting(WaitReason::Offline), Some(message), now);
                return Ok(None);
            }
            Err(err) => {
                let reason = format!("no plan: {err}");
                set_state(&mut m.member, MemberState::Failed, Some(reason.clone()), now);
                return Ok(Some(("rollout.member_failed", json!({ "device": device.id, "reason": reason }))));
            }
        };
        m.needed_bytes = Some(plan.air_bytes);
        if !m.budget_approved {
            if let Some(limit) = fleet::budget_of(device, groups) {
                let spent = self.store.air_bytes_since(&device.id, fleet::month_start(now)).await?;
                let left = limit.saturating_sub(spent);
                if plan.air_bytes > left {
                    set_state(
                        &mut m.member,
                        MemberState::Waiting(WaitReason::Budget),
                        Some(budget_text(plan.air_bytes, left)),
                        now,
                    );
                    let data = json!({ "device": device.id, "needed": plan.air_bytes, "left": left });
                    return Ok(Some(("rollout.budget_exceeded", data)));
                }
            }
        }
        match self.planner.start(plan.id, None, PlanOrigin::Rollout).await {
            Ok((_, attempt)) => m.attempt = Some(attempt.id),
            Err(PlanError::Conflict { code: "attempt_in_progress", message }) => {
                // Another update (an operator's) is running: try again later, not a failure.
                set_state(&mut m.member, MemberState::Waiting(WaitReason::Busy), Some(message), now);
                m.member.next_try_at = ms(now) + record.engine.spec.busy_backoff_ms;
            }
            Err(PlanError::Store(err)) => return Err(err.into()),
            Err(err) => {
                let reason = format!("not started: {err}");
                set_state(&mut m.member, MemberState::Failed, Some(reason.clone()), now);
                return Ok(Some(("rollout.member_failed", json!({ "device": device.id, "reason": reason }))));
            }
        }
        Ok(None)
    }

    /// The outcome of member `m`'s attempt, for the engine. A member updating without an
    /// attempt id (the server stopped between storing it and starting the attempt)
    /// adopts the device's attempt this rollout made, if there is one.
    async fn attempt_view(
        &self,
        m: &mut MemberRecord,
        record: &RolloutRecord,
        device: &DeviceRecord,
    ) -> Result<Option<AttemptView>, RolloutError> {
        if m.attempt.is_none() && m.member.state == MemberState::Updating {
            let since = m.member.started_at.unwrap_or(m.member.since);
            if let Some(latest) = self.store.device_attempts(&device.id, 1).await?.into_iter().next() {
                let from_rollout = match latest.plan_id {
                    Some(plan) => self.store.get_plan(plan).await?.is_some_and(|p| p.origin == PlanOrigin::Rollout),
                    None => false,
                };
                if from_rollout && ms(latest.created_at) >= since && latest.created_at >= record.created_at {
                    m.attempt = Some(latest.id);
                }
            }
        }
        let Some(id) = m.attempt else { return Ok(None) };
        let Some(attempt) = self.store.get_attempt(id).await? else { return Ok(None) };
        Ok(Some(view_of(&attempt)))
    }
}

/// An engine event as a stored event's kind and data.
fn engine_event(event: &Event) -> (&'static str, serde_json::Value) {
    match event {
        Event::PhaseStarted { phase } => ("rollout.phase_started", json!({ "phase": phase })),
        Event::PhaseCompleted { phase } => ("rollout.phase_completed", json!({ "phase": phase })),
        Event::Paused { reason, failing } => {
            let failing: Vec<_> = failing.iter().map(|(d, r)| json!({ "device": d, "reason": r })).collect();
            ("rollout.paused", json!({ "reason": reason.to_string(), "failing": failing }))
        }
        Event::Completed => ("rollout.completed", json!({})),
        Event::MemberFailed { device, reason } => {
            ("rollout.member_failed", json!({ "device": device, "reason": reason }))
        }
        Event::MemberExpired { device } => ("rollout.member_expired", json!({ "device": device })),
        Event::WaitingBudget { device, needed, left } => {
            ("rollout.budget_exceeded", json!({ "device": device, "needed": needed, "left": left }))
        }
    }
}

/// `data` with the rollout's id and product, as every rollout event carries them.
fn tagged(record: &RolloutRecord, mut data: serde_json::Value) -> serde_json::Value {
    if let Some(map) = data.as_object_mut() {
        map.insert("rollout".into(), json!(record.id));
        map.insert("product".into(), json!(record.product));
    }
    data
}

/// An operator's change to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop starting devices; running updates finish.
    Pause,
    /// Go on (after an operator's or the threshold's pause).
    Resume,
    /// Stop for good.
    Abort,
}

fn budget_text(needed: u64, left: u64) -> String {
    format!("budget_exceeded: the update needs {needed} bytes on the air, {left} left this month")
}

fn set_state(member: &mut Member, state: MemberState, reason: Option<String>, now: i64) {
    member.state = state;
    member.reason = reason;
    member.since = ms(now);
}

/// An attempt as the engine sees it.
fn view_of(attempt: &AttemptRecord) -> AttemptView {
    let reason = || attempt.reason.clone().unwrap_or_else(|| attempt.state.name().to_owned());
    match attempt.state {
        AttemptStatus::Confirmed => AttemptView::Confirmed { at: ms(attempt.updated_at) },
        AttemptStatus::Cancelled => AttemptView::Cancelled,
        AttemptStatus::Failed if attempt.reason.as_deref() == Some("busy") => AttemptView::Busy,
        AttemptStatus::Failed | AttemptStatus::RolledBack | AttemptStatus::TimedOut => {
            AttemptView::Failed { reason: format!("{}: {}", attempt.state, reason()) }
        }
        _ => AttemptView::Running,
    }
}
