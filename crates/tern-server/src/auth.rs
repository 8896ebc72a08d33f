//! Secrets: operator API tokens and device secrets.
//!
//! Both are 32 random bytes from the operating system, shown once and stored only as their
//! SHA-256. A plain hash (rather than a password hash) is enough because the secrets are
//! random with 256 bits of entropy, not chosen by people.

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// A new operator API token (`tern_` and 64 hex digits).
pub fn new_token() -> String {
    format!("tern_{}", random_hex())
}

/// A new device secret (64 hex digits).
pub fn new_device_secret() -> String {
    random_hex()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token or secret: hex SHA-256.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two stored hashes without an early exit, so timing does not tell how much of a
/// guess matched.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub fn now_millis() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
