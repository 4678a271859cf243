//! Bearer tokens: 256 random bits, shown once, stored only as their SHA-256 hash.

use base64::Engine;

/// Prefix that makes kagi tokens easy to spot in secret scanners.
pub const TOKEN_PREFIX: &str = "kagi_";

/// A fresh token string.
pub fn new_token() -> String {
    let raw: [u8; 32] = kagi_crypto::random_array();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

/// The stored form: SHA-256 of the token string. A hash suffices (no slow KDF) because the
/// token is 256 random bits, not a password.
pub fn token_hash(token: &str) -> [u8; 32] {
    kagi_crypto::sha256(token.as_bytes())
}

/// The public accessor: the first 8 bytes of the hash, hex.
pub fn accessor(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}
