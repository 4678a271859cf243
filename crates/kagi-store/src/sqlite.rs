//! SQLite: the embedded default. WAL journal, `synchronous=FULL` (every commit is fsynced:
//! the data are keys and audit records), `secure_delete=ON` (erased key material is
//! overwritten in the file, not just unlinked from the b-tree).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kagi_keys::{KeyId, KeyRecord};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{AuditStore, Checkpoint, KeyStore, Snapshot, StoreError, TokenRecord};

/// Key-store schema migrations, applied in order; `PRAGMA user_version` counts them.
const KEY_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
     CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
     CREATE TABLE key_versions (
        key_id TEXT NOT NULL REFERENCES keys(id),
        version INTEGER NOT NULL,
        wrapped BLOB NOT NULL,
        PRIMARY KEY (key_id, version));
     CREATE TABLE policies (name TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE tokens (hash BLOB PRIMARY KEY, record TEXT NOT NULL);",
    // 2: optimistic concurrency for key records.
    "ALTER TABLE keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;",
];

/// Audit-store schema migrations.
const AUDIT_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, record TEXT NOT NULL);
     CREATE TABLE audit_checkpoints (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);",
];

/// Opens a durable SQLite database at `path` and applies `migrations` (one per schema
/// version, recorded in `user_version`).
pub(crate) fn open_migrated(path: &Path, migrations: &[&str]) -> Result<Connection, StoreError> {
    open(path, migrations, true)
}

fn open(path: &Path, migrations: &[&str], durable: bool) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "OFF" })?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current as usize > migrations.len() {
        return Err(StoreError::Corrupt(format!(
            "{} has schema version {current}, newer than this kagi ({}); upgrade kagi",
            path.display(),
            migrations.len()
        )));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// The SQLite key store.
#[derive(Clone)]
pub struct SqliteKeyStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteKeyStore")
    }
}

impl SqliteKeyStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: Arc::new(Mutex::new(open(path, KEY_MIGRATIONS, true)?)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| StoreError::Backend("connection lock poisoned".into()))?;
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }
}

impl SqliteKeyStore {
    /// The single column of the row `sql` selects with one parameter, if there is one.
    async fn one<T, P>(&self, sql: &'static str, param: P) -> Result<Option<T>, StoreError>
    where
        T: rusqlite::types::FromSql + Send + 'static,
        P: rusqlite::ToSql + Send + 'static,
    {
        self.with(move |c| Ok(c.query_row(sql, [param], |r| r.get(0)).optional()?))
            .await
    }
}

/// The record as it will be stored (revision + 1), the revision it was read at, and its id.
pub(crate) fn bumped(rec: &KeyRecord) -> Result<(String, u64, String), StoreError> {
    let mut next = rec.clone();
    next.revision += 1;
    Ok((serde_json::to_string(&next)?, rec.revision, rec.id.to_hex()))
}

/// Replaces the record only if nobody changed it since revision `prev`.
fn swap_record(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    prev: u64,
    json: &str,
) -> Result<(), StoreError> {
    let n = tx.execute(
        "UPDATE keys SET record = ?1, revision = revision + 1 WHERE id = ?2 AND revision = ?3",
        params![json, id, prev as i64],
    )?;
    if n == 1 {
        return Ok(());
    }
    let exists = tx
        .query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some();
    Err(if exists {
        StoreError::Changed(format!("key {id}"))
    } else {
        StoreError::NotFound(format!("key {id}"))
    })
}

pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, StoreError> {
    hex::decode(s).map_err(|_| StoreError::Corrupt("a snapshot value is not hex".into()))
}

fn decode_key(text: String) -> Result<KeyRecord, StoreError> {
    Ok(serde_json::from_str(&text)?)
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.one(
            "SELECT value FROM settings WHERE name = ?1",
            name.to_string(),
        )
        .await
    }

    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let (name, value) = (name.to_string(), value.to_vec());
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn create_key(&self, rec: &KeyRecord, wrapped_v1: &[u8]) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let (id, name, wrapped) = (rec.id.to_hex(), rec.name.clone(), wrapped_v1.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM keys WHERE name = ?1", [&name], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(StoreError::Conflict(format!("key {name}")));
            }
            tx.execute(
                "INSERT INTO keys (id, name, record) VALUES (?1, ?2, ?3)",
                params![id, name, json],
            )?;
            tx.execute(
                "INSERT INTO key_versions (key_id, version, wrapped) VALUES (?1, 1, ?2)",
                params![id, wrapped],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.one("SELECT record FROM keys WHERE name = ?1", name.to_string())
            .await?
            .map(decode_key)
            .transpose()
    }

    async fn key_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.one("SELECT record FROM keys WHERE id = ?1", id.to_hex())
            .await?
            .map(decode_key)
            .transpose()
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT record FROM keys ORDER BY name")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for r in rows {
                out.push(decode_key(r?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_key(
        &self,
        rec: &KeyRecord,
        new_version: Option<(u32, &[u8])>,
    ) -> Result<(), StoreError> {
        let (json, prev, id) = bumped(rec)?;
        let nv = new_version.map(|(v, w)| (v, w.to_vec()));
        self.with(move |c| {
            let tx = c.transaction()?;
            swap_record(&tx, &id, prev, &json)?;
            if let Some((v, w)) = nv {
                tx.execute(
                    "INSERT INTO key_versions (key_id, version, wrapped) VALUES (?1, ?2, ?3)",
                    params![id, v, w],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn destroy_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let (json, prev, id) = bumped(rec)?;
        self.with(move |c| {
            let tx = c.transaction()?;
            swap_record(&tx, &id, prev, &json)?;
            tx.execute("DELETE FROM key_versions WHERE key_id = ?1", [&id])?;
            tx.commit()?;
            // Also push the erased pages out of the WAL into the (secure-deleted) main file.
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
        .await
    }

    async fn key_versions(&self, id: &KeyId) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let id = id.to_hex();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT version, wrapped FROM key_versions WHERE key_id = ?1 ORDER BY version",
            )?;
            let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn put_policy(&self, name: &str, text: &str) -> Result<(), StoreError> {
        let (name, text) = (name.to_string(), text.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO policies (name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = excluded.body",
                params![name, text],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.one(
            "SELECT body FROM policies WHERE name = ?1",
            name.to_string(),
        )
        .await
    }

    async fn list_policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT name, body FROM policies ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| Ok(c.execute("DELETE FROM policies WHERE name = ?1", [name])? > 0))
            .await
    }

    async fn put_token(&self, hash: &[u8; 32], rec: &TokenRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let hash = hash.to_vec();
        self.with(move |c| {
            c.execute(
                "INSERT INTO tokens (hash, record) VALUES (?1, ?2)",
                params![hash, json],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let t: Option<String> = self
            .one("SELECT record FROM tokens WHERE hash = ?1", hash.to_vec())
            .await?;
        Ok(t.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    async fn delete_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let hash = hash.to_vec();
        self.with(move |c| Ok(c.execute("DELETE FROM tokens WHERE hash = ?1", [hash])? > 0))
            .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut snap = Snapshot {
                settings: Vec::new(),
                keys: Vec::new(),
                versions: Vec::new(),
                policies: Vec::new(),
                tokens: Vec::new(),
            };
            {
                let mut st = tx.prepare("SELECT name, value FROM settings ORDER BY name")?;
                for r in st.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })? {
                    let (n, v) = r?;
                    snap.settings.push((n, hex::encode(v)));
                }
                let mut st = tx.prepare("SELECT record FROM keys ORDER BY name")?;
                for r in st.query_map([], |r| r.get::<_, String>(0))? {
                    snap.keys.push(decode_key(r?)?);
                }
                let mut st = tx.prepare(
                    "SELECT key_id, version, wrapped FROM key_versions ORDER BY key_id, version",
                )?;
                for r in st.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })? {
                    let (k, v, w) = r?;
                    snap.versions.push((k, v, hex::encode(w)));
                }
                let mut st = tx.prepare("SELECT name, body FROM policies ORDER BY name")?;
                for r in st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    snap.policies.push(r?);
                }
                let mut st = tx.prepare("SELECT hash, record FROM tokens ORDER BY hash")?;
                for r in st.query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
                })? {
                    let (h, rec) = r?;
                    snap.tokens
                        .push((hex::encode(h), serde_json::from_str(&rec)?));
                }
            }
            tx.commit()?;
            Ok(snap)
        })
        .await
    }

    async fn rewrap(
        &self,
        old_seal: &[u8],
        new_seal: &[u8],
        settings: &[(String, Vec<u8>)],
        versions: &[(String, u32, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let (old_seal, new_seal) = (old_seal.to_vec(), new_seal.to_vec());
        let (settings, versions) = (settings.to_vec(), versions.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE settings SET value = ?1 WHERE name = 'seal' AND value = ?2",
                params![new_seal, old_seal],
            )?;
            if n != 1 {
                return Err(StoreError::Changed("the seal record".into()));
            }
            for (name, value) in &settings {
                tx.execute(
                    "UPDATE settings SET value = ?1 WHERE name = ?2",
                    params![value, name],
                )?;
            }
            for (id, v, w) in &versions {
                tx.execute(
                    "UPDATE key_versions SET wrapped = ?1 WHERE key_id = ?2 AND version = ?3",
                    params![w, id, v],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn restore(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let snap = snap.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            let used: i64 = tx.query_row(
                "SELECT (SELECT count(*) FROM settings) + (SELECT count(*) FROM keys) + (SELECT count(*) FROM tokens)",
                [],
                |r| r.get(0),
            )?;
            if used > 0 {
                return Err(StoreError::Conflict("a restore target with data".into()));
            }
            for (n, v) in &snap.settings {
                tx.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2)",
                    params![n, unhex(v)?],
                )?;
            }
            for k in &snap.keys {
                tx.execute(
                    "INSERT INTO keys (id, name, record, revision) VALUES (?1, ?2, ?3, ?4)",
                    params![k.id.to_hex(), k.name, serde_json::to_string(k)?, k.revision as i64],
                )?;
            }
            for (k, v, w) in &snap.versions {
                tx.execute(
                    "INSERT INTO key_versions (key_id, version, wrapped) VALUES (?1, ?2, ?3)",
                    params![k, v, unhex(w)?],
                )?;
            }
            for (n, b) in &snap.policies {
                tx.execute("INSERT INTO policies (name, body) VALUES (?1, ?2)", params![n, b])?;
            }
            for (h, rec) in &snap.tokens {
                tx.execute(
                    "INSERT INTO tokens (hash, record) VALUES (?1, ?2)",
                    params![unhex(h)?, serde_json::to_string(rec)?],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// The SQLite audit store: one connection for the writer thread, one for readers, so
/// that reads never wait for a group commit's fsync.
pub struct SqliteAuditStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteAuditStore")
    }
}

impl SqliteAuditStore {
    /// Opens (creating and migrating) the audit database at `path`; every commit is fsynced.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_durability(path, true)
    }

    /// As [`open`](Self::open); `durable = false` skips the fsync per commit. Only for
    /// measuring what durability costs (`scripts/bench`); never in production.
    pub fn open_with_durability(path: &Path, durable: bool) -> Result<Self, StoreError> {
        let writer = open(path, AUDIT_MIGRATIONS, durable)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.reader
            .lock()
            .map_err(|_| StoreError::Backend("audit reader lock poisoned".into()))
    }
}

fn rows(
    st: &mut rusqlite::Statement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<(u64, String)>, StoreError> {
    let it = st.query_map(p, |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
    Ok(it.collect::<Result<Vec<_>, _>>()?)
}

impl AuditStore for SqliteAuditStore {
    fn append(
        &self,
        records: &[(u64, String)],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let mut c = self
            .writer
            .lock()
            .map_err(|_| StoreError::Backend("audit writer lock poisoned".into()))?;
        // Dropping an uncommitted transaction rolls it back: a failed batch leaves nothing.
        let tx = c.transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT INTO audit_records (seq, record) VALUES (?1, ?2)")?;
            for (seq, rec) in records {
                st.execute(params![*seq as i64, rec])?;
            }
            if let Some(cp) = checkpoint {
                tx.execute(
                    "INSERT INTO audit_checkpoints (seq, body) VALUES (?1, ?2)",
                    params![cp.seq as i64, serde_json::to_string(cp)?],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn last(&self) -> Result<Option<(u64, String)>, StoreError> {
        let c = self.reader()?;
        let mut st =
            c.prepare("SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT 1")?;
        Ok(rows(&mut st, [])?.pop())
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let c = self.reader()?;
        let mut st = c.prepare_cached(
            "SELECT seq, record FROM audit_records WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        rows(&mut st, params![from as i64, limit as i64])
    }

    fn tail(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let c = self.reader()?;
        let mut st = c.prepare(
            "SELECT seq, record FROM (SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
        )?;
        rows(&mut st, params![n as i64])
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let c = self.reader()?;
        let mut st = c.prepare("SELECT body FROM audit_checkpoints ORDER BY seq")?;
        let it = st.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for b in it {
            out.push(serde_json::from_str(&b?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_keys::KeyType;

    #[tokio::test]
    async fn key_lifecycle_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let s = SqliteKeyStore::open(&path).unwrap();
        let mut rec =
            KeyRecord::new(KeyId([3; 16]), "k1", "d", KeyType::Aes256Gcm, None, 1).unwrap();
        s.create_key(&rec, b"w1").await.unwrap();
        assert!(matches!(
            s.create_key(&rec, b"w1").await,
            Err(StoreError::Conflict(_))
        ));
        let v = rec.rotate(2).unwrap();
        s.update_key(&rec, Some((v, b"w2"))).await.unwrap();
        // A second update from the same (now stale) revision is refused.
        assert!(matches!(
            s.update_key(&rec, None).await,
            Err(StoreError::Changed(_))
        ));
        rec.revision += 1;
        drop(s);
        let s = SqliteKeyStore::open(&path).unwrap();
        let got = s.key_by_name("k1").await.unwrap().unwrap();
        assert_eq!(got, rec);
        assert_eq!(s.key_versions(&rec.id).await.unwrap().len(), 2);
        rec.schedule_deletion(5, 0).unwrap();
        rec.destroy(5).unwrap();
        s.destroy_key(&rec).await.unwrap();
        assert!(s.key_versions(&rec.id).await.unwrap().is_empty());
        assert_eq!(
            s.key_by_id(&rec.id).await.unwrap().unwrap().state,
            kagi_keys::KeyState::Destroyed
        );
        // The erased material is not left in the file.
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(2).any(|w| w == b"w2"));
    }

    #[tokio::test]
    async fn snapshot_restores_into_an_empty_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteKeyStore::open(&dir.path().join("a.db")).unwrap();
        let mut rec =
            KeyRecord::new(KeyId([4; 16]), "k1", "d", KeyType::Aes256Gcm, None, 1).unwrap();
        a.create_key(&rec, b"w1").await.unwrap();
        let v = rec.rotate(2).unwrap();
        a.update_key(&rec, Some((v, b"w2"))).await.unwrap();
        a.put_setting("seal", b"{}").await.unwrap();
        a.put_policy("p", "[[rule]]").await.unwrap();
        let rec_t = TokenRecord {
            accessor: "x".into(),
            policies: vec!["p".into()],
            root: false,
            created_at: 1,
            expires_at: None,
            created_by: "t".into(),
        };
        a.put_token(&[7; 32], &rec_t).await.unwrap();
        let snap = a.snapshot().await.unwrap();
        assert_eq!(snap.keys[0].revision, 1);
        let b = SqliteKeyStore::open(&dir.path().join("b.db")).unwrap();
        b.restore(&snap).await.unwrap();
        assert_eq!(b.snapshot().await.unwrap(), snap);
        assert_eq!(b.key_versions(&rec.id).await.unwrap().len(), 2);
        assert_eq!(b.get_token(&[7; 32]).await.unwrap(), Some(rec_t));
        assert!(matches!(
            b.restore(&snap).await,
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn audit_append_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteAuditStore::open(&dir.path().join("a.db")).unwrap();
        a.append(&[(1, "{}".into()), (2, "{}".into())], None)
            .unwrap();
        // Seq 2 again: the whole batch fails, seq 3 is not written either.
        assert!(a
            .append(&[(3, "{}".into()), (2, "{}".into())], None)
            .is_err());
        assert_eq!(a.last().unwrap().unwrap().0, 2);
        assert_eq!(a.read(1, 10).unwrap().len(), 2);
        assert_eq!(a.tail(1).unwrap()[0].0, 2);
    }
}
