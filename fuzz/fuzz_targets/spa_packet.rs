//! The SPA packet decoder and the daemon's decision on arbitrary datagrams: never panics,
//! and nothing but a correctly keyed, authenticated packet is ever accepted.
#![no_main]
use std::sync::OnceLock;

use kagi_spa::access_conf::Stanza;
use kagi_spa::decision::{decide, DaemonPolicy};
use kagi_spa::replay_cache::ReplayCache;
use libfuzzer_sys::fuzz_target;

fn stanzas() -> &'static [Stanza] {
    static S: OnceLock<Vec<Stanza>> = OnceLock::new();
    S.get_or_init(|| {
        kagi_spa::access_conf::parse(
            "SOURCE ANY\nOPEN_PORTS tcp/22\nKEY fuzzkey\nHMAC_KEY fuzzhmac\n\nSOURCE ANY\nKEY legacykey\nENCRYPTION_MODE legacy\n",
            "fuzz.conf",
            &mut |_| Err("no includes".into()),
        )
        .expect("the fuzz stanzas parse")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut cache = ReplayCache::new();
    let v = decide(data, "10.0.0.1".parse().unwrap(), None, 1_800_000_000, stanzas(), DaemonPolicy { max_age: None }, &mut cache);
    if let Ok(text) = std::str::from_utf8(data) {
        for s in stanzas() {
            let _ = kagi_spa::fwknop::open(text, &s.keys);
        }
        let _ = kagi_spa::SpaMessage::decode(text);
    }
    let _ = v;
});
