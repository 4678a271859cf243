//! Credentials of the cloud protocol front-ends: XKS logical key stores (each a path prefix
//! with up to two SigV4 credentials, for rotation without restart) and AWS-style access keys
//! for the KMS-compatible API, plus KMS aliases. SigV4 needs the secrets themselves, so they
//! are kept wrapped by the master key in one setting (`cloud`), read back at most every
//! [`RELOAD`] so that a change made on one node reaches the others without a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagi_aws::sigv4::{self, Pending, SigV4Error};
use kagi_keys::Operation;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{lock_err, now_secs, Caller, KeyService, Trail, EMPTY_CTX};
use crate::ServiceError;

/// Master-key AAD of the `cloud` setting.
pub(crate) const CLOUD_AAD: &[u8] = b"kagi/cloud-credentials/v1";
/// The setting's name.
pub(crate) const SETTING: &str = "cloud";
/// How stale a node's copy may be.
const RELOAD: Duration = Duration::from_secs(2);
/// Signing keys cached at most (one per access key and day and region).
const MAX_SIGNING_KEYS: usize = 4096;

/// One SigV4 credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    /// Access key id (20 characters of `A-Z2-7`).
    pub access_key_id: String,
    /// The secret (base64 text, used as bytes by SigV4).
    pub secret: Zeroizing<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A fresh XKS credential.
    fn new() -> Self {
        let (access_key_id, secret) = kagi_aws::new_credential("KAGIXKS");
        Self {
            access_key_id,
            secret,
            created_at: now_secs(),
        }
    }
}

/// An XKS logical key store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XksStore {
    /// Newest last; at most two.
    pub credentials: Vec<Credential>,
    /// kagi policies its requests are checked against.
    pub policies: Vec<String>,
    /// When set, requests must come over mutual TLS with this client-certificate CN.
    #[serde(default)]
    pub mtls_subject: Option<String>,
    /// Requests per second allowed (ThrottlingException beyond).
    #[serde(default)]
    pub max_rps: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
}

/// An access key of the KMS-compatible API.
#[derive(Clone, Serialize, Deserialize)]
pub struct AwsCredential {
    /// The secret.
    pub secret: Zeroizing<String>,
    /// kagi policies it carries.
    pub policies: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
}

impl std::fmt::Debug for AwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredential")
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

/// Everything in the `cloud` setting.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloudState {
    /// XKS stores by normalized prefix.
    #[serde(default)]
    pub xks_stores: BTreeMap<String, XksStore>,
    /// KMS API access keys by id.
    #[serde(default)]
    pub aws_credentials: BTreeMap<String, AwsCredential>,
    /// KMS aliases (`alias/NAME`) → key name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

/// The node's copy of [`CloudState`] and what is derived from it.
#[derive(Default)]
pub(crate) struct CloudCache {
    state: Option<(Instant, Arc<CloudState>)>,
    /// (access key id, scope) → signing key; cleared whenever the state is reloaded.
    signing_keys: HashMap<(String, String), sigv4::SigningKey>,
    /// Per-prefix token buckets: (tokens, last refill).
    buckets: HashMap<String, (f64, Instant)>,
}

impl KeyService {
    fn load_cloud_now(&self) -> Option<Arc<CloudState>> {
        let g = self.cloud.lock().ok()?;
        match &g.state {
            Some((at, s)) if at.elapsed() < RELOAD => Some(s.clone()),
            _ => None,
        }
    }

    /// The current cloud state (at most [`RELOAD`] old).
    pub async fn cloud_state(&self) -> Result<Arc<CloudState>, ServiceError> {
        if let Some(s) = self.load_cloud_now() {
            return Ok(s);
        }
        let fresh = Arc::new(self.read_cloud().await?);
        let mut g = self.cloud.lock().map_err(lock_err)?;
        g.state = Some((Instant::now(), fresh.clone()));
        g.signing_keys.clear();
        Ok(fresh)
    }

    async fn read_cloud(&self) -> Result<CloudState, ServiceError> {
        let u = self.master()?;
        match self.store.get_setting(SETTING).await? {
            None => Ok(CloudState::default()),
            Some(w) => {
                let plain = u.master.unwrap(CLOUD_AAD, &w)?;
                serde_json::from_slice(plain.expose()).map_err(|_| {
                    ServiceError::Storage("the stored cloud credentials are damaged".into())
                })
            }
        }
    }

    /// Changes the cloud state under the lifecycle lock: checks `manage`, applies `f` to a
    /// fresh read, records the change, then stores it.
    async fn change_cloud<T>(
        &self,
        c: &Caller,
        op: &'static str,
        f: impl FnOnce(&mut CloudState) -> Result<(T, String), ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut t = Trail::new(op, None, &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let pre = async {
            let u = self.master()?;
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            let mut state = self.read_cloud().await?;
            let (v, note) = f(&mut state)?;
            let json = Zeroizing::new(
                serde_json::to_vec(&state).map_err(|e| ServiceError::Internal(e.to_string()))?,
            );
            Ok((v, note, u.master.wrap(CLOUD_AAD, &json)?, state))
        }
        .await;
        let (v, note, wrapped, state) = self.checked(c, &t, pre).await?;
        t.note = Some(note);
        self.record_then(c, t, async {
            self.store.put_setting(SETTING, &wrapped).await?;
            let mut g = self.cloud.lock().map_err(lock_err)?;
            g.state = Some((Instant::now(), Arc::new(state)));
            g.signing_keys.clear();
            Ok(v)
        })
        .await
    }

    /// `kagi xks add-store`: a logical key store under `prefix` with a fresh credential.
    /// Without `policies` it gets its own policy `xks/PREFIX` allowing `encrypt`, `decrypt`
    /// and `describe` on every key, which the custodian can then narrow.
    pub async fn xks_add_store(
        &self,
        c: &Caller,
        prefix: &str,
        policies: Vec<String>,
        mtls_subject: Option<String>,
        max_rps: Option<u32>,
    ) -> Result<(String, Credential), ServiceError> {
        let prefix = kagi_aws::xks::normalize_prefix(prefix).map_err(ServiceError::BadRequest)?;
        if self.cloud_state().await?.xks_stores.contains_key(&prefix) {
            return Err(ServiceError::Conflict(format!(
                "XKS key store {prefix:?} already exists"
            )));
        }
        let policies = if policies.is_empty() {
            let name = format!(
                "xks{}",
                if prefix.is_empty() {
                    "/default"
                } else {
                    &prefix
                }
            );
            if self.store.get_policy(&name).await?.is_none() {
                let text = format!(
                    "description = \"XKS key store {prefix}: every key, XKS operations only (made by xks add-store)\"\n\
                     [[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"encrypt\", \"decrypt\", \"describe\"]\n"
                );
                self.write_policy(c, &name, &text).await?;
            }
            vec![name]
        } else {
            for p in &policies {
                if self.store.get_policy(p).await?.is_none() {
                    return Err(ServiceError::NotFound(format!("policy {p} does not exist")));
                }
            }
            policies
        };
        let cred = Credential::new();
        let out = cred.clone();
        let p2 = prefix.clone();
        self.change_cloud(c, "xks.add_store", move |s| {
            if s.xks_stores.contains_key(&p2) {
                return Err(ServiceError::Conflict(format!(
                    "XKS key store {p2:?} already exists"
                )));
            }
            let note = format!(
                "XKS key store {p2:?} with access key {} and policies {}",
                cred.access_key_id,
                policies.join(",")
            );
            s.xks_stores.insert(
                p2,
                XksStore {
                    credentials: vec![cred],
                    policies,
                    mtls_subject,
                    max_rps,
                    created_at: now_secs(),
                },
            );
            Ok(((), note))
        })
        .await?;
        Ok((prefix, out))
    }

    /// `kagi xks rotate-credential`: adds a credential; the previous one keeps working until
    /// the next rotation (two at once, as the XKS spec asks).
    pub async fn xks_rotate_credential(
        &self,
        c: &Caller,
        prefix: &str,
    ) -> Result<(String, Credential), ServiceError> {
        let prefix = kagi_aws::xks::normalize_prefix(prefix).map_err(ServiceError::BadRequest)?;
        let cred = Credential::new();
        let out = cred.clone();
        let p2 = prefix.clone();
        self.change_cloud(c, "xks.rotate_credential", move |s| {
            let st = s.xks_stores.get_mut(&p2).ok_or_else(|| {
                ServiceError::NotFound(format!("XKS key store {p2:?} does not exist"))
            })?;
            let mut note = format!(
                "XKS key store {p2:?}: new access key {}",
                cred.access_key_id
            );
            st.credentials.push(cred);
            while st.credentials.len() > 2 {
                let old = st.credentials.remove(0);
                note.push_str(&format!(", retired {}", old.access_key_id));
            }
            Ok(((), note))
        })
        .await?;
        Ok((prefix, out))
    }

    /// `kagi xks config`: the store's newest credential (for the KMS console's file).
    pub async fn xks_store(
        &self,
        c: &Caller,
        prefix: &str,
    ) -> Result<(String, XksStore), ServiceError> {
        let mut t = Trail::new("xks.config", None, &EMPTY_CTX, None);
        t.note = Some(format!("XKS key store {prefix:?}: credential read"));
        let r = async {
            let prefix =
                kagi_aws::xks::normalize_prefix(prefix).map_err(ServiceError::BadRequest)?;
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            let s = self.cloud_state().await?;
            let st = s.xks_stores.get(&prefix).cloned().ok_or_else(|| {
                ServiceError::NotFound(format!("XKS key store {prefix:?} does not exist"))
            })?;
            Ok((prefix, st))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `kagi aws create-credentials`: an access key for the KMS-compatible API carrying
    /// `policies` (a non-root caller can only hand out policies it holds, as with tokens).
    pub async fn aws_create_credentials(
        &self,
        c: &Caller,
        policies: Vec<String>,
    ) -> Result<(String, Zeroizing<String>), ServiceError> {
        if policies.is_empty() {
            return Err(ServiceError::BadRequest(
                "credentials need at least one policy".into(),
            ));
        }
        self.check_grantable(c, &policies, |p| {
            format!("permission denied: credentials can only carry policies the caller holds, and it does not hold {p}")
        })
        .await?;
        let (id, secret) = kagi_aws::new_credential("KAGI");
        let out = (id.clone(), secret.clone());
        let by = c.principal.clone();
        self.change_cloud(c, "aws.create_credentials", move |s| {
            let note = format!("access key {id} with policies {}", policies.join(","));
            s.aws_credentials.insert(
                id,
                AwsCredential {
                    secret,
                    policies,
                    created_at: now_secs(),
                    created_by: by,
                },
            );
            Ok(((), note))
        })
        .await?;
        Ok(out)
    }

    /// Creates or moves a KMS alias.
    pub async fn aws_set_alias(
        &self,
        c: &Caller,
        alias: &str,
        key: &str,
        create_only: bool,
    ) -> Result<(), ServiceError> {
        let (alias, key) = (alias.to_string(), key.to_string());
        self.change_cloud(c, "aws.alias", move |s| {
            if create_only && s.aliases.contains_key(&alias) {
                return Err(ServiceError::Conflict(format!(
                    "alias {alias} already exists"
                )));
            }
            let note = format!("alias {alias} -> key {key}");
            s.aliases.insert(alias, key);
            Ok(((), note))
        })
        .await
    }

    fn cached_signing_key(
        &self,
        auth: &sigv4::Authorization,
        secret: &str,
    ) -> Result<sigv4::SigningKey, ServiceError> {
        let k = (auth.access_key_id.clone(), auth.scope());
        let mut g = self.cloud.lock().map_err(lock_err)?;
        if let Some(sk) = g.signing_keys.get(&k) {
            return Ok(sk.clone());
        }
        let sk = sigv4::signing_key(secret.as_bytes(), &auth.date, &auth.region, &auth.service);
        if g.signing_keys.len() >= MAX_SIGNING_KEYS {
            g.signing_keys.clear();
        }
        g.signing_keys.insert(k, sk.clone());
        Ok(sk)
    }

    /// Verifies an XKS request's signature against its store's credentials and mutual-TLS
    /// subject, and applies the store's quota. The caller is `xks:PREFIX` with the store's
    /// policies; a refusal is on the audit log.
    pub async fn xks_authenticate(
        &self,
        prefix: &str,
        pending: &Result<Pending, SigV4Error>,
        cert_cn: Option<&str>,
        mut caller: Caller,
    ) -> Result<Caller, ServiceError> {
        let r = async {
            let state = self.cloud_state().await?;
            let store = state.xks_stores.get(prefix).ok_or_else(|| {
                ServiceError::NotFound(format!("no XKS key store has the path prefix {prefix:?}"))
            })?;
            let pending = pending
                .as_ref()
                .map_err(|e| ServiceError::Signature(e.clone()))?;
            caller.principal = format!("xks:{}", if prefix.is_empty() { "/" } else { prefix });
            let cred = store
                .credentials
                .iter()
                .find(|c| c.access_key_id == pending.auth.access_key_id)
                .ok_or_else(|| {
                    ServiceError::Signature(SigV4Error::UnknownAccessKey(
                        pending.auth.access_key_id.clone(),
                    ))
                })?;
            let key = self.cached_signing_key(&pending.auth, &cred.secret)?;
            pending.verify(&key).map_err(ServiceError::Signature)?;
            if let Some(want) = &store.mtls_subject {
                if cert_cn != Some(want.as_str()) {
                    return Err(ServiceError::Unauthenticated(format!(
                        "this XKS key store takes requests only over mutual TLS from {want:?}"
                    )));
                }
            }
            if let Some(rps) = store.max_rps {
                if !self.take_token(prefix, rps)? {
                    return Err(ServiceError::Throttled(format!(
                        "XKS key store {prefix:?} allows {rps} requests per second"
                    )));
                }
            }
            Ok(store.policies.clone())
        }
        .await;
        match r {
            Ok(p) => {
                caller.policies = p;
                Ok(caller)
            }
            Err(e) => {
                self.finish(&caller, Trail::new("auth", None, &EMPTY_CTX, None), Err(e))
                    .await
            }
        }
    }

    fn take_token(&self, prefix: &str, rps: u32) -> Result<bool, ServiceError> {
        let mut g = self.cloud.lock().map_err(lock_err)?;
        let now = Instant::now();
        let cap = f64::from(rps.max(1));
        let (tokens, last) = g.buckets.entry(prefix.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * cap).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Verifies a KMS API request's signature; the caller is `aws:ACCESS_KEY_ID` with the
    /// credential's policies.
    pub async fn aws_authenticate(
        &self,
        pending: &Result<Pending, SigV4Error>,
        mut caller: Caller,
    ) -> Result<Caller, ServiceError> {
        let r = async {
            let pending = pending
                .as_ref()
                .map_err(|e| ServiceError::Signature(e.clone()))?;
            let state = self.cloud_state().await?;
            let cred = state
                .aws_credentials
                .get(&pending.auth.access_key_id)
                .ok_or_else(|| {
                    ServiceError::Signature(SigV4Error::UnknownAccessKey(
                        pending.auth.access_key_id.clone(),
                    ))
                })?;
            let key = self.cached_signing_key(&pending.auth, &cred.secret)?;
            pending.verify(&key).map_err(ServiceError::Signature)?;
            Ok((pending.auth.access_key_id.clone(), cred.policies.clone()))
        }
        .await;
        match r {
            Ok((id, p)) => {
                caller.principal = format!("aws:{id}");
                caller.policies = p;
                Ok(caller)
            }
            Err(e) => {
                self.finish(&caller, Trail::new("auth", None, &EMPTY_CTX, None), Err(e))
                    .await
            }
        }
    }
}
