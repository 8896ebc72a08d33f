//! The embedded default store: SQLite in WAL mode (sqlx).

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::*;

/// The embedded default: one SQLite database file in WAL mode.
///
/// Reads share a pool; every write goes through one connection of its own, so writers
/// queue in order in the process instead of meeting SQLite's lock, whose busy handler
/// sleeps in growing steps (up to 100 ms) and would let a busy device's writes delay
/// another's by that much.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    /// The database file (its `-wal` and `-shm` files lie beside it).
    path: std::path::PathBuf,
    commits: Arc<Commits>,
}

/// The environment variable that makes the process abort just before its N-th write
/// transaction commits (counted from 1 since the store opened). A crash-test hook: the
/// tests kill the server at every commit in turn and check that what survived is whole
/// (every row with its event). Unset in normal use.
pub const ABORT_AT_COMMIT_ENV: &str = "TERN_TEST_ABORT_AT_COMMIT";

/// Counts commits, for the crash-test hook.
struct Commits {
    done: AtomicU64,
    abort_at: Option<u64>,
}

impl Commits {
    fn from_env() -> Self {
        let abort_at = std::env::var(ABORT_AT_COMMIT_ENV).ok().and_then(|v| v.trim().parse().ok());
        if let Some(n) = abort_at {
            tracing::warn!("{ABORT_AT_COMMIT_ENV} is set: the process aborts before write transaction {n} commits");
        }
        Commits { done: AtomicU64::new(0), abort_at }
    }

    fn before_commit(&self) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if self.abort_at == Some(n) {
            // As a power cut or SIGKILL would: nothing flushed, nothing unwound.
            std::process::abort();
        }
    }
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
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations").run(&writer).await.map_err(|e| StoreError::Backend(e.to_string()))?;
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        Ok(SqliteStore { pool, writer, path: path.to_path_buf(), commits: Arc::new(Commits::from_env()) })
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
        fleet: Membership {
            product: row.try_get::<Option<i64>, _>("product_id")?.map(int).transpose()?,
            tags: serde_json::from_str(row.try_get("tags")?)?,
            development: row.try_get::<i64, _>("development")? != 0,
            pinned_release: row.try_get::<Option<i64>, _>("pinned_release")?.map(int).transpose()?,
            budget_bytes: row.try_get::<Option<i64>, _>("budget_bytes")?.map(int).transpose()?,
        },
        disabled: row.try_get::<i64, _>("disabled")? != 0,
    })
}

fn token_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn group_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<GroupRecord> {
    Ok(GroupRecord {
        name: row.try_get("name")?,
        product: int(row.try_get("product_id")?)?,
        filter: serde_json::from_str(row.try_get("filter")?)?,
        windows: serde_json::from_str(row.try_get("windows")?)?,
        budget_bytes: row.try_get::<Option<i64>, _>("budget_bytes")?.map(int).transpose()?,
        created_at: row.try_get("created_at")?,
    })
}

fn release_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ReleaseRecord> {
    Ok(ReleaseRecord {
        product: int(row.try_get("product_id")?)?,
        number: int(row.try_get("number")?)?,
        modules: serde_json::from_str(row.try_get("modules")?)?,
        note: row.try_get("note")?,
        created_at: row.try_get("created_at")?,
    })
}

fn product_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ProductRecord> {
    Ok(ProductRecord {
        id: int(row.try_get("id")?)?,
        platform_id: int(row.try_get("platform_id")?)?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn rollout_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<RolloutRecord> {
    Ok(RolloutRecord {
        id: row.try_get("id")?,
        product: int(row.try_get("product_id")?)?,
        group: row.try_get("group_name")?,
        release: int(row.try_get("release")?)?,
        status: named(row, "status", RolloutStatus::parse)?,
        engine: serde_json::from_str(row.try_get("engine")?)?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn member_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<MemberRecord> {
    Ok(MemberRecord {
        member: serde_json::from_str(row.try_get("member")?)?,
        attempt: row.try_get("attempt")?,
        budget_approved: row.try_get::<i64, _>("budget_approved")? != 0,
        needed_bytes: row.try_get::<Option<i64>, _>("needed_bytes")?.map(int).transpose()?,
    })
}

fn client_key_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ClientKeyRecord> {
    Ok(ClientKeyRecord {
        key: row.try_get("key")?,
        device: row.try_get("device")?,
        plan: row.try_get("plan")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Whether `err` is a uniqueness violation (a second row with the same key).
fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
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
    let stages: Vec<StageRecord> = serde_json::from_str(row.try_get("stages")?)?;
    Ok(PlanRecord {
        air_bytes_full: stages.iter().map(|s| s.air_bytes_full).sum(),
        id: row.try_get("id")?,
        device: row.try_get("device")?,
        platform_id: int(row.try_get("platform_id")?)?,
        origin: named(row, "origin", PlanOrigin::parse)?,
        status: named(row, "status", PlanStatus::parse)?,
        requested: serde_json::from_str(row.try_get("requested")?)?,
        steps: serde_json::from_str(row.try_get("steps")?)?,
        stages,
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
        actor: row.try_get("actor")?,
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
        state: named(row, "state", AttemptStatus::parse)?,
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

/// Reads a state column by its stable name; an unknown name means the database was edited
/// by hand or written by a newer server, which is reported.
fn named<T>(row: &sqlx::sqlite::SqliteRow, column: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let text: String = row.try_get(column)?;
    parse(&text).ok_or_else(|| StoreError::Backend(format!("stored {column} {text} is unknown")))
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

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Inserts a device (or revives a removed one of the same id); `Conflict` if the id is
/// taken.
async fn insert_device(tx: &mut Tx, d: &NewDevice) -> StoreResult<()> {
    let result = sqlx::query(
        "INSERT INTO devices (id, platform_id, secret_hash, created_at, connectivity, auto_heal) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET platform_id = excluded.platform_id, \
             secret_hash = excluded.secret_hash, created_at = excluded.created_at, \
             connectivity = excluded.connectivity, auto_heal = excluded.auto_heal, last_seen = NULL, \
             described_at = NULL, inventory = NULL, product_id = NULL, tags = '[]', development = 0, \
             pinned_release = NULL, budget_bytes = NULL, disabled = 0, removed_at = NULL \
             WHERE devices.removed_at IS NOT NULL",
    )
    .bind(&d.id)
    .bind(i64::from(d.platform_id))
    .bind(&d.secret_hash)
    .bind(d.created_at)
    .bind(d.policy.connectivity.name())
    .bind(d.policy.auto_heal.map(i64::from))
    .execute(&mut **tx)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("device {}", d.id)));
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin(&self) -> StoreResult<Box<dyn Writes>> {
        let tx = self.writer.begin().await?;
        Ok(Box::new(SqliteWrites { tx, commits: self.commits.clone() }))
    }

    async fn patch(&self, source: &str, target: &str, format: u8) -> StoreResult<Option<PatchRecord>> {
        let row = sqlx::query("SELECT address, length FROM patches WHERE source = ? AND target = ? AND format = ?")
            .bind(source)
            .bind(target)
            .bind(i64::from(format))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(PatchRecord {
                source: source.to_owned(),
                target: target.to_owned(),
                format,
                address: row.try_get("address")?,
                length: int(row.try_get("length")?)?,
            })
        })
        .transpose()
    }

    async fn token_count(&self) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens").fetch_one(&self.pool).await?;
        int(count)
    }

    async fn find_token(&self, token_hash: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY name, id").fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn live_token(&self, name: &str) -> StoreResult<Option<TokenRecord>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE name = ? AND revoked_at IS NULL")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
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

    async fn get_device(&self, id: &str) -> StoreResult<Option<DeviceRecord>> {
        let row = sqlx::query("SELECT * FROM devices WHERE id = ? AND removed_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn list_devices(&self) -> StoreResult<Vec<DeviceRecord>> {
        let rows =
            sqlx::query("SELECT * FROM devices WHERE removed_at IS NULL ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn page_devices(&self, q: &DeviceQuery) -> StoreResult<Vec<DeviceRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM devices WHERE removed_at IS NULL AND (? IS NULL OR id > ?) \
             AND (? IS NULL OR platform_id = ?) AND (? IS NULL OR product_id = ?) \
             AND (? IS NULL OR EXISTS (SELECT 1 FROM json_each(devices.tags) WHERE json_each.value = ?)) \
             AND (? IS NULL OR disabled = ?) ORDER BY id LIMIT ?",
        )
        .bind(&q.after)
        .bind(&q.after)
        .bind(q.platform_id.map(i64::from))
        .bind(q.platform_id.map(i64::from))
        .bind(q.product.map(i64::from))
        .bind(q.product.map(i64::from))
        .bind(&q.tag)
        .bind(&q.tag)
        .bind(q.disabled.map(i64::from))
        .bind(q.disabled.map(i64::from))
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    async fn device_secret_hash(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT secret_hash FROM devices WHERE id = ? AND removed_at IS NULL AND disabled = 0")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
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

    async fn event_count(&self) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&self.pool).await?;
        int(count)
    }

    async fn compact(&self) -> StoreResult<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await?;
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

    async fn disk_bytes(&self) -> StoreResult<u64> {
        let mut total = 0u64;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            match tokio::fs::metadata(&name).await {
                Ok(meta) => total = total.saturating_add(meta.len()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(StoreError::Backend(format!("{}: {err}", self.path.display()))),
            }
        }
        Ok(total)
    }

    async fn attempt_tallies(&self) -> StoreResult<Vec<AttemptTally>> {
        let rows = sqlx::query("SELECT state, reason, COUNT(*) AS n FROM attempts GROUP BY state, reason")
            .fetch_all(&self.pool)
            .await?;
        let mut tallies = Vec::with_capacity(rows.len());
        for row in &rows {
            let state: String = row.try_get("state")?;
            let Some(state) = AttemptStatus::parse(&state) else {
                // Written by hand or by a newer version: not this version's to count.
                tracing::warn!(state, "attempts in an unknown state are not counted");
                continue;
            };
            tallies.push(AttemptTally { state, reason: row.try_get("reason")?, count: int(row.try_get("n")?)? });
        }
        Ok(tallies)
    }

    async fn get_client_key(&self, key: &str) -> StoreResult<Option<ClientKeyRecord>> {
        let row = sqlx::query("SELECT key, device, plan, created_at FROM client_keys WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(client_key_from_row).transpose()
    }

    async fn get_product(&self, id: u32) -> StoreResult<Option<ProductRecord>> {
        let row =
            sqlx::query("SELECT * FROM products WHERE id = ?").bind(i64::from(id)).fetch_optional(&self.pool).await?;
        row.as_ref().map(product_from_row).transpose()
    }

    async fn list_products(&self) -> StoreResult<Vec<ProductRecord>> {
        let rows = sqlx::query("SELECT * FROM products ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(product_from_row).collect()
    }

    async fn get_group(&self, name: &str) -> StoreResult<Option<GroupRecord>> {
        let row = sqlx::query("SELECT * FROM groups WHERE name = ?").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(group_from_row).transpose()
    }

    async fn list_groups(&self) -> StoreResult<Vec<GroupRecord>> {
        let rows = sqlx::query("SELECT * FROM groups ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(group_from_row).collect()
    }

    async fn get_release(&self, product: u32, number: u32) -> StoreResult<Option<ReleaseRecord>> {
        let row = sqlx::query("SELECT * FROM releases WHERE product_id = ? AND number = ?")
            .bind(i64::from(product))
            .bind(i64::from(number))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    async fn list_releases(&self, product: u32) -> StoreResult<Vec<ReleaseRecord>> {
        let rows = sqlx::query("SELECT * FROM releases WHERE product_id = ? ORDER BY number")
            .bind(i64::from(product))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(release_from_row).collect()
    }

    async fn air_bytes_since(&self, device: &str, since: i64) -> StoreResult<u64> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(MAX(air_bytes, bytes_sent)), 0) FROM attempts WHERE device = ? AND created_at >= ?",
        )
        .bind(device)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        int(total)
    }

    async fn get_rollout(&self, id: i64) -> StoreResult<Option<RolloutRecord>> {
        let row = sqlx::query("SELECT * FROM rollouts WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    async fn list_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        let rows = sqlx::query("SELECT * FROM rollouts ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn rollout_members(&self, rollout: i64) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query("SELECT * FROM rollout_members WHERE rollout = ? ORDER BY device")
            .bind(rollout)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_from_row).collect()
    }
}

/// A write transaction on the store's one writer connection.
struct SqliteWrites {
    tx: Tx,
    commits: Arc<Commits>,
}

#[async_trait]
impl Writes for SqliteWrites {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        self.commits.before_commit();
        self.tx.commit().await?;
        Ok(())
    }

    async fn put_patch(&mut self, patch: &PatchRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO patches (source, target, format, address, length, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&patch.source)
        .bind(&patch.target)
        .bind(i64::from(patch.format))
        .bind(&patch.address)
        .bind(i64::from(patch.length))
        .bind(crate::auth::now_millis())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn create_token(&mut self, token: &TokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO tokens (name, token_hash, role, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.name)
        .bind(&token.token_hash)
        .bind(&token.role)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&mut *self.tx)
        .await
        .map_err(|err| match is_unique_violation(&err) {
            true => StoreError::Conflict(format!("token {}", token.name)),
            false => err.into(),
        })?;
        Ok(())
    }

    async fn revoke_token(&mut self, name: &str, at: i64) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(at)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn rotate_token(&mut self, name: &str, token_hash: &str) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE tokens SET token_hash = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(token_hash)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn put_module(&mut self, m: &ModuleRecord) -> StoreResult<bool> {
        let result = sqlx::query(
            "INSERT INTO modules (sha256, filename, format, platform_id, function, module_index, version, size, \
             module_sha256, integrity, dependencies, start_address, uploaded_at, statement, security_counter) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
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
        .bind(&m.statement)
        .bind(db_int(m.security_counter))
        .execute(&mut *self.tx)
        .await?;
        Ok(result.rows_affected() == 1)
    }
    async fn set_module_statement(
        &mut self,
        sha256: &str,
        statement: &str,
        security_counter: u64,
    ) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE modules SET statement = ?, security_counter = ? WHERE sha256 = ?")
            .bind(statement)
            .bind(db_int(security_counter))
            .bind(sha256)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn place_module(&mut self, sha256: &str, platform_id: u16, start_address: u32) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE modules SET platform_id = ?, start_address = ? WHERE sha256 = ?")
            .bind(i64::from(platform_id))
            .bind(i64::from(start_address))
            .bind(sha256)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_device(&mut self, d: &NewDevice) -> StoreResult<()> {
        insert_device(&mut self.tx, d).await
    }
    async fn set_device_secret(&mut self, id: &str, secret_hash: &str) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE devices SET secret_hash = ? WHERE id = ? AND removed_at IS NULL")
            .bind(secret_hash)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn set_device_disabled(&mut self, id: &str, disabled: bool) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE devices SET disabled = ? WHERE id = ? AND removed_at IS NULL")
            .bind(i64::from(disabled))
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn remove_device(&mut self, id: &str, at: i64) -> StoreResult<bool> {
        // The empty hash matches no secret: nothing can log in as a removed device.
        let result =
            sqlx::query("UPDATE devices SET removed_at = ?, secret_hash = '' WHERE id = ? AND removed_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(&mut *self.tx)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn touch_device(&mut self, id: &str, at: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn record_inventory(&mut self, id: &str, inventory: &Inventory) -> StoreResult<()> {
        sqlx::query(
            "UPDATE devices SET inventory = ?, described_at = ?, \
             last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?",
        )
        .bind(serde_json::to_string(inventory)?)
        .bind(inventory.described_at)
        .bind(inventory.described_at)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn set_policy(&mut self, id: &str, policy: &Policy) -> StoreResult<bool> {
        let result = sqlx::query("UPDATE devices SET connectivity = ?, auto_heal = ? WHERE id = ?")
            .bind(policy.connectivity.name())
            .bind(policy.auto_heal.map(i64::from))
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_plan(&mut self, p: &PlanRecord) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO plans (device, platform_id, origin, status, requested, steps, inventory_key, connectivity, \
             bytes_total, air_bytes, attempt, created_at, stages, manifest) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING id",
        )
        .bind(&p.device)
        .bind(i64::from(p.platform_id))
        .bind(p.origin.name())
        .bind(p.status.name())
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
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(id)
    }

    async fn supersede_plans(&mut self, device: &str, keep: i64) -> StoreResult<u64> {
        let result =
            sqlx::query("UPDATE plans SET status = 'superseded' WHERE device = ? AND status = 'proposed' AND id != ?")
                .bind(device)
                .bind(keep)
                .execute(&mut *self.tx)
                .await?;
        Ok(result.rows_affected())
    }

    async fn transition_plan(
        &mut self,
        id: i64,
        from: PlanStatus,
        to: PlanStatus,
        attempt: Option<i64>,
    ) -> StoreResult<bool> {
        let result =
            sqlx::query("UPDATE plans SET status = ?, attempt = COALESCE(?, attempt) WHERE id = ? AND status = ?")
                .bind(to.name())
                .bind(attempt)
                .bind(id)
                .bind(from.name())
                .execute(&mut *self.tx)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn append_event(&mut self, event: &Event) -> StoreResult<Event> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (at, device, kind, data, actor) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(event.at)
        .bind(&event.device)
        .bind(&event.kind)
        .bind(serde_json::to_string(&event.data)?)
        .bind(&event.actor)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(Event { id, ..event.clone() })
    }

    async fn prune_events(&mut self, before: i64, keep: u64) -> StoreResult<u64> {
        let result =
            sqlx::query("DELETE FROM events WHERE at < ? OR id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?")
                .bind(before)
                .bind(db_int(keep))
                .execute(&mut *self.tx)
                .await?;
        Ok(result.rows_affected())
    }

    async fn create_attempt(&mut self, a: &AttemptRecord) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO attempts (device, state, reason, reason_code, plan, plan_id, signed, bytes_total, air_bytes, \
             bytes_done, bytes_sent, bytes_resent, requests, offers_sent, sent_record, finished, created_at, updated_at, \
             stages, stage, stage_base) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&a.device)
        .bind(a.state.name())
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
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|err| match is_unique_violation(&err) {
            true => StoreError::Conflict(format!("an unfinished attempt for device {}", a.device)),
            false => err.into(),
        })?;
        Ok(id)
    }

    async fn update_attempt(&mut self, a: &AttemptRecord) -> StoreResult<()> {
        sqlx::query(
            "UPDATE attempts SET state = ?, reason = ?, reason_code = ?, bytes_done = ?, bytes_sent = ?, \
             bytes_resent = ?, requests = ?, offers_sent = ?, sent_record = ?, finished = ?, updated_at = ?, stage = ?, \
             stage_base = ?, plan = ? WHERE id = ?",
        )
        .bind(a.state.name())
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
        .bind(serde_json::to_string(&a.plan)?)
        .bind(a.id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn claim_client_key(&mut self, key: &ClientKeyRecord) -> StoreResult<ClientKeyRecord> {
        sqlx::query(
            "INSERT INTO client_keys (key, device, plan, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&key.key)
        .bind(&key.device)
        .bind(key.plan)
        .bind(key.created_at)
        .execute(&mut *self.tx)
        .await?;
        let row = sqlx::query("SELECT key, device, plan, created_at FROM client_keys WHERE key = ?")
            .bind(&key.key)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref()
            .map(client_key_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::Backend(format!("client key {} vanished", key.key)))
    }
    async fn create_product(&mut self, p: &ProductRecord) -> StoreResult<()> {
        let result = sqlx::query(
            "INSERT INTO products (id, platform_id, name, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(i64::from(p.id))
        .bind(i64::from(p.platform_id))
        .bind(&p.name)
        .bind(p.created_at)
        .execute(&mut *self.tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("product {}", p.id)));
        }
        Ok(())
    }

    async fn set_membership(&mut self, id: &str, m: &Membership) -> StoreResult<bool> {
        let result = sqlx::query(
            "UPDATE devices SET product_id = ?, tags = ?, development = ?, pinned_release = ?, budget_bytes = ? \
             WHERE id = ?",
        )
        .bind(m.product.map(i64::from))
        .bind(serde_json::to_string(&m.tags)?)
        .bind(i64::from(m.development))
        .bind(m.pinned_release.map(i64::from))
        .bind(m.budget_bytes.map(db_int))
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn put_group(&mut self, g: &GroupRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO groups (name, product_id, filter, windows, budget_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET product_id = excluded.product_id, filter = excluded.filter, \
             windows = excluded.windows, budget_bytes = excluded.budget_bytes",
        )
        .bind(&g.name)
        .bind(i64::from(g.product))
        .bind(serde_json::to_string(&g.filter)?)
        .bind(serde_json::to_string(&g.windows)?)
        .bind(g.budget_bytes.map(db_int))
        .bind(g.created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn delete_group(&mut self, name: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM groups WHERE name = ?").bind(name).execute(&mut *self.tx).await?;
        Ok(result.rows_affected() == 1)
    }

    async fn create_release(&mut self, r: &ReleaseRecord) -> StoreResult<ReleaseRecord> {
        // The number is the next free one, assigned in the same statement (no two
        // releases of a product share a number, even when created at once).
        let number: i64 = sqlx::query_scalar(
            "INSERT INTO releases (product_id, number, modules, note, created_at) \
             SELECT ?, COALESCE(MAX(number), 0) + 1, ?, ?, ? FROM releases WHERE product_id = ? RETURNING number",
        )
        .bind(i64::from(r.product))
        .bind(serde_json::to_string(&r.modules)?)
        .bind(&r.note)
        .bind(r.created_at)
        .bind(i64::from(r.product))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(ReleaseRecord { number: int(number)?, ..r.clone() })
    }

    async fn create_rollout(&mut self, r: &RolloutRecord) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO rollouts (product_id, group_name, release, status, engine, created_by, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(i64::from(r.product))
        .bind(&r.group)
        .bind(i64::from(r.release))
        .bind(r.status.name())
        .bind(serde_json::to_string(&r.engine)?)
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(r.updated_at)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    async fn save_rollout(&mut self, r: &RolloutRecord, members: &[MemberRecord]) -> StoreResult<()> {
        sqlx::query("UPDATE rollouts SET status = ?, engine = ?, updated_at = ? WHERE id = ?")
            .bind(r.status.name())
            .bind(serde_json::to_string(&r.engine)?)
            .bind(r.updated_at)
            .bind(r.id)
            .execute(&mut *self.tx)
            .await?;
        for m in members {
            sqlx::query(
                "INSERT INTO rollout_members (rollout, device, member, attempt, budget_approved, needed_bytes) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rollout, device) DO UPDATE SET member = excluded.member, \
                 attempt = excluded.attempt, budget_approved = excluded.budget_approved, \
                 needed_bytes = excluded.needed_bytes",
            )
            .bind(r.id)
            .bind(&m.member.device)
            .bind(serde_json::to_string(&m.member)?)
            .bind(m.attempt)
            .bind(i64::from(m.budget_approved))
            .bind(m.needed_bytes.map(db_int))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}
