//! The controller's control channel (requests from clients and gateways, answers to them) and
//! enrollment tokens: parsing never panics, and what parses encodes back to the same thing.
#![no_main]
use kagi_sdp::control::{ControlAnswer, ControlRequest, EnrollToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ControlRequest::parse(data) {
        assert_eq!(ControlRequest::parse(r.encode().as_bytes()).ok(), Some(r));
    }
    if let Ok(a) = ControlAnswer::parse(data) {
        assert_eq!(ControlAnswer::parse(a.encode().as_bytes()).ok(), Some(a));
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = EnrollToken::parse(s) {
            let again = EnrollToken::parse(&t.encode()).expect("an encoded token parses");
            assert_eq!(again.ca_pin, t.ca_pin);
            assert_eq!(*again.secret, *t.secret);
        }
    }
});
