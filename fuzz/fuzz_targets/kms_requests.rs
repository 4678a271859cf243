//! The KMS JSON API's parsers: X-Amz-Target, request bodies, key references and data key
//! lengths give a value or an AWS error, never a panic.
#![no_main]

use kagi_aws::kms;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kms::Op::from_target(s);
        let _ = kms::KeyRef::parse(s);
        let _ = kms::validate_alias(s);
    }
    match kms::parse_body::<kms::Request>(data) {
        Ok(r) => {
            let _ = kms::data_key_len(&r);
            if let Some(k) = &r.key_id {
                let _ = kms::KeyRef::parse(k);
            }
        }
        Err(e) => {
            let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(v["__type"], "SerializationException");
        }
    }
});
