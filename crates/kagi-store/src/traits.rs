use async_trait::async_trait;
use kagi_keys::{KeyId, KeyRecord};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A bearer token as stored: only its SHA-256 hash is kept, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short public id (first 8 bytes of the hash, hex) shown in audit and listings.
    pub accessor: String,
    /// Policies the token carries.
    pub policies: Vec<String>,
    /// The root token bypasses policy.
    pub root: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; None = never.
    pub expires_at: Option<i64>,
    /// Who made it (principal) for the audit trail.
    pub created_by: String,
}

/// A signed audit checkpoint: the chain head at `seq`, signed with the audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// That record's hash (hex).
    pub hash: String,
    /// RFC 3339 time of signing.
    pub time: String,
    /// Ed25519 public key (hex).
    pub public_key: String,
    /// Ed25519 signature (hex) over `kagi-audit-checkpoint-v1\n{seq}\n{hash}\n{time}`.
    pub signature: String,
}

/// Everything in a key store, read in one consistent transaction (`kagi operator backup`).
/// Key material stays wrapped by the master key. Binary values are hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Settings (seal record, wrapped audit key ...): (name, hex value).
    pub settings: Vec<(String, String)>,
    /// Key records (with their revision).
    pub keys: Vec<KeyRecord>,
    /// Wrapped key material: (key id hex, version, hex wrapped material).
    pub versions: Vec<(String, u32, String)>,
    /// Policies: (name, TOML).
    pub policies: Vec<(String, String)>,
    /// Tokens by hash: (hex SHA-256 of the token, record).
    pub tokens: Vec<(String, TokenRecord)>,
}

/// A change another node made, for caches to drop (PostgreSQL `LISTEN`/`NOTIFY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// A key record or its versions changed.
    Key(String),
    /// A policy was written or deleted.
    Policy(String),
    /// A token was revoked (by hash).
    Token([u8; 32]),
    /// Changes may have been missed (the notification channel was down): drop everything.
    All,
}

/// Persistent state of the key service. Every method is one transaction.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// A small named setting (seal configuration, wrapped audit key ...).
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a small named setting.
    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Creates a key with its first version's wrapped material. `Conflict` if the name is
    /// taken (also by a destroyed key: names are never reused).
    async fn create_key(&self, rec: &KeyRecord, wrapped_v1: &[u8]) -> Result<(), StoreError>;
    /// A key by name.
    async fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// A key by id.
    async fn key_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key, ordered by name.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Replaces a key record, adding one version's wrapped material in the same
    /// transaction when `new_version` is given (rotation).
    async fn update_key(
        &self,
        rec: &KeyRecord,
        new_version: Option<(u32, &[u8])>,
    ) -> Result<(), StoreError>;
    /// Erases every version's material and saves the destroyed record, atomically.
    async fn destroy_key(&self, rec: &KeyRecord) -> Result<(), StoreError>;
    /// The wrapped material of every version of a key.
    async fn key_versions(&self, id: &KeyId) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;

    /// Creates or replaces a policy document.
    async fn put_policy(&self, name: &str, text: &str) -> Result<(), StoreError>;
    /// A policy document.
    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Every policy (name, document), ordered by name.
    async fn list_policies(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Deletes a policy; false if it did not exist.
    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a token under the hash of its secret.
    async fn put_token(&self, hash: &[u8; 32], rec: &TokenRecord) -> Result<(), StoreError>;
    /// A token by the hash of its secret.
    async fn get_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError>;
    /// Revokes a token; false if it did not exist.
    async fn delete_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Everything, in one consistent read.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Loads a snapshot into an empty store in one transaction; `Conflict` if the store
    /// holds anything.
    async fn restore(&self, s: &Snapshot) -> Result<(), StoreError>;

    /// Seal migration: in one transaction, replaces the seal record (only if it still is
    /// `old_seal`), the given settings, and the wrapped material of each `(key id hex,
    /// version, new wrapped)`; versions erased meanwhile are skipped.
    async fn rewrap(
        &self,
        old_seal: &[u8],
        new_seal: &[u8],
        settings: &[(String, Vec<u8>)],
        versions: &[(String, u32, Vec<u8>)],
    ) -> Result<(), StoreError>;

    /// Changes made by other nodes sharing this store, as they commit. `None` for a store
    /// only one process can open (SQLite).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        None
    }

    /// Whether the database answers right now (readiness).
    async fn ping(&self) -> Result<(), StoreError> {
        self.get_setting("seal").await.map(|_| ())
    }
}

/// The append-only audit chain. Records are opaque JSON lines here; kagi-audit owns their
/// meaning. Appends are durable (fsync) when the call returns Ok, and all-or-nothing. Several
/// nodes may append to one chain through [`append_at_head`](AuditStore::append_at_head).
pub trait AuditStore: Send + Sync + 'static {
    /// Appends records `(seq, json)` and, optionally, a checkpoint, in one transaction.
    fn append(
        &self,
        records: &[(u64, String)],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError>;
    /// Appends what `seal` makes, in one transaction. A store shared by several writers
    /// (PostgreSQL) locks the chain, passes the stored head `(seq, line)` and appends in the
    /// same transaction, so nodes never race; a single-writer store passes `None` (the writer
    /// keeps the head).
    #[allow(clippy::type_complexity)]
    fn append_at_head(
        &self,
        seal: &mut dyn FnMut(
            Option<(u64, String)>,
        )
            -> Result<(Vec<(u64, String)>, Option<Checkpoint>), StoreError>,
    ) -> Result<(), StoreError> {
        let (lines, cp) = seal(None)?;
        self.append(&lines, cp.as_ref())
    }
    /// The newest record.
    fn last(&self) -> Result<Option<(u64, String)>, StoreError>;
    /// Up to `limit` records with `seq >= from`, in ascending order.
    fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// The newest `n` records, in ascending order.
    fn tail(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// Every checkpoint, in ascending order.
    fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}
