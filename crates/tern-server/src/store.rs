//! Durable state: tokens, the module catalog, devices and their inventories, events.
//!
//! The server core sees only the [`Store`] trait, so a PostgreSQL implementation can drop in
//! beside [`SqliteStore`] without touching the API or the gateway. Records are plain data;
//! JSON columns hold nested values (a device's inventory, a module's dependencies) so that
//! both backends store them the same way.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// A record with the same key exists already; names the key.
    Conflict(String),
    /// The backend failed (IO, corruption, connection); the message is for logs only.
    Backend(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(key) => write!(f, "{key} exists already"),
            StoreError::Backend(msg) => write!(f, "storage error: {msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Backend(err.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        StoreError::Backend(format!("stored JSON: {err}"))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// An operator API token, as stored (the token itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// A label chosen when the token was created.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// What the token may do (`admin` for now).
    pub role: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
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
}

/// One stage of a plan: one offer, installed at one reboot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Module bytes of the stage.
    pub bytes: u64,
    /// Estimated bytes on the air of the stage.
    pub air_bytes: u64,
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
    /// `operator` (asked for by an operator) or `heal` (computed for a device in safe mode).
    pub origin: String,
    /// `proposed` (nothing sent), `started` (attempt `attempt` carries it), `superseded`.
    pub status: String,
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
    /// `offered`, `downloading`, `verifying`, `staged`, `rebooting`, `confirmed`, `failed`,
    /// `rolled_back`, `timed_out`, `cancelled`.
    pub state: String,
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
            state: "queued".into(),
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

/// Storage the server core needs; implemented by [`SqliteStore`].
#[async_trait]
pub trait Store: Send + Sync {
    /// How many operator tokens exist.
    async fn token_count(&self) -> StoreResult<u64>;
    /// Adds an operator token.
    async fn create_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// The token whose hash is `token_hash`.
    async fn find_token(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>>;

    /// Adds a module to the catalog; `false` when a module with its hash was there already.
    async fn put_module(&self, module: &ModuleRecord) -> StoreResult<bool>;
    /// The module with file hash `sha256`.
    async fn get_module(&self, sha256: &str) -> StoreResult<Option<ModuleRecord>>;
    /// Every module, by platform, function, index and version.
    async fn list_modules(&self) -> StoreResult<Vec<ModuleRecord>>;
    /// Attaches the signed statement at blob address `statement` to module `sha256`;
    /// `false` when there is no such module.
    async fn set_module_statement(&self, sha256: &str, statement: &str, security_counter: u64) -> StoreResult<bool>;
    /// Sets the platform and start address of module `sha256` (what its first signed
    /// statement says about a module that does not carry them itself, such as an asset);
    /// `false` when there is no such module.
    async fn place_module(&self, sha256: &str, platform_id: u16, start_address: u32) -> StoreResult<bool>;

    /// Registers a device; [`StoreError::Conflict`] if the id is taken.
    async fn create_device(&self, device: &NewDevice) -> StoreResult<()>;
    /// The device `id`.
    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>>;
    /// Every device, by id.
    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>>;
    /// The stored hash of device `id`'s secret.
    async fn device_secret_hash(&self, id: &str) -> StoreResult<Option<String>>;
    /// Records that device `id` was seen at `at`.
    async fn touch_device(&self, id: &str, at: i64) -> StoreResult<()>;
    /// Replaces device `id`'s inventory with `inventory` (and marks it seen).
    async fn record_inventory(&self, id: &str, inventory: &Inventory) -> StoreResult<()>;
    /// Replaces device `id`'s update policy; `false` when there is no such device.
    async fn set_policy(&self, id: &str, policy: &Policy) -> StoreResult<bool>;

    /// Stores a new plan (its `id` is ignored) and returns its id.
    async fn create_plan(&self, plan: &PlanRecord) -> StoreResult<i64>;
    /// The plan `id`.
    async fn get_plan(&self, id: i64) -> StoreResult<Option<PlanRecord>>;
    /// The `limit` most recent plans of `device`, newest first.
    async fn device_plans(&self, device: &str, limit: u32) -> StoreResult<Vec<PlanRecord>>;
    /// Marks every plan of `device` still `proposed` as `superseded`, except `keep`;
    /// returns how many.
    async fn supersede_plans(&self, device: &str, keep: i64) -> StoreResult<u64>;
    /// Sets plan `id`'s status and attempt, only if its status is still `from`; `false`
    /// when it was not (another request started or superseded it first).
    async fn transition_plan(&self, id: i64, from: &str, to: &str, attempt: Option<i64>) -> StoreResult<bool>;

    /// Appends an event (its `id` is ignored) and returns it with its assigned id.
    async fn append_event(&self, event: &Event) -> StoreResult<Event>;
    /// Up to `limit` events after id `after`, oldest first, optionally for one device.
    async fn events_after(&self, after: i64, device: Option<&str>, limit: u32) -> StoreResult<Vec<Event>>;
    /// The `limit` most recent events of device `id`, oldest first.
    async fn recent_events(&self, device: &str, limit: u32) -> StoreResult<Vec<Event>>;

    /// Stores a new attempt (its `id` is ignored) and returns its id.
    async fn create_attempt(&self, attempt: &AttemptRecord) -> StoreResult<i64>;
    /// Saves an attempt's state, reason and counters.
    async fn update_attempt(&self, attempt: &AttemptRecord) -> StoreResult<()>;
    /// The attempt `id`.
    async fn get_attempt(&self, id: i64) -> StoreResult<Option<AttemptRecord>>;
    /// The `limit` most recent attempts of `device`, newest first.
    async fn device_attempts(&self, device: &str, limit: u32) -> StoreResult<Vec<AttemptRecord>>;
    /// Every attempt not in a final state, oldest first.
    async fn unfinished_attempts(&self) -> StoreResult<Vec<AttemptRecord>>;
}

/// The embedded default: one SQLite database file in WAL mode.
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed transaction survives power loss, not only a killed process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(SqliteStore { pool })
    }
}

fn module_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ModuleRecord> {
    let function: i64 = row.try_get("function")?;
    let function = u8::try_from(function).map_err(|_| StoreError::Backend("module function out of range".into()))?;
    Ok(ModuleRecord {
        sha256: row.try_get("sha256")?,
        filename: row.try_get("filename")?,
        format: row.try_get("format")?,
        platform_id: int(row.try_get("platform_id")?)?,
        function,
        function_name: tern_image::ModuleFunction::from_code(function).name().to_string(),
        index: int(row.try_get("module_index")?)?,
        version: int(row.try_get("version")?)?,
        size: int(row.try_get("size")?)?,
        module_sha256: row.try_get("module_sha256")?,
        integrity: row.try_get("integrity")?,
        dependencies: serde_json::from_str(row.try_get("dependencies")?)?,
        start_address: int(row.try_get("start_address")?)?,
        uploaded_at: row.try_get("uploaded_at")?,
        statement: row.try_get("statement")?,
        security_counter: int(row.try_get("security_counter")?)?,
    })
}

fn device_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<DeviceRecord> {
    let inventory: Option<String> = row.try_get("inventory")?;
    Ok(DeviceRecord {
        id: row.try_get("id")?,
        platform_id: int(row.try_get("platform_id")?)?,
        created_at: row.try_get("created_at")?,
        last_seen: row.try_get("last_seen")?,
        inventory: inventory.map(|json| serde_json::from_str(&json)).transpose()?,
        policy: policy_from_row(row)?,
    })
}

fn policy_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Policy> {
    let connectivity: String = row.try_get("connectivity")?;
    let auto_heal: Option<i64> = row.try_get("auto_heal")?;
    Ok(Policy {
        connectivity: Connectivity::parse(&connectivity)
            .ok_or_else(|| StoreError::Backend(format!("stored connectivity {connectivity} is unknown")))?,
        auto_heal: auto_heal.map(|v| v != 0),
    })
}

fn plan_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<PlanRecord> {
    let connectivity: String = row.try_get("connectivity")?;
    let connectivity = Connectivity::parse(&connectivity)
        .ok_or_else(|| StoreError::Backend(format!("stored connectivity {connectivity} is unknown")))?;
    Ok(PlanRecord {
        id: row.try_get("id")?,
        device: row.try_get("device")?,
        platform_id: int(row.try_get("platform_id")?)?,
        origin: row.try_get("origin")?,
        status: row.try_get("status")?,
        requested: serde_json::from_str(row.try_get("requested")?)?,
        steps: serde_json::from_str(row.try_get("steps")?)?,
        stages: serde_json::from_str(row.try_get("stages")?)?,
        manifest: row.try_get("manifest")?,
        inventory_key: row.try_get("inventory_key")?,
        connectivity,
        bytes_total: int(row.try_get("bytes_total")?)?,
        air_bytes: int(row.try_get("air_bytes")?)?,
        confirm_required: connectivity == Connectivity::Cellular,
        attempt: row.try_get("attempt")?,
        created_at: row.try_get("created_at")?,
    })
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        device: row.try_get("device")?,
        kind: row.try_get("kind")?,
        data: serde_json::from_str(row.try_get("data")?)?,
    })
}

fn attempt_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<AttemptRecord> {
    let reason_code: Option<i64> = row.try_get("reason_code")?;
    let finished: i64 = row.try_get("finished")?;
    let sent_record: Option<Vec<u8>> = row.try_get("sent_record")?;
    let stage_base: Option<String> = row.try_get("stage_base")?;
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        device: row.try_get("device")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
        reason_code: reason_code.map(int).transpose()?,
        plan: serde_json::from_str(row.try_get("plan")?)?,
        plan_id: row.try_get("plan_id")?,
        signed: row.try_get::<String, _>("signed")?.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        bytes_total: int(row.try_get("bytes_total")?)?,
        air_bytes: int(row.try_get("air_bytes")?)?,
        bytes_done: int(row.try_get("bytes_done")?)?,
        bytes_sent: int(row.try_get("bytes_sent")?)?,
        bytes_resent: int(row.try_get("bytes_resent")?)?,
        requests: int(row.try_get("requests")?)?,
        offers_sent: int(row.try_get("offers_sent")?)?,
        sent_record: sent_record.unwrap_or_default(),
        stages: serde_json::from_str(row.try_get("stages")?)?,
        stage: int(row.try_get("stage")?)?,
        stage_base: stage_base.map(|json| serde_json::from_str(&json)).transpose()?.unwrap_or_default(),
        finished: finished != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Converts a counter for an INTEGER column (SQLite integers are signed 64-bit).
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Narrows an integer column to its field's type; a value out of range means the database
/// was edited by hand, which is reported rather than wrapped.
fn int<T: TryFrom<i64>>(value: i64) -> StoreResult<T> {
    T::try_from(value).map_err(|_| StoreError::Backend(format!("stored integer {value} out of range")))
}

#[async_trait]
impl Store for SqliteStore {
    async fn token_count(&self) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens").fetch_one(&self.pool).await?;
        int(count)
    }

    async fn create_token(&self, token: &TokenRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO tokens (name, token_hash, role, created_at) VALUES (?, ?, ?, ?)")
            .bind(&token.name)
            .bind(&token.token_hash)
            .bind(&token.role)
            .bind(token.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn find_token(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query("SELECT name, token_hash, role, created_at FROM tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(TokenRecord {
                name: row.try_get("name")?,
                token_hash: row.try_get("token_hash")?,
                role: row.try_get("role")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn put_module(&self, m: &ModuleRecord) -> StoreResult<bool> {
        let result = sqlx::query(
            "INSERT INTO modules (sha256, filename, format, platform_id, function, module_index, version, size, \
             module_sha256, integrity, dependencies, start_address, uploaded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&m.sha256)
        .bind(&m.filename)
        .bind(&m.format)
        .bind(i64::from(m.platform_id))
        .bind(i64::from(m.function))
        .bind(i64::from(m.index))
        .bind(i64::from(m.version))
        .bind(i64::from(m.size))
        .bind(&m.module_sha256)
        .bind(&m.integrity)
        .bind(serde_json::to_string(&m.dependencies)?)
        .bind(i64::from(m.start_address))
        .bind(m.uploaded_at)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn get_module(&self, sha256: &str) -> StoreResult<Option<ModuleRecord>> {
        let row = sqlx::query("SELECT * FROM modules WHERE sha256 = ?").bind(sha256).fetch_optional(&self.pool).await?;
        row.as_ref().map(module_from_row).transpose()
    }

    async fn list_modules(&self) -> StoreResult<Vec<ModuleRecord>> {
        let rows = sqlx::query("SELECT * FROM modules ORDER BY platform_id, function, module_index, version, sha256")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(module_from_row).collect()
    }

    async fn set_module_statement(&self, sha256: &str, statement: &str, security_counter: u64) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE modules SET statement = ?, security_counter = ? WHERE sha256 = ?")
            .bind(statement)
            .bind(db_int(security_counter))
            .bind(sha256)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn place_module(&self, sha256: &str, platform_id: u16, start_address: u32) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE modules SET platform_id = ?, start_address = ? WHERE sha256 = ?")
            .bind(i64::from(platform_id))
            .bind(i64::from(start_address))
            .bind(sha256)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_device(&self, d: &NewDevice) -> StoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO devices (id, platform_id, secret_hash, created_at, connectivity, auto_heal) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&d.id)
        .bind(i64::from(d.platform_id))
        .bind(&d.secret_hash)
        .bind(d.created_at)
        .bind(d.policy.connectivity.name())
        .bind(d.policy.auto_heal.map(i64::from))
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("device {}", d.id)));
        }
        Ok(())
    }

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        let row = sqlx::query("SELECT * FROM devices WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>> {
        let rows = sqlx::query("SELECT * FROM devices ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device_secret_hash(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT secret_hash FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn touch_device(&self, id: &str, at: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_inventory(&self, id: &str, inventory: &Inventory) -> StoreResult<()> {
        sqlx::query(
            "UPDATE devices SET inventory = ?, described_at = ?, \
             last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?",
        )
        .bind(serde_json::to_string(inventory)?)
        .bind(inventory.described_at)
        .bind(inventory.described_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_policy(&self, id: &str, policy: &Policy) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE devices SET connectivity = ?, auto_heal = ? WHERE id = ?")
            .bind(policy.connectivity.name())
            .bind(policy.auto_heal.map(i64::from))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_plan(&self, p: &PlanRecord) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO plans (device, platform_id, origin, status, requested, steps, inventory_key, connectivity, \
             bytes_total, air_bytes, attempt, created_at, stages, manifest) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING id",
        )
        .bind(&p.device)
        .bind(i64::from(p.platform_id))
        .bind(&p.origin)
        .bind(&p.status)
        .bind(serde_json::to_string(&p.requested)?)
        .bind(serde_json::to_string(&p.steps)?)
        .bind(&p.inventory_key)
        .bind(p.connectivity.name())
        .bind(db_int(p.bytes_total))
        .bind(db_int(p.air_bytes))
        .bind(p.attempt)
        .bind(p.created_at)
        .bind(serde_json::to_string(&p.stages)?)
        .bind(&p.manifest)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn get_plan(&self, id: i64) -> StoreResult<Option<PlanRecord>> {
        let row = sqlx::query("SELECT * FROM plans WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(plan_from_row).transpose()
    }

    async fn device_plans(&self, device: &str, limit: u32) -> StoreResult<Vec<PlanRecord>> {
        let rows = sqlx::query("SELECT * FROM plans WHERE device = ? ORDER BY id DESC LIMIT ?")
            .bind(device)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn supersede_plans(&self, device: &str, keep: i64) -> StoreResult<u64> {
        let result =
            sqlx::query("UPDATE plans SET status = 'superseded' WHERE device = ? AND status = 'proposed' AND id != ?")
                .bind(device)
                .bind(keep)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    async fn transition_plan(&self, id: i64, from: &str, to: &str, attempt: Option<i64>) -> StoreResult<bool> {
        let result =
            sqlx::query("UPDATE plans SET status = ?, attempt = COALESCE(?, attempt) WHERE id = ? AND status = ?")
                .bind(to)
                .bind(attempt)
                .bind(id)
                .bind(from)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn append_event(&self, event: &Event) -> StoreResult<Event> {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO events (at, device, kind, data) VALUES (?, ?, ?, ?) RETURNING id")
                .bind(event.at)
                .bind(&event.device)
                .bind(&event.kind)
                .bind(serde_json::to_string(&event.data)?)
                .fetch_one(&self.pool)
                .await?;
        Ok(Event { id, ..event.clone() })
    }

    async fn events_after(&self, after: i64, device: Option<&str>, limit: u32) -> StoreResult<Vec<Event>> {
        let rows = sqlx::query("SELECT * FROM events WHERE id > ? AND (? IS NULL OR device = ?) ORDER BY id LIMIT ?")
            .bind(after)
            .bind(device)
            .bind(device)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn recent_events(&self, device: &str, limit: u32) -> StoreResult<Vec<Event>> {
        let rows =
            sqlx::query("SELECT * FROM (SELECT * FROM events WHERE device = ? ORDER BY id DESC LIMIT ?) ORDER BY id")
                .bind(device)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn create_attempt(&self, a: &AttemptRecord) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO attempts (device, state, reason, reason_code, plan, plan_id, signed, bytes_total, air_bytes, \
             bytes_done, bytes_sent, bytes_resent, requests, offers_sent, sent_record, finished, created_at, updated_at, \
             stages, stage, stage_base) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&a.device)
        .bind(&a.state)
        .bind(&a.reason)
        .bind(a.reason_code.map(i64::from))
        .bind(serde_json::to_string(&a.plan)?)
        .bind(a.plan_id)
        .bind(a.signed.join(","))
        .bind(db_int(a.bytes_total))
        .bind(db_int(a.air_bytes))
        .bind(db_int(a.bytes_done))
        .bind(db_int(a.bytes_sent))
        .bind(db_int(a.bytes_resent))
        .bind(db_int(a.requests))
        .bind(i64::from(a.offers_sent))
        .bind(&a.sent_record)
        .bind(i64::from(a.finished))
        .bind(a.created_at)
        .bind(a.updated_at)
        .bind(serde_json::to_string(&a.stages)?)
        .bind(i64::from(a.stage))
        .bind(serde_json::to_string(&a.stage_base)?)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn update_attempt(&self, a: &AttemptRecord) -> StoreResult<()> {
        sqlx::query(
            "UPDATE attempts SET state = ?, reason = ?, reason_code = ?, bytes_done = ?, bytes_sent = ?, \
             bytes_resent = ?, requests = ?, offers_sent = ?, sent_record = ?, finished = ?, updated_at = ?, stage = ?, \
             stage_base = ? WHERE id = ?",
        )
        .bind(&a.state)
        .bind(&a.reason)
        .bind(a.reason_code.map(i64::from))
        .bind(db_int(a.bytes_done))
        .bind(db_int(a.bytes_sent))
        .bind(db_int(a.bytes_resent))
        .bind(db_int(a.requests))
        .bind(i64::from(a.offers_sent))
        .bind(&a.sent_record)
        .bind(i64::from(a.finished))
        .bind(a.updated_at)
        .bind(i64::from(a.stage))
        .bind(serde_json::to_string(&a.stage_base)?)
        .bind(a.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_attempt(&self, id: i64) -> StoreResult<Option<AttemptRecord>> {
        let row = sqlx::query("SELECT * FROM attempts WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(attempt_from_row).transpose()
    }

    async fn device_attempts(&self, device: &str, limit: u32) -> StoreResult<Vec<AttemptRecord>> {
        let rows = sqlx::query("SELECT * FROM attempts WHERE device = ? ORDER BY id DESC LIMIT ?")
            .bind(device)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn unfinished_attempts(&self) -> StoreResult<Vec<AttemptRecord>> {
        let rows = sqlx::query("SELECT * FROM attempts WHERE finished = 0 ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(attempt_from_row).collect()
    }
}
