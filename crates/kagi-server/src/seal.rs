//! The master key and what protects it.
//!
//! [`MasterKey`] is the seam for protectors: today a software key reconstructed from Shamir
//! shares (or, for `--dev` only, read from the data directory); an HSM-held key later. The
//! master key only ever wraps and unwraps KEKs and the audit signing key.

use kagi_crypto::{AeadKey, SecretBytes, SecretKey32, NONCE_LEN};
use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// Wraps and unwraps key material under the master key.
pub trait MasterKey: Send + Sync + std::fmt::Debug {
    /// `nonce || AES-256-GCM(master, nonce, aad, plaintext)`.
    fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServiceError>;
    /// Inverse of [`wrap`](Self::wrap); fails if `aad` differs or the bytes were changed.
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ServiceError>;
}

/// A master key held in this process's memory (Shamir and dev protectors).
#[derive(Debug)]
pub struct SoftwareMasterKey {
    aead: AeadKey,
}

impl SoftwareMasterKey {
    /// Uses `key` as the master key.
    pub fn new(key: &SecretKey32) -> Self {
        Self {
            aead: AeadKey::new(key),
        }
    }
}

impl MasterKey for SoftwareMasterKey {
    fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServiceError> {
        let (nonce, ct) = self.aead.seal(aad, plaintext);
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ServiceError> {
        if wrapped.len() < NONCE_LEN {
            return Err(ServiceError::Internal(
                "wrapped key material is truncated".into(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        self.aead
            .open(&nonce, aad, &wrapped[NONCE_LEN..])
            .map_err(|_| {
                ServiceError::Internal(
                    "wrapped key material does not open under the master key".into(),
                )
            })
    }
}

/// Associated data for the seal check value.
pub const SEAL_CHECK_AAD: &[u8] = b"kagi/seal-check/v1";
/// Associated data for the wrapped audit signing seed.
pub const AUDIT_KEY_AAD: &[u8] = b"kagi/audit-key/v1";

/// Associated data binding a KEK version's material to its key id, version and name.
pub fn kek_aad(id: &kagi_keys::KeyId, version: u32, name: &str) -> Vec<u8> {
    let mut aad = b"kagi/kek/v1\0".to_vec();
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The stored description of the seal (setting `seal`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealRecord {
    /// `shamir` or `dev`.
    pub kind: String,
    /// Number of shares made at init.
    pub shares: u8,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// The master key's wrap of a fixed value: proves a reconstructed key is the right one.
    pub check: String,
}

impl SealRecord {
    /// A record for `master`, with a fresh check value.
    pub fn new(
        kind: &str,
        shares: u8,
        threshold: u8,
        master: &dyn MasterKey,
    ) -> Result<Self, ServiceError> {
        Ok(Self {
            kind: kind.to_string(),
            shares,
            threshold,
            check: hex::encode(master.wrap(SEAL_CHECK_AAD, b"kagi")?),
        })
    }

    /// True when `master` is the key this record was made with.
    pub fn matches(&self, master: &dyn MasterKey) -> bool {
        hex::decode(&self.check)
            .ok()
            .and_then(|w| master.unwrap(SEAL_CHECK_AAD, &w).ok())
            .is_some_and(|p| p.expose() == b"kagi")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_tells_right_key_from_wrong() {
        let right = SoftwareMasterKey::new(&SecretKey32::generate());
        let wrong = SoftwareMasterKey::new(&SecretKey32::generate());
        let rec = SealRecord::new("shamir", 3, 2, &right).unwrap();
        assert!(rec.matches(&right));
        assert!(!rec.matches(&wrong));
    }

    #[test]
    fn kek_aad_binds_name_and_version() {
        let m = SoftwareMasterKey::new(&SecretKey32::generate());
        let id = kagi_keys::KeyId([1; 16]);
        let w = m.wrap(&kek_aad(&id, 1, "k1"), b"material").unwrap();
        assert!(m.unwrap(&kek_aad(&id, 1, "k1"), &w).is_ok());
        assert!(m.unwrap(&kek_aad(&id, 2, "k1"), &w).is_err());
        assert!(m.unwrap(&kek_aad(&id, 1, "k2"), &w).is_err());
    }
}
