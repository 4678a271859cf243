//! The XKS proxy's key operations on the core: AES-256-GCM under a key's own version with the
//! caller's AAD and kagi's ciphertext metadata bound in (`kagi_aws::xks::gcm_aad`), plus the
//! deep health check. Policy sees the request metadata as context pairs named
//! `xks:<field>` (e.g. `xks:awsPrincipalArn`), so a rule can allow one IAM role or refuse a
//! via-service; the same pairs are on the audit record beside `kmsRequestId`.

use std::time::{Duration, Instant};

use kagi_aws::xks::{self, RequestMetadata};
use kagi_crypto::{AeadKey, SecretBytes, SecretKey32};
use kagi_keys::{EncryptionContext, KeyRecord, KeyState, Operation};

use super::{lock_err, Caller, KeyService, Trail};
use crate::ServiceError;

/// How long a health answer is reused (the spec allows up to a minute).
const HEALTH_CACHE: Duration = Duration::from_secs(10);
/// Master-key AAD of the health check's throwaway key.
const HEALTH_AAD: &[u8] = b"kagi/xks-health/v1";

/// What an XKS encryption returns.
#[derive(Debug)]
pub struct XksSealed {
    /// As long as the plaintext.
    pub ciphertext: Vec<u8>,
    /// 12 bytes.
    pub iv: [u8; 12],
    /// 16 bytes.
    pub tag: [u8; 16],
    /// kagi's ciphertext metadata (the key version).
    pub metadata: [u8; 5],
}

/// The deep health check's verdict.
#[derive(Debug, Clone)]
pub struct XksHealth {
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`.
    pub status: &'static str,
    /// What holds the master key (`shamir`, `pkcs11`, `dev`).
    pub model: String,
    /// This node.
    pub node: String,
}

/// The policy/audit context of an XKS request: each metadata field as `xks:<field>`.
pub fn metadata_context(m: &RequestMetadata) -> Result<EncryptionContext, ServiceError> {
    let pairs = m
        .fields()
        .into_iter()
        .map(|(k, v)| (format!("xks:{k}"), v.to_string()))
        .collect();
    EncryptionContext::new(pairs).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

impl KeyService {
    /// GetKeyMetadata: the key's record (checks `describe`).
    pub async fn xks_metadata(
        &self,
        c: &Caller,
        key: &str,
        ctx: &EncryptionContext,
    ) -> Result<KeyRecord, ServiceError> {
        let mut t = Trail::new("describe", Some(key), ctx, None);
        t.note = Some("xks metadata".into());
        let r = async {
            self.master()?;
            self.check(c, Operation::Describe, Some(key), ctx, None)?;
            let k = self.key(key).await?;
            if k.record.state == KeyState::Destroyed {
                return Err(Self::destroyed_msg(&k.record));
            }
            Ok(k.record.clone())
        }
        .await;
        self.finish(c, t, r).await
    }

    /// XKS Encrypt under the key's newest version, verified by a test decryption before it
    /// is returned (as the spec recommends).
    pub async fn xks_encrypt(
        &self,
        c: &Caller,
        key: &str,
        ctx: &EncryptionContext,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<XksSealed, ServiceError> {
        let mut t = Trail::new("encrypt", Some(key), ctx, None);
        t.note = Some("xks encrypt".into());
        let r = async {
            self.master()?;
            self.check(c, Operation::Encrypt, Some(key), ctx, None)?;
            let k = self.key(key).await?;
            Self::usable(&k.record, "encrypt")?;
            let v = k.record.current_version();
            t.version = Some(v);
            let aead = k.versions.get(&v).ok_or_else(|| {
                ServiceError::Internal(format!("key {key} version {v} material is missing"))
            })?;
            let metadata = xks::ciphertext_metadata(v);
            let gcm_aad = xks::gcm_aad(aad, &metadata);
            let iv: [u8; 12] = kagi_crypto::random_array();
            let mut ciphertext = plaintext.to_vec();
            let tag = aead.seal_detached(&iv, &gcm_aad, &mut ciphertext);
            let mut check = zeroize::Zeroizing::new(vec![0; ciphertext.len()]);
            let ok = aead
                .open_detached(&iv, &gcm_aad, &ciphertext, &tag, &mut check)
                .is_ok()
                && kagi_crypto::ct_eq(&check, plaintext);
            if !ok {
                return Err(ServiceError::Internal(
                    "the test decryption of a fresh XKS ciphertext failed".into(),
                ));
            }
            Ok(XksSealed {
                ciphertext,
                iv,
                tag,
                metadata,
            })
        }
        .await;
        self.finish(c, t, r).await
    }

    /// XKS Decrypt with the version named in the ciphertext metadata.
    pub async fn xks_decrypt(
        &self,
        c: &Caller,
        key: &str,
        ctx: &EncryptionContext,
        input: &xks::DecryptInput,
    ) -> Result<SecretBytes, ServiceError> {
        let mut t = Trail::new("decrypt", Some(key), ctx, None);
        t.note = Some("xks decrypt".into());
        let r = async {
            self.master()?;
            self.check(c, Operation::Decrypt, Some(key), ctx, None)?;
            let k = self.key(key).await?;
            Self::usable(&k.record, "decrypt")?;
            let v = xks::metadata_version(&input.ciphertext_metadata)
                .map_err(|e| ServiceError::InvalidCiphertext(e.message))?;
            t.version = Some(v);
            let k = self.with_version(k, v).await?;
            let aead = k.versions.get(&v).ok_or_else(|| {
                ServiceError::InvalidCiphertext(format!("key {key} has no version {v}"))
            })?;
            let gcm_aad = xks::gcm_aad(&input.aad, &input.ciphertext_metadata);
            let mut out = vec![0; input.ciphertext.len()];
            aead.open_detached(&input.iv, &gcm_aad, &input.ciphertext, &input.tag, &mut out)
                .map_err(|_| {
                    ServiceError::InvalidCiphertext(
                        "decryption failed: the AAD or ciphertext metadata differs from encryption, or the ciphertext was altered".into(),
                    )
                })?;
            Ok(SecretBytes::new(out))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// The deep health check: unsealed, storage answering, audit writable, and a real
    /// round trip through the master key (the HSM, when there is one) and AES-GCM on a
    /// throwaway key, never a customer key. Cached for [`HEALTH_CACHE`].
    pub async fn xks_health(&self) -> Result<XksHealth, ServiceError> {
        if let Some((at, h)) = self.health.lock().map_err(lock_err)?.clone() {
            if at.elapsed() < HEALTH_CACHE {
                return Ok(h);
            }
        }
        let model = self
            .seal
            .read()
            .map_err(lock_err)?
            .as_ref()
            .map_or("uninitialized".to_string(), |s| s.kind.clone());
        let status = match self.master() {
            Err(_) => "UNAVAILABLE",
            Ok(u) => {
                let crypto_ok = (|| -> Result<bool, ServiceError> {
                    let k = SecretKey32::generate();
                    let w = u.master.wrap(HEALTH_AAD, k.expose())?;
                    let back = SecretKey32::from_slice(u.master.unwrap(HEALTH_AAD, &w)?.expose())
                        .map_err(|e| ServiceError::Internal(e.to_string()))?;
                    let aead = AeadKey::new(&back);
                    let (n, ct) = aead.seal(b"health", b"kagi");
                    Ok(aead
                        .open(&n, b"health", &ct)
                        .is_ok_and(|p| p.expose() == b"kagi"))
                })()
                .unwrap_or(false);
                let storage_ok = self.storage_reachable().await;
                let audit_ok = !self
                    .audit
                    .stats()
                    .failing
                    .load(std::sync::atomic::Ordering::Relaxed);
                match (crypto_ok, storage_ok && audit_ok) {
                    (true, true) => "ACTIVE",
                    (true, false) => "DEGRADED",
                    _ => "UNAVAILABLE",
                }
            }
        };
        let h = XksHealth {
            status,
            model,
            node: self.opts.node.clone(),
        };
        *self.health.lock().map_err(lock_err)? = Some((Instant::now(), h.clone()));
        Ok(h)
    }
}
