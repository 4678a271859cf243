//! Backup files given to `kagi operator restore`: parsing, the seal record inside, and the
//! integrity check never panic.
#![no_main]
use kagi_server::backup::{seal_record, verify, Backup};
use kagi_server::seal::SoftwareMasterKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<Backup>(data) {
        let _ = seal_record(&b.snapshot);
        let master = SoftwareMasterKey::new(&kagi_crypto::SecretKey32::from_bytes([7; 32]));
        let _ = verify(&master, &b);
    }
});
