//! Encrypts many small objects through the SDK, with or without the data-key cache, and prints
//! one JSON line: objects per second including the key-service calls. Used by
//! `scripts/bench-envelope`; the server comes from `KAGI_ADDR` / `KAGI_TOKEN`.
//!
//! `envelope_objects KEY COUNT SIZE [MAX_MESSAGES_PER_DATA_KEY]` (no fourth argument: no cache)

use std::time::{Duration, Instant};

use kagi_client::envelope::{CacheLimits, Envelope};
use kagi_client::{Client, ClientConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: envelope_objects KEY COUNT SIZE [MAX_MESSAGES_PER_DATA_KEY]";
    let key = args.first().ok_or(usage)?;
    let count: usize = args.get(1).ok_or(usage)?.parse()?;
    let size: usize = args.get(2).ok_or(usage)?.parse()?;
    let mut env = Envelope::new(Client::new(ClientConfig::from_env())?);
    if let Some(n) = args.get(3) {
        env = env.with_cache(CacheLimits {
            max_messages: n.parse()?,
            ..CacheLimits::new(Duration::from_secs(300))
        });
    }
    let ctx = kagi_keys::EncryptionContext::from_kv_args(&["bench=objects"])?;
    let object = vec![0x42u8; size];
    let start = Instant::now();
    let mut out_bytes = 0usize;
    for _ in 0..count {
        out_bytes += env.encrypt_bytes(key, &ctx, &object).await?.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = env.cache_stats().unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "objects": count,
            "object_bytes": size,
            "seconds": secs,
            "objects_per_second": count as f64 / secs,
            "envelope_bytes": out_bytes,
            "key_service_calls": if env.cache_stats().is_some() { stats.encrypt_misses } else { count as u64 },
            "cache_hits": stats.encrypt_hits,
        })
    );
    Ok(())
}
