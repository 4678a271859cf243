//! The encryption context: non-secret key/value pairs bound to a blob as associated data.
//!
//! Canonical form (the associated data appended after the blob header; see
//! `docs/wrapped-blob.md`): `u16 count`, then for each pair in ascending byte order of the
//! key: `u16 len(key) || key || u16 len(value) || value`, all integers big-endian.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::KeyModelError;

/// At most this many pairs in one context.
pub const MAX_PAIRS: usize = 64;
/// At most this many bytes in one key.
pub const MAX_KEY_LEN: usize = 256;
/// At most this many bytes in one value.
pub const MAX_VALUE_LEN: usize = 2048;

/// An encryption context. Ordered by key, so its canonical form is unique.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds and validates a context from pairs.
    pub fn new(pairs: BTreeMap<String, String>) -> Result<Self, KeyModelError> {
        let ctx = Self(pairs);
        ctx.validate()?;
        Ok(ctx)
    }

    /// Parses `K=V` arguments as the CLI takes them. A repeated key is an error.
    pub fn from_kv_args<S: AsRef<str>>(args: &[S]) -> Result<Self, KeyModelError> {
        let mut map = BTreeMap::new();
        for a in args {
            let a = a.as_ref();
            let (k, v) = a.split_once('=').ok_or_else(|| {
                KeyModelError::InvalidContext(format!("{a:?} is not of the form KEY=VALUE"))
            })?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(KeyModelError::InvalidContext(format!(
                    "key {k:?} is given twice"
                )));
            }
        }
        Self::new(map)
    }

    /// Checks the limits; used after deserializing from outside input.
    pub fn validate(&self) -> Result<(), KeyModelError> {
        if self.0.len() > MAX_PAIRS {
            return Err(KeyModelError::InvalidContext(format!(
                "{} pairs, at most {MAX_PAIRS} allowed",
                self.0.len()
            )));
        }
        for (k, v) in &self.0 {
            if k.is_empty() || k.len() > MAX_KEY_LEN {
                return Err(KeyModelError::InvalidContext(format!(
                    "keys must be 1-{MAX_KEY_LEN} bytes, got {}",
                    k.len()
                )));
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(KeyModelError::InvalidContext(format!(
                    "value of {k:?} is {} bytes, at most {MAX_VALUE_LEN} allowed",
                    v.len()
                )));
            }
        }
        Ok(())
    }

    /// The pairs, ordered by key.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the canonical form to `out` (module docs give the layout).
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        // Limits are validated, so every length fits in u16.
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }

    /// The canonical form alone.
    pub fn canonical(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_canonical(&mut v);
        v
    }

    /// Parses the canonical form back (as stored in envelope headers); refuses anything that
    /// is not exactly canonical (order, duplicates, trailing bytes, limits).
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, KeyModelError> {
        let bad =
            |m: &str| KeyModelError::InvalidContext(format!("canonical form is damaged: {m}"));
        let mut p = 0usize;
        let mut take = |n: usize| -> Result<&[u8], KeyModelError> {
            let s = bytes.get(p..p + n).ok_or_else(|| bad("truncated"))?;
            p += n;
            Ok(s)
        };
        let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]) as usize;
        let count = u16_at(take(2)?);
        let mut map = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let kl = u16_at(take(2)?);
            let k = String::from_utf8(take(kl)?.to_vec()).map_err(|_| bad("key is not UTF-8"))?;
            let vl = u16_at(take(2)?);
            let v = String::from_utf8(take(vl)?.to_vec()).map_err(|_| bad("value is not UTF-8"))?;
            if last.as_ref().is_some_and(|l| *l >= k) {
                return Err(bad("keys out of order or repeated"));
            }
            last = Some(k.clone());
            map.insert(k, v);
        }
        if take(0).is_ok() && p != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Self::new(map)
    }

    /// True when every pair of `required` is present here with the same value.
    pub fn contains_all(&self, required: &EncryptionContext) -> bool {
        required.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_is_order_independent_and_exact() {
        let a = EncryptionContext::from_kv_args(&["b=2", "a=1"]).unwrap();
        let b = EncryptionContext::from_kv_args(&["a=1", "b=2"]).unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.canonical(),
            vec![0, 2, 0, 1, b'a', 0, 1, b'1', 0, 1, b'b', 0, 1, b'2']
        );
        assert_eq!(EncryptionContext::empty().canonical(), vec![0, 0]);
    }

    #[test]
    fn canonical_round_trip_and_damage() {
        let c = EncryptionContext::from_kv_args(&["b=2", "a=1", "z="]).unwrap();
        assert_eq!(
            EncryptionContext::from_canonical(&c.canonical()).unwrap(),
            c
        );
        assert_eq!(
            EncryptionContext::from_canonical(&[0, 0]).unwrap(),
            EncryptionContext::empty()
        );
        let mut extra = c.canonical();
        extra.push(0);
        assert!(EncryptionContext::from_canonical(&extra).is_err());
        let bytes = c.canonical();
        assert!(EncryptionContext::from_canonical(&bytes[..bytes.len() - 1]).is_err());
        // Out of order: b before a.
        let swapped = vec![0, 2, 0, 1, b'b', 0, 1, b'2', 0, 1, b'a', 0, 1, b'1'];
        assert!(EncryptionContext::from_canonical(&swapped).is_err());
        assert!(EncryptionContext::from_canonical(&[]).is_err());
    }

    #[test]
    fn values_may_contain_equals_and_be_empty() {
        let c = EncryptionContext::from_kv_args(&["k=a=b", "e="]).unwrap();
        assert_eq!(c.get("k"), Some("a=b"));
        assert_eq!(c.get("e"), Some(""));
    }

    #[test]
    fn refuses_bad_pairs() {
        assert!(EncryptionContext::from_kv_args(&["novalue"]).is_err());
        assert!(EncryptionContext::from_kv_args(&["=v"]).is_err());
        assert!(EncryptionContext::from_kv_args(&["a=1", "a=2"]).is_err());
        let long = format!("k={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(EncryptionContext::from_kv_args(&[long]).is_err());
    }
}
