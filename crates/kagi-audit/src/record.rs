use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused by policy or authentication.
    Denied,
    /// Failed (bad input, unusable key, sealed ...).
    Error,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// What happened, before it gets a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time with microseconds.
    pub time: String,
    /// The node that served the request.
    pub node: String,
    /// Who asked: `token:<accessor>`, `root`, `cert:<subject>`, `system`, or `anonymous`.
    pub principal: String,
    /// The caller's address.
    pub source: Option<String>,
    /// Operation name (`generate`, `decrypt`, `key.rotate`, `auth` ...).
    pub operation: String,
    /// Key name.
    pub key: Option<String>,
    /// Key version.
    pub key_version: Option<u32>,
    /// Encryption context (never secret).
    pub context: BTreeMap<String, String>,
    /// Key-access justification code.
    pub justification: Option<String>,
    /// Request id (from `X-Request-Id` or generated).
    pub request_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in one sentence (denials and errors), or what (lifecycle changes).
    pub reason: Option<String>,
}

impl AuditEvent {
    /// The current time in the record format.
    pub fn now_string() -> String {
        jiff::Timestamp::now()
            .round(jiff::Unit::Microsecond)
            .map(|t| format!("{t:.6}"))
            .unwrap_or_else(|_| jiff::Timestamp::now().to_string())
    }
}

/// A record as stored and exported: the event, its place, and the chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 1, 2, 3 ... with no gaps.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous record's hash (hex); 64 zeros for seq 1.
    pub prev_hash: String,
    /// `hex(SHA-256(JCS(this record without "hash")))`.
    pub hash: String,
}
