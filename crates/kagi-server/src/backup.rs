//! Backups: a consistent snapshot of the key store, bound to the master key.
//!
//! The snapshot holds key material only as the master key wrapped it. Its integrity tag is the
//! master key's wrap of SHA-256(snapshot JSON) under a fixed label, so a backup verifies only
//! under the master key it was made with (an HSM key or the Shamir-reconstructed key), and any
//! change to any byte of the snapshot is refused before anything is written.

use kagi_store::Snapshot;
use serde::{Deserialize, Serialize};

use crate::seal::MasterKey;
use crate::ServiceError;

/// Format tag of backup files.
pub const BACKUP_FORMAT: &str = "kagi-backup-v1";
const BACKUP_AAD: &[u8] = b"kagi backup v1";

/// A backup file (`kagi operator backup`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// `kagi-backup-v1`.
    pub format: String,
    /// RFC 3339 time of the snapshot.
    pub created_at: String,
    /// The store's contents (see docs/backup.md).
    #[schema(value_type = Object)]
    pub snapshot: Snapshot,
    /// Hex of the master key's wrap of SHA-256(snapshot as JSON).
    pub integrity: String,
}

fn digest(s: &Snapshot) -> Result<[u8; 32], ServiceError> {
    let body = serde_json::to_vec(s).map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(kagi_crypto::sha256(&body))
}

/// Seals `snapshot` into a backup under `master`.
pub fn make(master: &dyn MasterKey, snapshot: Snapshot) -> Result<Backup, ServiceError> {
    let tag = master.wrap(BACKUP_AAD, &digest(&snapshot)?)?;
    Ok(Backup {
        format: BACKUP_FORMAT.into(),
        created_at: jiff::Timestamp::now().to_string(),
        snapshot,
        integrity: hex::encode(tag),
    })
}

/// Checks a backup against `master`; nothing may be restored unless this passes.
pub fn verify(master: &dyn MasterKey, b: &Backup) -> Result<(), ServiceError> {
    let bad = || {
        ServiceError::BadRequest(
            "the backup does not verify under this master key (altered, or made by another deployment): nothing was restored".into(),
        )
    };
    if b.format != BACKUP_FORMAT {
        return Err(ServiceError::BadRequest(format!(
            "not a kagi backup (format {:?}, expected {BACKUP_FORMAT:?})",
            b.format
        )));
    }
    let tag = hex::decode(&b.integrity).map_err(|_| bad())?;
    let want = master.unwrap(BACKUP_AAD, &tag).map_err(|_| bad())?;
    if !kagi_crypto::ct_eq(want.expose(), &digest(&b.snapshot)?) {
        return Err(bad());
    }
    Ok(())
}

/// The seal record inside a snapshot.
pub fn seal_record(s: &Snapshot) -> Result<crate::seal::SealRecord, ServiceError> {
    let hexed = s
        .settings
        .iter()
        .find(|(n, _)| n == "seal")
        .map(|(_, v)| v)
        .ok_or_else(|| ServiceError::BadRequest("the backup holds no seal record".into()))?;
    let raw = hex::decode(hexed)
        .map_err(|_| ServiceError::BadRequest("the backup's seal record is damaged".into()))?;
    serde_json::from_slice(&raw)
        .map_err(|_| ServiceError::BadRequest("the backup's seal record is damaged".into()))
}
