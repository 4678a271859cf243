//! The replay cache: SHA-256 of every packet that opened, kept only as long as packet aging
//! could still let a copy through, so it does not grow forever (fwknop's never shrinks).

use std::collections::HashMap;

/// Digests of opened packets and when they were first seen.
#[derive(Debug, Default, Clone)]
pub struct ReplayCache {
    seen: HashMap<[u8; 32], i64>,
}

impl ReplayCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when `digest` was seen before.
    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.seen.contains_key(digest)
    }

    /// Records `digest` first seen at `now`; false if it was already there.
    pub fn insert(&mut self, digest: [u8; 32], now: i64) -> bool {
        match self.seen.entry(digest) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
        }
    }

    /// Forgets entries that packet aging alone now refuses: a packet accepted at `t` carried
    /// a timestamp no older than `t - max_age`, so after `t + 2 * max_age` any copy of it is
    /// stale anyway.
    pub fn evict(&mut self, now: i64, max_age: u64) {
        let keep = 2 * max_age as i64;
        self.seen.retain(|_, t| now - *t <= keep);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Every entry, for persisting.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8; 32], &i64)> {
        self.seen.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_the_age_window() {
        let mut c = ReplayCache::new();
        assert!(c.insert([1; 32], 1000));
        assert!(!c.insert([1; 32], 1001));
        c.evict(1000 + 240, 120);
        assert!(c.contains(&[1; 32]));
        c.evict(1000 + 241, 120);
        assert!(c.is_empty());
    }
}
