//! Audit verification of untrusted exported files: names a record or verifies; never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().map(|l| (None, l.to_string()));
    if let Err(f) = kagi_audit::verify(lines, &[]) {
        assert!(f.seq >= 1);
    }
});
