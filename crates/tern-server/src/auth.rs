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

/// What an operator token may do; each role may do what the roles before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything (`GET`), changes nothing.
    Viewer,
    /// Also updates devices: uploads, plans, attempts, commands, rollouts, fleet, device
    /// registration, secrets and the disabled state.
    Operator,
    /// Also manages tokens and does what cannot be undone (removing devices, deleting
    /// groups).
    Admin,
}

impl Role {
    /// Every role, least powerful first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The stored and shown name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role called `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// The role an API call needs: reading needs a viewer; tokens (any method), deleting
    /// and removing need an admin; every other change needs an operator.
    pub fn required(method: &str, path: &str) -> Role {
        if path == "/api/tokens" || path.starts_with("/api/tokens/") || method.eq_ignore_ascii_case("DELETE") {
            Role::Admin
        } else if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
            Role::Viewer
        } else {
            Role::Operator
        }
    }
}

/// The token of an `Authorization` header value: the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110 §11.1), then the token.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_method_and_path() {
        assert_eq!(Role::required("GET", "/api/devices"), Role::Viewer);
        assert_eq!(Role::required("POST", "/api/devices"), Role::Operator);
        assert_eq!(Role::required("PATCH", "/api/devices/a"), Role::Operator);
        assert_eq!(Role::required("DELETE", "/api/devices/a"), Role::Admin);
        assert_eq!(Role::required("GET", "/api/tokens"), Role::Admin);
        assert_eq!(Role::required("POST", "/api/tokens/x/rotate"), Role::Admin);
        assert_eq!(Role::required("GET", "/api/tokensmith"), Role::Viewer);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(Role::parse("operator"), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
