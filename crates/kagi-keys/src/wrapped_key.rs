//! The wrapped-key blob: a data key (or a small payload) encrypted under one version of a
//! KEK, self-describing so that decryption needs no key name.
//!
//! ```text
//! offset  size  field
//! 0       1     format        0x01
//! 1       16    key id        the KEK's immutable id
//! 17      4     key version   big-endian u32, >= 1
//! 21      12    nonce         random, AES-GCM IV
//! 33      n+16  ciphertext    AES-256-GCM(KEK_v, nonce, aad, plaintext) || tag
//! aad = blob[0..33] || canonical(encryption context)
//! ```

use crate::{EncryptionContext, KeyId, KeyModelError};

/// The only blob format this version writes and reads.
pub const FORMAT_V1: u8 = 0x01;
/// Length of the header (format, key id, version, nonce).
pub const HEADER_LEN: usize = 33;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// The largest plaintext a blob may carry (small-payload encrypt is capped at 4 KiB).
pub const MAX_PLAINTEXT: usize = 4096;
/// The largest blob accepted.
pub const MAX_BLOB_LEN: usize = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN;

/// A parsed blob. Parsing checks structure only; authenticity is checked by decryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedBlob {
    /// The KEK's id.
    pub key_id: KeyId,
    /// The KEK version that sealed it.
    pub version: u32,
    /// The AES-GCM nonce.
    pub nonce: [u8; 12],
    /// Ciphertext with the tag appended.
    pub ciphertext: Vec<u8>,
}

impl WrappedBlob {
    /// The 33-byte header, which starts the associated data.
    pub fn header(key_id: &KeyId, version: u32, nonce: &[u8; 12]) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = FORMAT_V1;
        h[1..17].copy_from_slice(&key_id.0);
        h[17..21].copy_from_slice(&version.to_be_bytes());
        h[21..33].copy_from_slice(nonce);
        h
    }

    /// `header || canonical(context)`: the AES-GCM associated data.
    pub fn aad(key_id: &KeyId, version: u32, nonce: &[u8; 12], ctx: &EncryptionContext) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN + 64);
        aad.extend_from_slice(&Self::header(key_id, version, nonce));
        ctx.write_canonical(&mut aad);
        aad
    }

    /// Parses a blob, refusing anything structurally wrong with a precise reason.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyModelError> {
        if bytes.is_empty() {
            return Err(KeyModelError::MalformedBlob("it is empty"));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(KeyModelError::MalformedBlob(
                "unknown format byte (not a kagi blob, or from a newer version)",
            ));
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(KeyModelError::MalformedBlob("it is truncated"));
        }
        if bytes.len() > MAX_BLOB_LEN {
            return Err(KeyModelError::MalformedBlob(
                "it is longer than any kagi blob",
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[1..17]);
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[17..21]);
        let version = u32::from_be_bytes(v);
        if version == 0 {
            return Err(KeyModelError::MalformedBlob("key version 0 does not exist"));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[21..33]);
        Ok(Self {
            key_id: KeyId(id),
            version,
            nonce,
            ciphertext: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// Serializes the blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&Self::header(&self.key_id, self.version, &self.nonce));
        out.extend_from_slice(&self.ciphertext);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WrappedBlob {
        WrappedBlob {
            key_id: KeyId([7; 16]),
            version: 3,
            nonce: [9; 12],
            ciphertext: vec![1; 48],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(WrappedBlob::parse(&b.to_bytes()).unwrap(), b);
    }

    #[test]
    fn refuses_damage() {
        let bytes = sample().to_bytes();
        assert!(WrappedBlob::parse(&[]).is_err());
        assert!(WrappedBlob::parse(&bytes[..40]).is_err());
        let mut wrong = bytes.clone();
        wrong[0] = 2;
        assert!(WrappedBlob::parse(&wrong).is_err());
        let mut v0 = bytes.clone();
        v0[17..21].copy_from_slice(&[0; 4]);
        assert!(WrappedBlob::parse(&v0).is_err());
        assert!(WrappedBlob::parse(&vec![1u8; MAX_BLOB_LEN + 1]).is_err());
    }

    #[test]
    fn aad_binds_header_and_context() {
        let id = KeyId([1; 16]);
        let ctx = EncryptionContext::from_kv_args(&["t=a"]).unwrap();
        let a = WrappedBlob::aad(&id, 1, &[0; 12], &ctx);
        assert_ne!(a, WrappedBlob::aad(&id, 2, &[0; 12], &ctx));
        assert_ne!(
            a,
            WrappedBlob::aad(&id, 1, &[0; 12], &EncryptionContext::empty())
        );
        assert_eq!(&a[..HEADER_LEN], &WrappedBlob::header(&id, 1, &[0; 12]));
    }
}
