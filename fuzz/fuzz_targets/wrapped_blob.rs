//! The wrapped-key blob parser: never panics; whatever parses re-serializes to the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = kagi_keys::WrappedBlob::parse(data) {
        assert_eq!(b.to_bytes(), data);
        let ctx = kagi_keys::EncryptionContext::empty();
        let _ = kagi_keys::WrappedBlob::aad(&b.key_id, b.version, &b.nonce, &ctx);
    }
});
