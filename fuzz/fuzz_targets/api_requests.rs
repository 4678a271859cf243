//! The JSON request decoders of the /v1 API and the encryption-context rules behind them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use kagi_server::api::*;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<GenerateRequest>(data);
    let _ = serde_json::from_slice::<GenerateBatchRequest>(data);
    let _ = serde_json::from_slice::<DecryptBatchRequest>(data);
    let _ = serde_json::from_slice::<ReencryptRequest>(data);
    let _ = serde_json::from_slice::<EncryptRequest>(data);
    let _ = serde_json::from_slice::<CreateKeyRequest>(data);
    let _ = serde_json::from_slice::<TokenCreate>(data);
    let _ = serde_json::from_slice::<InitRequest>(data);
    let _ = serde_json::from_slice::<UnsealRequest>(data);
    if let Ok(r) = serde_json::from_slice::<DecryptRequest>(data) {
        if let Ok(ctx) = kagi_keys::EncryptionContext::new(r.context.unwrap_or_default()) {
            let c = ctx.canonical();
            assert!(c.len() >= 2);
        }
    }
});
