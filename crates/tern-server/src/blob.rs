//! Content-addressed storage for module files: SHA-256 → bytes.
//!
//! The core sees only [`BlobStore`], so an S3-compatible store can replace [`FsBlobStore`].
//! A blob's address is the hex SHA-256 of its bytes, so storing the same file twice is a
//! no-op and a blob can never be modified in place.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// Why a blob operation failed.
#[derive(Debug)]
pub enum BlobError {
    /// The address is not 64 lowercase hex digits.
    BadAddress,
    /// The backend failed; the message is for logs only.
    Backend(String),
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::BadAddress => f.write_str("blob address is not a hex SHA-256"),
            BlobError::Backend(msg) => write!(f, "blob storage error: {msg}"),
        }
    }
}

impl std::error::Error for BlobError {}

/// The hex SHA-256 of `bytes`: the address [`BlobStore::put`] stores them under.
pub fn address_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Storage for immutable blobs addressed by SHA-256.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` (durably, before returning) and returns their address.
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError>;
    /// The bytes at `address`, if stored.
    async fn get(&self, address: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Up to `length` bytes at `offset` of the blob at `address` (block transfer reads).
    async fn read_range(&self, address: &str, offset: u64, length: usize) -> Result<Option<Vec<u8>>, BlobError>;
    /// The bytes of every blob stored, added up.
    async fn stored_bytes(&self) -> Result<u64, BlobError>;
}

/// Blobs as files under `<root>/sha256/<first two hex digits>/<all 64 hex digits>`.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsBlobStore { root: root.into() }
    }

    /// Deletes the temporary files a crash during a write left behind (`.tmp-*` beside the
    /// blobs); returns how many. Call it before the store is used: a write in progress
    /// would lose its file.
    pub fn remove_temporaries(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        each_entry(&self.root.join("sha256"), |entry, temporary| {
            if temporary {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn path(&self, address: &str) -> Result<PathBuf, BlobError> {
        let valid = address.len() == 64 && address.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(BlobError::BadAddress);
        }
        Ok(self.root.join("sha256").join(&address[..2]).join(address))
    }
}

fn backend(err: impl std::fmt::Display) -> BlobError {
    BlobError::Backend(err.to_string())
}

/// Writes `bytes` to `path` so that a crash leaves either no file or the whole file:
/// write a temporary file, flush it to disk, rename it into place, flush the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("blob paths always have a parent directory");
    std::fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".tmp-{}-{:x}", std::process::id(), rand_core::RngCore::next_u64(&mut rand_core::OsRng)));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let address = address_of(bytes);
        let path = self.path(&address)?;
        if tokio::fs::try_exists(&path).await.map_err(backend)? {
            return Ok(address);
        }
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(backend)?
            .map_err(backend)?;
        Ok(address)
    }

    async fn get(&self, address: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match tokio::fs::read(self.path(address)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn read_range(&self, address: &str, offset: u64, length: usize) -> Result<Option<Vec<u8>>, BlobError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = match tokio::fs::File::open(self.path(address)?).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(backend(err)),
        };
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(backend)?;
        let mut buf = Vec::with_capacity(length.min(1 << 20));
        file.take(length as u64).read_to_end(&mut buf).await.map_err(backend)?;
        Ok(Some(buf))
    }

    async fn stored_bytes(&self) -> Result<u64, BlobError> {
        let top = self.root.join("sha256");
        tokio::task::spawn_blocking(move || stored_bytes(&top)).await.map_err(backend)?.map_err(backend)
    }
}

/// The sizes of the blob files under `top` (`sha256/<shard>/<address>`), temporaries left
/// out, added up.
fn stored_bytes(top: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    each_entry(top, |entry, temporary| {
        // A blob removed between listing and reading its size is simply not counted.
        if let (false, Ok(meta)) = (temporary, entry.metadata()) {
            total = total.saturating_add(meta.len());
        }
        Ok(())
    })?;
    Ok(total)
}

/// Calls `f` with every file under `top`'s shard directories (`<shard>/<name>`) and whether
/// it is a temporary (`.tmp-*`); nothing when `top` does not exist yet.
fn each_entry(top: &Path, mut f: impl FnMut(std::fs::DirEntry, bool) -> std::io::Result<()>) -> std::io::Result<()> {
    let shards = match std::fs::read_dir(top) {
        Ok(shards) => shards,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for shard in shards {
        let shard = shard?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&shard)? {
            let entry = entry?;
            let temporary = entry.file_name().to_string_lossy().starts_with(".tmp-");
            f(entry, temporary)?;
        }
    }
    Ok(())
}
