//! Envelope files: the header parser and the segment reader on arbitrary bytes never panic,
//! and nothing opens without the key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Ok((h, hb)) = kagi_client::envelope::Header::read(&mut r) {
        assert_eq!(h.to_bytes(), hb);
        let _ = kagi_keys::EncryptionContext::from_canonical(&h.context);
        let mut out = Vec::new();
        let _ = kagi_client::envelope::open_stream(&[0u8; 32], &h, &hb, &mut r, &mut out);
    }
});
