//! Envelope files: the application side of the seed's flow. A data key from the key service
//! encrypts the data locally, the wrapped data key is stored in the file's header, and the
//! plaintext data key is wiped as soon as the last segment is sealed or opened.
//!
//! Format (all integers big-endian; `docs/envelope.md` is the normative description):
//! ```text
//! magic "kagienc1" (8) | version 0x01 | algorithm 0x01 (AES-256-GCM STREAM)
//! | segment size u32 | wrapped-DEK length u16 | wrapped DEK | context length u32
//! | canonical context | nonce prefix (7)
//! body: segments of (segment size + 16) bytes, the last one shorter or equal;
//!   nonce_i = prefix || u32(i) || last_flag (0x01 on the final segment, else 0x00)
//!   aad     = SHA-256(header)
//! ```
//! Truncation (at or inside a segment), appended bytes, reordered, duplicated or foreign
//! segments and any bit flip all fail authentication.

use std::io::{Read, Write};

use kagi_crypto::{AeadKey, SecretKey32};

/// File magic.
pub const MAGIC: &[u8; 8] = b"kagienc1";
/// Default plaintext bytes per segment.
pub const DEFAULT_SEGMENT: u32 = 64 * 1024;
const TAG: usize = 16;
const MAX_SEGMENT: u32 = 16 << 20;

/// Why an envelope could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not a kagi envelope, or a damaged header.
    #[error("not a kagi envelope file, or its header is damaged: {0}")]
    Header(&'static str),
    /// A segment failed authentication.
    #[error("the file is damaged or was tampered with (segment {0} does not authenticate)")]
    Segment(u64),
    /// The file ends before its final segment.
    #[error("the file is truncated (it ends before its final segment)")]
    Truncated,
    /// Bytes follow the final segment.
    #[error("the file has extra bytes after its final segment")]
    Trailing,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The data key from the key service is unusable.
    #[error("the key service returned an unusable data key")]
    BadKey,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per segment.
    pub segment: u32,
    /// The wrapped DEK (a kagi blob).
    pub wrapped_dek: Vec<u8>,
    /// Canonical encryption context bytes.
    pub context: Vec<u8>,
    /// Nonce prefix.
    pub prefix: [u8; 7],
}

impl Header {
    /// The header's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(32 + self.wrapped_dek.len() + self.context.len());
        h.extend_from_slice(MAGIC);
        h.push(1);
        h.push(1);
        h.extend_from_slice(&self.segment.to_be_bytes());
        h.extend_from_slice(&(self.wrapped_dek.len() as u16).to_be_bytes());
        h.extend_from_slice(&self.wrapped_dek);
        h.extend_from_slice(&(self.context.len() as u32).to_be_bytes());
        h.extend_from_slice(&self.context);
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
        if clen > 256 * 1024 {
            return Err(EnvelopeError::Header("context too long"));
        }
        let mut context = vec![0u8; clen];
        read_exact_or(r, &mut context, EnvelopeError::Header("truncated context"))?;
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

/// Reads until `buf` is full or EOF; returns the bytes read.
fn fill(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn nonce(prefix: &[u8; 7], i: u64, last: bool) -> Result<[u8; 12], EnvelopeError> {
    let i = u32::try_from(i).map_err(|_| EnvelopeError::Header("more than 2^32 segments"))?;
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&i.to_be_bytes());
    n[11] = last as u8;
    Ok(n)
}

/// Encrypts `input` to `out` under `dek` (32 bytes), writing `header` first. Memory use is
/// two segments whatever the input size. Returns plaintext bytes written.
pub fn seal_stream(
    dek: &[u8],
    header: &Header,
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
) -> Result<u64, EnvelopeError> {
    let key = AeadKey::new(&SecretKey32::from_slice(dek).map_err(|_| EnvelopeError::BadKey)?);
    let hb = header.to_bytes();
    let aad = kagi_crypto::sha256(&hb);
    out.write_all(&hb)?;
    let seg = header.segment as usize;
    let mut cur = vec![0u8; seg];
    let mut next = vec![0u8; seg];
    let mut n = fill(input, &mut cur)?;
    let mut i: u64 = 0;
    let mut total = 0u64;
    let mut buf = Vec::with_capacity(seg + TAG);
    loop {
        // A full segment is the last only if nothing follows it.
        let m = if n == seg { fill(input, &mut next)? } else { 0 };
        let last = m == 0;
        buf.clear();
        buf.extend_from_slice(&cur[..n]);
        key.seal_in_place(&nonce(&header.prefix, i, last)?, &aad, &mut buf);
        out.write_all(&buf)?;
        total += n as u64;
        if last {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
        n = m;
        i += 1;
    }
    zeroize::Zeroize::zeroize(&mut cur);
    zeroize::Zeroize::zeroize(&mut next);
    out.flush()?;
    Ok(total)
}

/// Decrypts the body that follows a header already read (`header_bytes` as read).
pub fn open_stream(
    dek: &[u8],
    header: &Header,
    header_bytes: &[u8],
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
) -> Result<u64, EnvelopeError> {
    let key = AeadKey::new(&SecretKey32::from_slice(dek).map_err(|_| EnvelopeError::BadKey)?);
    let aad = kagi_crypto::sha256(header_bytes);
    let chunk = header.segment as usize + TAG;
    let mut cur = vec![0u8; chunk];
    let mut next = vec![0u8; chunk];
    let mut n = fill(input, &mut cur)?;
    let mut i: u64 = 0;
    let mut total = 0u64;
    loop {
        if n < TAG {
            return Err(EnvelopeError::Truncated);
        }
        let m = if n == chunk {
            fill(input, &mut next)?
        } else {
            0
        };
        let last = m == 0;
        let pt = match key.open(&nonce(&header.prefix, i, last)?, &aad, &cur[..n]) {
            Ok(p) => p,
            // A non-final segment that authenticates as final means bytes were appended; a
            // final one that only authenticates as non-final means the file was cut.
            Err(_)
                if key
                    .open(&nonce(&header.prefix, i, !last)?, &aad, &cur[..n])
                    .is_ok() =>
            {
                return Err(if last {
                    EnvelopeError::Truncated
                } else {
                    EnvelopeError::Trailing
                });
            }
            Err(_) => return Err(EnvelopeError::Segment(i)),
        };
        out.write_all(pt.expose())?;
        total += pt.len() as u64;
        if last {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
        n = m;
        i += 1;
    }
    out.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seg: u32) -> Header {
        Header {
            segment: seg,
            wrapped_dek: vec![1; 81],
            context: vec![0, 0],
            prefix: [7; 7],
        }
    }

    fn seal(data: &[u8], seg: u32) -> Vec<u8> {
        let mut out = Vec::new();
        seal_stream(&[9; 32], &header(seg), &mut &data[..], &mut out).unwrap();
        out
    }

    fn open(file: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut r = file;
        let (h, hb) = Header::read(&mut r)?;
        let mut out = Vec::new();
        open_stream(&[9; 32], &h, &hb, &mut r, &mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_boundary() {
        for len in [0usize, 1, 15, 16, 17, 32, 33, 100] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(open(&seal(&data, 16)).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn every_kind_of_damage_is_refused() {
        let data: Vec<u8> = (0..100u8).collect();
        let f = seal(&data, 16);
        let hl = header(16).to_bytes().len();
        let seg = 32;
        // Every single bit flip.
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x40;
            assert!(open(&g).is_err(), "flip at {i}");
        }
        // Truncation at a segment boundary and inside a segment.
        assert!(matches!(
            open(&f[..hl + 2 * seg]),
            Err(EnvelopeError::Truncated)
        ));
        assert!(open(&f[..hl + 2 * seg + 5]).is_err());
        // Appended bytes.
        let mut g = f.clone();
        g.extend_from_slice(&[0; 20]);
        assert!(open(&g).is_err());
        // Swapped and duplicated segments.
        let mut g = f.clone();
        let (a, b) = (hl, hl + seg);
        let s0 = f[a..a + seg].to_vec();
        let s1 = f[b..b + seg].to_vec();
        g[a..a + seg].copy_from_slice(&s1);
        g[b..b + seg].copy_from_slice(&s0);
        assert!(matches!(open(&g), Err(EnvelopeError::Segment(0))));
        let mut g = f.clone();
        g[b..b + seg].copy_from_slice(&s0);
        assert!(open(&g).is_err());
        // A segment spliced in from another file with the same key.
        let mut h2 = header(16);
        h2.prefix = [8; 7];
        let mut other = Vec::new();
        seal_stream(&[9; 32], &h2, &mut &data[..], &mut other).unwrap();
        let mut g = f.clone();
        g[b..b + seg].copy_from_slice(&other[b..b + seg]);
        assert!(matches!(open(&g), Err(EnvelopeError::Segment(1))));
        assert!(matches!(open(b"garbage"), Err(EnvelopeError::Header(_))));
    }
}
