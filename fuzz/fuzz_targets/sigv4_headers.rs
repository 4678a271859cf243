//! SigV4: the Authorization header parser and the whole verification path on arbitrary
//! headers, path, query and body never panic, and never accept a signature made with
//! another secret.
#![no_main]

use kagi_aws::sigv4::{self, Authorization, RequestParts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = Authorization::parse(&text);
    // Split the input into header lines, a path, a query and a body.
    let mut parts = text.splitn(4, '\u{0}');
    let (head, path, query, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/"),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let mut headers = http::HeaderMap::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let req = RequestParts { method: "POST", path, query, headers: &headers, body: body.as_bytes() };
    if let Ok(p) = sigv4::prepare(&req, "kms-xks-proxy", 1_790_000_000) {
        let key = sigv4::signing_key(b"a secret nobody signed with", &p.auth.date, &p.auth.region, &p.auth.service);
        assert!(p.verify(&key).is_err(), "a forged signature verified");
    }
});
