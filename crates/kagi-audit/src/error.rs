/// Why an audit operation failed.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum AuditError {
    /// The record could not be made durable; the operation it describes must not proceed.
    #[error(
        "the audit log cannot record this operation ({0}); key operations are refused until it can"
    )]
    Unavailable(String),
    /// Reading the log failed.
    #[error("cannot read the audit log: {0}")]
    Read(String),
}
