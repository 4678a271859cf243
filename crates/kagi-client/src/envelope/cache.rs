//! Opt-in data-key caching, with the AWS Encryption SDK's limits: a data key is reused for at
//! most `max_messages` messages, `max_bytes` bytes and `max_age`, on the encrypt side (one
//! `datakey/generate` serves many objects) and the decrypt side (one `datakey/decrypt` serves
//! many reads of objects under the same wrapped key).
//!
//! The trade-off is the SDK's: while an entry lives, disabling the key or changing policy does
//! not stop this process from using it, and the key service audits one call per data key, not
//! one per object. Keep `max_age` short.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_crypto::SecretKey32;

/// How long and how much a cached data key may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Messages (objects) per data key, the first included.
    pub max_messages: u64,
    /// Plaintext bytes per data key.
    pub max_bytes: u64,
    /// Age after which a data key is never used again.
    pub max_age: Duration,
    /// Entries kept per side; the oldest goes first.
    pub capacity: usize,
}

impl CacheLimits {
    /// `max_age` with generous message and byte limits (2^32 messages, 2^40 bytes).
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_messages: 1 << 32,
            max_bytes: 1 << 40,
            max_age,
            capacity: 1024,
        }
    }
}

/// Cache counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Encryptions that reused a data key.
    pub encrypt_hits: u64,
    /// Encryptions that asked the key service for a new one.
    pub encrypt_misses: u64,
    /// Decryptions that reused an unwrapped data key.
    pub decrypt_hits: u64,
    /// Decryptions that asked the key service to unwrap.
    pub decrypt_misses: u64,
}

impl CacheStats {
    /// Prometheus text exposition of the counters.
    pub fn prometheus(&self) -> String {
        let mut s = String::from(
            "# HELP kagi_client_dek_cache_total Data-key cache lookups by side and result.\n\
             # TYPE kagi_client_dek_cache_total counter\n",
        );
        for (side, result, n) in [
            ("encrypt", "hit", self.encrypt_hits),
            ("encrypt", "miss", self.encrypt_misses),
            ("decrypt", "hit", self.decrypt_hits),
            ("decrypt", "miss", self.decrypt_misses),
        ] {
            s.push_str(&format!(
                "kagi_client_dek_cache_total{{side=\"{side}\",result=\"{result}\"}} {n}\n"
            ));
        }
        s
    }
}

struct Entry {
    dek: SecretKey32,
    wrapped: Vec<u8>,
    born: Instant,
    messages: u64,
    bytes: u64,
}

/// A cached data key handed out for one message.
pub(crate) struct Lease {
    pub dek: SecretKey32,
    pub wrapped: Vec<u8>,
}

#[derive(Default)]
struct Side {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The two caches (encrypt and decrypt side) and their counters.
pub struct DekCache {
    limits: CacheLimits,
    enc: Side,
    dec: Side,
    fetching: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for DekCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DekCache")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Which side a lookup is for.
#[derive(Clone, Copy)]
pub(crate) enum Use {
    Encrypt,
    Decrypt,
}

impl DekCache {
    /// An empty cache with these limits.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            enc: Side::default(),
            dec: Side::default(),
            fetching: Mutex::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            encrypt_hits: self.enc.hits.load(Ordering::Relaxed),
            encrypt_misses: self.enc.misses.load(Ordering::Relaxed),
            decrypt_hits: self.dec.hits.load(Ordering::Relaxed),
            decrypt_misses: self.dec.misses.load(Ordering::Relaxed),
        }
    }

    fn side(&self, u: Use) -> &Side {
        match u {
            Use::Encrypt => &self.enc,
            Use::Decrypt => &self.dec,
        }
    }

    /// Takes one message of `bytes` from the entry `id` if every limit still allows it;
    /// retires the entry otherwise. Does not count: callers `record` the final outcome.
    pub(crate) fn lease(&self, u: Use, id: &[u8; 32], bytes: u64) -> Option<Lease> {
        let mut map = self
            .side(u)
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let l = &self.limits;
        match map.get_mut(id) {
            Some(e)
                if e.born.elapsed() < l.max_age
                    && e.messages < l.max_messages
                    && e.bytes.saturating_add(bytes) <= l.max_bytes =>
            {
                e.messages += 1;
                e.bytes += bytes;
                Some(Lease {
                    dek: e.dek.clone(),
                    wrapped: e.wrapped.clone(),
                })
            }
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Counts one lookup as a hit or a miss.
    pub(crate) fn record(&self, u: Use, hit: bool) {
        let side = self.side(u);
        let counter = if hit { &side.hits } else { &side.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The lock that makes concurrent misses on one slot fetch a single data key.
    pub(crate) fn fetch_lock(&self, id: &[u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds any more, so the map stays small.
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(*id).or_default().clone()
    }

    /// Caches a data key just fetched for one message of `bytes`, if the limits allow reuse.
    pub(crate) fn insert(
        &self,
        u: Use,
        id: [u8; 32],
        dek: &SecretKey32,
        wrapped: &[u8],
        bytes: u64,
    ) {
        let l = &self.limits;
        if l.max_messages <= 1 || bytes > l.max_bytes || l.max_age.is_zero() || l.capacity == 0 {
            return;
        }
        let mut map = self
            .side(u)
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= l.capacity {
            map.retain(|_, e| e.born.elapsed() < l.max_age);
            if map.len() >= l.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.born).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            id,
            Entry {
                dek: dek.clone(),
                wrapped: wrapped.to_vec(),
                born: Instant::now(),
                messages: 1,
                bytes,
            },
        );
    }

    /// Adds bytes learned after the fact (a decrypt's size is known only at its end).
    pub(crate) fn add_bytes(&self, u: Use, id: &[u8; 32], bytes: u64) {
        let mut map = self
            .side(u)
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(id) {
            e.bytes = e.bytes.saturating_add(bytes);
        }
    }

    /// Forgets every data key.
    pub fn clear(&self) {
        for s in [&self.enc, &self.dec] {
            s.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// The cache slot for (`parts`...), each length-prefixed so no two tuples collide.
pub(crate) fn slot(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = kagi_crypto::Sha256::default();
    for p in parts {
        h.update(&(p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey32 {
        SecretKey32::from_bytes([5; 32])
    }

    #[test]
    fn message_and_byte_limits_retire_a_key() {
        let c = DekCache::new(CacheLimits {
            max_messages: 3,
            max_bytes: 100,
            max_age: Duration::from_secs(60),
            capacity: 8,
        });
        let id = slot(&[b"k", b"ctx"]);
        assert!(c.lease(Use::Encrypt, &id, 10).is_none());
        c.record(Use::Encrypt, false);
        c.insert(Use::Encrypt, id, &key(), b"w", 10);
        assert_eq!(c.lease(Use::Encrypt, &id, 10).unwrap().wrapped, b"w");
        assert!(c.lease(Use::Encrypt, &id, 10).is_some());
        // Fourth message: over max_messages.
        assert!(c.lease(Use::Encrypt, &id, 10).is_none());
        c.insert(Use::Encrypt, id, &key(), b"w2", 60);
        // 60 + 50 > 100 bytes.
        assert!(c.lease(Use::Encrypt, &id, 50).is_none());
        c.record(Use::Encrypt, true);
        c.record(Use::Encrypt, true);
        c.record(Use::Encrypt, false);
        let s = c.stats();
        assert_eq!((s.encrypt_hits, s.encrypt_misses), (2, 2));
        assert_eq!((s.decrypt_hits, s.decrypt_misses), (0, 0));
        assert!(s
            .prometheus()
            .contains("side=\"encrypt\",result=\"hit\"} 2"));
    }

    #[test]
    fn age_limit_and_capacity() {
        let c = DekCache::new(CacheLimits {
            max_age: Duration::from_millis(0),
            ..CacheLimits::new(Duration::ZERO)
        });
        let id = slot(&[b"a"]);
        c.insert(Use::Decrypt, id, &key(), b"w", 1);
        assert!(
            c.lease(Use::Decrypt, &id, 1).is_none(),
            "zero max_age never caches"
        );
        let c = DekCache::new(CacheLimits {
            capacity: 2,
            ..CacheLimits::new(Duration::from_secs(60))
        });
        for i in 0..3u8 {
            c.insert(Use::Decrypt, slot(&[&[i]]), &key(), b"w", 1);
        }
        assert!(
            c.lease(Use::Decrypt, &slot(&[&[0]]), 1).is_none(),
            "oldest evicted"
        );
        assert!(c.lease(Use::Decrypt, &slot(&[&[2]]), 1).is_some());
        assert_ne!(slot(&[b"ab", b"c"]), slot(&[b"a", b"bc"]));
    }
}
