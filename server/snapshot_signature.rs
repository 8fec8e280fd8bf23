//! Signed snapshots: the one definition of what a snapshot key signs, shared by the CLI's
//! `snapshot save --key-file`, which signs, and `qistatus-server restore
//! --snapshot-key-file`, which refuses what the key did not sign.
//!
//! The signature is the HMAC-SHA256, under the operator's key, of the snapshot's SHA-256
//! (the digest `FILE.sha256` records), kept as hex in `FILE.sig`. The digest binds every
//! byte of the file; the key, which the operator keeps off the server's host, binds the
//! digest: someone who can write the file and its `.sha256` (a shell on the backup host)
//! can make a snapshot restore without a key configured, not with one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What is signed: a fixed label, then the digest in lower-case hex.
fn signed(key: &[u8], sha256_hex: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key_bytes(key))
        .expect("HMAC takes keys of any length");
    mac.update(b"qistatus-snapshot-v1\n");
    mac.update(sha256_hex.trim().to_ascii_lowercase().as_bytes());
    mac
}

/// A key file's content, without the line end an editor adds.
fn key_bytes(key: &[u8]) -> &[u8] {
    key.trim_ascii()
}

/// The signature (hex) of a snapshot whose SHA-256 is `sha256_hex`, under `key`.
pub fn snapshot_signature(key: &[u8], sha256_hex: &str) -> String {
    hex::encode(signed(key, sha256_hex).finalize().into_bytes())
}

/// Whether `signature_hex` is `key`'s signature of the SHA-256 `sha256_hex` (compared in
/// constant time).
pub fn snapshot_signed(key: &[u8], sha256_hex: &str, signature_hex: &str) -> bool {
    hex::decode(signature_hex.trim())
        .is_ok_and(|given| signed(key, sha256_hex).verify_slice(&given).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_signs_and_only_that_digest() {
        let digest = "ab".repeat(32);
        let signature = snapshot_signature(b"operator key\n", &digest);
        assert!(snapshot_signed(b"operator key", &digest, &signature));
        assert!(snapshot_signed(
            b"operator key",
            &digest.to_uppercase(),
            &signature
        ));
        assert!(!snapshot_signed(b"another key", &digest, &signature));
        assert!(!snapshot_signed(
            b"operator key",
            &"cd".repeat(32),
            &signature
        ));
        assert!(!snapshot_signed(b"operator key", &digest, "not hex"));
        assert!(!snapshot_signed(b"operator key", &digest, ""));
    }
}
