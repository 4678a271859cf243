//! The live state a compliance report answers from.

use std::sync::Arc;

use kagi_keys::{KeyRecord, Operation, Policy};

use super::{lock_err, Caller, KeyService, Trail, EMPTY_CTX};
use crate::ServiceError;

/// What the report needs to know, read at one moment.
#[derive(Debug)]
pub struct ComplianceFacts {
    /// This node.
    pub node: String,
    /// `shamir`, `pkcs11`, `dev`; None before init.
    pub seal_kind: Option<String>,
    /// Shamir shares made.
    pub shares: u8,
    /// Shamir shares needed.
    pub threshold: u8,
    /// Every key, destroyed ones included.
    pub keys: Vec<KeyRecord>,
    /// Every policy that parses, by name.
    pub policies: Vec<(String, Arc<Policy>)>,
    /// Whether a notification webhook is configured.
    pub notify_configured: bool,
}

impl KeyService {
    /// The facts for `kagi compliance report` (checks `audit`, as reading the log does).
    pub async fn compliance_facts(&self, c: &Caller) -> Result<ComplianceFacts, ServiceError> {
        let t = Trail::new("compliance.report", None, &EMPTY_CTX, None);
        let r = async {
            self.check(c, Operation::Audit, None, &EMPTY_CTX, None)?;
            let seal = self.seal.read().map_err(lock_err)?.clone();
            let keys = self.store.list_keys().await?;
            let mut policies: Vec<(String, Arc<Policy>)> = self
                .policies
                .read()
                .map_err(lock_err)?
                .iter()
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect();
            policies.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(ComplianceFacts {
                node: self.opts.node.clone(),
                seal_kind: seal.as_ref().map(|s| s.kind.clone()),
                shares: seal.as_ref().map_or(0, |s| s.shares),
                threshold: seal.as_ref().map_or(0, |s| s.threshold),
                keys,
                policies,
                notify_configured: self.notifier.is_some(),
            })
        }
        .await;
        self.finish(c, t, r).await
    }
}
