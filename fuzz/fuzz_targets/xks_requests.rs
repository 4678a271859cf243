//! The XKS front-end's parsers: URI paths and every request body decode to a value or to
//! one of the spec's errors, never a panic; errors always serialize to the spec's shape.
#![no_main]

use kagi_aws::xks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        if let Err(e) = xks::parse_path(path) {
            let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert!(v["errorMessage"].as_str().unwrap().len() < 512);
        }
        let _ = xks::normalize_prefix(path);
    }
    if let Ok(r) = xks::parse_body::<xks::EncryptRequest>(data) {
        if let Ok(input) = r.decode() {
            assert!(input.plaintext.len() <= xks::MAX_PLAINTEXT && input.aad.len() <= xks::MAX_AAD);
            let _ = xks::gcm_aad(&input.aad, &xks::ciphertext_metadata(1));
        }
    }
    if let Ok(r) = xks::parse_body::<xks::DecryptRequest>(data) {
        if let Ok(input) = r.decode() {
            let _ = xks::metadata_version(&input.ciphertext_metadata);
        }
    }
    if let Ok(r) = xks::parse_body::<xks::MetadataOnlyRequest>(data) {
        let _ = xks::require_metadata(r.request_metadata, true);
    }
});
