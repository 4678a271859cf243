//! The console's parsers of outside bytes: the session cookie in a `Cookie` header, and stored
//! audit lines read by the usage index (a tampered database must give a broken-chain status,
//! never a panic).
#![no_main]

use kagi_server::console::{session, usage::UsageIndex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(v) = session::cookie_value(s) {
        assert_eq!(v.len(), 64);
    }
    let mut ix = UsageIndex::new();
    for (i, line) in s.lines().enumerate() {
        ix.ingest(i as u64 + 1, line);
    }
    let c = ix.chain();
    assert!(c.verified_seq <= s.lines().count() as u64);
    if let Some(a) = ix.latest(1, |_| true).first() {
        let _ = ix.key(a.key.as_deref().unwrap_or(""));
    }
});
