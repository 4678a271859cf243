//! kagi's cryptographic primitives, and the only crate that names a crypto library.
//!
//! Every primitive is a small function whose doc comment gives the construction and the
//! standard it follows, and which checks lengths itself. Callers never see aws-lc-rs types.
#![forbid(unsafe_code)]

mod aead;
mod digest;
mod error;
pub mod ff1;
pub mod hpke;
pub mod legacy;
mod random;
mod secret;
pub mod shamir;
mod signature;

pub use aead::{AeadKey, NONCE_LEN, TAG_LEN};
pub use digest::{ct_eq, hkdf_sha256_32, hmac_sha256, sha256, Sha256};
pub use error::CryptoError;
pub use random::{fill_random, random_array, random_vec};
pub use secret::{SecretBytes, SecretKey32};
pub use signature::{verify_ed25519, SigningKey, ED25519_PUBLIC_KEY_LEN};
