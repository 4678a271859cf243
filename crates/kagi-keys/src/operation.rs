//! The operations a policy can allow or deny.

use serde::{Deserialize, Serialize};

use crate::KeyModelError;

/// A policy operation (names pinned in PRODUCT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Make a new data key.
    Generate,
    /// Unwrap a data key or decrypt a small payload.
    Decrypt,
    /// Encrypt a small payload.
    Encrypt,
    /// Re-wrap a blob under another key or version without revealing it.
    Reencrypt,
    /// Read key metadata.
    Describe,
    /// Create, rotate, disable, enable, delete keys; write policies; create tokens.
    Manage,
    /// Format-preserving tokenization.
    Tokenize,
    /// Reverse tokenization.
    Detokenize,
    /// Read or verify the audit log.
    Audit,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 9] = [
        Self::Generate,
        Self::Decrypt,
        Self::Encrypt,
        Self::Reencrypt,
        Self::Describe,
        Self::Manage,
        Self::Tokenize,
        Self::Detokenize,
        Self::Audit,
    ];
    /// The policy name of the operation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Decrypt => "decrypt",
            Self::Encrypt => "encrypt",
            Self::Reencrypt => "reencrypt",
            Self::Describe => "describe",
            Self::Manage => "manage",
            Self::Tokenize => "tokenize",
            Self::Detokenize => "detokenize",
            Self::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = KeyModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| KeyModelError::UnknownOperation(s.to_string()))
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
