//! Single Packet Authorization codecs, sans I/O: time and randomness are arguments, nothing
//! here touches a socket or the firewall.
//!
//! [`fwknop`] is wire-compatible with fwknop 2.6.10's Rijndael + HMAC mode (FKO protocol
//! 3.0.0): `docs/spa-fwknop.md` gives the format; `../shared/reference/fwknop-spa.md` the facts
//! it was built from.
#![forbid(unsafe_code)]

pub mod access_conf;
mod b64;
pub mod decision;
mod error;
pub mod fwknop;
pub mod message;
pub mod native;
pub mod native_decision;
pub mod replay_cache;

pub use error::SpaError;
pub use fwknop::{open, seal, StanzaKeys};
pub use message::{port_spec, AccessSpec, DigestType, MessageType, Proto, SpaMessage};
