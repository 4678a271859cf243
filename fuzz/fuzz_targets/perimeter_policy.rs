//! Perimeter policy documents: parsing and deciding never panic on arbitrary text.
#![no_main]
use kagi_sdp::policy::{PerimeterPolicy, Posture, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = PerimeterPolicy::parse(text) {
            let posture = Posture::default();
            let _ = p.decide(&Request {
                identity: "alice",
                service: "kms",
                now: jiff::Timestamp::UNIX_EPOCH,
                posture: &posture,
            });
        }
    }
});
