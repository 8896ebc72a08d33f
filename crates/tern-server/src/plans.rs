//! Install plans: what the server would send a device, in order and with the reason for
//! each module, computed from the catalog and the device's last Describe (`tern_plan`),
//! stored and shown *before* anything is sent.
//!
//! - An operator asks for modules (`POST /api/devices/{id}/plans`); the plan adds every
//!   missing module their dependencies need (system parts, bootloader, radio stack), the
//!   lowest sufficient catalog version, in dependency order.
//! - A device that describes itself in safe mode because of an unmet dependency gets a
//!   heal plan ([`Planner::on_describe`]). Its policy decides what happens: auto-heal (on
//!   by default for Wi-Fi and Ethernet devices) starts it at once; otherwise it waits,
//!   proposed, for an operator. One heal plan per described inventory: a heal that failed
//!   is not retried in a loop.
//! - A plan starts only against the inventory it was computed for (a device that changed
//!   since needs a new plan), only when the device has no attempt in flight, and, for a
//!   cellular device, only with the operator's confirmation of its bytes on the air.
//!
//! Only modules with a signed statement in the catalog are ever planned: the offer is the
//! list of their statements, which the device verifies with its own trusted keys.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use sha2::{Digest, Sha256};
use tern_image::{Dependency, ModuleFunction};
use tern_plan::{Candidate, Installed, Reason, Slot};
use tern_proto::attempt::TransferConfig;

use crate::auth::now_millis;
use crate::blob::{BlobError, BlobStore};
use crate::events::EventHub;
use crate::store::{
    AttemptRecord, DeviceRecord, Inventory, ModuleRecord, PlanRecord, PlannedModule, Store, StoreError,
};
use crate::updates::{estimate_air_bytes, UpdateInput, Updates};

/// Why a plan could not be made or started.
#[derive(Debug)]
pub enum PlanError {
    /// No such device or plan.
    NotFound(String),
    /// The request cannot be planned as asked (unknown or unsigned module, wrong platform,
    /// unsatisfiable dependency, nothing to do, …).
    Rejected {
        /// Machine-readable code.
        code: &'static str,
        /// What went wrong and what to do about it.
        message: String,
    },
    /// The plan cannot start now (already started, stale, device busy, not confirmed).
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What went wrong and what to do about it.
        message: String,
    },
    /// Storage failed.
    Store(StoreError),
    /// The blob store failed.
    Blob(BlobError),
}

impl From<StoreError> for PlanError {
    fn from(err: StoreError) -> Self {
        PlanError::Store(err)
    }
}

impl From<BlobError> for PlanError {
    fn from(err: BlobError) -> Self {
        PlanError::Blob(err)
    }
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::NotFound(what) => write!(f, "{what}"),
            PlanError::Rejected { message, .. } | PlanError::Conflict { message, .. } => f.write_str(message),
            PlanError::Store(err) => write!(f, "{err}"),
            PlanError::Blob(err) => write!(f, "{err}"),
        }
    }
}

fn rejected(code: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Rejected { code, message: message.into() }
}

fn conflict(code: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Conflict { code, message: message.into() }
}

/// Where a plan came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An operator asked for modules (or for a heal).
    Operator,
    /// The server computed it for a device in safe mode.
    Heal,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Operator => "operator",
            Origin::Heal => "heal",
        }
    }
}

/// Makes and starts plans; cheap to clone.
#[derive(Clone)]
pub struct Planner {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    hub: EventHub,
    updates: Updates,
    transfer: TransferConfig,
}

/// The identity of what a device runs: SHA-256 over its described module hashes, sorted.
pub fn inventory_key(inventory: &Inventory) -> String {
    let mut hashes: Vec<&str> = inventory.modules.iter().map(|m| m.sha256.as_str()).collect();
    hashes.sort_unstable();
    let mut hasher = Sha256::new();
    for hash in hashes {
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

fn dependency(record: &crate::store::DependencyRecord) -> Dependency {
    Dependency { function: ModuleFunction::from_code(record.function), index: record.index, version: record.version }
}

fn candidate(module: &ModuleRecord) -> Option<Candidate> {
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(&module.sha256, &mut sha256).ok()?;
    Some(Candidate {
        sha256,
        platform_id: module.platform_id,
        slot: Slot { function: ModuleFunction::from_code(module.function), index: module.index },
        version: module.version,
        size: u64::from(module.size),
        dependencies: module.dependencies.iter().map(dependency).collect(),
    })
}

/// A module's name for messages: `system part 1 v3000 (1a2b3c4d)`.
fn describe(module: &ModuleRecord) -> String {
    let slot = Slot { function: ModuleFunction::from_code(module.function), index: module.index };
    format!("{slot} v{} ({})", module.version, &module.sha256[..8.min(module.sha256.len())])
}

fn reason_text(reason: &Reason) -> String {
    match reason {
        Reason::Requested => "requested".to_owned(),
        Reason::Dependency { needed_by: (slot, version), requirement } => {
            let needed = Slot { function: requirement.function, index: requirement.index };
            format!("needed by {slot} v{version}: {needed} >= v{}", requirement.version)
        }
    }
}

impl Planner {
    /// A planner over the server's storage and update task.
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        hub: EventHub,
        updates: Updates,
        transfer: TransferConfig,
    ) -> Self {
        Planner { store, blobs, hub, updates, transfer }
    }

    /// Computes and stores a plan installing `requested` (catalog SHA-256s; empty: heal
    /// only) on `device`, as it last described itself.
    pub async fn build(
        &self,
        device: &DeviceRecord,
        requested: &[String],
        origin: Origin,
    ) -> Result<PlanRecord, PlanError> {
        let inventory = device.inventory.as_ref().ok_or_else(|| {
            rejected(
                "not_described",
                format!("device {} has not described itself yet: the server does not know what it runs", device.id),
            )
        })?;
        let modules = self.store.list_modules().await?;
        let by_hash: HashMap<&str, &ModuleRecord> = modules.iter().map(|m| (m.sha256.as_str(), m)).collect();

        let mut wanted = Vec::new();
        let mut already = Vec::new();
        for hash in requested {
            let hash = hash.to_ascii_lowercase();
            let module = by_hash.get(hash.as_str()).ok_or_else(|| {
                rejected(
                    "unknown_module",
                    format!("no module {hash} in the catalog: upload it with `tern module upload`"),
                )
            })?;
            if module.platform_id != device.platform_id {
                return Err(rejected(
                    "wrong_platform",
                    format!(
                        "{} is built for platform {}, device {} is platform {}",
                        describe(module),
                        module.platform_id,
                        device.id,
                        device.platform_id
                    ),
                ));
            }
            if module.statement.is_none() {
                return Err(rejected(
                    "unsigned_module",
                    format!(
                        "{} has no signed statement: upload it with `tern module upload --key KEY` \
                         (or with a FILE.stmt made by `tern module sign`)",
                        describe(module)
                    ),
                ));
            }
            if inventory.modules.iter().any(|m| m.sha256 == module.sha256) {
                already.push(describe(module));
                continue;
            }
            wanted.push(candidate(module).ok_or_else(|| rejected("bad_module", "catalog hash is not hex"))?);
        }
        if !requested.is_empty() && wanted.is_empty() {
            return Err(rejected(
                "already_installed",
                format!("device {} already runs {}", device.id, already.join(", ")),
            ));
        }

        let installed: Vec<Installed> = inventory
            .modules
            .iter()
            .map(|m| {
                let slot = Slot { function: ModuleFunction::from_code(m.function), index: m.index };
                // What the module needs: from the catalog when it knows these exact bytes,
                // else the unmet dependency the device reported for it.
                let dependencies = match by_hash.get(m.sha256.as_str()) {
                    Some(known) => known.dependencies.iter().map(dependency).collect(),
                    None if !m.dependencies_met => inventory.unmet.iter().map(dependency).collect(),
                    None => Vec::new(),
                };
                Installed { slot, version: m.version, dependencies }
            })
            .collect();
        // Only signed modules of the device's platform can heal it.
        let catalog: Vec<Candidate> = modules
            .iter()
            .filter(|m| m.platform_id == device.platform_id && m.statement.is_some())
            .filter_map(candidate)
            .collect();

        let plan = tern_plan::plan(device.platform_id, &installed, &wanted, &catalog).map_err(|err| {
            let code = match err {
                tern_plan::Error::WrongPlatform { .. } => "wrong_platform",
                tern_plan::Error::SameSlotTwice(_) => "same_slot_twice",
                tern_plan::Error::Unsatisfiable { .. } => "unsatisfiable",
                tern_plan::Error::Conflict { .. } => "conflict",
            };
            rejected(code, format!("no plan for device {}: {err}", device.id))
        })?;
        if plan.steps.is_empty() {
            return Err(rejected(
                "nothing_to_do",
                format!("device {} needs nothing: every dependency of its modules is met", device.id),
            ));
        }
        if plan.steps.len() > tern_proto::MAX_MODULES {
            return Err(rejected(
                "too_many_modules",
                format!(
                    "the plan has {} modules; an offer carries at most {}",
                    plan.steps.len(),
                    tern_proto::MAX_MODULES
                ),
            ));
        }

        let mut steps = Vec::with_capacity(plan.steps.len());
        let mut signed_len = 0usize;
        for step in &plan.steps {
            let sha256 = hex::encode(step.module.sha256);
            let module =
                by_hash.get(sha256.as_str()).ok_or_else(|| rejected("bad_module", "planned module vanished"))?;
            let statement = module.statement.as_deref().unwrap_or_default();
            signed_len += self.blobs.get(statement).await?.map_or(0, |doc| doc.len());
            steps.push(PlannedModule {
                sha256,
                function: module.function,
                function_name: module.function_name.clone(),
                index: module.index,
                version: module.version,
                size: module.size,
                start_address: module.start_address,
                reason: Some(reason_text(&step.reason)),
            });
        }
        let mut record = PlanRecord {
            id: 0,
            device: device.id.clone(),
            platform_id: device.platform_id,
            origin: origin.name().to_owned(),
            status: "proposed".to_owned(),
            requested: requested.iter().map(|h| h.to_ascii_lowercase()).collect(),
            bytes_total: steps.iter().map(|m| u64::from(m.size)).sum(),
            air_bytes: estimate_air_bytes(&device.id, &steps, signed_len, &self.transfer),
            steps,
            inventory_key: inventory_key(inventory),
            connectivity: device.policy.connectivity,
            confirm_required: device.policy.confirms_cost(),
            attempt: None,
            created_at: now_millis(),
        };
        record.id = self.store.create_plan(&record).await?;
        let data = json!({
            "plan": record.id,
            "origin": record.origin,
            "modules": record.steps.len(),
            "heals": record.steps.iter().any(|s| s.reason.as_deref() != Some("requested")),
            "air_bytes": record.air_bytes,
        });
        self.hub.publish(Some(&device.id), "plan.created", data).await?;
        Ok(record)
    }

    /// Starts plan `id` as an update attempt. `confirm_air_bytes` must equal the plan's
    /// estimate when the device is cellular, unless `origin` is an automatic heal that the
    /// device's policy allows.
    pub async fn start(
        &self,
        id: i64,
        confirm_air_bytes: Option<u64>,
        origin: Origin,
    ) -> Result<(PlanRecord, AttemptRecord), PlanError> {
        let mut plan = self.store.get_plan(id).await?.ok_or_else(|| PlanError::NotFound(format!("no plan {id}")))?;
        if plan.status != "proposed" {
            let detail = plan.attempt.map(|a| format!(" (attempt {a})")).unwrap_or_default();
            return Err(conflict("plan_not_proposed", format!("plan {id} is already {}{detail}", plan.status)));
        }
        let device = self
            .store
            .get_device(&plan.device)
            .await?
            .ok_or_else(|| PlanError::NotFound(format!("no device {}", plan.device)))?;
        let needs_confirmation = match origin {
            Origin::Operator => plan.confirm_required || device.policy.confirms_cost(),
            Origin::Heal => !device.policy.heals_automatically(),
        };
        if needs_confirmation && confirm_air_bytes != Some(plan.air_bytes) {
            return Err(conflict(
                "confirmation_required",
                format!(
                    "device {} is {}: confirm the {} bytes on the air of plan {id} (confirm_air_bytes)",
                    device.id,
                    device.policy.connectivity.name(),
                    plan.air_bytes
                ),
            ));
        }
        let current = device.inventory.as_ref().map(inventory_key).unwrap_or_default();
        if current != plan.inventory_key {
            return Err(conflict(
                "stale_plan",
                format!("device {} has changed since plan {id} was made: make a new plan", device.id),
            ));
        }
        if let Some(busy) = self.store.device_attempts(&device.id, 1).await?.into_iter().find(|a| !a.finished) {
            return Err(conflict(
                "attempt_in_progress",
                format!("attempt {} for device {} is still {}", busy.id, device.id, busy.state),
            ));
        }
        let mut signed = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let statement = self.store.get_module(&step.sha256).await?.and_then(|m| m.statement);
            signed.push(statement.ok_or_else(|| {
                rejected("unsigned_module", format!("module {} lost its signed statement", step.sha256))
            })?);
        }
        // Claim the plan before creating the attempt, so two starts cannot both succeed.
        if !self.store.transition_plan(id, "proposed", "started", None).await? {
            return Err(conflict("plan_not_proposed", format!("plan {id} was started by another request")));
        }
        let mut record =
            AttemptRecord::queued(&device.id, plan.steps.clone(), Some(id), signed, plan.air_bytes, now_millis());
        record.id = self.store.create_attempt(&record).await?;
        self.store.transition_plan(id, "started", "started", Some(record.id)).await?;
        // Whatever else was proposed for the device was made for what it runs now, which
        // this attempt changes: those plans can no longer start.
        self.store.supersede_plans(&device.id, id).await?;
        plan.status = "started".to_owned();
        plan.attempt = Some(record.id);
        let data = json!({
            "attempt": record.id,
            "plan": id,
            "origin": origin.name(),
            "modules": record.plan.len(),
            "air_bytes": record.air_bytes,
        });
        self.hub.publish(Some(&device.id), "attempt.created", data).await?;
        self.updates.send(UpdateInput::Start(record.clone())).await;
        Ok((plan, record))
    }

    /// Starts the heal plan proposed for device `id`'s current inventory, if there is one
    /// (called when its policy starts allowing automatic heals); `None` when there is none.
    pub async fn start_proposed_heal(&self, id: &str) -> Result<Option<AttemptRecord>, PlanError> {
        let Some(device) = self.store.get_device(id).await? else { return Ok(None) };
        let Some(inventory) = &device.inventory else { return Ok(None) };
        let key = inventory_key(inventory);
        let plans = self.store.device_plans(id, 20).await?;
        let proposed =
            plans.iter().find(|p| p.origin == Origin::Heal.name() && p.status == "proposed" && p.inventory_key == key);
        match proposed {
            Some(plan) => Ok(Some(self.start(plan.id, None, Origin::Heal).await?.1)),
            None => Ok(None),
        }
    }

    /// Called with every Describe: a device in safe mode because of an unmet dependency
    /// gets a heal plan, started at once if its policy allows, else left proposed for an
    /// operator. A heal that is proposed or did not work is not made again for the same
    /// described modules.
    pub async fn on_describe(&self, device_id: &str, inventory: &Inventory) -> Result<(), PlanError> {
        let unmet = inventory.safe_mode.as_deref() == Some(tern_proto::SafeModeCause::UnmetDependency.name());
        if inventory.boot_reason != tern_proto::BootReason::SafeMode.name() || !unmet {
            return Ok(());
        }
        let Some(device) = self.store.get_device(device_id).await? else { return Ok(()) };
        if self.store.device_attempts(device_id, 1).await?.iter().any(|a| !a.finished) {
            return Ok(());
        }
        // One heal per broken state: a heal waiting for an operator, in flight, or that
        // did not work is not made again for the same modules (no loop of failing heals);
        // a device that returns to a state a heal once fixed is healed again.
        let key = inventory_key(inventory);
        for earlier in self.store.device_plans(device_id, 20).await? {
            if earlier.origin != Origin::Heal.name() || earlier.inventory_key != key {
                continue;
            }
            let worked = match earlier.attempt {
                Some(attempt) => self.store.get_attempt(attempt).await?.is_some_and(|a| a.state == "confirmed"),
                None => false,
            };
            if !worked {
                return Ok(());
            }
        }
        let plan = match self.build(&device, &[], Origin::Heal).await {
            Ok(plan) => plan,
            Err(PlanError::Rejected { code, message }) => {
                let data = json!({ "code": code, "message": message });
                self.hub.publish(Some(device_id), "heal.impossible", data).await?;
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if device.policy.heals_automatically() {
            self.start(plan.id, None, Origin::Heal).await?;
        } else {
            let data = json!({
                "plan": plan.id,
                "air_bytes": plan.air_bytes,
                "message": format!(
                    "device {device_id} is in safe mode; its {} policy does not heal automatically: \
                     review plan {} and send it with `tern flash {device_id} --heal`",
                    device.policy.connectivity.name(),
                    plan.id
                ),
            });
            self.hub.publish(Some(device_id), "heal.proposed", data).await?;
        }
        Ok(())
    }
}
