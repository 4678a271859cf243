//! kagi's storage boundary. The rest of kagi sees two traits:
//!
//! - [`KeyStore`]: key records, wrapped key material, policies, tokens and small settings.
//!   Async, because the PostgreSQL backend for several nodes is async.
//! - [`AuditStore`]: the append-only audit chain. Synchronous, because one dedicated writer
//!   thread batches records into group commits.
//!
//! [`perimeter::PerimeterStore`] holds the perimeter controller's state (SQLite).
//!
//! SQLite implements both for the embedded default ([`sqlite`]); PostgreSQL implements both
//! for several nodes sharing one database ([`postgres`]).
#![forbid(unsafe_code)]

mod error;
pub mod perimeter;
pub mod postgres;
pub mod sqlite;
mod traits;

pub use error::StoreError;
pub use traits::{AuditStore, Checkpoint, KeyStore, Snapshot, StoreChange, TokenRecord};
