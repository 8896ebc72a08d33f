//! Patches (`tern-delta`): for each module a plan sends, the server makes a delta from the
//! module the device runs in that slot and a compressed image (a patch from nothing), once
//! per (source, target, format), keeps them as blobs, and the plan sends whichever of
//! patch and module is smallest.
//!
//! Patches change nothing about trust: the device rebuilds the module and checks it against
//! the signed SHA-256 before anything is installed. A device that cannot use a patch says
//! why (`delta_source`, `delta_failed`) and gets the whole module (see `updates`).

use std::sync::Arc;

use crate::blob::BlobStore;
use crate::store::{PatchRecord, Store, StoreError};

/// A patch could not be made or kept.
#[derive(Debug)]
pub enum PatchError {
    /// Reading or writing blobs failed.
    Blob(String),
    /// The store failed.
    Store(StoreError),
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchError::Blob(msg) => write!(f, "patch blobs: {msg}"),
            PatchError::Store(err) => write!(f, "patch store: {err}"),
        }
    }
}

impl std::error::Error for PatchError {}

impl From<StoreError> for PatchError {
    fn from(err: StoreError) -> Self {
        PatchError::Store(err)
    }
}

/// The format version patches are made in (what devices apply).
pub const FORMAT: u8 = tern_delta::VERSION;

/// Makes and keeps patches.
#[derive(Clone)]
pub struct Patches {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
}

impl Patches {
    /// Patches kept in `store` (index) and `blobs` (bytes).
    pub fn new(store: Arc<dyn Store>, blobs: Arc<dyn BlobStore>) -> Self {
        Patches { store, blobs }
    }

    /// The patch rebuilding module `target` (SHA-256, hex) from module `source` — or from
    /// nothing, a compressed image, when `source` is `None` — made now unless kept from
    /// before. `load_address` is where the module runs (0: inferred from its bytes).
    /// `None` when the blob store lacks either module's bytes.
    pub async fn get_or_make(
        &self,
        source: Option<&str>,
        target: &str,
        load_address: u32,
    ) -> Result<Option<PatchRecord>, PatchError> {
        let key = source.unwrap_or("");
        if let Some(kept) = self.store.patch(key, target, FORMAT).await? {
            return Ok(Some(kept));
        }
        let blob = |err: crate::blob::BlobError| PatchError::Blob(err.to_string());
        let Some(new) = self.blobs.get(target).await.map_err(blob)? else { return Ok(None) };
        let old = match source {
            Some(source) => match self.blobs.get(source).await.map_err(blob)? {
                Some(old) => old,
                None => return Ok(None),
            },
            None => Vec::new(),
        };
        let config =
            tern_delta::Config { load_address: (load_address != 0).then_some(load_address), ..Default::default() };
        let started = std::time::Instant::now();
        let patch = tokio::task::spawn_blocking(move || tern_delta::make(&old, &new, &config))
            .await
            .map_err(|err| PatchError::Blob(format!("patch generation stopped: {err}")))?;
        let address = self.blobs.put(&patch).await.map_err(blob)?;
        let record = PatchRecord {
            source: key.to_owned(),
            target: target.to_owned(),
            format: FORMAT,
            address,
            length: u32::try_from(patch.len()).unwrap_or(u32::MAX),
        };
        let mut writes = self.store.begin().await?;
        writes.put_patch(&record).await?;
        writes.commit().await?;
        tracing::info!(
            source = key,
            target,
            length = record.length,
            ms = started.elapsed().as_millis() as u64,
            "made a patch"
        );
        Ok(Some(record))
    }
}
