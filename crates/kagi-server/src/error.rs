use kagi_audit::AuditError;
use kagi_keys::KeyModelError;
use kagi_store::StoreError;

/// Everything the key service can refuse, each with the HTTP status it maps to.
/// The message is the one sentence the user sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// No or unknown credentials (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A SigV4 signature was refused (401).
    #[error("{0}")]
    Signature(kagi_aws::sigv4::SigV4Error),
    /// Policy refused (403).
    #[error("{0}")]
    Denied(String),
    /// The thing named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The key's state or an existing record forbids it (409).
    #[error("{0}")]
    Conflict(String),
    /// The key's state forbids the operation (409): disabled, pending deletion, destroyed.
    #[error("{message}")]
    KeyState {
        /// `enabled`, `disabled`, `pending_deletion`, `destroyed`.
        state: &'static str,
        /// The sentence.
        message: String,
    },
    /// The key's usage forbids the operation (400): an encrypt-only key asked to decrypt.
    #[error("{0}")]
    KeyUsage(String),
    /// A ciphertext is malformed, altered, or under another context or key (400).
    #[error("{0}")]
    InvalidCiphertext(String),
    /// Too many requests for a per-store quota (429).
    #[error("{0}")]
    Throttled(String),
    /// The service is sealed (503).
    #[error("the key service is sealed: unseal it with `kagi operator unseal`")]
    Sealed,
    /// The audit log cannot record; fail closed (503).
    #[error("{0}")]
    AuditUnavailable(String),
    /// Storage failed (503).
    #[error("{0}")]
    Storage(String),
    /// A bug (500). Never expected.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Machine-readable code, also in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthenticated(_) | Self::Signature(_) => "unauthenticated",
            Self::Denied(_) => "denied",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) | Self::KeyState { .. } => "conflict",
            Self::KeyUsage(_) | Self::InvalidCiphertext(_) => "bad_request",
            Self::Throttled(_) => "throttled",
            Self::Sealed => "sealed",
            Self::AuditUnavailable(_) => "audit_unavailable",
            Self::Storage(_) => "storage_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::KeyUsage(_) | Self::InvalidCiphertext(_) => 400,
            Self::KeyState { .. } => 409,
            Self::Throttled(_) => 429,
            Self::Unauthenticated(_) | Self::Signature(_) => 401,
            Self::Denied(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Sealed | Self::AuditUnavailable(_) | Self::Storage(_) => 503,
            Self::Internal(_) => 500,
        }
    }
}

impl From<AuditError> for ServiceError {
    fn from(e: AuditError) -> Self {
        Self::AuditUnavailable(e.to_string())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(format!("{what} does not exist")),
            e @ StoreError::Changed(_) => Self::Conflict(e.to_string()),
            other => Self::Storage(other.to_string()),
        }
    }
}

impl From<KeyModelError> for ServiceError {
    fn from(e: KeyModelError) -> Self {
        match e {
            KeyModelError::BadTransition { state, .. } => Self::KeyState {
                state,
                message: e.to_string(),
            },
            KeyModelError::MalformedBlob(_) => Self::InvalidCiphertext(e.to_string()),
            other => Self::BadRequest(other.to_string()),
        }
    }
}
