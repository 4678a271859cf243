//! The envelope header: layout, parsing, and the per-segment nonce (`docs/envelope.md`).

use std::io::Read;

use super::EnvelopeError;

/// File magic.
pub const MAGIC: &[u8; 8] = b"kagienc1";
/// Default plaintext bytes per segment.
pub const DEFAULT_SEGMENT: u32 = 64 * 1024;
/// Longest canonical context: 64 pairs of 256-byte keys and 1024-byte values.
const MAX_CONTEXT: usize = 2 + 64 * (2 + 256 + 2 + 1024);
/// Largest segment size a header may name.
pub const MAX_SEGMENT: u32 = 16 << 20;

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per segment.
    pub segment: u32,
    /// The wrapped DEK (a kagi blob).
    pub wrapped_dek: Vec<u8>,
    /// Canonical encryption context bytes.
    pub context: Vec<u8>,
    /// Random per file: the segment key is HKDF-SHA-256(DEK, salt), so a data key reused by
    /// the cache never meets the same nonce twice.
    pub salt: [u8; 32],
    /// Nonce prefix.
    pub prefix: [u8; 7],
}

/// HKDF `info` for the segment key.
pub(super) const SEGMENT_KEY_INFO: &[u8] = b"kagienc1 segment key";

impl Header {
    /// The header's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(64 + self.wrapped_dek.len() + self.context.len());
        h.extend_from_slice(MAGIC);
        h.push(1);
        h.push(1);
        h.extend_from_slice(&self.segment.to_be_bytes());
        h.extend_from_slice(&(self.wrapped_dek.len() as u16).to_be_bytes());
        h.extend_from_slice(&self.wrapped_dek);
        h.extend_from_slice(&(self.context.len() as u32).to_be_bytes());
        h.extend_from_slice(&self.context);
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&self.prefix);
        h
    }

    /// Reads a header from `r`, returning it and its bytes.
    pub fn read(r: &mut (impl Read + ?Sized)) -> Result<(Header, Vec<u8>), EnvelopeError> {
        let mut fixed = [0u8; 16];
        read_exact_or(r, &mut fixed, EnvelopeError::Header("too short"))?;
        if &fixed[..8] != MAGIC {
            return Err(EnvelopeError::Header("wrong magic"));
        }
        if fixed[8] != 1 || fixed[9] != 1 {
            return Err(EnvelopeError::Header("unknown version or algorithm"));
        }
        let segment = u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]);
        if segment == 0 || segment > MAX_SEGMENT {
            return Err(EnvelopeError::Header("segment size out of range"));
        }
        let wlen = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        if !(49..=4145).contains(&wlen) {
            return Err(EnvelopeError::Header("wrapped key length out of range"));
        }
        let mut wrapped = vec![0u8; wlen];
        read_exact_or(
            r,
            &mut wrapped,
            EnvelopeError::Header("truncated wrapped key"),
        )?;
        let mut clen = [0u8; 4];
        read_exact_or(r, &mut clen, EnvelopeError::Header("truncated"))?;
        let clen = u32::from_be_bytes(clen) as usize;
        if !(2..=MAX_CONTEXT).contains(&clen) {
            return Err(EnvelopeError::Header("context length out of range"));
        }
        let mut context = vec![0u8; clen];
        read_exact_or(r, &mut context, EnvelopeError::Header("truncated context"))?;
        let mut salt = [0u8; 32];
        read_exact_or(r, &mut salt, EnvelopeError::Header("truncated salt"))?;
        let mut prefix = [0u8; 7];
        read_exact_or(
            r,
            &mut prefix,
            EnvelopeError::Header("truncated nonce prefix"),
        )?;
        let h = Header {
            segment,
            wrapped_dek: wrapped,
            context,
            salt,
            prefix,
        };
        let bytes = h.to_bytes();
        Ok((h, bytes))
    }
}

fn read_exact_or(
    r: &mut (impl Read + ?Sized),
    buf: &mut [u8],
    e: EnvelopeError,
) -> Result<(), EnvelopeError> {
    r.read_exact(buf).map_err(|io| {
        if io.kind() == std::io::ErrorKind::UnexpectedEof {
            e
        } else {
            EnvelopeError::Io(io)
        }
    })
}

pub(super) fn nonce(prefix: &[u8; 7], i: u64, last: bool) -> Result<[u8; 12], EnvelopeError> {
    let i = u32::try_from(i).map_err(|_| EnvelopeError::Header("more than 2^32 segments"))?;
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&i.to_be_bytes());
    n[11] = last as u8;
    Ok(n)
}
