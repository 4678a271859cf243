//! The pure core of kagi's key service: what a key is, how it may change, what a wrapped
//! blob looks like on the wire, how an encryption context is made canonical, and how a
//! policy decides. Nothing here does I/O or reads the clock: time is always an argument.
#![forbid(unsafe_code)]

pub mod context;
pub mod duration;
mod error;
pub mod glob;
pub mod justification;
pub mod key_record;
pub mod operation;
pub mod policy;
pub mod time_window;
pub mod wrapped_key;

pub use context::EncryptionContext;
pub use error::KeyModelError;
pub use justification::Justification;
pub use key_record::{KeyId, KeyRecord, KeyState, KeyType, KeyUsage, VersionInfo};
pub use operation::Operation;
pub use policy::{AccessRequest, Decision, Policy};
pub use wrapped_key::WrappedBlob;
