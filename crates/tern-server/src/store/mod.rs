//! Durable state: tokens, the module catalog, devices and their inventories, events.
//!
//! The server core sees only the [`Store`] trait, so a PostgreSQL implementation can drop in
//! beside [`SqliteStore`] without touching the API or the gateway. Records are plain data;
//! JSON columns hold nested values (a device's inventory, a module's dependencies) so that
//! both backends store them the same way.

mod records;
mod sqlite;

pub use records::*;
pub use sqlite::{SqliteStore, ABORT_AT_COMMIT_ENV};

use async_trait::async_trait;

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

/// How many attempts stand in one state with one reason (for `/metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptTally {
    /// The state.
    pub state: AttemptStatus,
    /// Why it failed, was rolled back or timed out (none for other states).
    pub reason: Option<String>,
    /// How many attempts.
    pub count: u64,
}
/// Storage the server core needs; implemented by [`SqliteStore`]. Reads are here; every
/// change goes through a [`Writes`] transaction that [`Store::begin`] opens.
#[async_trait]
pub trait Store: Send + Sync {
    /// Opens a write transaction: nothing it writes is visible to readers, nor survives a
    /// crash, until [`Writes::commit`]; dropped without a commit, it writes nothing.
    /// Write transactions run one at a time (the next waits for the open one to end).
    async fn begin(&self) -> StoreResult<Box<dyn Writes>>;

    /// The patch kept for (`source`, `target`, `format`), if one was made.
    async fn patch(&self, source: &str, target: &str, format: u8) -> StoreResult<Option<PatchRecord>>;

    /// How many operator tokens exist.
    async fn token_count(&self) -> StoreResult<u64>;
    /// The token whose hash is `token_hash` (revoked and expired ones too: the caller
    /// tells why it is refused).
    async fn find_token(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>>;
    /// Every token, revoked ones too, by name and creation.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// The live (not revoked) token named `name`.
    async fn live_token(&self, name: &str) -> StoreResult<Option<TokenRecord>>;
    /// The module with file hash `sha256`.
    async fn get_module(&self, sha256: &str) -> StoreResult<Option<ModuleRecord>>;
    /// Every module, by platform, function, index and version.
    async fn list_modules(&self) -> StoreResult<Vec<ModuleRecord>>;
    /// The device `id`.
    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>>;
    /// Every device, by id (removed ones are gone).
    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>>;
    /// One page of the device list, by id.
    async fn page_devices(&self, query: &DeviceQuery) -> StoreResult<Vec<DeviceRecord>>;
    /// The stored hash of device `id`'s secret, when it may connect (registered, neither
    /// removed nor disabled).
    async fn device_secret_hash(&self, id: &str) -> StoreResult<Option<String>>;
    /// The plan `id`.
    async fn get_plan(&self, id: i64) -> StoreResult<Option<PlanRecord>>;
    /// The `limit` most recent plans of `device`, newest first.
    async fn device_plans(&self, device: &str, limit: u32) -> StoreResult<Vec<PlanRecord>>;
    /// Up to `limit` events after id `after`, oldest first, optionally for one device.
    async fn events_after(&self, after: i64, device: Option<&str>, limit: u32) -> StoreResult<Vec<Event>>;
    /// The `limit` most recent events of device `id`, oldest first.
    async fn recent_events(&self, device: &str, limit: u32) -> StoreResult<Vec<Event>>;
    /// How many events are stored.
    async fn event_count(&self) -> StoreResult<u64>;
    /// Gives the space of deleted rows back to the file system where the backend can
    /// (SQLite: a `TRUNCATE` checkpoint of the write-ahead log).
    async fn compact(&self) -> StoreResult<()>;
    /// The attempt `id`.
    async fn get_attempt(&self, id: i64) -> StoreResult<Option<AttemptRecord>>;
    /// The `limit` most recent attempts of `device`, newest first.
    async fn device_attempts(&self, device: &str, limit: u32) -> StoreResult<Vec<AttemptRecord>>;
    /// Every attempt not in a final state, oldest first.
    async fn unfinished_attempts(&self) -> StoreResult<Vec<AttemptRecord>>;
    /// Bytes the store takes on disk (SQLite: the database file, its write-ahead log and
    /// its shared-memory index).
    async fn disk_bytes(&self) -> StoreResult<u64>;
    /// Every attempt counted by state and reason.
    async fn attempt_tallies(&self) -> StoreResult<Vec<AttemptTally>>;
    /// The record of client key `key`, if it was seen.
    async fn get_client_key(&self, key: &str) -> StoreResult<Option<ClientKeyRecord>>;
    /// Product `id`.
    async fn get_product(&self, id: u32) -> StoreResult<Option<ProductRecord>>;
    /// Every product, by id.
    async fn list_products(&self) -> StoreResult<Vec<ProductRecord>>;
    /// Group `name`.
    async fn get_group(&self, name: &str) -> StoreResult<Option<GroupRecord>>;
    /// Every group, by name.
    async fn list_groups(&self) -> StoreResult<Vec<GroupRecord>>;
    /// Release `number` of `product`.
    async fn get_release(&self, product: u32, number: u32) -> StoreResult<Option<ReleaseRecord>>;
    /// The releases of `product`, by number.
    async fn list_releases(&self, product: u32) -> StoreResult<Vec<ReleaseRecord>>;
    /// Bytes on the air of the attempts for `device` created at or after `since` (Unix
    /// milliseconds): the larger of the estimate and what was sent, per attempt.
    async fn air_bytes_since(&self, device: &str, since: i64) -> StoreResult<u64>;
    /// Rollout `id`.
    async fn get_rollout(&self, id: i64) -> StoreResult<Option<RolloutRecord>>;
    /// Every rollout, oldest first.
    async fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>>;
    /// The members of rollout `rollout`, by device id.
    async fn rollout_members(&self, rollout: i64) -> StoreResult<Vec<MemberRecord>>;
}

/// One write transaction (see [`Store::begin`]): every change to the store, with the events
/// that record it, is made through one, so a row and its event are stored together or not
/// at all.
#[async_trait]
pub trait Writes: Send {
    /// Makes everything written durable and visible, at once.
    async fn commit(self: Box<Self>) -> StoreResult<()>;

    /// Keeps a patch (a second one for the same key is ignored: patches are deterministic).
    async fn put_patch(&mut self, patch: &PatchRecord) -> StoreResult<()>;
    /// Adds an operator token.
    async fn create_token(&mut self, token: &TokenRecord) -> StoreResult<()>;
    /// Revokes the live token `name` at `at`; `false` when there is none.
    async fn revoke_token(&mut self, name: &str, at: i64) -> StoreResult<bool>;
    /// Gives the live token `name` a new hash (the old token stops working); `false` when
    /// there is none.
    async fn rotate_token(&mut self, name: &str, token_hash: &str) -> StoreResult<bool>;

    /// Adds a module to the catalog (its statement fields as given); `false` when a module
    /// with its hash was there already.
    async fn put_module(&mut self, module: &ModuleRecord) -> StoreResult<bool>;
    /// Attaches the signed statement at blob address `statement` to module `sha256`;
    /// `false` when there is no such module.
    async fn set_module_statement(&mut self, sha256: &str, statement: &str, security_counter: u64)
        -> StoreResult<bool>;
    /// Sets the platform and start address of module `sha256` (what its first signed
    /// statement says about a module that does not carry them itself, such as an asset);
    /// `false` when there is no such module.
    async fn place_module(&mut self, sha256: &str, platform_id: u16, start_address: u32) -> StoreResult<bool>;

    /// Registers a device; [`StoreError::Conflict`] if the id is taken (the id of a
    /// removed device is free again: registering it starts afresh).
    async fn create_device(&mut self, device: &NewDevice) -> StoreResult<()>;
    /// Replaces device `id`'s secret hash; `false` when there is no such device.
    async fn set_device_secret(&mut self, id: &str, secret_hash: &str) -> StoreResult<bool>;
    /// Disables or enables device `id`; `false` when there is no such device.
    async fn set_device_disabled(&mut self, id: &str, disabled: bool) -> StoreResult<bool>;
    /// Removes device `id` at `at` (its secret is erased; its attempts and plans stay as
    /// history); `false` when there is no such device.
    async fn remove_device(&mut self, id: &str, at: i64) -> StoreResult<bool>;
    /// Records that device `id` was seen at `at`.
    async fn touch_device(&mut self, id: &str, at: i64) -> StoreResult<()>;
    /// Replaces device `id`'s inventory with `inventory` (and marks it seen).
    async fn record_inventory(&mut self, id: &str, inventory: &Inventory) -> StoreResult<()>;
    /// Replaces device `id`'s update policy; `false` when there is no such device.
    async fn set_policy(&mut self, id: &str, policy: &Policy) -> StoreResult<bool>;

    /// Stores a new plan (its `id` is ignored) and returns its id.
    async fn create_plan(&mut self, plan: &PlanRecord) -> StoreResult<i64>;
    /// Marks every plan of `device` still `proposed` as `superseded`, except `keep`;
    /// returns how many.
    async fn supersede_plans(&mut self, device: &str, keep: i64) -> StoreResult<u64>;
    /// Sets plan `id`'s status and attempt, only if its status is still `from`; `false`
    /// when it was not (another request started or superseded it first).
    async fn transition_plan(
        &mut self,
        id: i64,
        from: PlanStatus,
        to: PlanStatus,
        attempt: Option<i64>,
    ) -> StoreResult<bool>;

    /// Appends an event (its `id` is ignored) and returns it with its assigned id.
    async fn append_event(&mut self, event: &Event) -> StoreResult<Event>;
    /// Deletes events older than `before` (Unix milliseconds) and all but the newest
    /// `keep` events; returns how many went.
    async fn prune_events(&mut self, before: i64, keep: u64) -> StoreResult<u64>;

    /// Stores a new attempt (its `id` is ignored) and returns its id.
    async fn create_attempt(&mut self, attempt: &AttemptRecord) -> StoreResult<i64>;
    /// Saves an attempt's state, reason, counters and plan (whose patches a fallback drops).
    async fn update_attempt(&mut self, attempt: &AttemptRecord) -> StoreResult<()>;

    /// Records client key `key.key` for `key.plan`, unless the key is already recorded;
    /// returns the record the key has now (the earlier one when it was).
    async fn claim_client_key(&mut self, key: &ClientKeyRecord) -> StoreResult<ClientKeyRecord>;

    /// Adds a product; `Conflict` if its id is taken.
    async fn create_product(&mut self, product: &ProductRecord) -> StoreResult<()>;
    /// Sets device `id`'s place in the fleet; `false` if there is no such device.
    async fn set_membership(&mut self, id: &str, membership: &Membership) -> StoreResult<bool>;
    /// Creates or replaces a group (by name).
    async fn put_group(&mut self, group: &GroupRecord) -> StoreResult<()>;
    /// Deletes group `name`; `false` if there was none.
    async fn delete_group(&mut self, name: &str) -> StoreResult<bool>;
    /// Stores a release under the product's next number (`release.number` is ignored) and
    /// returns it as stored.
    async fn create_release(&mut self, release: &ReleaseRecord) -> StoreResult<ReleaseRecord>;

    /// Stores a new rollout and returns its id.
    async fn create_rollout(&mut self, rollout: &RolloutRecord) -> StoreResult<i64>;
    /// Saves a rollout's record and the given members (inserted or replaced).
    async fn save_rollout(&mut self, rollout: &RolloutRecord, members: &[MemberRecord]) -> StoreResult<()>;
}
