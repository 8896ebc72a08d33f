//! Entry points shared by the fuzz targets (`fuzz/`) and the regression test that replays
//! their corpus under plain `cargo test`. Each one runs a parser over arbitrary bytes and
//! exercises everything it returns; the only failure is a panic.

use ed25519_dalek::{SigningKey, VerifyingKey};

/// A fixed key for fuzzing verification paths (the signature will almost never verify,
/// but parsing up to the check is exercised).
fn fuzz_key() -> VerifyingKey {
    SigningKey::from_bytes(&[7; 32]).verifying_key()
}

/// Particle module parser.
pub fn particle(data: &[u8]) {
    if let Ok(module) = crate::particle::parse(data) {
        let _ = module.info.dependencies().count();
    }
}

/// Format detection over every format.
pub fn inspect(data: &[u8]) {
    let _ = crate::detect::inspect(data);
}

/// MCUboot image parser.
pub fn mcuboot(data: &[u8]) {
    if let Ok(image) = crate::mcuboot::parse(data) {
        let _ = image.module_info();
        let _ = image.tlvs().count();
        // The committed seeds are signed with this key, so the signature path is reached.
        let _ = image.verify(Some(&fuzz_key()));
    }
}

/// Signed document envelope, signature check and document decoder.
pub fn manifest(data: &[u8]) {
    if let Ok(doc) = crate::manifest::SignedDocument::parse(data) {
        let _ = doc.verify(&[fuzz_key()]);
        let _ = crate::manifest::decode_document(doc.payload);
    }
    // The document decoder on its own: reachable only after a signature check in
    // production, but it must not panic on anything.
    if let Ok(m) = crate::manifest::decode_document(data) {
        let _ = m.modules().count();
        let _ = m.name();
    }
}

/// Release bundle reader.
pub fn bundle(data: &[u8]) {
    if let Ok(bundle) = crate::bundle::Bundle::parse(data) {
        let _ = bundle.unverified_manifest();
        if let Ok(verified) = bundle.verify(&[fuzz_key()]) {
            let _ = verified.modules().count();
        }
    }
}
