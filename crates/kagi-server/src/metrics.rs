//! Prometheus counters, kept as plain atomics: no registry crate for a dozen numbers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use kagi_audit::Outcome;

/// Operation names counted in `kagi_requests_total`.
pub const OPS: &[&str] = &[
    "generate",
    "decrypt",
    "encrypt",
    "reencrypt",
    "describe",
    "auth",
    "key.create",
    "key.rotate",
    "key.disable",
    "key.enable",
    "key.schedule_deletion",
    "key.cancel_deletion",
    "key.destroy",
    "policy.write",
    "policy.delete",
    "policy.read",
    "token.create",
    "token.revoke",
    "token.lookup",
    "audit.read",
    "audit.verify",
    "sys.init",
    "sys.unseal",
    "sys.seal",
];

/// Request counters by operation and outcome.
#[derive(Debug)]
pub struct Metrics {
    by_op: BTreeMap<&'static str, [AtomicU64; 3]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            by_op: OPS.iter().map(|o| (*o, Default::default())).collect(),
        }
    }
}

impl Metrics {
    /// Counts one request.
    pub fn count(&self, op: &str, outcome: Outcome) {
        if let Some(c) = self.by_op.get(op) {
            let i = match outcome {
                Outcome::Success => 0,
                Outcome::Denied => 1,
                Outcome::Error => 2,
            };
            c[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition of these counters plus the audit writer's and the seal.
    pub fn render(&self, audit: &kagi_audit::AuditStats, sealed: bool) -> String {
        let mut s = String::new();
        s.push_str("# HELP kagi_requests_total Key-service requests by operation and outcome.\n");
        s.push_str("# TYPE kagi_requests_total counter\n");
        for (op, c) in &self.by_op {
            for (i, outcome) in ["success", "denied", "error"].iter().enumerate() {
                let _ = writeln!(
                    s,
                    "kagi_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} {}",
                    c[i].load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, v) in [
            (
                "kagi_audit_records_total",
                "Audit records made durable.",
                audit.records.load(Ordering::Relaxed),
            ),
            (
                "kagi_audit_batches_total",
                "Audit group commits.",
                audit.batches.load(Ordering::Relaxed),
            ),
            (
                "kagi_audit_write_failures_total",
                "Audit group commits that failed.",
                audit.failures.load(Ordering::Relaxed),
            ),
            (
                "kagi_audit_checkpoints_total",
                "Signed audit checkpoints written.",
                audit.checkpoints.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        let failing = audit.failing.load(Ordering::Relaxed) as u8;
        let _ = writeln!(s, "# HELP kagi_audit_failing 1 while the audit log cannot write.\n# TYPE kagi_audit_failing gauge\nkagi_audit_failing {failing}");
        let _ = writeln!(s, "# HELP kagi_sealed 1 while the key service is sealed.\n# TYPE kagi_sealed gauge\nkagi_sealed {}", sealed as u8);
        s
    }
}
