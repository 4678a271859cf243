/// Why a cryptographic operation failed. Deliberately coarse: the caller learns *that*
/// authentication failed, never which byte was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum CryptoError {
    /// AEAD decryption failed: wrong key, wrong associated data, or damaged ciphertext.
    #[error("authentication failed: the ciphertext, its associated data or the key is not the one it was made with")]
    Authentication,
    /// An input had a length the primitive does not accept.
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        /// Which input.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A signature did not verify.
    #[error("signature does not verify")]
    Signature,
    /// Shamir split or combine refused its input.
    #[error("secret sharing failed: {0}")]
    Shares(&'static str),
    /// FF1 refused its input (radix, numerals, domain too small).
    #[error("format-preserving encryption refused the input: {0}")]
    Fpe(String),
    /// The underlying library refused a key (should not happen for correct lengths).
    #[error("the crypto library refused the key")]
    KeyRejected,
}
