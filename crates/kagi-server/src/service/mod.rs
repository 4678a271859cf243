//! The one core service every front-end calls. It owns the seal state, the KEK cache, the
//! policy and token caches, and the rule that every key operation and every decision is
//! on the audit log before its answer leaves.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use kagi_audit::{AuditEvent, AuditLog, Outcome};
use kagi_crypto::{AeadKey, SecretBytes, SecretKey32, SigningKey};
use kagi_keys::policy::decide;
use kagi_keys::{
    AccessRequest, EncryptionContext, Justification, KeyId, KeyRecord, KeyState, KeyType,
    Operation, Policy, WrappedBlob,
};
use kagi_store::{KeyStore, StoreChange, TokenRecord};

use crate::metrics::Metrics;
use crate::seal::{kek_aad, MasterKey, SealRecord, SoftwareMasterKey, AUDIT_KEY_AAD};
use crate::tokens::{accessor, new_token, token_hash};
use crate::ServiceError;

mod cloud;
mod compliance_facts;
mod tokens_fpe;
mod xks;

pub use cloud::{AwsCredential, CloudState, Credential, XksStore};
pub use compliance_facts::ComplianceFacts;
pub use tokens_fpe::TokenField;
pub use xks::{metadata_context, XksHealth, XksSealed};

/// Settings the core needs from the command line or config file.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Node name for audit records.
    pub node: String,
    /// `--dev`: dev protector, immediate deletion allowed.
    pub dev: bool,
    /// Allow `pending_days = 0`.
    pub allow_immediate_deletion: bool,
    /// Client-certificate subject CN → policies.
    pub cert_principals: BTreeMap<String, Vec<String>>,
    /// `[seal] type = "pkcs11"`: the HSM-held master key (auto-unseal).
    pub hsm: Option<Arc<dyn MasterKey>>,
    /// `[notify]`: the customer's webhook for uses that `notify` rules match.
    pub notify: Option<crate::notify::NotifyConfig>,
}

/// An HSM master key shared between the options and the unsealed state.
#[derive(Debug)]
struct SharedMaster(Arc<dyn MasterKey>);

impl MasterKey for SharedMaster {
    fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServiceError> {
        self.0.wrap(aad, plaintext)
    }
    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ServiceError> {
        self.0.unwrap(aad, wrapped)
    }
}

/// Who is calling, established once per request by [`KeyService::authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// For audit: `root`, `token:<accessor>`, `cert:<cn>`, `anonymous`, `system`.
    pub principal: String,
    /// The root token bypasses policy.
    pub root: bool,
    /// Policies that apply.
    pub policies: Vec<String>,
    /// Remote address.
    pub source: Option<IpAddr>,
    /// Request id.
    pub request_id: String,
    /// Token hash, for self-revocation.
    pub token_hash: Option<[u8; 32]>,
    /// When the token expires (unix seconds); the console's session ends then too.
    pub expires_at: Option<i64>,
}

/// A fresh request id: 24 hex digits, a random per-process prefix and a counter, so ids are
/// unique across nodes and restarts without a call into the system's random generator for
/// every request.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PREFIX: std::sync::LazyLock<[u8; 8]> =
        std::sync::LazyLock::new(kagi_crypto::random_array::<8>);
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&*PREFIX);
    id[8..].copy_from_slice(&n.to_be_bytes());
    hex::encode(id)
}

impl Caller {
    /// An unauthenticated caller (init, unseal, status).
    pub fn anonymous(source: Option<IpAddr>, request_id: String) -> Self {
        Self {
            principal: "anonymous".into(),
            root: false,
            policies: vec![],
            source,
            request_id,
            token_hash: None,
            expires_at: None,
        }
    }

    fn system() -> Self {
        Self {
            principal: "system".into(),
            root: true,
            policies: vec![],
            source: None,
            request_id: format!("system-{}", hex::encode(kagi_crypto::random_array::<8>())),
            token_hash: None,
            expires_at: None,
        }
    }
}

/// A KEK with its versions unwrapped, cached while unsealed.
struct LoadedKey {
    record: KeyRecord,
    versions: HashMap<u32, AeadKey>,
    /// FF1 per version, for `fpe` keys.
    tokenizers: HashMap<u32, kagi_token::Tokenizer>,
}

/// Where the master key came from this time.
struct Unsealed {
    master: Box<dyn MasterKey>,
}

/// Seal status for `/v1/sys/status`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SealStatus {
    /// True once `operator init` ran (always true in dev).
    pub initialized: bool,
    /// True while key operations are refused.
    pub sealed: bool,
    /// `shamir` or `dev`; null before init.
    pub seal_type: Option<String>,
    /// Shares needed to unseal.
    pub threshold: u8,
    /// Shares made at init.
    pub shares: u8,
    /// Shares given so far towards the next unseal.
    pub progress: u8,
    /// This node's name.
    pub node: String,
    /// kagi version.
    pub version: String,
}

/// A new data key: plaintext (unless asked not to) and its wrapped blob.
#[derive(Debug)]
pub struct DataKey {
    /// Key name.
    pub key: String,
    /// KEK version that wrapped it.
    pub key_version: u32,
    /// The DEK in clear.
    pub plaintext: Option<SecretBytes>,
    /// The blob.
    pub ciphertext: Vec<u8>,
}

/// What data keys to make.
#[derive(Debug, Clone, Copy)]
pub struct DataKeySpec {
    /// Return the plaintext DEKs (false: wrapped only).
    pub with_plaintext: bool,
    /// DEK length in bytes.
    pub bytes: usize,
    /// How many.
    pub count: usize,
}

/// The result of unwrapping a blob.
#[derive(Debug)]
pub struct Unwrapped {
    /// Key name.
    pub key: String,
    /// KEK version.
    pub key_version: u32,
    /// The plaintext.
    pub plaintext: SecretBytes,
}

/// What to audit about one request; filled in as the request learns (e.g. the key name
/// from a blob's key id).
#[derive(Clone)]
struct Trail<'a> {
    op: &'static str,
    key: Option<String>,
    version: Option<u32>,
    ctx: &'a EncryptionContext,
    just: Option<Justification>,
    note: Option<String>,
}

impl<'a> Trail<'a> {
    fn new(
        op: &'static str,
        key: Option<&str>,
        ctx: &'a EncryptionContext,
        just: Option<Justification>,
    ) -> Self {
        Self {
            op,
            key: key.map(str::to_string),
            version: None,
            ctx,
            just,
            note: None,
        }
    }
}

static EMPTY_CTX: std::sync::LazyLock<EncryptionContext> =
    std::sync::LazyLock::new(EncryptionContext::empty);

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The key service.
pub struct KeyService {
    store: Arc<dyn KeyStore>,
    audit: AuditLog,
    opts: ServiceOptions,
    seal: RwLock<Option<SealRecord>>,
    unsealed: RwLock<Option<Arc<Unsealed>>>,
    progress: Mutex<Vec<SecretBytes>>,
    keys: RwLock<HashMap<String, Arc<LoadedKey>>>,
    ids: RwLock<HashMap<KeyId, String>>,
    policies: RwLock<HashMap<String, Arc<Policy>>>,
    tokens: RwLock<HashMap<[u8; 32], TokenRecord>>,
    lifecycle: tokio::sync::Mutex<()>,
    metrics: Metrics,
    /// A Shamir backup given to `restore`, held in memory until the shares verify it.
    pending_restore: Mutex<Option<crate::backup::Backup>>,
    /// Cloud front-end credentials, signing keys, quotas.
    cloud: Mutex<cloud::CloudCache>,
    /// The last XKS health verdict.
    health: Mutex<Option<(std::time::Instant, XksHealth)>>,
    /// Sends customer notifications (when configured).
    notifier: Option<crate::notify::Notifier>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("node", &self.opts.node)
            .finish_non_exhaustive()
    }
}

/// A fresh master key split into `shares` Shamir shares, `threshold` of which rebuild it.
fn new_shamir_master(
    shares: u8,
    threshold: u8,
) -> Result<(SoftwareMasterKey, SealRecord, Vec<SecretBytes>), ServiceError> {
    if threshold < 1 || shares < threshold {
        return Err(ServiceError::BadRequest(format!(
            "need 1 <= threshold <= shares <= 255, got threshold {threshold} of {shares} shares"
        )));
    }
    let key = SecretKey32::generate();
    let parts = kagi_crypto::shamir::split(key.expose(), threshold as usize, shares as usize)
        .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
    let master = SoftwareMasterKey::new(&key);
    let rec = SealRecord::new("shamir", shares, threshold, &master)?;
    Ok((master, rec, parts))
}

fn lock_err<T>(_: T) -> ServiceError {
    ServiceError::Internal("a lock was poisoned by an earlier panic".into())
}

impl KeyService {
    /// Opens the service over its stores. It starts sealed (or uninitialized).
    pub async fn open(
        store: Arc<dyn KeyStore>,
        audit: AuditLog,
        opts: ServiceOptions,
    ) -> Result<Arc<Self>, ServiceError> {
        let seal = match store.get_setting("seal").await? {
            Some(b) => Some(serde_json::from_slice::<SealRecord>(&b).map_err(|e| {
                ServiceError::Storage(format!("the stored seal configuration is unreadable: {e}"))
            })?),
            None => None,
        };
        let mut policies = HashMap::new();
        for (name, text) in store.list_policies().await? {
            match Policy::parse(&text) {
                Ok(p) => {
                    policies.insert(name, Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(policy = %name, error = %e, "stored policy no longer parses; it grants nothing")
                }
            }
        }
        let notifier = opts
            .notify
            .clone()
            .map(|cfg| crate::notify::Notifier::start(cfg, audit.clone(), opts.node.clone()));
        let svc = Arc::new(Self {
            store,
            audit,
            opts,
            seal: RwLock::new(seal),
            unsealed: RwLock::new(None),
            progress: Mutex::new(Vec::new()),
            keys: RwLock::new(HashMap::new()),
            ids: RwLock::new(HashMap::new()),
            policies: RwLock::new(policies),
            tokens: RwLock::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            metrics: Metrics::default(),
            pending_restore: Mutex::new(None),
            cloud: Mutex::default(),
            health: Mutex::new(None),
            notifier,
        });
        if let Some(mut rx) = svc.store.changes() {
            // Other nodes' changes (PostgreSQL NOTIFY): drop what they made stale, so a key
            // disabled anywhere is refused here on the next request.
            let weak = Arc::downgrade(&svc);
            tokio::spawn(async move {
                loop {
                    let change = match rx.recv().await {
                        Ok(c) => c,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            StoreChange::All
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let Some(svc) = weak.upgrade() else { return };
                    if let Err(e) = svc.apply_change(change).await {
                        tracing::warn!(error = %e, "could not apply another node's change; dropping every cache");
                        let _ = svc.apply_change(StoreChange::All).await;
                    }
                }
            });
        }
        Ok(svc)
    }

    /// Drops or reloads what another node's change made stale.
    async fn apply_change(&self, change: StoreChange) -> Result<(), ServiceError> {
        match change {
            StoreChange::Key(name) => self.forget(&name)?,
            StoreChange::Token(hash) => {
                self.tokens.write().map_err(lock_err)?.remove(&hash);
            }
            StoreChange::Policy(name) => {
                let text = self.store.get_policy(&name).await?;
                let mut pols = self.policies.write().map_err(lock_err)?;
                match text.map(|t| Policy::parse(&t)) {
                    Some(Ok(p)) => {
                        pols.insert(name, Arc::new(p));
                    }
                    _ => {
                        pols.remove(&name);
                    }
                }
            }
            StoreChange::All => {
                self.keys.write().map_err(lock_err)?.clear();
                self.tokens.write().map_err(lock_err)?.clear();
                let all = self.store.list_policies().await?;
                let mut pols = self.policies.write().map_err(lock_err)?;
                pols.clear();
                for (name, text) in all {
                    if let Ok(p) = Policy::parse(&text) {
                        pols.insert(name, Arc::new(p));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the key store answers within two seconds (readiness).
    pub async fn storage_reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ping()).await,
            Ok(Ok(()))
        )
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(self.audit.stats(), !self.is_unsealed())
    }

    fn is_unsealed(&self) -> bool {
        self.unsealed.read().map(|u| u.is_some()).unwrap_or(false)
    }

    fn master(&self) -> Result<Arc<Unsealed>, ServiceError> {
        self.unsealed
            .read()
            .map_err(lock_err)?
            .clone()
            .ok_or(ServiceError::Sealed)
    }

    // ---------------------------------------------------------------- audit

    async fn finish<T>(
        &self,
        c: &Caller,
        t: Trail<'_>,
        r: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let (outcome, reason) = match &r {
            Ok(_) => (Outcome::Success, t.note.clone()),
            Err(
                e @ (ServiceError::Denied(_)
                | ServiceError::Unauthenticated(_)
                | ServiceError::Signature(_)),
            ) => (Outcome::Denied, Some(e.to_string())),
            Err(e) => (Outcome::Error, Some(e.to_string())),
        };
        self.metrics.count(t.op, outcome);
        let notify = match &self.notifier {
            Some(_) => self.notify_rules(c, &t)?,
            None => Vec::new(),
        };
        let ev = AuditEvent {
            time: AuditEvent::now_string(),
            node: self.opts.node.clone(),
            principal: c.principal.clone(),
            source: c.source.map(|s| s.to_string()),
            operation: t.op.to_string(),
            key: t.key,
            key_version: t.version,
            context: t.ctx.pairs().clone(),
            justification: t.just.map(|j| j.as_str().to_string()),
            request_id: c.request_id.clone(),
            outcome,
            reason,
        };
        match (&self.notifier, notify.is_empty()) {
            (Some(n), false) => {
                self.audit.record(ev.clone()).await?;
                n.notify(notify, ev);
            }
            _ => {
                self.audit.record(ev).await?;
            }
        }
        r
    }

    /// The notify rules of the caller's policies that this use matches.
    fn notify_rules(&self, c: &Caller, t: &Trail<'_>) -> Result<Vec<String>, ServiceError> {
        let Ok(operation) = t.op.parse::<Operation>() else {
            return Ok(Vec::new());
        };
        if c.policies.is_empty() {
            return Ok(Vec::new());
        }
        let pols = self.policies.read().map_err(lock_err)?;
        let set: Vec<(&str, &Policy)> = c
            .policies
            .iter()
            .filter_map(|n| pols.get(n).map(|p| (n.as_str(), p.as_ref())))
            .filter(|(_, p)| p.has_notify())
            .collect();
        if set.is_empty() {
            return Ok(Vec::new());
        }
        let req = AccessRequest {
            operation,
            key: t.key.as_deref(),
            context: t.ctx,
            justification: t.just,
            source: c.source,
            now: jiff::Timestamp::now(),
        };
        Ok(kagi_keys::policy::notifications(set, &req))
    }

    /// Records a change before it is made (fail closed), then makes it; a failure to make
    /// it is recorded too.
    async fn record_then<T>(
        &self,
        c: &Caller,
        t: Trail<'_>,
        apply: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let mut retry = t.clone();
        retry.note = None;
        self.finish(c, t, Ok(())).await?;
        match apply.await {
            Ok(v) => Ok(v),
            Err(e) => self.finish(c, retry, Err(e)).await,
        }
    }

    /// Passes `r` through; an error is recorded first (a refused change is audited too).
    async fn checked<T>(
        &self,
        c: &Caller,
        t: &Trail<'_>,
        r: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => self.finish(c, t.clone(), Err(e)).await,
        }
    }

    // ---------------------------------------------------------------- auth

    /// Establishes the caller from a bearer token or a client certificate's subject CN.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        cert_cn: Option<&str>,
        source: Option<IpAddr>,
        request_id: String,
    ) -> Result<Caller, ServiceError> {
        let mut c = Caller::anonymous(source, request_id);
        let r = self.lookup_principal(token, cert_cn, &mut c).await;
        match r {
            Ok(()) => Ok(c),
            Err(e) => {
                self.finish(&c, Trail::new("auth", None, &EMPTY_CTX, None), Err(e))
                    .await
            }
        }
    }

    async fn lookup_principal(
        &self,
        token: Option<&str>,
        cert_cn: Option<&str>,
        c: &mut Caller,
    ) -> Result<(), ServiceError> {
        if let Some(tok) = token {
            let hash = token_hash(tok);
            let cached = self.tokens.read().map_err(lock_err)?.get(&hash).cloned();
            let rec = match cached {
                Some(r) => r,
                None => {
                    let r = self.store.get_token(&hash).await?.ok_or_else(|| {
                        ServiceError::Unauthenticated(
                            "the token is not valid (unknown or revoked)".into(),
                        )
                    })?;
                    self.tokens
                        .write()
                        .map_err(lock_err)?
                        .insert(hash, r.clone());
                    r
                }
            };
            if rec.expires_at.is_some_and(|e| e <= now_secs()) {
                return Err(ServiceError::Unauthenticated(
                    "the token has expired".into(),
                ));
            }
            c.principal = if rec.root {
                format!("root:{}", rec.accessor)
            } else {
                format!("token:{}", rec.accessor)
            };
            c.root = rec.root;
            c.policies = rec.policies;
            c.token_hash = Some(hash);
            c.expires_at = rec.expires_at;
            return Ok(());
        }
        if let Some(cn) = cert_cn {
            let pols = self.opts.cert_principals.get(cn).ok_or_else(|| {
                ServiceError::Unauthenticated(format!(
                    "client certificate {cn:?} is not mapped to any policy"
                ))
            })?;
            c.principal = format!("cert:{cn}");
            c.policies = pols.clone();
            return Ok(());
        }
        Err(ServiceError::Unauthenticated(
            "no credentials: send `Authorization: Bearer TOKEN` (set KAGI_TOKEN) or a client certificate".into(),
        ))
    }

    fn check(
        &self,
        c: &Caller,
        op: Operation,
        key: Option<&str>,
        ctx: &EncryptionContext,
        just: Option<Justification>,
    ) -> Result<(), ServiceError> {
        if c.root {
            return Ok(());
        }
        let pols = self.policies.read().map_err(lock_err)?;
        let set: Vec<(&str, &Policy)> = c
            .policies
            .iter()
            .filter_map(|n| pols.get(n).map(|p| (n.as_str(), p.as_ref())))
            .collect();
        let req = AccessRequest {
            operation: op,
            key,
            context: ctx,
            justification: just,
            source: c.source,
            now: jiff::Timestamp::now(),
        };
        let d = decide(set, &req);
        if d.allowed {
            Ok(())
        } else {
            let what = key.map_or(String::new(), |k| format!(" on key {k}"));
            Err(ServiceError::Denied(format!(
                "permission denied: {op}{what} ({})",
                d.reason()
            )))
        }
    }

    // ---------------------------------------------------------------- seal

    /// Seal status.
    pub fn status(&self) -> Result<SealStatus, ServiceError> {
        let seal = self.seal.read().map_err(lock_err)?.clone();
        let progress = self.progress.lock().map_err(lock_err)?.len() as u8;
        Ok(SealStatus {
            initialized: seal.is_some(),
            sealed: !self.is_unsealed(),
            seal_type: seal.as_ref().map(|s| s.kind.clone()),
            threshold: seal.as_ref().map_or(0, |s| s.threshold),
            shares: seal.as_ref().map_or(0, |s| s.shares),
            progress,
            node: self.opts.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    async fn new_root_token(&self, by: &str) -> Result<String, ServiceError> {
        let token = new_token();
        let hash = token_hash(&token);
        let rec = TokenRecord {
            accessor: accessor(&hash),
            policies: vec![],
            root: true,
            created_at: now_secs(),
            expires_at: None,
            created_by: by.to_string(),
        };
        self.store.put_token(&hash, &rec).await?;
        Ok(token)
    }

    async fn install_master(&self, master: Box<dyn MasterKey>) -> Result<(), ServiceError> {
        // The audit signing key: made once, stored wrapped by the master key.
        let seed = match self.store.get_setting("audit_signing_key").await? {
            Some(w) => SecretKey32::from_slice(master.unwrap(AUDIT_KEY_AAD, &w)?.expose())
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            None => {
                let s = SecretKey32::generate();
                self.store
                    .put_setting(
                        "audit_signing_key",
                        &master.wrap(AUDIT_KEY_AAD, s.expose())?,
                    )
                    .await?;
                s
            }
        };
        let signer =
            SigningKey::from_seed(&seed).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.store
            .put_setting(
                "audit_public_key",
                hex::encode(signer.public_key()).as_bytes(),
            )
            .await?;
        self.audit.set_signer(Some(signer));
        // Master first, then the cache: a request in between still finds usable KEKs.
        *self.unsealed.write().map_err(lock_err)? = Some(Arc::new(Unsealed { master }));
        self.keys.write().map_err(lock_err)?.clear();
        Ok(())
    }

    /// Dev protector: the master key lives in `data_dir/dev-master.key` (never in
    /// production). Returns the root token, stable across restarts of the same data dir.
    pub async fn start_dev(&self, data_dir: &Path) -> Result<String, ServiceError> {
        let key_file = data_dir.join("dev-master.key");
        let token_file = data_dir.join("dev-root-token");
        let io = |e: std::io::Error| {
            ServiceError::Storage(format!("dev data dir {}: {e}", data_dir.display()))
        };
        let seal = self.seal.read().map_err(lock_err)?.clone();
        let master_key = match &seal {
            Some(s) if s.kind != "dev" => {
                return Err(ServiceError::Conflict(format!(
                    "{} holds a {} deployment; it cannot be opened with --dev",
                    data_dir.display(),
                    s.kind
                )))
            }
            Some(_) => {
                let hexed = std::fs::read_to_string(&key_file).map_err(io)?;
                let raw = hex::decode(hexed.trim()).map_err(|_| {
                    ServiceError::Storage(format!("{} is damaged", key_file.display()))
                })?;
                SecretKey32::from_slice(&raw).map_err(|_| {
                    ServiceError::Storage(format!("{} is damaged", key_file.display()))
                })?
            }
            None => {
                let k = SecretKey32::generate();
                write_private(&key_file, hex::encode(k.expose()).as_bytes()).map_err(io)?;
                k
            }
        };
        let master = SoftwareMasterKey::new(&master_key);
        match seal {
            Some(s) if !s.matches(&master) => {
                return Err(ServiceError::Storage(format!(
                    "{} does not match this data dir",
                    key_file.display()
                )))
            }
            Some(_) => {}
            None => {
                let rec = SealRecord::new("dev", 1, 1, &master)?;
                self.store
                    .put_setting(
                        "seal",
                        &serde_json::to_vec(&rec)
                            .map_err(|e| ServiceError::Internal(e.to_string()))?,
                    )
                    .await?;
                *self.seal.write().map_err(lock_err)? = Some(rec);
            }
        }
        self.install_master(Box::new(master)).await?;
        let token = match std::fs::read_to_string(&token_file) {
            Ok(t) if self.store.get_token(&token_hash(t.trim())).await?.is_some() => {
                t.trim().to_string()
            }
            _ => {
                let t = self.new_root_token("dev").await?;
                write_private(&token_file, t.as_bytes()).map_err(io)?;
                t
            }
        };
        Ok(token)
    }

    /// Start-up with `[seal] type = "pkcs11"`: unseals with the HSM key when the store was
    /// initialized with it. Checks before writing anything: a store sealed another way, or an
    /// HSM key that is not the one the store was initialized with, is refused.
    pub async fn auto_unseal(&self) -> Result<(), ServiceError> {
        let seal = self.seal.read().map_err(lock_err)?.clone();
        match (&self.opts.hsm, seal) {
            (None, Some(s)) if s.kind == "pkcs11" => Err(ServiceError::Conflict(
                "this store is sealed by an HSM: configure [seal] type = \"pkcs11\"".into(),
            )),
            (None, _) | (Some(_), None) => Ok(()),
            (Some(_), Some(s)) if s.kind == "shamir" => {
                // Seal migration: start sealed; the old shares unseal, then migrate-seal.
                tracing::warn!("this store is sealed with Shamir shares, not the configured HSM: unseal with the shares, then run `kagi operator migrate-seal --to pkcs11`");
                Ok(())
            }
            (Some(_), Some(s)) if s.kind != "pkcs11" => Err(ServiceError::Conflict(format!(
                "this store is sealed with {}, not an HSM; keep [seal] type = \"{}\"",
                s.kind, s.kind
            ))),
            (Some(hsm), Some(s)) => {
                if !s.matches(hsm.as_ref()) {
                    return Err(ServiceError::Conflict(
                        "the HSM key is not the master key this store was initialized with".into(),
                    ));
                }
                self.install_master(Box::new(SharedMaster(hsm.clone())))
                    .await
            }
        }
    }

    /// `operator migrate-seal`: re-wraps every KEK version and the audit signing key under a
    /// new master key — the configured HSM key (`to = "pkcs11"`) or a fresh Shamir-split key
    /// (`to = "shamir"`, whose shares are returned) — and switches to it in one transaction.
    /// Key operations keep being served with the old master key until the switch; lifecycle
    /// changes wait.
    pub async fn migrate_seal(
        &self,
        c: &Caller,
        to: &str,
        shares: Option<u8>,
        threshold: Option<u8>,
    ) -> Result<(Vec<SecretBytes>, SealStatus), ServiceError> {
        let t = Trail::new("sys.migrate_seal", None, &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let r = async {
            let u = self.master()?;
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            let old = self.seal.read().map_err(lock_err)?.clone().ok_or_else(|| {
                ServiceError::Conflict("the key service is not initialized".into())
            })?;
            if old.kind == "dev" || old.kind == to {
                return Err(ServiceError::Conflict(format!(
                    "cannot migrate a {} seal to {to}",
                    old.kind
                )));
            }
            let (new, rec, parts): (Box<dyn MasterKey>, SealRecord, Vec<SecretBytes>) = match to {
                "pkcs11" => {
                    let hsm = self.opts.hsm.clone().ok_or_else(|| ServiceError::Conflict(
                        "configure [seal] type = \"pkcs11\" (library, token, key) and restart before migrating to it".into(),
                    ))?;
                    let rec = SealRecord::new("pkcs11", 0, 0, hsm.as_ref())?;
                    (Box::new(SharedMaster(hsm)), rec, Vec::new())
                }
                "shamir" => {
                    let (Some(n), Some(m)) = (shares, threshold) else {
                        return Err(ServiceError::BadRequest("migrating to Shamir needs shares and threshold".into()));
                    };
                    let (master, rec, parts) = new_shamir_master(n, m)?;
                    (Box::new(master), rec, parts)
                }
                other => {
                    return Err(ServiceError::BadRequest(format!(
                        "unknown seal {other:?}: use pkcs11 or shamir"
                    )))
                }
            };
            let snap = self.store.snapshot().await?;
            let by_id: HashMap<String, &str> = snap
                .keys
                .iter()
                .map(|k| (k.id.to_hex(), k.name.as_str()))
                .collect();
            let corrupt = |what: &str| ServiceError::Storage(format!("stored {what} is damaged"));
            let mut versions = Vec::with_capacity(snap.versions.len());
            for (id_hex, v, w) in &snap.versions {
                let name = by_id.get(id_hex).ok_or_else(|| corrupt("key material"))?;
                let id = KeyId::from_hex(id_hex).ok_or_else(|| corrupt("key id"))?;
                let aad = kek_aad(&id, *v, name);
                let wrapped = hex::decode(w).map_err(|_| corrupt("key material"))?;
                let material = u.master.unwrap(&aad, &wrapped)?;
                versions.push((id_hex.clone(), *v, new.wrap(&aad, material.expose())?));
            }
            let mut settings = Vec::new();
            if let Some(w) = self.store.get_setting(cloud::SETTING).await? {
                let state = u.master.unwrap(cloud::CLOUD_AAD, &w)?;
                settings.push((cloud::SETTING.to_string(), new.wrap(cloud::CLOUD_AAD, state.expose())?));
            }
            if let Some(w) = self.store.get_setting("audit_signing_key").await? {
                let seed = u.master.unwrap(AUDIT_KEY_AAD, &w)?;
                settings.push(("audit_signing_key".to_string(), new.wrap(AUDIT_KEY_AAD, seed.expose())?));
            }
            let old_bytes = self
                .store
                .get_setting("seal")
                .await?
                .ok_or_else(|| corrupt("seal record"))?;
            let new_bytes =
                serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(e.to_string()))?;
            self.store
                .rewrap(&old_bytes, &new_bytes, &settings, &versions)
                .await?;
            *self.seal.write().map_err(lock_err)? = Some(rec);
            self.install_master(new).await?;
            tracing::info!(from = %old.kind, to, "seal migrated");
            Ok((parts, self.status()?))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `operator backup`: a consistent snapshot of the key store, bound to the master key.
    pub async fn backup(&self, c: &Caller) -> Result<crate::backup::Backup, ServiceError> {
        let t = Trail::new("sys.backup", None, &EMPTY_CTX, None);
        let r = async {
            let u = self.master()?;
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            let snap = self.store.snapshot().await?;
            crate::backup::make(u.master.as_ref(), snap)
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `operator restore`: loads a backup into this empty, uninitialized store. With an HSM
    /// seal it is verified and written at once; with Shamir it waits, in memory, for the
    /// unseal shares of the backed-up deployment, which verify it before anything is written.
    pub async fn restore(
        &self,
        c: &Caller,
        b: crate::backup::Backup,
    ) -> Result<SealStatus, ServiceError> {
        let t = Trail::new("sys.restore", None, &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let r = async {
            if self.seal.read().map_err(lock_err)?.is_some() {
                return Err(ServiceError::Conflict(
                    "this key service is initialized: restore needs an empty, uninitialized store".into(),
                ));
            }
            let rec = crate::backup::seal_record(&b.snapshot)?;
            match (rec.kind.as_str(), &self.opts.hsm) {
                ("pkcs11", Some(hsm)) => {
                    if !rec.matches(hsm.as_ref()) {
                        return Err(ServiceError::Conflict(
                            "the backup was made under another HSM key than this one".into(),
                        ));
                    }
                    crate::backup::verify(hsm.as_ref(), &b)?;
                    self.store.restore(&b.snapshot).await?;
                    *self.seal.write().map_err(lock_err)? = Some(rec);
                    self.apply_change(StoreChange::All).await?;
                    self.install_master(Box::new(SharedMaster(hsm.clone()))).await?;
                }
                ("pkcs11", None) => {
                    return Err(ServiceError::Conflict(
                        "the backup is sealed by an HSM: configure [seal] type = \"pkcs11\" with its key".into(),
                    ))
                }
                ("shamir", None) => {
                    if b.format != crate::backup::BACKUP_FORMAT {
                        return Err(ServiceError::BadRequest(format!(
                            "not a kagi backup (format {:?})",
                            b.format
                        )));
                    }
                    *self.pending_restore.lock().map_err(lock_err)? = Some(b);
                    *self.seal.write().map_err(lock_err)? = Some(rec);
                }
                ("shamir", Some(_)) => {
                    return Err(ServiceError::Conflict(
                        "the backup is sealed with Shamir shares: configure [seal] type = \"shamir\"".into(),
                    ))
                }
                (other, _) => {
                    return Err(ServiceError::BadRequest(format!(
                        "a {other} deployment cannot be restored"
                    )))
                }
            }
            self.status()
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `operator init`: makes the master key, splits it into shares, makes a root token.
    /// The service stays sealed until unsealed with the shares.
    pub async fn init(
        &self,
        c: &Caller,
        shares: Option<u8>,
        threshold: Option<u8>,
    ) -> Result<(Vec<SecretBytes>, String), ServiceError> {
        let t = Trail::new("sys.init", None, &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let r = async {
            if self.seal.read().map_err(lock_err)?.is_some() {
                return Err(ServiceError::Conflict("the key service is already initialized".into()));
            }
            if let Some(hsm) = &self.opts.hsm {
                // The master key is the HSM's: no shares; unsealed from now on.
                let rec = SealRecord::new("pkcs11", 0, 0, hsm.as_ref())?;
                self.store.put_setting("seal", &serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(e.to_string()))?).await?;
                *self.seal.write().map_err(lock_err)? = Some(rec);
                self.install_master(Box::new(SharedMaster(hsm.clone()))).await?;
                let root = self.new_root_token("init").await?;
                return Ok((Vec::new(), root));
            }
            let (Some(shares), Some(threshold)) = (shares, threshold) else {
                return Err(ServiceError::BadRequest(
                    "Shamir sealing needs shares and threshold (kagi operator init --shares N --threshold M)".into(),
                ));
            };
            let (master, rec, parts) = new_shamir_master(shares, threshold)?;
            let seed = SecretKey32::generate();
            self.store.put_setting("audit_signing_key", &master.wrap(AUDIT_KEY_AAD, seed.expose())?).await?;
            self.store.put_setting("seal", &serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(e.to_string()))?).await?;
            *self.seal.write().map_err(lock_err)? = Some(rec);
            let root = self.new_root_token("init").await?;
            Ok((parts, root))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `operator unseal`: adds one share; unseals when the threshold is reached.
    pub async fn unseal(
        &self,
        c: &Caller,
        share: Option<&[u8]>,
        reset: bool,
    ) -> Result<SealStatus, ServiceError> {
        let t = Trail::new("sys.unseal", None, &EMPTY_CTX, None);
        let r = self.unseal_inner(share, reset).await;
        self.finish(c, t, r).await
    }

    async fn unseal_inner(
        &self,
        share: Option<&[u8]>,
        reset: bool,
    ) -> Result<SealStatus, ServiceError> {
        let _g = self.lifecycle.lock().await;
        if reset {
            self.progress.lock().map_err(lock_err)?.clear();
        }
        let seal = self.seal.read().map_err(lock_err)?.clone().ok_or_else(|| {
            ServiceError::Conflict(
                "the key service is not initialized: run `kagi operator init` first".into(),
            )
        })?;
        if self.is_unsealed() {
            return self.status();
        }
        if seal.kind != "shamir" {
            return Err(ServiceError::Conflict(format!(
                "a {} seal is not unsealed with shares",
                seal.kind
            )));
        }
        let Some(share) = share else {
            return self.status();
        };
        let combined = {
            let mut p = self.progress.lock().map_err(lock_err)?;
            if p.iter().any(|s| s.expose() == share) {
                return Err(ServiceError::BadRequest(
                    "this share was already given".into(),
                ));
            }
            p.push(SecretBytes::new(share.to_vec()));
            if p.len() < seal.threshold as usize {
                None
            } else {
                let r = kagi_crypto::shamir::combine(&p);
                p.clear();
                Some(r)
            }
        };
        let Some(combined) = combined else {
            return self.status();
        };
        let wrong = || {
            ServiceError::BadRequest(
                "the shares do not reconstruct the master key; unseal progress was reset".into(),
            )
        };
        let key = SecretKey32::from_slice(combined.map_err(|_| wrong())?.expose())
            .map_err(|_| wrong())?;
        let master = SoftwareMasterKey::new(&key);
        if !seal.matches(&master) {
            return Err(wrong());
        }
        let pending = self.pending_restore.lock().map_err(lock_err)?.take();
        if let Some(b) = pending {
            // A restore waiting for its master key: verify, then write, then unseal.
            let r = match crate::backup::verify(&master, &b) {
                Ok(()) => self.store.restore(&b.snapshot).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                *self.seal.write().map_err(lock_err)? = None;
                return Err(e);
            }
            self.apply_change(StoreChange::All).await?;
            tracing::info!("backup restored");
        }
        self.install_master(Box::new(master)).await?;
        tracing::info!("key service unsealed");
        self.status()
    }

    /// `operator seal`: forgets the master key and every KEK.
    pub async fn seal(&self, c: &Caller) -> Result<SealStatus, ServiceError> {
        let t = Trail::new("sys.seal", None, &EMPTY_CTX, None);
        let r = self.check(c, Operation::Manage, None, &EMPTY_CTX, None);
        self.finish(c, t, r).await?;
        let _g = self.lifecycle.lock().await;
        *self.unsealed.write().map_err(lock_err)? = None;
        self.keys.write().map_err(lock_err)?.clear();
        self.progress.lock().map_err(lock_err)?.clear();
        *self.cloud.lock().map_err(lock_err)? = cloud::CloudCache::default();
        *self.health.lock().map_err(lock_err)? = None;
        self.audit.set_signer(None);
        tracing::info!("key service sealed");
        self.status()
    }

    // ---------------------------------------------------------------- key cache

    async fn load(&self, rec: KeyRecord) -> Result<Arc<LoadedKey>, ServiceError> {
        let u = self.master()?;
        let mut versions = HashMap::new();
        let mut tokenizers = HashMap::new();
        if rec.state != KeyState::Destroyed {
            for (v, wrapped) in self.store.key_versions(&rec.id).await? {
                let material = u.master.unwrap(&kek_aad(&rec.id, v, &rec.name), &wrapped)?;
                let k = SecretKey32::from_slice(material.expose())
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                if rec.key_type == KeyType::Fpe {
                    let t = kagi_token::Tokenizer::new(&k)
                        .map_err(|e| ServiceError::Internal(e.to_string()))?;
                    tokenizers.insert(v, t);
                }
                versions.insert(v, AeadKey::new(&k));
            }
        }
        let lk = Arc::new(LoadedKey {
            record: rec,
            versions,
            tokenizers,
        });
        self.ids
            .write()
            .map_err(lock_err)?
            .insert(lk.record.id, lk.record.name.clone());
        self.keys
            .write()
            .map_err(lock_err)?
            .insert(lk.record.name.clone(), lk.clone());
        Ok(lk)
    }

    async fn key(&self, name: &str) -> Result<Arc<LoadedKey>, ServiceError> {
        self.master()?;
        if let Some(k) = self.keys.read().map_err(lock_err)?.get(name) {
            return Ok(k.clone());
        }
        let rec = self
            .store
            .key_by_name(name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("key {name} does not exist")))?;
        self.load(rec).await
    }

    async fn key_by_id(&self, id: &KeyId) -> Result<Arc<LoadedKey>, ServiceError> {
        self.master()?;
        let name = self.ids.read().map_err(lock_err)?.get(id).cloned();
        if let Some(n) = name {
            if let Some(k) = self.keys.read().map_err(lock_err)?.get(&n) {
                return Ok(k.clone());
            }
        }
        let rec = self.store.key_by_id(id).await?.ok_or_else(|| {
            ServiceError::InvalidCiphertext(
                "the ciphertext was made by a key this service does not have".into(),
            )
        })?;
        self.load(rec).await
    }

    /// `k` with version `v` loaded, if it has one: a cached key that lacks it is reloaded once,
    /// since another node may have rotated the key since this one cached it.
    async fn with_version(
        &self,
        k: Arc<LoadedKey>,
        v: u32,
    ) -> Result<Arc<LoadedKey>, ServiceError> {
        if k.versions.contains_key(&v) || k.record.state == KeyState::Destroyed {
            return Ok(k);
        }
        self.forget(&k.record.name)?;
        self.key(&k.record.name).await
    }

    /// Drops a key from the cache after a lifecycle change; the next use reloads it from
    /// the store, so every node-local view follows the stored state.
    fn forget(&self, name: &str) -> Result<(), ServiceError> {
        self.keys.write().map_err(lock_err)?.remove(name);
        Ok(())
    }

    fn destroyed_msg(rec: &KeyRecord) -> ServiceError {
        let when = rec
            .destroyed_at
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map_or("an earlier time".to_string(), |t| t.to_string());
        ServiceError::KeyState {
            state: "destroyed",
            message: format!(
                "key {} was destroyed at {when}: its material is erased and data under it cannot be decrypted",
                rec.name
            ),
        }
    }

    fn usable(rec: &KeyRecord, action: &'static str) -> Result<(), ServiceError> {
        if rec.state == KeyState::Destroyed {
            return Err(Self::destroyed_msg(rec));
        }
        if rec.key_type != KeyType::Aes256Gcm {
            return Err(ServiceError::BadRequest(format!(
                "key {} is a {} key: it cannot {action}",
                rec.name,
                rec.key_type.as_str()
            )));
        }
        rec.check_usable(action)?;
        let allowed = if action == "decrypt" {
            rec.usage.can_decrypt()
        } else {
            rec.usage.can_encrypt()
        };
        if !allowed {
            return Err(ServiceError::KeyUsage(format!(
                "key {} is {}-only: it cannot {action}",
                rec.name,
                rec.usage.as_str()
            )));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- data keys

    fn seal_blob(
        k: &LoadedKey,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(u32, Vec<u8>), ServiceError> {
        let v = k.record.current_version();
        let aead = k.versions.get(&v).ok_or_else(|| {
            ServiceError::Internal(format!(
                "key {} version {v} material is missing",
                k.record.name
            ))
        })?;
        let nonce: [u8; 12] = kagi_crypto::random_array();
        let aad = WrappedBlob::aad(&k.record.id, v, &nonce, ctx);
        let mut buf = Vec::with_capacity(kagi_keys::wrapped_key::HEADER_LEN + plaintext.len() + 16);
        buf.extend_from_slice(&WrappedBlob::header(&k.record.id, v, &nonce));
        let mut body = plaintext.to_vec();
        aead.seal_in_place(&nonce, &aad, &mut body);
        buf.extend_from_slice(&body);
        Ok((v, buf))
    }

    /// Generates `count` data keys of `bytes` bytes under `key` (seed steps 2-3).
    pub async fn generate(
        &self,
        c: &Caller,
        key: &str,
        ctx: &EncryptionContext,
        just: Option<Justification>,
        spec: DataKeySpec,
    ) -> Result<Vec<DataKey>, ServiceError> {
        let DataKeySpec {
            with_plaintext,
            bytes,
            count,
        } = spec;
        let mut t = Trail::new("generate", Some(key), ctx, just);
        if count > 1 {
            t.note = Some(format!("batch of {count} data keys"));
        }
        let r = async {
            self.master()?;
            self.check(c, Operation::Generate, Some(key), ctx, just)?;
            let k = self.key(key).await?;
            Self::usable(&k.record, "generate data keys")?;
            t.version = Some(k.record.current_version());
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let dek = SecretBytes::new(kagi_crypto::random_vec(bytes));
                let (v, blob) = Self::seal_blob(&k, ctx, dek.expose())?;
                out.push(DataKey {
                    key: key.to_string(),
                    key_version: v,
                    plaintext: with_plaintext.then_some(dek),
                    ciphertext: blob,
                });
            }
            Ok(out)
        }
        .await;
        self.finish(c, t, r).await
    }

    /// Encrypts a small payload (at most 4 KiB) under `key`.
    pub async fn encrypt(
        &self,
        c: &Caller,
        key: &str,
        ctx: &EncryptionContext,
        just: Option<Justification>,
        plaintext: &[u8],
    ) -> Result<DataKey, ServiceError> {
        let mut t = Trail::new("encrypt", Some(key), ctx, just);
        let r = async {
            self.master()?;
            if plaintext.len() > kagi_keys::wrapped_key::MAX_PLAINTEXT {
                return Err(ServiceError::BadRequest(format!(
                    "plaintext is {} bytes; encrypt takes at most 4096: use envelope encryption (`kagi encrypt`) for more",
                    plaintext.len()
                )));
            }
            self.check(c, Operation::Encrypt, Some(key), ctx, just)?;
            let k = self.key(key).await?;
            Self::usable(&k.record, "encrypt")?;
            let (v, blob) = Self::seal_blob(&k, ctx, plaintext)?;
            t.version = Some(v);
            Ok(DataKey { key: key.to_string(), key_version: v, plaintext: None, ciphertext: blob })
        }
        .await;
        self.finish(c, t, r).await
    }

    /// `n` random bytes from the service's generator (checks `generate` without a key, so
    /// only rules with `keys = ["*"]` allow it).
    pub async fn generate_random(&self, c: &Caller, n: usize) -> Result<SecretBytes, ServiceError> {
        let mut t = Trail::new("random", None, &EMPTY_CTX, None);
        t.note = Some(format!("{n} random bytes"));
        let r = self
            .check(c, Operation::Generate, None, &EMPTY_CTX, None)
            .map(|()| SecretBytes::new(kagi_crypto::random_vec(n)));
        self.finish(c, t, r).await
    }

    async fn open_blob(
        &self,
        c: &Caller,
        t: &mut Trail<'_>,
        op: Operation,
        blob: &[u8],
        ctx: &EncryptionContext,
        just: Option<Justification>,
    ) -> Result<Unwrapped, ServiceError> {
        self.master()?;
        let b = WrappedBlob::parse(blob)?;
        let k = self.key_by_id(&b.key_id).await?;
        let k = self.with_version(k, b.version).await?;
        t.key = Some(k.record.name.clone());
        t.version = Some(b.version);
        self.check(c, op, Some(&k.record.name), ctx, just)?;
        Self::usable(&k.record, "decrypt")?;
        let aead = k.versions.get(&b.version).ok_or_else(|| {
            ServiceError::InvalidCiphertext(format!(
                "key {} has no version {}",
                k.record.name, b.version
            ))
        })?;
        let aad = WrappedBlob::aad(&b.key_id, b.version, &b.nonce, ctx);
        let plaintext = aead.open(&b.nonce, &aad, &b.ciphertext).map_err(|_| {
            ServiceError::InvalidCiphertext(
                "decryption failed: the encryption context differs from the one the ciphertext was made with, or the ciphertext was altered".into(),
            )
        })?;
        Ok(Unwrapped {
            key: k.record.name.clone(),
            key_version: b.version,
            plaintext,
        })
    }

    /// Unwraps a blob (seed decrypt steps 2-3). No key name needed: the blob names its key.
    pub async fn decrypt(
        &self,
        c: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
        just: Option<Justification>,
    ) -> Result<Unwrapped, ServiceError> {
        let mut t = Trail::new("decrypt", None, ctx, just);
        let r = self
            .open_blob(c, &mut t, Operation::Decrypt, blob, ctx, just)
            .await;
        self.finish(c, t, r).await
    }

    /// Re-wraps a blob under `to_key` (its newest version) and `to_ctx`, without returning
    /// the plaintext. With `to_key` None, the blob's own key.
    pub async fn reencrypt(
        &self,
        c: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
        to_key: Option<&str>,
        to_ctx: &EncryptionContext,
        just: Option<Justification>,
    ) -> Result<(Unwrapped, DataKey), ServiceError> {
        let mut t = Trail::new("reencrypt", None, ctx, just);
        let r = async {
            let src = self
                .open_blob(c, &mut t, Operation::Reencrypt, blob, ctx, just)
                .await?;
            let dest = to_key.unwrap_or(&src.key).to_string();
            self.check(c, Operation::Reencrypt, Some(&dest), to_ctx, just)?;
            let k = self.key(&dest).await?;
            Self::usable(&k.record, "encrypt")?;
            let (v, out) = Self::seal_blob(&k, to_ctx, src.plaintext.expose())?;
            t.note = Some(format!("re-encrypted to key {dest} version {v}"));
            Ok((
                Unwrapped {
                    key: src.key,
                    key_version: src.key_version,
                    plaintext: SecretBytes::default(),
                },
                DataKey {
                    key: dest,
                    key_version: v,
                    plaintext: None,
                    ciphertext: out,
                },
            ))
        }
        .await;
        self.finish(c, t, r).await
    }

    // ---------------------------------------------------------------- key lifecycle

    /// Creates a key.
    pub async fn create_key(
        &self,
        c: &Caller,
        name: &str,
        description: &str,
        key_type: KeyType,
        rotation_period_secs: Option<u64>,
        usage: kagi_keys::KeyUsage,
    ) -> Result<KeyRecord, ServiceError> {
        let mut t = Trail::new("key.create", Some(name), &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let pre = async {
            let u = self.master()?;
            self.check(c, Operation::Manage, Some(name), &EMPTY_CTX, None)?;
            let mut rec = KeyRecord::new(
                KeyId(kagi_crypto::random_array()),
                name,
                description,
                key_type,
                rotation_period_secs,
                now_secs(),
            )?;
            rec.usage = usage;
            if self.store.key_by_name(name).await?.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "key {name} already exists (names of destroyed keys are not reused)"
                )));
            }
            let material = SecretKey32::generate();
            let wrapped = u
                .master
                .wrap(&kek_aad(&rec.id, 1, name), material.expose())?;
            Ok((rec, wrapped))
        }
        .await;
        let (rec, wrapped) = self.checked(c, &t, pre).await?;
        t.version = Some(1);
        t.note = Some(format!("created {} key id {}", key_type.as_str(), rec.id));
        self.record_then(c, t, async {
            self.store.create_key(&rec, &wrapped).await?;
            Ok(rec.clone())
        })
        .await
    }

    /// Key metadata (checks `describe`).
    pub async fn describe_key(&self, c: &Caller, name: &str) -> Result<KeyRecord, ServiceError> {
        let t = Trail::new("describe", Some(name), &EMPTY_CTX, None);
        let r = async {
            self.check(c, Operation::Describe, Some(name), &EMPTY_CTX, None)?;
            self.store
                .key_by_name(name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("key {name} does not exist")))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// Every key the caller may describe.
    pub async fn list_keys(&self, c: &Caller) -> Result<Vec<KeyRecord>, ServiceError> {
        let mut t = Trail::new("describe", None, &EMPTY_CTX, None);
        t.note = Some("list keys".into());
        let r = async {
            let all = self.store.list_keys().await?;
            Ok(all
                .into_iter()
                .filter(|k| {
                    self.check(c, Operation::Describe, Some(&k.name), &EMPTY_CTX, None)
                        .is_ok()
                })
                .collect())
        }
        .await;
        self.finish(c, t, r).await
    }

    async fn change_key(
        &self,
        c: &Caller,
        name: &str,
        op: &'static str,
        change: impl FnOnce(&mut KeyRecord) -> Result<String, ServiceError>,
    ) -> Result<KeyRecord, ServiceError> {
        let mut t = Trail::new(op, Some(name), &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let pre = async {
            self.master()?;
            self.check(c, Operation::Manage, Some(name), &EMPTY_CTX, None)?;
            let mut rec = self
                .store
                .key_by_name(name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("key {name} does not exist")))?;
            if rec.state == KeyState::Destroyed {
                return Err(Self::destroyed_msg(&rec));
            }
            let note = change(&mut rec)?;
            Ok((rec, note))
        }
        .await;
        let (rec, note) = self.checked(c, &t, pre).await?;
        t.version = Some(rec.current_version());
        t.note = Some(note);
        self.record_then(c, t, async {
            self.store.update_key(&rec, None).await?;
            self.forget(&rec.name)?;
            Ok(KeyRecord {
                revision: rec.revision + 1,
                ..rec.clone()
            })
        })
        .await
    }

    /// Adds a version; old versions keep decrypting.
    pub async fn rotate_key(&self, c: &Caller, name: &str) -> Result<KeyRecord, ServiceError> {
        let mut t = Trail::new("key.rotate", Some(name), &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let pre = async {
            let u = self.master()?;
            self.check(c, Operation::Manage, Some(name), &EMPTY_CTX, None)?;
            let mut rec = self
                .store
                .key_by_name(name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("key {name} does not exist")))?;
            if rec.state == KeyState::Destroyed {
                return Err(Self::destroyed_msg(&rec));
            }
            let v = rec.rotate(now_secs())?;
            let material = SecretKey32::generate();
            let wrapped = u
                .master
                .wrap(&kek_aad(&rec.id, v, name), material.expose())?;
            Ok((rec, v, wrapped))
        }
        .await;
        let (rec, v, wrapped) = self.checked(c, &t, pre).await?;
        t.version = Some(v);
        t.note = Some(format!("new version {v}"));
        self.record_then(c, t, async {
            self.store.update_key(&rec, Some((v, &wrapped))).await?;
            self.forget(&rec.name)?;
            Ok(KeyRecord {
                revision: rec.revision + 1,
                ..rec.clone()
            })
        })
        .await
    }

    /// Sets or clears automatic rotation.
    pub async fn set_rotation_period(
        &self,
        c: &Caller,
        name: &str,
        period_secs: Option<u64>,
    ) -> Result<KeyRecord, ServiceError> {
        self.change_key(c, name, "key.rotation_period", |r| {
            r.rotation_period_secs = period_secs;
            Ok(match period_secs {
                Some(p) => format!("rotates every {}", kagi_keys::duration::format_seconds(p)),
                None => "automatic rotation off".into(),
            })
        })
        .await
    }

    /// The kill switch.
    pub async fn disable_key(&self, c: &Caller, name: &str) -> Result<KeyRecord, ServiceError> {
        self.change_key(c, name, "key.disable", |r| {
            r.disable()?;
            Ok("disabled: every operation with this key is refused until enabled".into())
        })
        .await
    }

    /// Undoes the kill switch.
    pub async fn enable_key(&self, c: &Caller, name: &str) -> Result<KeyRecord, ServiceError> {
        self.change_key(c, name, "key.enable", |r| {
            r.enable()?;
            Ok("enabled".into())
        })
        .await
    }

    /// Starts the deletion window; with 0 days (dev or `allow_immediate_deletion`) the key is
    /// destroyed at once.
    pub async fn schedule_deletion(
        &self,
        c: &Caller,
        name: &str,
        pending_days: Option<u32>,
    ) -> Result<KeyRecord, ServiceError> {
        let days = pending_days.unwrap_or(30);
        if days > 365 {
            let t = Trail::new("key.schedule_deletion", Some(name), &EMPTY_CTX, None);
            return self
                .finish(
                    c,
                    t,
                    Err(ServiceError::BadRequest(format!(
                        "pending days must be 0-365, got {days}"
                    ))),
                )
                .await;
        }
        if days == 0 && !(self.opts.dev || self.opts.allow_immediate_deletion) {
            let t = Trail::new("key.schedule_deletion", Some(name), &EMPTY_CTX, None);
            return self
                .finish(c, t, Err(ServiceError::BadRequest("--pending-days 0 is allowed only on a --dev server or with allow_immediate_deletion = true".into())))
                .await;
        }
        let now = now_secs();
        let rec = self
            .change_key(c, name, "key.schedule_deletion", |r| {
                let date = r.schedule_deletion(now, days as i64 * 86_400)?;
                Ok(format!(
                    "deletion scheduled for unix time {date} ({days} days)"
                ))
            })
            .await?;
        if rec.destruction_due(now_secs()) {
            return self.destroy_key(c, rec).await;
        }
        Ok(rec)
    }

    /// Stops the deletion window; the key comes back disabled.
    pub async fn cancel_deletion(&self, c: &Caller, name: &str) -> Result<KeyRecord, ServiceError> {
        self.change_key(c, name, "key.cancel_deletion", |r| {
            r.cancel_deletion()?;
            Ok("deletion cancelled; the key is disabled until enabled".into())
        })
        .await
    }

    /// Crypto-shredding: erases every version's material. Recorded before it happens.
    async fn destroy_key(&self, c: &Caller, mut rec: KeyRecord) -> Result<KeyRecord, ServiceError> {
        let mut t = Trail::new("key.destroy", Some(&rec.name), &EMPTY_CTX, None);
        let _g = self.lifecycle.lock().await;
        let now = now_secs();
        if let Err(e) = rec.destroy(now) {
            return self.finish(c, t, Err(e.into())).await;
        }
        t.version = Some(rec.current_version());
        t.note = Some(format!(
            "material of versions 1-{} erased at unix time {now}",
            rec.current_version()
        ));
        self.record_then(c, t, async {
            self.store.destroy_key(&rec).await?;
            self.forget(&rec.name)?;
            Ok(KeyRecord {
                revision: rec.revision + 1,
                ..rec.clone()
            })
        })
        .await
    }

    /// Rotates keys whose period is over and destroys keys whose deletion window is over.
    pub async fn maintain(&self) -> Result<(), ServiceError> {
        if !self.is_unsealed() {
            return Ok(());
        }
        let sys = Caller::system();
        let now = now_secs();
        for k in self.store.list_keys().await? {
            if k.destruction_due(now) {
                let name = k.name.clone();
                if let Err(e) = self.destroy_key(&sys, k).await {
                    tracing::error!(key = %name, error = %e, "scheduled destruction failed");
                }
            } else if k.rotation_due(now) {
                if let Err(e) = self.rotate_key(&sys, &k.name).await {
                    tracing::error!(key = %k.name, error = %e, "automatic rotation failed");
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- policies

    /// Creates or replaces a policy after validating it.
    pub async fn write_policy(
        &self,
        c: &Caller,
        name: &str,
        text: &str,
    ) -> Result<Arc<Policy>, ServiceError> {
        let mut t = Trail::new("policy.write", None, &EMPTY_CTX, None);
        t.note = Some(format!("policy {name}"));
        let pre = (|| {
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            kagi_keys::key_record::validate_name(name).map_err(|_| {
                ServiceError::BadRequest(format!(
                    "invalid policy name {name:?}: use 1-128 characters from A-Z a-z 0-9 . _ - /"
                ))
            })?;
            Ok(Arc::new(Policy::parse(text)?))
        })();
        let p = self.checked(c, &t, pre).await?;
        self.record_then(c, t, async {
            self.store.put_policy(name, text).await?;
            self.policies
                .write()
                .map_err(lock_err)?
                .insert(name.to_string(), p.clone());
            Ok(p.clone())
        })
        .await
    }

    /// A policy's text.
    pub async fn read_policy(&self, c: &Caller, name: &str) -> Result<String, ServiceError> {
        let mut t = Trail::new("policy.read", None, &EMPTY_CTX, None);
        t.note = Some(format!("policy {name}"));
        let r = async {
            self.check(c, Operation::Describe, None, &EMPTY_CTX, None)?;
            self.store
                .get_policy(name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("policy {name} does not exist")))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// Every policy name and text.
    pub async fn list_policies(&self, c: &Caller) -> Result<Vec<(String, String)>, ServiceError> {
        let t = Trail::new("policy.read", None, &EMPTY_CTX, None);
        let r = async {
            self.check(c, Operation::Describe, None, &EMPTY_CTX, None)?;
            Ok(self.store.list_policies().await?)
        }
        .await;
        self.finish(c, t, r).await
    }

    /// Deletes a policy.
    pub async fn delete_policy(&self, c: &Caller, name: &str) -> Result<(), ServiceError> {
        let mut t = Trail::new("policy.delete", None, &EMPTY_CTX, None);
        t.note = Some(format!("policy {name}"));
        let r = async {
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            if self.store.get_policy(name).await?.is_none() {
                return Err(ServiceError::NotFound(format!(
                    "policy {name} does not exist"
                )));
            }
            Ok(())
        }
        .await;
        self.checked(c, &t, r).await?;
        self.record_then(c, t, async {
            self.store.delete_policy(name).await?;
            self.policies.write().map_err(lock_err)?.remove(name);
            Ok(())
        })
        .await
    }

    // ---------------------------------------------------------------- tokens

    /// Every policy in `policies` exists and, unless `c` is root, `c` holds it itself, so that
    /// what `c` hands out is never stronger than `c`; `refusal` words the denial for a policy.
    pub(crate) async fn check_grantable(
        &self,
        c: &Caller,
        policies: &[String],
        refusal: impl Fn(&str) -> String,
    ) -> Result<(), ServiceError> {
        for p in policies {
            if self.store.get_policy(p).await?.is_none() {
                return Err(ServiceError::NotFound(format!("policy {p} does not exist")));
            }
            if !c.root && !c.policies.contains(p) {
                return Err(ServiceError::Denied(refusal(p)));
            }
        }
        Ok(())
    }

    /// Creates a token carrying `policies`. A non-root caller can only hand out policies it
    /// holds itself, so a token can never create a more powerful one.
    pub async fn create_token(
        &self,
        c: &Caller,
        policies: &[String],
        ttl_secs: Option<u64>,
    ) -> Result<(String, TokenRecord), ServiceError> {
        let mut t = Trail::new("token.create", None, &EMPTY_CTX, None);
        let pre = async {
            self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            if policies.is_empty() {
                return Err(ServiceError::BadRequest("a token needs at least one policy".into()));
            }
            self.check_grantable(c, policies, |p| {
                format!("permission denied: a token can only grant policies it holds itself, and it does not hold {p}")
            })
            .await
        }
        .await;
        self.checked(c, &t, pre).await?;
        let token = new_token();
        let hash = token_hash(&token);
        let now = now_secs();
        let rec = TokenRecord {
            accessor: accessor(&hash),
            policies: policies.to_vec(),
            root: false,
            created_at: now,
            expires_at: ttl_secs.map(|s| now.saturating_add(s as i64)),
            created_by: c.principal.clone(),
        };
        t.note = Some(format!(
            "token {} with policies {}",
            rec.accessor,
            policies.join(",")
        ));
        self.record_then(c, t, async {
            self.store.put_token(&hash, &rec).await?;
            Ok(())
        })
        .await?;
        Ok((token, rec))
    }

    /// Revokes a token (any token for managers, its own for everyone).
    pub async fn revoke_token(&self, c: &Caller, token: &str) -> Result<(), ServiceError> {
        let hash = token_hash(token);
        let mut t = Trail::new("token.revoke", None, &EMPTY_CTX, None);
        t.note = Some(format!("token {}", accessor(&hash)));
        let r = async {
            if c.token_hash != Some(hash) {
                self.check(c, Operation::Manage, None, &EMPTY_CTX, None)?;
            }
            if self.store.get_token(&hash).await?.is_none() {
                return Err(ServiceError::NotFound(
                    "that token does not exist (already revoked?)".into(),
                ));
            }
            Ok(())
        }
        .await;
        self.checked(c, &t, r).await?;
        self.record_then(c, t, async {
            self.store.delete_token(&hash).await?;
            self.tokens.write().map_err(lock_err)?.remove(&hash);
            Ok(())
        })
        .await
    }

    // ---------------------------------------------------------------- audit

    /// Whether the caller's policies allow `op` on `key` now, without recording anything: for
    /// a user interface deciding which controls to offer (the action itself is checked and
    /// recorded again when it is requested).
    pub fn may(&self, c: &Caller, op: Operation, key: Option<&str>) -> bool {
        self.check(c, op, key, &EMPTY_CTX, None).is_ok()
    }

    /// Records a successful action that is not a key operation (a console sign-in or
    /// sign-out); fails closed like every operation when the audit log cannot record it.
    pub async fn record_action(
        &self,
        c: &Caller,
        operation: &'static str,
        note: String,
    ) -> Result<(), ServiceError> {
        let mut t = Trail::new(operation, None, &EMPTY_CTX, None);
        t.note = Some(note);
        self.finish(c, t, Ok(())).await
    }

    /// Checks the caller may read the audit log, and records that it did.
    pub async fn authorize_audit(
        &self,
        c: &Caller,
        what: &'static str,
    ) -> Result<(), ServiceError> {
        let mut t = Trail::new(what, None, &EMPTY_CTX, None);
        t.note = None;
        let r = self.check(c, Operation::Audit, None, &EMPTY_CTX, None);
        self.finish(c, t, r).await
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
