use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::{CryptoError, SecretKey32};

/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// An Ed25519 signing key (RFC 8032), made from a 32-byte seed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

impl SigningKey {
    /// The key whose RFC 8032 private seed is `seed`.
    pub fn from_seed(seed: &SecretKey32) -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.expose())
            .map_err(|_| CryptoError::KeyRejected)?;
        Ok(Self { pair })
    }
    /// The public key (32 bytes).
    pub fn public_key(&self) -> [u8; ED25519_PUBLIC_KEY_LEN] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }
    /// `Ed25519-Sign(seed, msg)`: a 64-byte signature.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// Verifies an Ed25519 signature.
pub fn verify_ed25519(public_key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(msg, sig)
        .map_err(|_| CryptoError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify() {
        let k = SigningKey::from_seed(&SecretKey32::generate()).unwrap();
        let sig = k.sign(b"m");
        verify_ed25519(&k.public_key(), b"m", &sig).unwrap();
        assert!(verify_ed25519(&k.public_key(), b"n", &sig).is_err());
    }
}
