/// Everything the pure key model can refuse. Each message is one sentence a user can act on.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyModelError {
    /// A wrapped blob could not be parsed.
    #[error("ciphertext is malformed: {0}")]
    MalformedBlob(&'static str),
    /// An encryption context was refused.
    #[error("encryption context is invalid: {0}")]
    InvalidContext(String),
    /// A key name was refused.
    #[error("invalid key name {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - /")]
    InvalidKeyName(String),
    /// A lifecycle transition is not allowed from the key's current state.
    #[error("key {name} is {state}: cannot {action}")]
    BadTransition {
        /// The key.
        name: String,
        /// Its current state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// A policy document was refused.
    #[error("policy is invalid: {0}")]
    InvalidPolicy(String),
    /// A duration string was refused.
    #[error("invalid duration {0:?}: use a number with a unit, e.g. 90s, 30m, 12h, 30d")]
    InvalidDuration(String),
    /// An unknown justification code.
    #[error("unknown justification code {0:?}")]
    UnknownJustification(String),
    /// An unknown key usage.
    #[error("unknown key usage {0:?}: use encrypt-decrypt, encrypt or decrypt")]
    InvalidUsage(String),
    /// An unknown operation name.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
}
