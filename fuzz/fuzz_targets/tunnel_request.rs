//! The request and answer lines of a `kagi connect` tunnel: parsing never panics, and a parsed
//! request encodes back to a line that parses to the same request.
#![no_main]
use kagi_sdp::tunnel::{parse_answer, ConnectRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = parse_answer(line);
        if let Ok(r) = ConnectRequest::parse(line) {
            assert_eq!(ConnectRequest::parse(&r.encode()).ok(), Some(r));
        }
    }
});
