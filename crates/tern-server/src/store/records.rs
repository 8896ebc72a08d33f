//! The records the store keeps: plain data, serialisable as the API shows them.

use serde::{Deserialize, Serialize};

/// An operator API token, as stored (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A label chosen when the token was created.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// What the token may do: `viewer`, `operator` or `admin` (see [`crate::auth::Role`]).
    pub role: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// When it stops working, Unix milliseconds; `None`: never.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it was revoked, Unix milliseconds; a revoked token never works again.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// A dependency as stored and shown in the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyRecord {
    /// Numeric module function (Device OS numbering).
    pub function: u8,
    /// Function name (`system_part`, `user_part`, …).
    pub function_name: String,
    /// Module index.
    pub index: u8,
    /// Minimum version.
    pub version: u32,
}

impl From<&tern_image::Dependency> for DependencyRecord {
    fn from(dep: &tern_image::Dependency) -> Self {
        DependencyRecord {
            function: dep.function.code(),
            function_name: dep.function.name().to_owned(),
            index: dep.index,
            version: dep.version,
        }
    }
}

/// One module in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// SHA-256 of the uploaded file, hex: its address in the blob store.
    pub sha256: String,
    /// The file name given at upload, if any.
    pub filename: Option<String>,
    /// `particle`, `mcuboot` or `raw`.
    pub format: String,
    /// Platform id.
    pub platform_id: u16,
    /// Numeric module function.
    pub function: u8,
    /// Function name.
    pub function_name: String,
    /// Module index.
    pub index: u8,
    /// Module version.
    pub version: u32,
    /// File size in bytes.
    pub size: u32,
    /// The SHA-256 the module itself carries (Particle suffix, MCUboot TLV), hex.
    pub module_sha256: Option<String>,
    /// `valid`, `invalid` or `unchecked`.
    pub integrity: String,
    /// Declared dependencies.
    pub dependencies: Vec<DependencyRecord>,
    /// Load address of the first byte.
    pub start_address: u32,
    /// Upload time, Unix milliseconds.
    pub uploaded_at: i64,
    /// Blob address of the module's signed statement; a module without one cannot be
    /// offered to devices.
    #[serde(default)]
    pub statement: Option<String>,
    /// The security counter its signed statement carries (0 without one): a device whose
    /// counter is higher refuses it.
    #[serde(default)]
    pub security_counter: u64,
}

/// One module as a device described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledModuleRecord {
    /// Numeric module function.
    pub function: u8,
    /// Function name.
    pub function_name: String,
    /// Module index.
    pub index: u8,
    /// Module version.
    pub version: u32,
    /// SHA-256 as installed, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u32,
    /// `valid`, `invalid` or `unchecked`.
    pub integrity: String,
    /// Whether its dependencies are met on the device.
    pub dependencies_met: bool,
}

/// How an update attempt ended, as a device reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// Attempt id.
    pub attempt: u64,
    /// The stage of that attempt the result is about (absent for the first stage).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stage: u32,
    /// `confirmed`, `failed`, `rolled_back`, `cancelled`.
    pub outcome: String,
    /// Reason name (`none`, `rejected_signature`, …).
    pub reason: String,
    /// Numeric reason code, kept for codes this server does not name.
    pub reason_code: u16,
    /// Position in the offer of the module concerned.
    pub module: Option<u8>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// What a device last said about itself (its last Describe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// When the Describe arrived, Unix milliseconds.
    pub described_at: i64,
    /// Platform id the device reported.
    pub platform_id: u16,
    /// `normal`, `test_boot`, `rollback`, `safe_mode`, `factory_restore`.
    pub boot_reason: String,
    /// Why it is in safe mode, when it is.
    pub safe_mode: Option<String>,
    /// The first unmet dependency it reported.
    pub unmet: Option<DependencyRecord>,
    /// Whether the running modules are confirmed.
    pub confirmed: bool,
    /// The installed modules.
    pub modules: Vec<InstalledModuleRecord>,
    /// The last update result it remembers.
    pub last_result: Option<ResultRecord>,
    /// What one offer can stage on it (absent from devices that do not say).
    #[serde(default)]
    pub capacity: Option<CapacityRecord>,
    /// Its security counter: offers signed with a lower one are refused.
    #[serde(default)]
    pub security_counter: Option<u64>,
}

/// What one offer can carry on a device, as it described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityRecord {
    /// The most module bytes one offer may stage (each module rounded up to `block_size`).
    pub staging_bytes: u32,
    /// The most modules one offer may list.
    pub max_modules: u8,
    /// The unit module sizes are rounded up to.
    pub block_size: u32,
    /// Whether the device applies patches (deltas and compressed images).
    #[serde(default)]
    pub patches: bool,
    /// The most data bytes one block message may carry on its link (absent: the device
    /// does not say, and gets 1 KiB blocks, one per request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_block: Option<u32>,
    /// Whether it uses the compact topics (`t/{device}/{u|d}/{code}`).
    #[serde(default)]
    pub compact_topics: bool,
}

/// A device to register.
#[derive(Clone, Debug)]
pub struct NewDevice {
    /// Device id (validated by the caller).
    pub id: String,
    /// Platform id.
    pub platform_id: u16,
    /// SHA-256 of the device secret, hex.
    pub secret_hash: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Its update policy.
    pub policy: Policy,
}

/// How a device reaches the server, which decides what updates cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    /// Wi-Fi: bytes are cheap.
    Wifi,
    /// Ethernet: bytes are cheap.
    Ethernet,
    /// Cellular: every byte is paid for; the operator confirms the cost of each plan.
    Cellular,
}

impl Connectivity {
    /// Every connectivity, for error messages.
    pub const ALL: [Connectivity; 3] = [Connectivity::Wifi, Connectivity::Ethernet, Connectivity::Cellular];

    /// The name used in JSON and the database.
    pub fn name(self) -> &'static str {
        match self {
            Connectivity::Wifi => "wifi",
            Connectivity::Ethernet => "ethernet",
            Connectivity::Cellular => "cellular",
        }
    }

    /// Parses [`Connectivity::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether devices with this connectivity heal automatically unless told otherwise.
    pub fn auto_heal_default(self) -> bool {
        self != Connectivity::Cellular
    }
}

/// A device's update policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How it reaches the server.
    pub connectivity: Connectivity,
    /// Whether the server heals it without asking; `None` follows the connectivity's
    /// default (on for Wi-Fi and Ethernet, off for cellular).
    pub auto_heal: Option<bool>,
}

impl Policy {
    /// Whether the server may send a heal plan without an operator.
    pub fn heals_automatically(&self) -> bool {
        self.auto_heal.unwrap_or(self.connectivity.auto_heal_default())
    }

    /// Whether an operator must confirm the bytes on the air before a plan is sent.
    pub fn confirms_cost(&self) -> bool {
        self.connectivity == Connectivity::Cellular
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy { connectivity: Connectivity::Wifi, auto_heal: None }
    }
}

/// Declares a string-named state enum: the names are what the database, the JSON and the
/// CLI show; the code sees only the variants.
macro_rules! named_states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable name (database, JSON, CLI).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses a stable name.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|s| s.name() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_states! {
    /// Where an update attempt stands.
    AttemptStatus {
        /// Stored, not offered yet.
        Queued => "queued",
        /// Offered to the device.
        Offered => "offered",
        /// The device is pulling blocks.
        Downloading => "downloading",
        /// The device verifies what it received.
        Verifying => "verifying",
        /// Everything is staged.
        Staged => "staged",
        /// The device reboots to install.
        Rebooting => "rebooting",
        /// The device described itself running the plan (final).
        Confirmed => "confirmed",
        /// Failed, with a reason (final).
        Failed => "failed",
        /// Installed, failed its test boot, rolled back (final).
        RolledBack => "rolled_back",
        /// No progress within the give-up time (final).
        TimedOut => "timed_out",
        /// Cancelled by an operator (final).
        Cancelled => "cancelled",
    }
}

impl AttemptStatus {
    /// Whether the state is final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            AttemptStatus::Confirmed
                | AttemptStatus::Failed
                | AttemptStatus::RolledBack
                | AttemptStatus::TimedOut
                | AttemptStatus::Cancelled
        )
    }
}

impl AttemptStatus {
    /// The stored form of the protocol state machine's state (its reason is stored apart).
    pub fn of(state: tern_proto::attempt::AttemptState) -> Self {
        use tern_proto::attempt::AttemptState as S;
        match state {
            S::Offered => AttemptStatus::Offered,
            S::Downloading => AttemptStatus::Downloading,
            S::Verifying => AttemptStatus::Verifying,
            S::Staged => AttemptStatus::Staged,
            S::Rebooting => AttemptStatus::Rebooting,
            S::Confirmed => AttemptStatus::Confirmed,
            S::Failed(_) => AttemptStatus::Failed,
            S::RolledBack(_) => AttemptStatus::RolledBack,
            S::TimedOut => AttemptStatus::TimedOut,
            S::Cancelled => AttemptStatus::Cancelled,
        }
    }
}

named_states! {
    /// Where a plan stands.
    PlanStatus {
        /// Computed, nothing sent.
        Proposed => "proposed",
        /// An attempt carries it.
        Started => "started",
        /// A newer plan for the device replaced it.
        Superseded => "superseded",
    }
}

named_states! {
    /// Where a plan came from.
    PlanOrigin {
        /// An operator asked for modules (or for a heal).
        Operator => "operator",
        /// The server computed it for a device in safe mode.
        Heal => "heal",
        /// A rollout made it to bring the device to a release.
        Rollout => "rollout",
    }
}

/// A device as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Registered platform id.
    pub platform_id: u16,
    /// Registration time, Unix milliseconds.
    pub created_at: i64,
    /// Last time the device connected or sent a message, Unix milliseconds.
    pub last_seen: Option<i64>,
    /// Its last Describe, if it ever sent one.
    pub inventory: Option<Inventory>,
    /// Its update policy.
    pub policy: Policy,
    /// Its place in the fleet.
    #[serde(default)]
    pub fleet: Membership,
    /// A disabled device cannot connect until it is enabled again.
    #[serde(default)]
    pub disabled: bool,
}

/// Which devices a page of the device list holds (`GET /api/devices`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Only ids after this one (the last id of the previous page).
    pub after: Option<String>,
    /// At most this many.
    pub limit: u32,
    /// Only this platform.
    pub platform_id: Option<u16>,
    /// Only members of this product.
    pub product: Option<u32>,
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    /// Only disabled (`true`) or enabled (`false`) devices.
    pub disabled: Option<bool>,
}

/// A device's place in the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The product it belongs to (Particle product id), if any.
    pub product: Option<u32>,
    /// Its tags (sorted, unique).
    #[serde(default)]
    pub tags: Vec<String>,
    /// A development device: no rollout touches it.
    #[serde(default)]
    pub development: bool,
    /// The release of its product it is locked to: no rollout touches it.
    pub pinned_release: Option<u32>,
    /// Cellular data budget, bytes per calendar month (UTC); `None`: no budget.
    pub budget_bytes: Option<u64>,
}

/// A product: devices of one platform running one firmware line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRecord {
    /// The product id modules carry in their suffix.
    pub id: u32,
    /// The platform of its devices.
    pub platform_id: u16,
    /// A name for people.
    pub name: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// A group: a saved filter over a product's devices, with maintenance windows and a budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Group name (unique).
    pub name: String,
    /// The product whose devices it selects.
    pub product: u32,
    /// Filter terms, all of which a member matches: `tag=NAME`, `connectivity=wifi|cellular`,
    /// `id=PREFIX*` or `id=ID`.
    pub filter: Vec<String>,
    /// Maintenance windows (UTC, recurring: `mon-fri 01:00-05:00`); empty: any time.
    #[serde(default)]
    pub windows: Vec<String>,
    /// Data budget of each member, bytes per month (a device's own budget wins).
    pub budget_bytes: Option<u64>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// One module of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseModule {
    /// Catalog SHA-256 of the module file.
    pub sha256: String,
    /// Function name.
    pub function_name: String,
    /// Module index.
    pub index: u8,
    /// Module version.
    pub version: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A release: an immutable, numbered set of signed catalog modules for a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The product.
    pub product: u32,
    /// Its number in the product (1, 2, …).
    pub number: u32,
    /// The modules, in install order.
    pub modules: Vec<ReleaseModule>,
    /// A note for people.
    pub note: Option<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

named_states! {
    /// Where a rollout stands (the name of its engine state, for queries and lists).
    RolloutStatus {
        /// Phases open and devices start as the rules allow.
        Running => "running",
        /// Paused by an operator or by its failure threshold.
        Paused => "paused",
        /// Every phase completed; devices that join or return later still converge.
        Completed => "completed",
        /// Stopped for good (by an operator, or replaced by a newer rollout).
        Aborted => "aborted",
    }
}

impl RolloutStatus {
    /// The status of an engine state.
    pub fn of(state: &tern_rollout::RolloutState) -> Self {
        match state {
            tern_rollout::RolloutState::Running => RolloutStatus::Running,
            tern_rollout::RolloutState::Paused { .. } => RolloutStatus::Paused,
            tern_rollout::RolloutState::Completed => RolloutStatus::Completed,
            tern_rollout::RolloutState::Aborted => RolloutStatus::Aborted,
        }
    }
}

/// A rollout of a release to a product or one of its groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: i64,
    /// The product.
    pub product: u32,
    /// The group it is limited to, if any.
    pub group: Option<String>,
    /// The release it brings devices to.
    pub release: u32,
    /// Where it stands.
    pub status: RolloutStatus,
    /// The rollout engine's record: spec, state, phase.
    pub engine: tern_rollout::Rollout,
    /// Who started it (the operator token's name).
    pub created_by: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
}

/// A device's progress in a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The engine's record of the member.
    pub member: tern_rollout::Member,
    /// The attempt carrying its update, once started.
    pub attempt: Option<i64>,
    /// Whether an operator approved its update beyond its data budget.
    pub budget_approved: bool,
    /// Bytes on the air its update needs, once its plan was made.
    pub needed_bytes: Option<u64>,
}

/// One event, as stored and streamed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the event log (strictly increasing).
    pub id: i64,
    /// Time, Unix milliseconds.
    pub at: i64,
    /// The device concerned, if any.
    pub device: Option<String>,
    /// Dotted event name (`device.described`, `module.uploaded`, …).
    pub kind: String,
    /// Event-specific details.
    pub data: serde_json::Value,
    /// The operator token whose API call caused it; `null` for what devices and the
    /// server's own tasks cause.
    #[serde(default)]
    pub actor: Option<String>,
}

/// One module of an attempt's plan, in install order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedModule {
    /// SHA-256 of the module file (its blob address), hex.
    pub sha256: String,
    /// Numeric module function.
    pub function: u8,
    /// Function name.
    pub function_name: String,
    /// Module index.
    pub index: u8,
    /// Module version.
    pub version: u32,
    /// Size in bytes.
    pub size: u32,
    /// Flash address of its first byte.
    pub start_address: u32,
    /// Why it is in the plan: `requested`, or the dependency it meets
    /// (`needed by application 2 v6: system part 1 >= v3000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stage (offer) that carries it, from 0.
    #[serde(default)]
    pub stage: u32,
    /// The security counter of its signed statement.
    #[serde(default)]
    pub security_counter: u64,
    /// The patch it travels as, when that is smaller than the module (absent: raw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchRef>,
    /// Why a patch planned for it was dropped for the whole module (`delta_source`,
    /// `delta_failed`): the device could not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_dropped: Option<String>,
}

impl PlannedModule {
    /// Bytes the device receives for it: the patch's length, or the module's size.
    pub fn transfer_len(&self) -> u32 {
        self.patch.as_ref().map_or(self.size, |p| p.length)
    }
}

/// A patch a planned module travels as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRef {
    /// SHA-256 (hex) of the installed module it applies to; absent for a compressed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Blob address of the patch.
    pub address: String,
    /// Its length in bytes.
    pub length: u32,
}

impl PatchRef {
    /// `delta` or `compressed`.
    pub fn kind(&self) -> &'static str {
        if self.source.is_some() {
            "delta"
        } else {
            "compressed"
        }
    }
}

/// A patch the server made and keeps (see [`Store::patch`](super::Store::patch)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchRecord {
    /// SHA-256 (hex) of the module it applies to; empty for a compressed image.
    pub source: String,
    /// SHA-256 (hex) of the module it rebuilds.
    pub target: String,
    /// The patch format version (`tern_delta::VERSION`).
    pub format: u8,
    /// Blob address of the patch.
    pub address: String,
    /// Its length in bytes.
    pub length: u32,
}

/// One stage of a plan: one offer, installed at one reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Module bytes of the stage.
    pub bytes: u64,
    /// Estimated bytes on the air of the stage.
    pub air_bytes: u64,
    /// Estimated bytes on the air of the stage with every module sent whole (raw): what
    /// the patches save is the difference.
    #[serde(default)]
    pub air_bytes_full: u64,
    /// The block size of the stage's transfer, negotiated with the device (0 in records
    /// from before: 1 KiB).
    #[serde(default)]
    pub max_block: u32,
    /// The most bytes one block request may cover (0: one block per request, for devices
    /// that do not announce their link).
    #[serde(default)]
    pub max_request: u32,
    /// What the device runs after it: `normal`, or `safe_mode` until a later stage.
    pub expect: String,
    /// Why, for safe mode (`application needs system part 2 >= v2302`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_detail: Option<String>,
}

/// Transfer counters of the stages an attempt has finished (what the device holds of them
/// is their modules' sizes, derived from the plan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageBase {
    /// Offers sent.
    pub offers_sent: u32,
    /// Valid block requests.
    pub requests: u64,
    /// Block bytes sent.
    pub bytes_sent: u64,
    /// Of those, re-sent.
    pub bytes_resent: u64,
}

/// An install plan: what the server would send to a device, in order, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// Plan id.
    pub id: i64,
    /// The device.
    pub device: String,
    /// The device's platform.
    pub platform_id: u16,
    /// Who asked for it.
    pub origin: PlanOrigin,
    /// Where it stands (`started`: attempt `attempt` carries it).
    pub status: PlanStatus,
    /// SHA-256 of the modules asked for (empty for a heal).
    pub requested: Vec<String>,
    /// The modules to send, in install order.
    pub steps: Vec<PlannedModule>,
    /// The offers the steps go in, in order (one when everything fits at once).
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// Blob address of the signed release manifest every stage offers, for a plan made
    /// from a release bundle (else each module's statement is offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// SHA-256 over the described module hashes the plan was computed from.
    pub inventory_key: String,
    /// The device's connectivity when the plan was made.
    pub connectivity: Connectivity,
    /// Total bytes of the modules.
    pub bytes_total: u64,
    /// Estimated bytes on the air (offer, requests, blocks and MQTT framing).
    pub air_bytes: u64,
    /// Estimated bytes on the air with every module sent whole (no patches).
    #[serde(default)]
    pub air_bytes_full: u64,
    /// Whether the operator must confirm `air_bytes` before it is sent (cellular).
    pub confirm_required: bool,
    /// The attempt that carries it, once started.
    pub attempt: Option<i64>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
}

/// An update attempt, as stored and shown by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt id (also the protocol's attempt id).
    pub id: i64,
    /// The device.
    pub device: String,
    /// Where it stands.
    pub state: AttemptStatus,
    /// Why it failed or was rolled back.
    pub reason: Option<String>,
    /// Numeric reason code.
    pub reason_code: Option<u16>,
    /// The modules, in install order.
    pub plan: Vec<PlannedModule>,
    /// The plan this attempt carries (none for an attempt started from a release bundle).
    pub plan_id: Option<i64>,
    /// Blob addresses of the signed documents offered: one release manifest, or one
    /// module statement per module.
    pub signed: Vec<String>,
    /// Total bytes of the plan's modules.
    pub bytes_total: u64,
    /// Estimated bytes on the air for the whole transfer.
    pub air_bytes: u64,
    /// Bytes the device reported holding.
    pub bytes_done: u64,
    /// Block bytes sent.
    pub bytes_sent: u64,
    /// Of those, bytes sent more than once.
    pub bytes_resent: u64,
    /// Valid block requests received.
    pub requests: u64,
    /// Offers sent.
    pub offers_sent: u32,
    /// Which KiB units of the current stage were sent (internal; not shown).
    #[serde(skip)]
    pub sent_record: Vec<u8>,
    /// The plan's stages (empty: one stage with every module).
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// The stage in flight, from 0.
    #[serde(default)]
    pub stage: u32,
    /// Counters of the finished stages (included in `bytes_sent` and the others).
    #[serde(skip)]
    pub stage_base: StageBase,
    /// Whether the state is final.
    pub finished: bool,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
}

impl AttemptRecord {
    /// A new attempt, `queued`, offering `plan` with the signed documents at blob
    /// addresses `signed`; its `id` is assigned when it is stored.
    pub fn queued(
        device: &str,
        plan: Vec<PlannedModule>,
        plan_id: Option<i64>,
        signed: Vec<String>,
        air_bytes: u64,
        now: i64,
    ) -> Self {
        AttemptRecord {
            id: 0,
            device: device.to_owned(),
            state: AttemptStatus::Queued,
            reason: None,
            reason_code: None,
            bytes_total: plan.iter().map(|m| u64::from(m.size)).sum(),
            plan,
            plan_id,
            signed,
            air_bytes,
            bytes_done: 0,
            bytes_sent: 0,
            bytes_resent: 0,
            requests: 0,
            offers_sent: 0,
            sent_record: Vec::new(),
            stages: Vec::new(),
            stage: 0,
            stage_base: StageBase::default(),
            finished: false,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A client key (`Idempotency-Key`) and the plan the request that carried it made or
/// started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientKeyRecord {
    /// The key, as the client sent it.
    pub key: String,
    /// The device the request was for.
    pub device: String,
    /// The plan.
    pub plan: i64,
    /// When the key was first seen, Unix milliseconds.
    pub created_at: i64,
}
