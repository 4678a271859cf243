//! Envelope encryption: the application side of the seed's flow. A data key (DEK) from the key
//! service encrypts the data locally; the wrapped DEK travels in the file's header; the
//! plaintext DEK is wiped as soon as the last segment is sealed or opened (or, with the opt-in
//! [`DekCache`], when its limits retire it).
//!
//! ```text
//! magic "kagienc1" | version 0x01 | algorithm 0x01 (AES-256-GCM STREAM) | segment size u32
//! | wrapped-DEK length u16 | wrapped DEK | context length u32 | canonical context | salt (32)
//! | nonce prefix (7)
//! body: AES-256-GCM segments under HKDF-SHA-256(DEK, salt, "kagienc1 segment key"),
//!   nonce = prefix || u32 index || last flag, aad = SHA-256(header)
//! ```
//! `docs/envelope.md` is the normative description.
//!
//! ```no_run
//! # async fn f() -> Result<(), kagi_client::envelope::EnvelopeError> {
//! use kagi_client::{envelope::Envelope, Client, ClientConfig};
//! let env = Envelope::new(Client::new(ClientConfig::from_env())?);
//! let ctx = kagi_keys::EncryptionContext::from_kv_args(&["tenant=acme"])?;
//! let mut sealed = Vec::new();
//! env.encrypt("orders", &ctx, &mut &b"hello"[..], &mut sealed).await?;
//! let mut plain = Vec::new();
//! env.decrypt(&mut &sealed[..], &mut plain).await?;
//! # Ok(()) }
//! ```

mod cache;
mod format;
mod stream;

use std::io::{Read, Write};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kagi_crypto::SecretKey32;
use kagi_keys::EncryptionContext;
use serde_json::{json, Value};

pub use cache::{CacheLimits, CacheStats, DekCache};
pub use format::{Header, DEFAULT_SEGMENT, MAGIC, MAX_SEGMENT};
pub use stream::{open_stream, seal_stream};

use crate::{Client, ClientError};
use cache::{slot, Use};

/// Why an envelope could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Not a kagi envelope, or a damaged header.
    #[error("not a kagi envelope file, or its header is damaged: {0}")]
    Header(&'static str),
    /// A segment failed authentication.
    #[error("the file is damaged or was tampered with (segment {0} does not authenticate)")]
    Segment(u64),
    /// The file ends before its final segment.
    #[error("the file is truncated (it ends before its final segment)")]
    Truncated,
    /// Bytes follow the final segment.
    #[error("the file has extra bytes after its final segment")]
    Trailing,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The data key from the key service is unusable.
    #[error("the key service returned an unusable data key")]
    BadKey,
    /// The key service refused or could not be reached.
    #[error(transparent)]
    Service(#[from] ClientError),
    /// The encryption context is malformed, or lacks a required pair.
    #[error("{0}")]
    Context(String),
}

impl From<kagi_keys::KeyModelError> for EnvelopeError {
    fn from(e: kagi_keys::KeyModelError) -> Self {
        EnvelopeError::Context(e.to_string())
    }
}

/// What a decryption found.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The file's encryption context.
    pub context: EncryptionContext,
    /// Plaintext bytes written.
    pub bytes: u64,
}

/// Envelope encryption against a key service, optionally caching data keys.
#[derive(Debug, Clone)]
pub struct Envelope {
    client: Client,
    cache: Option<Arc<DekCache>>,
    segment: u32,
}

impl Envelope {
    /// No caching: one key-service call per message.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: None,
            segment: DEFAULT_SEGMENT,
        }
    }

    /// Reuses data keys within `limits` (see [`DekCache`] for the trade-off).
    pub fn with_cache(mut self, limits: CacheLimits) -> Self {
        self.cache = Some(Arc::new(DekCache::new(limits)));
        self
    }

    /// Plaintext bytes per segment (1 B ..= 16 MiB; default 64 KiB).
    pub fn with_segment_size(mut self, bytes: u32) -> Result<Self, EnvelopeError> {
        if bytes == 0 || bytes > MAX_SEGMENT {
            return Err(EnvelopeError::Header("segment size out of range"));
        }
        self.segment = bytes;
        Ok(self)
    }

    /// Cache counters, when caching is on.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Encrypts a stream of unknown length under a fresh data key from `key` (a stream of
    /// unknown size never uses the cache, as in the AWS Encryption SDK).
    pub async fn encrypt(
        &self,
        key: &str,
        context: &EncryptionContext,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
    ) -> Result<u64, EnvelopeError> {
        let header = self.header(key, context, None).await?;
        blocking(|| seal_stream(header.1.expose(), &header.0, input, out))
    }

    /// Encrypts a stream of `size` bytes, reusing a cached data key when the limits allow.
    pub async fn encrypt_sized(
        &self,
        key: &str,
        context: &EncryptionContext,
        size: u64,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
    ) -> Result<u64, EnvelopeError> {
        let header = self.header(key, context, Some(size)).await?;
        blocking(|| seal_stream(header.1.expose(), &header.0, input, out))
    }

    /// Encrypts a buffer (uses the cache when on).
    pub async fn encrypt_bytes(
        &self,
        key: &str,
        context: &EncryptionContext,
        data: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let (header, dek) = self.header(key, context, Some(data.len() as u64)).await?;
        let mut out = Vec::with_capacity(data.len() + data.len() / 4096 + 256);
        seal_stream(dek.expose(), &header, &mut &data[..], &mut out)?;
        Ok(out)
    }

    /// Decrypts an envelope stream. Plaintext is written as it authenticates: send it somewhere
    /// temporary until this returns `Ok`.
    pub async fn decrypt(
        &self,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
    ) -> Result<Opened, EnvelopeError> {
        self.decrypt_requiring(&EncryptionContext::empty(), input, out)
            .await
    }

    /// Decrypts only if the file's context contains every pair of `required`; the check is
    /// made before the key service is asked for the data key.
    pub async fn decrypt_requiring(
        &self,
        required: &EncryptionContext,
        input: &mut (impl Read + ?Sized),
        out: &mut (impl Write + ?Sized),
    ) -> Result<Opened, EnvelopeError> {
        let (header, header_bytes) = Header::read(input)?;
        let context = EncryptionContext::from_canonical(&header.context).map_err(|e| {
            EnvelopeError::Context(format!("the file's encryption context is malformed: {e}"))
        })?;
        if !context.contains_all(required) {
            return Err(EnvelopeError::Context(format!(
                "the file's encryption context {} does not have the required {}",
                pairs_json(&context),
                pairs_json(required)
            )));
        }
        let id = slot(&[&header.wrapped_dek, &header.context]);
        let dek = match &self.cache {
            None => self.unwrap_dek(&header, &context).await?,
            Some(c) => {
                cached(c, Use::Decrypt, &id, 0, || async {
                    Ok((self.unwrap_dek(&header, &context).await?, Vec::new()))
                })
                .await?
                .0
            }
        };
        let bytes = blocking(|| open_stream(dek.expose(), &header, &header_bytes, input, out))?;
        if let Some(c) = &self.cache {
            c.add_bytes(Use::Decrypt, &id, bytes);
        }
        Ok(Opened { context, bytes })
    }

    /// A header and its data key: from the cache when `size` is known and the limits allow,
    /// else fresh from the key service.
    async fn header(
        &self,
        key: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<(Header, SecretKey32), EnvelopeError> {
        let canonical = context.canonical();
        let id = slot(&[key.as_bytes(), &canonical]);
        let (dek, wrapped) = match (&self.cache, size) {
            (Some(c), Some(n)) => {
                cached(c, Use::Encrypt, &id, n, || self.generate(key, context)).await?
            }
            _ => self.generate(key, context).await?,
        };
        if wrapped.len() > u16::MAX as usize {
            return Err(EnvelopeError::BadKey);
        }
        Ok((
            Header {
                segment: self.segment,
                wrapped_dek: wrapped,
                context: canonical,
                salt: kagi_crypto::random_array(),
                prefix: kagi_crypto::random_array(),
            },
            dek,
        ))
    }
}

impl Envelope {
    /// A fresh data key and its wrapped form from the key service.
    async fn generate(
        &self,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<(SecretKey32, Vec<u8>), EnvelopeError> {
        let v: Value = self
            .client
            .post(
                "/v1/datakey/generate",
                &json!({"key": key, "context": context.pairs()}),
            )
            .await?;
        let dek = secret_field(&v, "plaintext")?;
        let wrapped = B64
            .decode(v["ciphertext"].as_str().unwrap_or(""))
            .map_err(|_| EnvelopeError::BadKey)?;
        Ok((dek, wrapped))
    }

    /// The key service unwraps a file's data key (checking context, state and policy).
    async fn unwrap_dek(
        &self,
        header: &Header,
        context: &EncryptionContext,
    ) -> Result<SecretKey32, EnvelopeError> {
        let v: Value = self
            .client
            .post(
                "/v1/datakey/decrypt",
                &json!({"ciphertext": B64.encode(&header.wrapped_dek), "context": context.pairs()}),
            )
            .await?;
        secret_field(&v, "plaintext")
    }
}

/// A data key from the cache, or fetched by `fetch` and cached; concurrent misses on one slot
/// wait for a single fetch instead of each calling the key service.
async fn cached<F, Fut>(
    c: &DekCache,
    u: Use,
    id: &[u8; 32],
    bytes: u64,
    fetch: F,
) -> Result<(SecretKey32, Vec<u8>), EnvelopeError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(SecretKey32, Vec<u8>), EnvelopeError>>,
{
    if let Some(l) = c.lease(u, id, bytes) {
        c.record(u, true);
        return Ok((l.dek, l.wrapped));
    }
    let lock = c.fetch_lock(id);
    let _guard = lock.lock().await;
    if let Some(l) = c.lease(u, id, bytes) {
        c.record(u, true);
        return Ok((l.dek, l.wrapped));
    }
    c.record(u, false);
    let (dek, wrapped) = fetch().await?;
    c.insert(u, *id, &dek, &wrapped, bytes);
    Ok((dek, wrapped))
}

fn pairs_json(c: &EncryptionContext) -> String {
    serde_json::to_string(c.pairs()).unwrap_or_default()
}

/// A 32-byte key from a base64 JSON field, never held in an unzeroized buffer for long.
fn secret_field(v: &Value, field: &str) -> Result<SecretKey32, EnvelopeError> {
    let raw = zeroize::Zeroizing::new(
        B64.decode(v[field].as_str().unwrap_or(""))
            .map_err(|_| EnvelopeError::BadKey)?,
    );
    SecretKey32::from_slice(&raw).map_err(|_| EnvelopeError::BadKey)
}

/// Runs blocking stream work without stalling a multi-threaded runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests;
