/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A record with this unique name already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The record changed since it was read (another node or request got there first).
    #[error("{0} was changed by another request at the same time; retry")]
    Changed(String),
    /// The database cannot be reached right now (it may come back by itself).
    #[error("storage is unreachable: {0}")]
    Unavailable(String),
    /// The record to change does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The file system is full: nothing was written.
    #[error("storage is full: nothing was written")]
    Full,
    /// The database refused or failed the operation.
    #[error("storage error: {0}")]
    Backend(String),
    /// Stored data could not be decoded (corruption or a newer schema).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::Full;
            }
        }
        StoreError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
