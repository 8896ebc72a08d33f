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
use crate::patches::Patches;
use crate::store::{
    AttemptRecord, AttemptStatus, DeviceRecord, Inventory, ModuleRecord, PatchRef, PlanOrigin, PlanRecord, PlanStatus,
    PlannedModule, StageRecord, Store, StoreError,
};
use crate::updates::{estimate_air_bytes, AirTerms, UpdateInput, Updates};

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

/// Makes and starts plans; cheap to clone.
#[derive(Clone)]
pub struct Planner {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    hub: EventHub,
    updates: Updates,
    transfer: TransferConfig,
    patches: Patches,
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
        security_counter: module.security_counter,
    })
}

/// What an operator asks of a plan besides modules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Bring the device to this Device OS release ("2.3.1", or a system module version).
    pub device_os: Option<String>,
    /// Allow Device OS modules older than the installed ones.
    pub allow_downgrade: bool,
}

/// The machine-readable code of a planning error.
fn plan_error_code(err: &tern_plan::Error) -> &'static str {
    match err {
        tern_plan::Error::WrongPlatform { .. } => "wrong_platform",
        tern_plan::Error::SameSlotTwice(_) => "same_slot_twice",
        tern_plan::Error::Unsatisfiable { .. } => "unsatisfiable",
        tern_plan::Error::Conflict { .. } => "conflict",
        tern_plan::Error::Downgrade { .. } => "downgrade",
        tern_plan::Error::BelowSecurityCounter { .. } => "below_security_counter",
        tern_plan::Error::IncompleteRelease { .. } => "incomplete_release",
        tern_plan::Error::TooLarge { .. } => "does_not_fit",
        tern_plan::Error::NoSafeStages { .. } => "does_not_fit",
    }
}

/// A planning error as the API's refusal: its code, and the device it is about.
fn no_plan(device: &DeviceRecord, err: &tern_plan::Error) -> PlanError {
    rejected(plan_error_code(err), format!("no plan for device {}: {err}", device.id))
}

/// What the device runs after a stage, for the plan record.
fn expect_record(expect: &tern_plan::Expect) -> (String, Option<String>) {
    match expect {
        tern_plan::Expect::Normal => ("normal".to_owned(), None),
        tern_plan::Expect::SafeMode(dep) => {
            let slot = Slot { function: dep.function, index: dep.index };
            (
                "safe_mode".to_owned(),
                Some(format!("the application needs {slot} >= v{} until a later stage", dep.version)),
            )
        }
    }
}

/// A module's name for messages: `system part 1 v3000 (1a2b3c4d)`.
fn describe(module: &ModuleRecord) -> String {
    let slot = Slot { function: ModuleFunction::from_code(module.function), index: module.index };
    format!("{slot} v{} ({})", module.version, &module.sha256[..8.min(module.sha256.len())])
}

fn reason_text(reason: &Reason) -> String {
    match reason {
        Reason::Requested => "requested".to_owned(),
        Reason::SameRelease { version } => {
            format!("same Device OS release: {}", tern_plan::device_os::label(*version))
        }
        Reason::Target { version } => format!("Device OS {} asked for", tern_plan::device_os::label(*version)),
        Reason::Dependency { needed_by: (slot, version), requirement } => {
            let needed = Slot { function: requirement.function, index: requirement.index };
            format!("needed by {slot} v{version}: {needed} >= v{}", requirement.version)
        }
    }
}

/// Sizes of the signed documents a plan's offers carry.
enum SignedSizes {
    /// One statement per module, in plan order.
    PerModule(Vec<usize>),
    /// One release manifest, carried by every stage.
    One(usize),
}

/// The device's last Describe, or why there is none.
fn described(device: &DeviceRecord) -> Result<&Inventory, PlanError> {
    device.inventory.as_ref().ok_or_else(|| {
        rejected(
            "not_described",
            format!("device {} has not described itself yet: the server does not know what it runs", device.id),
        )
    })
}

fn check_platform(device: &DeviceRecord, module: &ModuleRecord) -> Result<(), PlanError> {
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
    Ok(())
}

/// What the device runs, for the planner: each described module with what it needs (from
/// the catalog when it knows these exact bytes, else the unmet dependency the device
/// reported for it).
fn installed(inventory: &Inventory, by_hash: &HashMap<&str, &ModuleRecord>) -> Vec<Installed> {
    inventory
        .modules
        .iter()
        .map(|m| {
            let slot = Slot { function: ModuleFunction::from_code(m.function), index: m.index };
            let dependencies = match by_hash.get(m.sha256.as_str()) {
                Some(known) => known.dependencies.iter().map(dependency).collect(),
                None if !m.dependencies_met => inventory.unmet.iter().map(dependency).collect(),
                None => Vec::new(),
            };
            let mut sha256 = [0u8; 32];
            let sha256 = hex::decode_to_slice(&m.sha256, &mut sha256).ok().map(|()| sha256);
            Installed { slot, version: m.version, dependencies, sha256 }
        })
        .collect()
}

/// The planner's options for `device`: the operator's, and the device's security counter.
fn plan_options(inventory: &Inventory, options: &PlanOptions) -> Result<tern_plan::Options, PlanError> {
    let device_os = match &options.device_os {
        Some(target) => Some(tern_plan::device_os::parse_target(target).map_err(|e| rejected("unknown_release", e))?),
        None => None,
    };
    Ok(tern_plan::Options {
        device_os,
        allow_downgrade: options.allow_downgrade,
        security_counter: inventory.security_counter.unwrap_or(0),
    })
}

/// A proposed plan for `device` with nothing in it yet.
fn empty_record(device: &DeviceRecord, inventory: &Inventory, origin: PlanOrigin) -> PlanRecord {
    PlanRecord {
        id: 0,
        device: device.id.clone(),
        platform_id: device.platform_id,
        origin,
        status: PlanStatus::Proposed,
        requested: Vec::new(),
        steps: Vec::new(),
        stages: Vec::new(),
        manifest: None,
        bytes_total: 0,
        air_bytes: 0,
        air_bytes_full: 0,
        inventory_key: inventory_key(inventory),
        connectivity: device.policy.connectivity,
        confirm_required: device.policy.confirms_cost(),
        attempt: None,
        created_at: now_millis(),
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
        let patches = Patches::new(store.clone(), blobs.clone());
        Planner { store, blobs, hub, updates, transfer, patches }
    }

    /// Computes and stores a plan installing `requested` (catalog SHA-256s; empty: heal
    /// only, or the Device OS release `options` names) on `device`, as it last described
    /// itself.
    pub async fn build(
        &self,
        device: &DeviceRecord,
        requested: &[String],
        origin: PlanOrigin,
        options: &PlanOptions,
    ) -> Result<PlanRecord, PlanError> {
        let inventory = described(device)?;
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
            check_platform(device, module)?;
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
        if !requested.is_empty() && wanted.is_empty() && options.device_os.is_none() {
            return Err(rejected(
                "already_installed",
                format!("device {} already runs {}", device.id, already.join(", ")),
            ));
        }
        // Only signed modules of the device's platform can heal it.
        let catalog: Vec<Candidate> = modules
            .iter()
            .filter(|m| m.platform_id == device.platform_id && m.statement.is_some())
            .filter_map(candidate)
            .collect();
        let plan_options = plan_options(inventory, options)?;
        let installed = installed(inventory, &by_hash);
        let plan = tern_plan::plan_with(device.platform_id, &installed, &wanted, &catalog, &plan_options)
            .map_err(|err| no_plan(device, &err))?;
        if plan.steps.is_empty() {
            let (code, message) = match &options.device_os {
                Some(target) => ("already_installed", format!("device {} already runs Device OS {target}", device.id)),
                None if !already.is_empty() => {
                    ("already_installed", format!("device {} already runs {}", device.id, already.join(", ")))
                }
                None => (
                    "nothing_to_do",
                    format!("device {} needs nothing: every dependency of its modules is met", device.id),
                ),
            };
            return Err(rejected(code, message));
        }
        let mut statements = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let sha256 = hex::encode(step.module.sha256);
            let module =
                by_hash.get(sha256.as_str()).ok_or_else(|| rejected("bad_module", "planned module vanished"))?;
            let statement = module.statement.as_deref().unwrap_or_default();
            statements.push(self.blobs.get(statement).await?.map_or(0, |doc| doc.len()));
        }
        let record = PlanRecord {
            requested: requested.iter().map(|h| h.to_ascii_lowercase()).collect(),
            ..empty_record(device, inventory, origin)
        };
        let place = |module: &Candidate| {
            by_hash.get(hex::encode(module.sha256).as_str()).map(|m| (m.start_address, m.function_name.clone()))
        };
        self.finish(device, inventory, &installed, plan, place, SignedSizes::PerModule(statements), record).await
    }

    /// Computes and stores a plan sending a signed release bundle to `device`: only the
    /// modules it does not already run, staged to fit it. The bundle's modules enter the
    /// catalog; its manifest is the signed document of every stage. A device that never
    /// described itself (factory-fresh) gets the whole release in one offer.
    pub async fn build_from_bundle(&self, device: &DeviceRecord, body: &[u8]) -> Result<PlanRecord, PlanError> {
        let unknown = Inventory {
            described_at: 0,
            platform_id: device.platform_id,
            boot_reason: "unknown".to_owned(),
            safe_mode: None,
            unmet: None,
            confirmed: false,
            modules: Vec::new(),
            last_result: None,
            capacity: None,
            security_counter: None,
        };
        let inventory = device.inventory.as_ref().unwrap_or(&unknown);
        let bundle = tern_image::bundle::Bundle::parse(body).map_err(|e| rejected("bad_bundle", e.to_string()))?;
        // The server does not hold the signing keys: the device verifies the signature.
        // The server checks everything it can without them, so that it never offers a
        // bundle that is broken on its face.
        let manifest = bundle.unverified_manifest().map_err(|e| rejected("bad_bundle", e.to_string()))?;
        if manifest.kind != tern_image::manifest::Kind::Release {
            return Err(rejected("bad_bundle", "the bundle's signed document is not a release manifest"));
        }
        bundle.check_modules(&manifest).map_err(|e| rejected("bad_bundle", e.to_string()))?;
        if manifest.platform_id != device.platform_id {
            return Err(rejected(
                "wrong_platform",
                format!(
                    "the release is for platform {}, device {} is platform {}",
                    manifest.platform_id, device.id, device.platform_id
                ),
            ));
        }
        let plan_options = plan_options(inventory, &PlanOptions::default())?;
        if manifest.security_counter < plan_options.security_counter {
            return Err(rejected(
                "below_security_counter",
                format!(
                    "the release is signed with security counter {}, below device {}'s {}: the device would refuse it",
                    manifest.security_counter, device.id, plan_options.security_counter
                ),
            ));
        }
        let signed = self.blobs.put(bundle.signed_manifest).await?;
        let total: usize = manifest.modules().map(|m| m.size as usize).sum();
        let modules_area = &body[body.len() - total..];
        let mut offset = 0usize;
        let mut steps = Vec::new();
        let mut places = HashMap::new();
        for entry in manifest.modules() {
            let bytes = &modules_area[offset..offset + entry.size as usize];
            offset += entry.size as usize;
            let sha256 = self.blobs.put(bytes).await?;
            // Modules Tern can read also enter the catalog.
            if let Some(info) = tern_image::inspect(bytes).info {
                let record = crate::api::module_record(sha256.clone(), None, &info);
                let mut change = self.hub.begin().await?;
                if change.put_module(&record).await? {
                    let data = serde_json::to_value(&record).unwrap_or_default();
                    change.publish(None, "module.uploaded", data).await?;
                    change.commit().await?;
                }
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&sha256, &mut hash).map_err(|_| rejected("bad_module", "blob address is not hex"))?;
            places.insert(hash, (entry.start_address, entry.function.name().to_owned()));
            let candidate = Candidate {
                sha256: hash,
                platform_id: manifest.platform_id,
                slot: Slot { function: entry.function, index: entry.index },
                version: entry.version,
                size: u64::from(entry.size),
                dependencies: entry.dependencies.iter().flatten().copied().collect(),
                security_counter: manifest.security_counter,
            };
            steps.push(tern_plan::Step { module: candidate, reason: Reason::Requested });
        }
        let modules = self.store.list_modules().await?;
        let by_hash: HashMap<&str, &ModuleRecord> = modules.iter().map(|m| (m.sha256.as_str(), m)).collect();
        let installed = installed(inventory, &by_hash);
        // Only what the device does not run already, byte for byte.
        let runs = |step: &tern_plan::Step| installed.iter().any(|i| i.sha256 == Some(step.module.sha256));
        let already: Vec<String> =
            steps.iter().filter(|s| runs(s)).map(|s| format!("{} v{}", s.module.slot, s.module.version)).collect();
        steps.retain(|s| !runs(s));
        if steps.is_empty() {
            return Err(rejected(
                "already_installed",
                format!("device {} already runs every module of the release ({})", device.id, already.join(", ")),
            ));
        }
        for step in &steps {
            tern_plan::check_module(&step.module, &installed, &plan_options).map_err(|err| no_plan(device, &err))?;
        }
        let mut plan = tern_plan::Plan { steps };
        tern_plan::install_order_by(&installed, &mut plan.steps, |s| {
            (s.module.slot, s.module.version, &s.module.dependencies[..])
        });
        let mut record = PlanRecord { manifest: Some(signed), ..empty_record(device, inventory, PlanOrigin::Operator) };
        if device.inventory.is_none() {
            // What `start` compares against for a device that has not described itself.
            record.inventory_key = String::new();
        }
        let size = bundle.signed_manifest.len();
        let place = |m: &Candidate| places.get(&m.sha256).cloned();
        self.finish(device, inventory, &installed, plan, place, SignedSizes::One(size), record).await
    }

    /// Splits `plan` into stages that fit the device, fills `record` with its steps,
    /// stages and estimates, stores it and announces it.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        device: &DeviceRecord,
        inventory: &Inventory,
        installed: &[Installed],
        mut plan: tern_plan::Plan,
        place: impl Fn(&Candidate) -> Option<(u32, String)>,
        signed: SignedSizes,
        mut record: PlanRecord,
    ) -> Result<PlanRecord, PlanError> {
        // Signed-document sizes follow the modules through the reordering stages make.
        let mut sizes: HashMap<[u8; 32], usize> = HashMap::new();
        if let SignedSizes::PerModule(per) = &signed {
            for (step, size) in plan.steps.iter().zip(per) {
                sizes.insert(step.module.sha256, *size);
            }
        }
        let capacity = match inventory.capacity {
            Some(c) => tern_plan::Capacity {
                staging_bytes: u64::from(c.staging_bytes),
                max_modules: usize::from(c.max_modules).min(tern_proto::MAX_MODULES),
                block_size: u64::from(c.block_size),
            },
            // A device that does not say what it can hold gets one offer; it refuses
            // what does not fit (`too_large`).
            None => {
                tern_plan::Capacity { staging_bytes: u64::MAX, max_modules: tern_proto::MAX_MODULES, block_size: 1 }
            }
        };
        let stages = tern_plan::stages(&mut plan, installed, &capacity).map_err(|err| no_plan(device, &err))?;
        let mut steps = Vec::with_capacity(plan.steps.len());
        for (index, step) in plan.steps.iter().enumerate() {
            let stage = stages.iter().position(|s| s.steps.contains(&index)).unwrap_or(0);
            let (start_address, function_name) =
                place(&step.module).unwrap_or((0, step.module.slot.function.name().to_owned()));
            steps.push(PlannedModule {
                sha256: hex::encode(step.module.sha256),
                function: step.module.slot.function.code(),
                function_name,
                index: step.module.slot.index,
                version: step.module.version,
                size: u32::try_from(step.module.size).unwrap_or(u32::MAX),
                start_address,
                reason: Some(reason_text(&step.reason)),
                stage: u32::try_from(stage).unwrap_or(0),
                security_counter: step.module.security_counter,
                patch: None,
                patch_dropped: None,
            });
        }
        self.choose_patches(device, inventory, &mut steps).await?;
        let terms = AirTerms::for_device(&self.transfer, inventory.capacity.as_ref(), inventory.modules.len());
        let mut stage_records = Vec::with_capacity(stages.len());
        for (k, stage) in stages.iter().enumerate() {
            let modules: Vec<PlannedModule> = steps.iter().filter(|m| m.stage as usize == k).cloned().collect();
            let signed_len = match &signed {
                SignedSizes::One(size) => *size,
                SignedSizes::PerModule(_) => {
                    stage.steps.iter().map(|&i| sizes.get(&plan.steps[i].module.sha256).copied().unwrap_or(0)).sum()
                }
            };
            let (expect, expect_detail) = expect_record(&stage.expect);
            let whole: Vec<PlannedModule> =
                modules.iter().map(|m| PlannedModule { patch: None, ..m.clone() }).collect();
            let k = u32::try_from(k).unwrap_or(u32::MAX);
            stage_records.push(StageRecord {
                bytes: stage.bytes,
                air_bytes: estimate_air_bytes(&device.id, &modules, signed_len, k, &terms),
                air_bytes_full: estimate_air_bytes(&device.id, &whole, signed_len, k, &terms),
                max_block: terms.max_block,
                max_request: terms.max_request.unwrap_or(0),
                expect,
                expect_detail,
            });
        }
        record.bytes_total = steps.iter().map(|m| u64::from(m.size)).sum();
        record.air_bytes = stage_records.iter().map(|s| s.air_bytes).sum();
        record.air_bytes_full = stage_records.iter().map(|s| s.air_bytes_full).sum();
        record.steps = steps;
        record.stages = stage_records;
        let mut change = self.hub.begin().await?;
        record.id = change.create_plan(&record).await?;
        let data = json!({
            "plan": record.id,
            "origin": record.origin,
            "modules": record.steps.len(),
            "stages": record.stages.len(),
            "heals": record.steps.iter().any(|s| s.reason.as_deref() != Some("requested")),
            "air_bytes": record.air_bytes,
            "air_bytes_full": record.air_bytes_full,
            "patches": record.steps.iter().filter(|s| s.patch.is_some()).count(),
        });
        change.publish(Some(&device.id), "plan.created", data).await?;
        change.commit().await?;
        Ok(record)
    }

    /// Gives each planned module the smallest way to travel to a device that applies
    /// patches: a delta from the module it runs in that slot, the module compressed, or
    /// the module itself; then drops patches (largest first) from any stage whose modules
    /// and patches together would not fit the device's staging area. A device whose last
    /// attempt could not use a patch gets whole modules. A patch that cannot be made is
    /// logged and the module sent whole.
    async fn choose_patches(
        &self,
        device: &DeviceRecord,
        inventory: &Inventory,
        steps: &mut [PlannedModule],
    ) -> Result<(), PlanError> {
        let Some(capacity) = inventory.capacity.as_ref().filter(|c| c.patches) else { return Ok(()) };
        if let Some(last) = self.store.device_attempts(&device.id, 1).await?.first() {
            if matches!(last.reason.as_deref(), Some("delta_source" | "delta_failed")) {
                return Ok(());
            }
        }
        for step in steps.iter_mut() {
            let source = inventory
                .modules
                .iter()
                .find(|m| m.function == step.function && m.index == step.index)
                .map(|m| m.sha256.clone());
            let mut best: Option<PatchRef> = None;
            for from in [source.as_deref(), None] {
                match self.patches.get_or_make(from, &step.sha256, step.start_address).await {
                    Ok(Some(p)) if p.length < best.as_ref().map_or(step.size, |b| b.length) => {
                        best = Some(PatchRef {
                            source: (!p.source.is_empty()).then(|| p.source.clone()),
                            address: p.address,
                            length: p.length,
                        });
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(module = step.sha256, "no patch: {err}"),
                }
                if source.is_none() {
                    break;
                }
            }
            step.patch = best;
        }
        let unit = u64::from(capacity.block_size.max(1));
        let staged = |n: u32| u64::from(n).div_ceil(unit) * unit;
        let stages = steps.iter().map(|s| s.stage + 1).max().unwrap_or(0);
        for k in 0..stages {
            loop {
                let total: u64 = steps
                    .iter()
                    .filter(|s| s.stage == k)
                    .map(|s| staged(s.size) + s.patch.as_ref().map_or(0, |p| staged(p.length)))
                    .sum();
                if total <= u64::from(capacity.staging_bytes) {
                    break;
                }
                let largest = steps
                    .iter_mut()
                    .filter(|s| s.stage == k && s.patch.is_some())
                    .max_by_key(|s| s.patch.as_ref().map_or(0, |p| p.length));
                match largest {
                    Some(step) => step.patch = None,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Starts plan `id` as an update attempt. `confirm_air_bytes` must equal the plan's
    /// estimate when the device is cellular, unless `origin` is an automatic heal that the
    /// device's policy allows.
    pub async fn start(
        &self,
        id: i64,
        confirm_air_bytes: Option<u64>,
        origin: PlanOrigin,
    ) -> Result<(PlanRecord, AttemptRecord), PlanError> {
        let mut plan = self.store.get_plan(id).await?.ok_or_else(|| PlanError::NotFound(format!("no plan {id}")))?;
        if plan.status != PlanStatus::Proposed {
            let detail = plan.attempt.map(|a| format!(" (attempt {a})")).unwrap_or_default();
            return Err(conflict("plan_not_proposed", format!("plan {id} is already {}{detail}", plan.status)));
        }
        let device = self
            .store
            .get_device(&plan.device)
            .await?
            .ok_or_else(|| PlanError::NotFound(format!("no device {}", plan.device)))?;
        let needs_confirmation = match origin {
            PlanOrigin::Operator => plan.confirm_required || device.policy.confirms_cost(),
            PlanOrigin::Heal => !device.policy.heals_automatically(),
            // The operator approved the rollout's projected bytes when starting it; each
            // device's share is held to its data budget by the rollout instead.
            PlanOrigin::Rollout => false,
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
        if let Some(manifest) = &plan.manifest {
            signed.push(manifest.clone());
        } else {
            for step in &plan.steps {
                let statement = self.store.get_module(&step.sha256).await?.and_then(|m| m.statement);
                signed.push(statement.ok_or_else(|| {
                    rejected("unsigned_module", format!("module {} lost its signed statement", step.sha256))
                })?);
            }
        }
        // The plan's claim, its attempt and their event in one transaction: two starts
        // cannot both succeed, and a crash leaves either all of it or none.
        let mut change = self.hub.begin().await?;
        if !change.transition_plan(id, PlanStatus::Proposed, PlanStatus::Started, None).await? {
            return Err(conflict("plan_not_proposed", format!("plan {id} was started by another request")));
        }
        let mut record =
            AttemptRecord::queued(&device.id, plan.steps.clone(), Some(id), signed, plan.air_bytes, now_millis());
        record.stages = plan.stages.clone();
        // The database holds at most one unfinished attempt per device: a conflict means
        // another start won the race (dropping the change un-claims the plan, which can
        // be started once that attempt ends).
        record.id = change.create_attempt(&record).await.map_err(|err| match err {
            StoreError::Conflict(what) => conflict("attempt_in_progress", format!("{what} exists")),
            other => other.into(),
        })?;
        change.transition_plan(id, PlanStatus::Started, PlanStatus::Started, Some(record.id)).await?;
        // Whatever else was proposed for the device was made for what it runs now, which
        // this attempt changes: those plans can no longer start.
        change.supersede_plans(&device.id, id).await?;
        plan.status = PlanStatus::Started;
        plan.attempt = Some(record.id);
        let data = json!({
            "attempt": record.id,
            "plan": id,
            "origin": origin.name(),
            "modules": record.plan.len(),
            "stages": record.stages.len().max(1),
            "air_bytes": record.air_bytes,
        });
        change.publish(Some(&device.id), "attempt.created", data).await?;
        change.commit().await?;
        self.updates.send(UpdateInput::Start(Box::new(record.clone()))).await;
        Ok((plan, record))
    }

    /// Starts the heal plan proposed for device `id`'s current inventory, if there is one
    /// (called when its policy starts allowing automatic heals); `None` when there is none.
    pub async fn start_proposed_heal(&self, id: &str) -> Result<Option<AttemptRecord>, PlanError> {
        let Some(device) = self.store.get_device(id).await? else { return Ok(None) };
        let Some(inventory) = &device.inventory else { return Ok(None) };
        let key = inventory_key(inventory);
        let plans = self.store.device_plans(id, 20).await?;
        let proposed = plans
            .iter()
            .find(|p| p.origin == PlanOrigin::Heal && p.status == PlanStatus::Proposed && p.inventory_key == key);
        match proposed {
            Some(plan) => Ok(Some(self.start(plan.id, None, PlanOrigin::Heal).await?.1)),
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
            if earlier.origin != PlanOrigin::Heal || earlier.inventory_key != key {
                continue;
            }
            let worked = match earlier.attempt {
                Some(attempt) => {
                    self.store.get_attempt(attempt).await?.is_some_and(|a| a.state == AttemptStatus::Confirmed)
                }
                None => false,
            };
            if !worked {
                return Ok(());
            }
        }
        let plan = match self.build(&device, &[], PlanOrigin::Heal, &PlanOptions::default()).await {
            Ok(plan) => plan,
            Err(PlanError::Rejected { code, message }) => {
                let data = json!({ "code": code, "message": message });
                self.hub.publish(Some(device_id), "heal.impossible", data).await?;
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if device.policy.heals_automatically() {
            self.start(plan.id, None, PlanOrigin::Heal).await?;
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
