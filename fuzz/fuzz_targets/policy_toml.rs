//! Policy documents: parse or refuse with a message; never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kagi_keys::Policy::parse(text);
        let _ = kagi_keys::duration::parse_seconds(text);
    }
});
