//! PostgreSQL: one database shared by any number of `kagi server` nodes.
//!
//! - Key store: a connection pool (deadpool) of async connections. Every lifecycle change is
//!   one transaction and names the record revision it was made from, so concurrent changes on
//!   two nodes cannot overwrite each other; each change `NOTIFY`s the other nodes, which drop
//!   the key from their caches (the kill switch holds everywhere within milliseconds).
//! - Audit store: one chain for all nodes. An append locks the chain (advisory lock), checks
//!   that its first record follows the stored head, and inserts; otherwise it fails with
//!   `Changed` and the writer re-chains its batch on the new head. Synchronous (the writer is a
//!   thread), so it runs on its own threads with blocking connections.
//! - Connection loss (a restarted database) is `Unavailable` (503 upstream); the next call
//!   reconnects by itself.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use kagi_keys::{KeyId, KeyRecord};
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::sqlite::{bumped, unhex};
use crate::{AuditStore, Checkpoint, KeyStore, Snapshot, StoreChange, StoreError, TokenRecord};

/// The `NOTIFY` channel for changes.
const CHANNEL: &str = "kagi_changes";
/// Advisory lock ids: schema migrations, the audit chain head.
const MIGRATION_LOCK: i64 = 0x6b61_6769_0001;
const AUDIT_LOCK: i64 = 0x6b61_6769_0002;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Key-store schema migrations, applied in order under an advisory lock.
const KEY_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE settings (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
     CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL,
                        revision BIGINT NOT NULL DEFAULT 0);
     CREATE TABLE key_versions (
        key_id TEXT NOT NULL REFERENCES keys(id),
        version INTEGER NOT NULL,
        wrapped BYTEA NOT NULL,
        PRIMARY KEY (key_id, version));
     CREATE TABLE policies (name TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE tokens (hash BYTEA PRIMARY KEY, record TEXT NOT NULL);",
];

/// Audit-store schema migrations.
const AUDIT_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE audit_records (seq BIGINT PRIMARY KEY, record TEXT NOT NULL);
     CREATE TABLE audit_checkpoints (seq BIGINT PRIMARY KEY, body TEXT NOT NULL);",
];

pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL is not valid: {e}")))?;
    cfg.connect_timeout(CONNECT_TIMEOUT);
    if cfg.get_application_name().is_none() {
        cfg.application_name("kagi");
    }
    Ok(cfg)
}

pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.message().to_string());
        }
        if *db.code() == tokio_postgres::error::SqlState::DISK_FULL {
            return StoreError::Full;
        }
        // Shutting down, too many connections, recovery: the server will be back.
        if db.code().code().starts_with("57") || db.code().code().starts_with("53") {
            return StoreError::Unavailable(db.message().to_string());
        }
        return StoreError::Backend(db.message().to_string());
    }
    StoreError::Unavailable(root_cause(&e))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Applies `migrations` for `component`, once, whichever node gets there first.
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    component: &str,
    migrations: &[&str],
) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS kagi_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let current: i32 = tx
        .query_opt(
            "SELECT version FROM kagi_schema WHERE component = $1",
            &[&component],
        )
        .await
        .map_err(pg_err)?
        .map_or(0, |r| r.get(0));
    if current as usize > migrations.len() {
        return Err(StoreError::Corrupt(format!(
            "the database's {component} schema is version {current}, newer than this kagi ({}); upgrade kagi",
            migrations.len()
        )));
    }
    for sql in migrations.iter().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
    }
    tx.execute(
        "INSERT INTO kagi_schema (component, version) VALUES ($1, $2)
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        &[&component, &(migrations.len() as i32)],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)
}

/// The PostgreSQL key store.
#[derive(Clone)]
pub struct PgKeyStore {
    pool: Pool,
    changes: broadcast::Sender<StoreChange>,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgKeyStore")
    }
}

impl PgKeyStore {
    /// Connects, migrates the schema and starts listening for other nodes' changes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let cfg = config(url)?;
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(pool_err)?;
        migrate(&mut client, "keys", KEY_MIGRATIONS).await?;
        drop(client);
        let (changes, _) = broadcast::channel(1024);
        tokio::spawn(listen(cfg, changes.clone()));
        Ok(Self { pool, changes })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn one<T>(
        &self,
        sql: &str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(pg_err)?;
        Ok(c.query_opt(&st, &[param])
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0)))
    }
}

/// Follows `NOTIFY kagi_changes` on a connection of its own, reconnecting forever. Whenever
/// the connection is (re)established, caches are dropped whole: changes may have been missed.
async fn listen(cfg: tokio_postgres::Config, out: broadcast::Sender<StoreChange>) {
    loop {
        if let Ok((client, mut conn)) = cfg.connect(NoTls).await {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let pump = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(m)) = messages.next().await {
                    if let AsyncMessage::Notification(n) = m {
                        if tx.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .is_ok()
            {
                let _ = out.send(StoreChange::All);
                while let Some(p) = rx.recv().await {
                    if let Some(c) = parse_change(&p) {
                        let _ = out.send(c);
                    }
                }
            }
            pump.abort();
            let _ = out.send(StoreChange::All);
            tracing::warn!("lost the PostgreSQL change notifications; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn parse_change(payload: &str) -> Option<StoreChange> {
    let (kind, what) = payload.split_once(':')?;
    match kind {
        "key" => Some(StoreChange::Key(what.to_string())),
        "policy" => Some(StoreChange::Policy(what.to_string())),
        "all" => Some(StoreChange::All),
        "token" => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(what, &mut h).ok()?;
            Some(StoreChange::Token(h))
        }
        _ => None,
    }
}

async fn notify(tx: &deadpool_postgres::Transaction<'_>, payload: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(pg_err)?;
    Ok(())
}

fn decode_key(text: String) -> Result<KeyRecord, StoreError> {
    Ok(serde_json::from_str(&text)?)
}

/// Replaces the record only if nobody changed it since revision `prev`.
async fn swap_record(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    prev: u64,
    json: &str,
) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "UPDATE keys SET record = $1, revision = revision + 1 WHERE id = $2 AND revision = $3",
            &[&json, &id, &(prev as i64)],
        )
        .await
        .map_err(pg_err)?;
    if n == 1 {
        return Ok(());
    }
    let exists = tx
        .query_opt("SELECT 1 FROM keys WHERE id = $1", &[&id])
        .await
        .map_err(pg_err)?
        .is_some();
    Err(if exists {
        StoreError::Changed(format!("key {id}"))
    } else {
        StoreError::NotFound(format!("key {id}"))
    })
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.one("SELECT value FROM settings WHERE name = $1", &name)
            .await
    }

    async fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&name, &value],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn create_key(&self, rec: &KeyRecord, wrapped_v1: &[u8]) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let id = rec.id.to_hex();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let inserted = tx
            .execute(
                "INSERT INTO keys (id, name, record, revision) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&id, &rec.name, &json, &(rec.revision as i64)],
            )
            .await
            .map_err(pg_err)?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("key {}", rec.name)));
        }
        tx.execute(
            "INSERT INTO key_versions (key_id, version, wrapped) VALUES ($1, 1, $2)",
            &[&id, &wrapped_v1],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)
    }

    async fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.one::<String>("SELECT record FROM keys WHERE name = $1", &name)
            .await?
            .map(decode_key)
            .transpose()
    }

    async fn key_by_id(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.one::<String>("SELECT record FROM keys WHERE id = $1", &id.to_hex())
            .await?
            .map(decode_key)
            .transpose()
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let c = self.client().await?;
        c.query("SELECT record FROM keys ORDER BY name", &[])
            .await
            .map_err(pg_err)?
            .into_iter()
            .map(|r| decode_key(r.get(0)))
            .collect()
    }

    async fn update_key(
        &self,
        rec: &KeyRecord,
        new_version: Option<(u32, &[u8])>,
    ) -> Result<(), StoreError> {
        let (json, prev, id) = bumped(rec)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        swap_record(&tx, &id, prev, &json).await?;
        if let Some((v, w)) = new_version {
            tx.execute(
                "INSERT INTO key_versions (key_id, version, wrapped) VALUES ($1, $2, $3)",
                &[&id, &(v as i32), &w],
            )
            .await
            .map_err(pg_err)?;
        }
        notify(&tx, &format!("key:{}", rec.name)).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn destroy_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let (json, prev, id) = bumped(rec)?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        swap_record(&tx, &id, prev, &json).await?;
        tx.execute("DELETE FROM key_versions WHERE key_id = $1", &[&id])
            .await
            .map_err(pg_err)?;
        notify(&tx, &format!("key:{}", rec.name)).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn key_versions(&self, id: &KeyId) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT version, wrapped FROM key_versions WHERE key_id = $1 ORDER BY version",
            )
            .await
            .map_err(pg_err)?;
        Ok(c.query(&st, &[&id.to_hex()])
            .await
            .map_err(pg_err)?
            .into_iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
            .collect())
    }

    async fn put_policy(&self, name: &str, text: &str) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO policies (name, body) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            &[&name, &text],
        )
        .await
        .map_err(pg_err)?;
        notify(&tx, &format!("policy:{name}")).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn get_policy(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.one("SELECT body FROM policies WHERE name = $1", &name)
            .await
    }

    async fn list_policies(&self) -> Result<Vec<(String, String)>, StoreError> {
        let c = self.client().await?;
        Ok(
            c.query("SELECT name, body FROM policies ORDER BY name", &[])
                .await
                .map_err(pg_err)?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        )
    }

    async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute("DELETE FROM policies WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        notify(&tx, &format!("policy:{name}")).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn put_token(&self, hash: &[u8; 32], rec: &TokenRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)?;
        let c = self.client().await?;
        c.execute(
            "INSERT INTO tokens (hash, record) VALUES ($1, $2)",
            &[&&hash[..], &json],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn get_token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let t: Option<String> = self
            .one("SELECT record FROM tokens WHERE hash = $1", &&hash[..])
            .await?;
        Ok(t.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    async fn delete_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute("DELETE FROM tokens WHERE hash = $1", &[&&hash[..]])
            .await
            .map_err(pg_err)?;
        notify(&tx, &format!("token:{}", hex::encode(hash))).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err)?;
        let q = |sql: &'static str| {
            let tx = &tx;
            async move { tx.query(sql, &[]).await.map_err(pg_err) }
        };
        let settings = q("SELECT name, value FROM settings ORDER BY name")
            .await?
            .into_iter()
            .map(|r| (r.get(0), hex::encode(r.get::<_, Vec<u8>>(1))))
            .collect();
        let keys = q("SELECT record FROM keys ORDER BY name")
            .await?
            .into_iter()
            .map(|r| decode_key(r.get(0)))
            .collect::<Result<_, _>>()?;
        let versions =
            q("SELECT key_id, version, wrapped FROM key_versions ORDER BY key_id, version")
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get::<_, i32>(1) as u32,
                        hex::encode(r.get::<_, Vec<u8>>(2)),
                    )
                })
                .collect();
        let policies = q("SELECT name, body FROM policies ORDER BY name")
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let tokens = q("SELECT hash, record FROM tokens ORDER BY hash")
            .await?
            .into_iter()
            .map(|r| {
                Ok((
                    hex::encode(r.get::<_, Vec<u8>>(0)),
                    serde_json::from_str(r.get::<_, &str>(1))?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        tx.commit().await.map_err(pg_err)?;
        Ok(Snapshot {
            settings,
            keys,
            versions,
            policies,
            tokens,
        })
    }

    async fn rewrap(
        &self,
        old_seal: &[u8],
        new_seal: &[u8],
        settings: &[(String, Vec<u8>)],
        versions: &[(String, u32, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute(
                "UPDATE settings SET value = $1 WHERE name = 'seal' AND value = $2",
                &[&new_seal, &old_seal],
            )
            .await
            .map_err(pg_err)?;
        if n != 1 {
            return Err(StoreError::Changed("the seal record".into()));
        }
        for (name, value) in settings {
            tx.execute(
                "UPDATE settings SET value = $1 WHERE name = $2",
                &[value, name],
            )
            .await
            .map_err(pg_err)?;
        }
        for (id, v, w) in versions {
            tx.execute(
                "UPDATE key_versions SET wrapped = $1 WHERE key_id = $2 AND version = $3",
                &[w, id, &(*v as i32)],
            )
            .await
            .map_err(pg_err)?;
        }
        notify(&tx, "all:seal").await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn restore(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute("LOCK TABLE settings, keys, tokens IN EXCLUSIVE MODE", &[])
            .await
            .map_err(pg_err)?;
        let used: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM settings) + (SELECT count(*) FROM keys) + (SELECT count(*) FROM tokens)",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        if used > 0 {
            return Err(StoreError::Conflict("a restore target with data".into()));
        }
        for (n, v) in &snap.settings {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)",
                &[n, &unhex(v)?],
            )
            .await
            .map_err(pg_err)?;
        }
        for k in &snap.keys {
            tx.execute(
                "INSERT INTO keys (id, name, record, revision) VALUES ($1, $2, $3, $4)",
                &[
                    &k.id.to_hex(),
                    &k.name,
                    &serde_json::to_string(k)?,
                    &(k.revision as i64),
                ],
            )
            .await
            .map_err(pg_err)?;
        }
        for (k, v, w) in &snap.versions {
            tx.execute(
                "INSERT INTO key_versions (key_id, version, wrapped) VALUES ($1, $2, $3)",
                &[k, &(*v as i32), &unhex(w)?],
            )
            .await
            .map_err(pg_err)?;
        }
        for (n, b) in &snap.policies {
            tx.execute("INSERT INTO policies (name, body) VALUES ($1, $2)", &[n, b])
                .await
                .map_err(pg_err)?;
        }
        for (h, rec) in &snap.tokens {
            tx.execute(
                "INSERT INTO tokens (hash, record) VALUES ($1, $2)",
                &[&unhex(h)?, &serde_json::to_string(rec)?],
            )
            .await
            .map_err(pg_err)?;
        }
        notify(&tx, "all:restore").await?;
        tx.commit().await.map_err(pg_err)
    }

    fn changes(&self) -> Option<broadcast::Receiver<StoreChange>> {
        Some(self.changes.subscribe())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }
}

type Job = Box<dyn FnOnce(&mut Option<postgres::Client>) + Send>;

/// A thread owning one blocking connection, reconnecting when it breaks. The audit writer is
/// a plain thread and readers run on blocking threads, so blocking calls are right here.
pub(crate) struct PgThread {
    jobs: Mutex<mpsc::Sender<Job>>,
    cfg: Arc<postgres::Config>,
}

impl PgThread {
    pub(crate) fn spawn(cfg: Arc<postgres::Config>, name: &str) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut conn = None;
                for job in rx {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start a storage thread: {e}")))?;
        Ok(Self {
            jobs: Mutex::new(tx),
            cfg,
        })
    }

    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let cfg = self.cfg.clone();
        let job: Job = Box::new(move |conn| {
            let r = (|| {
                let c = match conn {
                    Some(c) if !c.is_closed() => c,
                    _ => conn.insert(cfg.connect(NoTls).map_err(pg_err)?),
                };
                f(c)
            })();
            if matches!(r, Err(StoreError::Unavailable(_))) {
                *conn = None;
            }
            let _ = rtx.send(r);
        });
        self.jobs
            .lock()
            .map_err(|_| StoreError::Backend("storage thread lock poisoned".into()))?
            .send(job)
            .map_err(|_| StoreError::Backend("the storage thread stopped".into()))?;
        rrx.recv()
            .map_err(|_| StoreError::Backend("the storage thread stopped".into()))?
    }
}

/// The PostgreSQL audit store: one chain shared by every node.
pub struct PgAuditStore {
    /// Used on the audit writer's own thread (a plain thread: blocking is right there).
    writer: Mutex<Option<postgres::Client>>,
    cfg: Arc<postgres::Config>,
    reader: PgThread,
}

impl std::fmt::Debug for PgAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgAuditStore")
    }
}

impl PgAuditStore {
    /// Connects and migrates the audit schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let cfg = config(url)?;
        let (mut client, conn) = cfg.connect(NoTls).await.map_err(pg_err)?;
        let task = tokio::spawn(conn);
        migrate(&mut client, "audit", AUDIT_MIGRATIONS).await?;
        drop(client);
        let _ = task.await;
        let sync_cfg = Arc::new(postgres::Config::from(cfg));
        Ok(Self {
            writer: Mutex::new(None),
            cfg: sync_cfg.clone(),
            reader: PgThread::spawn(sync_cfg, "kagi-audit-pg-reader")?,
        })
    }

    /// Runs `f` in one transaction holding the chain lock, on the caller's thread.
    fn locked<R>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self
            .writer
            .lock()
            .map_err(|_| StoreError::Backend("audit writer lock poisoned".into()))?;
        let r = (|| {
            let c = match &mut *slot {
                Some(c) if !c.is_closed() => c,
                other => other.insert(self.cfg.connect(NoTls).map_err(pg_err)?),
            };
            let mut tx = c.transaction().map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                .map_err(pg_err)?;
            let out = f(&mut tx)?;
            tx.commit().map_err(pg_err)?;
            Ok(out)
        })();
        if matches!(r, Err(StoreError::Unavailable(_))) {
            *slot = None;
        }
        r
    }
}

fn insert_batch(
    tx: &mut postgres::Transaction<'_>,
    records: &[(u64, String)],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), StoreError> {
    if !records.is_empty() {
        let seqs: Vec<i64> = records.iter().map(|(s, _)| *s as i64).collect();
        let lines: Vec<&str> = records.iter().map(|(_, l)| l.as_str()).collect();
        tx.execute(
            "INSERT INTO audit_records (seq, record) SELECT * FROM unnest($1::bigint[], $2::text[])",
            &[&seqs, &lines],
        )
        .map_err(pg_err)?;
    }
    if let Some(cp) = checkpoint {
        tx.execute(
            "INSERT INTO audit_checkpoints (seq, body) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&(cp.seq as i64), &serde_json::to_string(cp)?],
        )
        .map_err(pg_err)?;
    }
    Ok(())
}

fn rows(r: Vec<postgres::Row>) -> Vec<(u64, String)> {
    r.into_iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
        .collect()
}

impl AuditStore for PgAuditStore {
    fn append(
        &self,
        records: &[(u64, String)],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        self.locked(|tx| {
            if let Some((first, _)) = records.first() {
                let head: i64 = tx
                    .query_one("SELECT coalesce(max(seq), 0) FROM audit_records", &[])
                    .map_err(pg_err)?
                    .get(0);
                if *first as i64 != head + 1 {
                    return Err(StoreError::Changed(format!(
                        "audit chain head (now {head})"
                    )));
                }
            }
            insert_batch(tx, records, checkpoint)
        })
    }

    fn append_at_head(
        &self,
        seal: &mut dyn FnMut(
            Option<(u64, String)>,
        )
            -> Result<(Vec<(u64, String)>, Option<Checkpoint>), StoreError>,
    ) -> Result<(), StoreError> {
        self.locked(|tx| {
            let head = tx
                .query_opt(
                    "SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .map_err(pg_err)?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)));
            // An empty chain is the genesis head: seq 0.
            let stored = Some(head.unwrap_or((0, String::new())));
            let (lines, cp) = seal(stored)?;
            insert_batch(tx, &lines, cp.as_ref())
        })
    }

    fn last(&self) -> Result<Option<(u64, String)>, StoreError> {
        self.reader.run(|c| {
            Ok(rows(
                c.query(
                    "SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .map_err(pg_err)?,
            )
            .pop())
        })
    }

    fn read(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.reader.run(move |c| {
            Ok(rows(
                c.query(
                    "SELECT seq, record FROM audit_records WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&(from as i64), &(limit as i64)],
                )
                .map_err(pg_err)?,
            ))
        })
    }

    fn tail(&self, n: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.reader.run(move |c| {
            Ok(rows(
                c.query(
                    "SELECT seq, record FROM (SELECT seq, record FROM audit_records ORDER BY seq DESC LIMIT $1) t ORDER BY seq",
                    &[&(n as i64)],
                )
                .map_err(pg_err)?,
            ))
        })
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.reader.run(|c| {
            c.query("SELECT body FROM audit_checkpoints ORDER BY seq", &[])
                .map_err(pg_err)?
                .into_iter()
                .map(|r| Ok(serde_json::from_str(r.get::<_, &str>(0))?))
                .collect()
        })
    }
}
