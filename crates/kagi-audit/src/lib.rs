//! kagi's audit log. Every key operation and every access decision becomes one record; the
//! records form a SHA-256 hash chain; a signed checkpoint periodically pins the chain head;
//! a response is sent only after its record is durable, and if the audit store cannot
//! write, key operations fail closed.
//!
//! Format and chain rules: `docs/audit.md`.
#![forbid(unsafe_code)]

mod chain;
mod error;
mod export;
mod record;
mod writer;

pub use chain::{
    checkpoint_message, verify, ChainVerifier, VerifyFailure, VerifyReport, GENESIS_HASH,
};
pub use error::AuditError;
pub use export::{to_cef, to_syslog, ExportFormat};
pub use record::{AuditEvent, AuditRecord, Outcome};
pub use writer::{AuditLog, AuditStats, SignerSlot};
