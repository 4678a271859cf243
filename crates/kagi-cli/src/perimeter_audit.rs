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
    /// Opens (creating) the SQLite chain at `path`.
    pub fn open(path: &Path, node: Option<String>) -> Result<Self, Fail> {
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
