//! Perimeter decisions (gateway and controller) on a local audit chain, in the key
//! operations' record format (docs/audit.md): the principal is `cert:IDENTITY`, the context
//! names the service and whatever else decided.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::output::Fail;

/// One perimeter event.
pub struct Event<'a> {
    pub operation: &'static str,
    pub identity: &'a str,
    pub peer: Option<SocketAddr>,
    pub service: &'a str,
    pub outcome: kagi_audit::Outcome,
    pub reason: String,
    pub extra: &'a [(&'a str, String)],
}

/// An audit chain and the node name its records carry.
pub struct Recorder {
    audit: kagi_audit::AuditLog,
    node: String,
}

impl Recorder {
    /// Opens (creating) the SQLite chain at `path`; with `signing_key` (a file holding an
    /// Ed25519 seed, hex, created mode 0600 if absent) its checkpoints are signed.
    pub fn open(
        path: &Path,
        node: Option<String>,
        signing_key: Option<&Path>,
    ) -> Result<Self, Fail> {
        let store: Arc<dyn kagi_store::AuditStore> = Arc::new(
            kagi_store::sqlite::SqliteAuditStore::open(path).map_err(|e| {
                Fail(format!(
                    "cannot open the audit store {}: {e}",
                    path.display()
                ))
            })?,
        );
        let audit = kagi_audit::AuditLog::start(store)
            .map_err(|e| Fail(format!("cannot start the audit log: {e}")))?;
        if let Some(key_path) = signing_key {
            let key = load_signing_key(key_path)?;
            tracing::info!(
                public_key = %hex::encode(key.public_key()),
                "audit checkpoints are signed with this Ed25519 key"
            );
            audit.set_signer(Some(key));
        }
        Ok(Self {
            audit,
            node: node.unwrap_or_else(crate::server_cmd::host_name),
        })
    }

    /// Appends one event; `Err` means it is not on the chain (callers fail closed).
    pub async fn record(&self, e: Event<'_>) -> Result<u64, kagi_audit::AuditError> {
        let mut context = std::collections::BTreeMap::new();
        if !e.service.is_empty() {
            context.insert("service".to_string(), e.service.to_string());
        }
        for (k, v) in e.extra {
            context.insert(k.to_string(), v.clone());
        }
        self.audit
            .record(kagi_audit::AuditEvent {
                time: kagi_audit::AuditEvent::now_string(),
                node: self.node.clone(),
                principal: format!("cert:{}", e.identity),
                source: e.peer.map(|p| p.ip().to_canonical().to_string()),
                operation: e.operation.to_string(),
                key: None,
                key_version: None,
                context,
                justification: None,
                request_id: hex::encode(kagi_crypto::random_array::<12>()),
                outcome: e.outcome,
                reason: Some(e.reason),
            })
            .await
    }
}

/// The Ed25519 checkpoint key in `path` (a hex seed), created if absent.
fn load_signing_key(path: &Path) -> Result<kagi_crypto::SigningKey, Fail> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Fail(format!("{} is not a file path", path.display())))?;
        let seed = zeroize::Zeroizing::new(hex::encode(kagi_crypto::random_array::<32>()));
        crate::control_client::write_file(dir, name, seed.as_bytes(), true)?;
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?,
    );
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut raw[..]).map_err(|_| {
        Fail(format!(
            "{} must hold 64 hex digits (an Ed25519 seed)",
            path.display()
        ))
    })?;
    kagi_crypto::SigningKey::from_seed(&kagi_crypto::SecretKey32::from_bytes(*raw))
        .map_err(|e| Fail(format!("{}: {e}", path.display())))
}
