//! The perimeter controller's state: its CA, the policy, one-time enrollment tokens, enrolled
//! identities (SPA key, current certificate serial, revocation) and a change log — in SQLite
//! for one controller, or PostgreSQL for several sharing it. Every change bumps one version
//! number in the same transaction (in PostgreSQL the version row's lock orders concurrent
//! changes), so a running controller sees changes made by admin commands or by other
//! controllers by polling it, and gateways ask for "anything newer than version N".

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::postgres::{pg_err, PgThread};
use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE perimeter_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
     INSERT INTO perimeter_meta (k, v) VALUES ('version', '1');
     CREATE TABLE perimeter_identities (
         name TEXT PRIMARY KEY, spa_public_key TEXT NOT NULL, cert_serial TEXT NOT NULL,
         enrolled_at INTEGER NOT NULL, revoked_at INTEGER);
     CREATE TABLE perimeter_tokens (
         id TEXT PRIMARY KEY, identity TEXT NOT NULL, spa_public_key TEXT NOT NULL,
         expires_at INTEGER NOT NULL, used_at INTEGER);
     CREATE TABLE perimeter_changes (
         seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, what TEXT NOT NULL);",
];

/// The same schema in PostgreSQL.
const PG_MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE perimeter_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
     INSERT INTO perimeter_meta (k, v) VALUES ('version', '1');
     CREATE TABLE perimeter_identities (
         name TEXT PRIMARY KEY, spa_public_key TEXT NOT NULL, cert_serial TEXT NOT NULL,
         enrolled_at BIGINT NOT NULL, revoked_at BIGINT);
     CREATE TABLE perimeter_tokens (
         id TEXT PRIMARY KEY, identity TEXT NOT NULL, spa_public_key TEXT NOT NULL,
         expires_at BIGINT NOT NULL, used_at BIGINT);
     CREATE TABLE perimeter_changes (
         seq BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, what TEXT NOT NULL);",
];

/// An enrolled identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledIdentity {
    /// Identity name.
    pub name: String,
    /// X25519 SPA public key, hex.
    pub spa_public_key: String,
    /// Serial (hex) of the only certificate gateways accept for it.
    pub cert_serial: String,
    /// Unix time of enrollment.
    pub enrolled_at: i64,
    /// Unix time of revocation, if revoked.
    pub revoked_at: Option<i64>,
}

/// An unused, unexpired enrollment token (its one-time SPA key opens the controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingToken {
    /// The identity it enrolls.
    pub identity: String,
    /// Its one-time X25519 SPA public key, hex.
    pub spa_public_key: String,
}

/// One administrative change, for the controller's audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Increasing.
    pub seq: i64,
    /// Unix time.
    pub at: i64,
    /// Who made it.
    pub actor: String,
    /// What, in one sentence.
    pub what: String,
}

/// The controller's state.
pub struct PerimeterStore {
    backend: Backend,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(PgThread),
}

impl std::fmt::Debug for PerimeterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerimeterStore")
    }
}

fn bump(
    tx: &rusqlite::Transaction<'_>,
    now: i64,
    actor: &str,
    what: &str,
) -> Result<u64, StoreError> {
    tx.execute(
        "UPDATE perimeter_meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'version'",
        [],
    )?;
    tx.execute(
        "INSERT INTO perimeter_changes (at, actor, what) VALUES (?1, ?2, ?3)",
        params![now, actor, what],
    )?;
    let v: String = tx.query_row(
        "SELECT v FROM perimeter_meta WHERE k = 'version'",
        [],
        |r| r.get(0),
    )?;
    v.parse()
        .map_err(|_| StoreError::Corrupt("the perimeter version is not a number".into()))
}

/// A token row (identity, expires_at, used_at) that can be redeemed at `now`: its identity.
/// Unknown and expired are `NotFound`, used is `Conflict` (the caller words them).
fn redeemable(row: Option<(String, i64, Option<i64>)>, now: i64) -> Result<String, StoreError> {
    match row {
        None => Err(StoreError::NotFound("the enrollment token".into())),
        Some((_, _, Some(_))) => Err(StoreError::Conflict("the enrollment token".into())),
        Some((_, exp, None)) if exp <= now => Err(StoreError::NotFound(
            "the enrollment token (expired)".into(),
        )),
        Some((identity, _, None)) => Ok(identity),
    }
}

impl PerimeterStore {
    /// Opens (creating and migrating) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(Mutex::new(crate::sqlite::open_migrated(path, MIGRATIONS)?)),
        })
    }

    /// Connects to PostgreSQL (creating and migrating the schema, once, whichever controller
    /// gets there first).
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let cfg = crate::postgres::config(url)?;
        let (mut client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(pg_err)?;
        let task = tokio::spawn(conn);
        crate::postgres::migrate(&mut client, "perimeter", PG_MIGRATIONS).await?;
        drop(client);
        let _ = task.await;
        Ok(Self {
            backend: Backend::Postgres(PgThread::spawn(
                std::sync::Arc::new(postgres::Config::from(cfg)),
                "kagi-perimeter-pg",
            )?),
        })
    }

    /// The SQLite connection, or the PostgreSQL thread to run the query on instead.
    fn sqlite(&self) -> Result<std::sync::MutexGuard<'_, Connection>, &PgThread> {
        match &self.backend {
            Backend::Sqlite(m) => Ok(m.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Postgres(t) => Err(t),
        }
    }

    /// The current version (increases with every change).
    pub fn version(&self) -> Result<u64, StoreError> {
        self.meta("version")?
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::Corrupt("the perimeter version is missing".into()))
    }

    /// A stored setting.
    pub fn meta(&self, k: &str) -> Result<Option<String>, StoreError> {
        let c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let k = k.to_string();
                return t.run(move |c| pg::meta(c, &k));
            }
        };
        Ok(
            c.query_row("SELECT v FROM perimeter_meta WHERE k = ?1", [k], |r| {
                r.get(0)
            })
            .optional()?,
        )
    }

    /// Stores settings that are written once (the CA); returns false if `k` already existed
    /// (nothing is written then).
    pub fn init_meta(&self, pairs: &[(&str, &str)]) -> Result<bool, StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let pairs: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                return t.run(move |c| pg::init_meta(c, &pairs));
            }
        };
        let tx = c.transaction()?;
        for (k, v) in pairs {
            if tx.execute(
                "INSERT INTO perimeter_meta (k, v) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![k, v],
            )? == 0
            {
                return Ok(false);
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// Stores a setting that is not part of the perimeter state (no version bump).
    pub fn set_meta(&self, k: &str, v: &str) -> Result<(), StoreError> {
        let c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (k, v) = (k.to_string(), v.to_string());
                return t.run(move |c| pg::set_meta(c, &k, &v));
            }
        };
        c.execute(
            "INSERT INTO perimeter_meta (k, v) VALUES (?1, ?2)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            params![k, v],
        )?;
        Ok(())
    }

    /// Replaces the policy (already validated by the caller).
    pub fn set_policy(&self, text: &str, now: i64, actor: &str) -> Result<u64, StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (text, actor) = (text.to_string(), actor.to_string());
                return t.run(move |c| pg::set_policy(c, &text, now, &actor));
            }
        };
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO perimeter_meta (k, v) VALUES ('policy', ?1)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [text],
        )?;
        let v = bump(&tx, now, actor, "perimeter policy replaced")?;
        tx.commit()?;
        Ok(v)
    }

    /// Records a new one-time token: `id` is the SHA-256 (hex) of its secret.
    pub fn add_token(
        &self,
        id: &str,
        identity: &str,
        spa_public_key: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> Result<u64, StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (id, identity, key, actor) = (
                    id.to_string(),
                    identity.to_string(),
                    spa_public_key.to_string(),
                    actor.to_string(),
                );
                return t
                    .run(move |c| pg::add_token(c, &id, &identity, &key, expires_at, now, &actor));
            }
        };
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO perimeter_tokens (id, identity, spa_public_key, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, identity, spa_public_key, expires_at],
        )?;
        let v = bump(
            &tx,
            now,
            actor,
            &format!("enrollment token created for {identity}"),
        )?;
        tx.commit()?;
        Ok(v)
    }

    /// Tokens that can still be redeemed at `now`.
    pub fn pending_tokens(&self, now: i64) -> Result<Vec<PendingToken>, StoreError> {
        let c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                return t.run(move |c| pg::pending_tokens(c, now));
            }
        };
        let mut st = c.prepare(
            "SELECT identity, spa_public_key FROM perimeter_tokens
             WHERE used_at IS NULL AND expires_at > ?1",
        )?;
        let rows = st.query_map([now], |r| {
            Ok(PendingToken {
                identity: r.get(0)?,
                spa_public_key: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Redeems token `id` in one transaction: refuses a used, expired or unknown one, marks
    /// it used and (re-)enrolls its identity with the new SPA key and certificate serial
    /// (clearing a revocation: a new token is a deliberate decision). Returns the identity.
    pub fn redeem_token(
        &self,
        id: &str,
        spa_public_key: &str,
        cert_serial: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (id, key, serial) = (
                    id.to_string(),
                    spa_public_key.to_string(),
                    cert_serial.to_string(),
                );
                return t.run(move |c| pg::redeem_token(c, &id, &key, &serial, now));
            }
        };
        let tx = c.transaction()?;
        let row: Option<(String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT identity, expires_at, used_at FROM perimeter_tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let identity = redeemable(row, now)?;
        tx.execute(
            "UPDATE perimeter_tokens SET used_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        tx.execute(
            "INSERT INTO perimeter_identities (name, spa_public_key, cert_serial, enrolled_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET spa_public_key = excluded.spa_public_key,
               cert_serial = excluded.cert_serial, enrolled_at = excluded.enrolled_at,
               revoked_at = NULL",
            params![identity, spa_public_key, cert_serial, now],
        )?;
        bump(&tx, now, &identity, &format!("{identity} enrolled"))?;
        tx.commit()?;
        Ok(identity)
    }

    /// A renewed certificate becomes the only one accepted for `identity`.
    pub fn set_cert_serial(
        &self,
        identity: &str,
        serial: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (identity, serial) = (identity.to_string(), serial.to_string());
                return t.run(move |c| pg::set_cert_serial(c, &identity, &serial, now));
            }
        };
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE perimeter_identities SET cert_serial = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![identity, serial],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "enrolled identity {identity}"
            )));
        }
        bump(
            &tx,
            now,
            identity,
            &format!("{identity} renewed its certificate"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Revokes an enrolled identity: gateways refuse and close its connections.
    pub fn revoke(&self, identity: &str, now: i64, actor: &str) -> Result<u64, StoreError> {
        let mut c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                let (identity, actor) = (identity.to_string(), actor.to_string());
                return t.run(move |c| pg::revoke(c, &identity, now, &actor));
            }
        };
        let tx = c.transaction()?;
        let n = tx.execute(
            "UPDATE perimeter_identities SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            params![identity, now],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "an enrolled, unrevoked identity {identity}"
            )));
        }
        let v = bump(&tx, now, actor, &format!("{identity} revoked"))?;
        tx.commit()?;
        Ok(v)
    }

    /// Every enrolled identity, revoked ones included.
    pub fn identities(&self) -> Result<Vec<EnrolledIdentity>, StoreError> {
        let c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                return t.run(pg::identities);
            }
        };
        let mut st = c.prepare(
            "SELECT name, spa_public_key, cert_serial, enrolled_at, revoked_at
             FROM perimeter_identities ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(EnrolledIdentity {
                name: r.get(0)?,
                spa_public_key: r.get(1)?,
                cert_serial: r.get(2)?,
                enrolled_at: r.get(3)?,
                revoked_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that a gateway was in contact (a sync request) at `now` from `peer`; not part of
    /// the perimeter state (no version bump).
    pub fn record_contact(&self, identity: &str, now: i64, peer: &str) -> Result<(), StoreError> {
        self.set_meta(&format!("contact:{identity}"), &format!("{now} {peer}"))
    }

    /// Every gateway's last contact: (identity, unix time, peer address), by identity.
    pub fn contacts(&self) -> Result<Vec<(String, i64, String)>, StoreError> {
        let rows: Vec<(String, String)> = match self.sqlite() {
            Ok(c) => {
                let mut st = c.prepare(
                    "SELECT k, v FROM perimeter_meta WHERE k LIKE 'contact:%' ORDER BY k",
                )?;
                let r = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                r.collect::<Result<_, _>>()?
            }
            Err(t) => t.run(pg::contacts)?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let (at, peer) = v.split_once(' ')?;
                Some((
                    k.strip_prefix("contact:")?.to_string(),
                    at.parse().ok()?,
                    peer.to_string(),
                ))
            })
            .collect())
    }

    /// Changes after `seq`, oldest first.
    pub fn changes_since(&self, seq: i64) -> Result<Vec<Change>, StoreError> {
        let c = match self.sqlite() {
            Ok(c) => c,
            Err(t) => {
                return t.run(move |c| pg::changes_since(c, seq));
            }
        };
        let mut st = c.prepare(
            "SELECT seq, at, actor, what FROM perimeter_changes WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([seq], |r| {
            Ok(Change {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                what: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The PostgreSQL side of each operation (same semantics as the SQLite code above).
mod pg {
    use postgres::{Client, Transaction};

    use super::{pg_err, redeemable, Change, EnrolledIdentity, PendingToken};
    use crate::StoreError;

    type R<T> = Result<T, StoreError>;

    fn bump(tx: &mut Transaction<'_>, now: i64, actor: &str, what: &str) -> R<u64> {
        // The version row's lock orders every change across controllers.
        let v: String = tx
            .query_one(
                "UPDATE perimeter_meta SET v = (v::bigint + 1)::text WHERE k = 'version' RETURNING v",
                &[],
            )
            .map_err(pg_err)?
            .get(0);
        tx.execute(
            "INSERT INTO perimeter_changes (at, actor, what) VALUES ($1, $2, $3)",
            &[&now, &actor, &what],
        )
        .map_err(pg_err)?;
        v.parse()
            .map_err(|_| StoreError::Corrupt("the perimeter version is not a number".into()))
    }

    pub fn meta(c: &mut Client, k: &str) -> R<Option<String>> {
        Ok(
            c.query_opt("SELECT v FROM perimeter_meta WHERE k = $1", &[&k])
                .map_err(pg_err)?
                .map(|r| r.get(0)),
        )
    }

    pub fn init_meta(c: &mut Client, pairs: &[(String, String)]) -> R<bool> {
        let mut tx = c.transaction().map_err(pg_err)?;
        for (k, v) in pairs {
            let n = tx
                .execute(
                    "INSERT INTO perimeter_meta (k, v) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[k, v],
                )
                .map_err(pg_err)?;
            if n == 0 {
                return Ok(false);
            }
        }
        tx.commit().map_err(pg_err)?;
        Ok(true)
    }

    pub fn set_meta(c: &mut Client, k: &str, v: &str) -> R<()> {
        c.execute(
            "INSERT INTO perimeter_meta (k, v) VALUES ($1, $2)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[&k, &v],
        )
        .map_err(pg_err)?;
        Ok(())
    }

    pub fn set_policy(c: &mut Client, text: &str, now: i64, actor: &str) -> R<u64> {
        let mut tx = c.transaction().map_err(pg_err)?;
        tx.execute(
            "INSERT INTO perimeter_meta (k, v) VALUES ('policy', $1)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[&text],
        )
        .map_err(pg_err)?;
        let v = bump(&mut tx, now, actor, "perimeter policy replaced")?;
        tx.commit().map_err(pg_err)?;
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_token(
        c: &mut Client,
        id: &str,
        identity: &str,
        key: &str,
        expires_at: i64,
        now: i64,
        actor: &str,
    ) -> R<u64> {
        let mut tx = c.transaction().map_err(pg_err)?;
        tx.execute(
            "INSERT INTO perimeter_tokens (id, identity, spa_public_key, expires_at) VALUES ($1, $2, $3, $4)",
            &[&id, &identity, &key, &expires_at],
        )
        .map_err(pg_err)?;
        let v = bump(
            &mut tx,
            now,
            actor,
            &format!("enrollment token created for {identity}"),
        )?;
        tx.commit().map_err(pg_err)?;
        Ok(v)
    }

    pub fn pending_tokens(c: &mut Client, now: i64) -> R<Vec<PendingToken>> {
        Ok(c.query(
            "SELECT identity, spa_public_key FROM perimeter_tokens
                 WHERE used_at IS NULL AND expires_at > $1",
            &[&now],
        )
        .map_err(pg_err)?
        .into_iter()
        .map(|r| PendingToken {
            identity: r.get(0),
            spa_public_key: r.get(1),
        })
        .collect())
    }

    pub fn redeem_token(c: &mut Client, id: &str, key: &str, serial: &str, now: i64) -> R<String> {
        let mut tx = c.transaction().map_err(pg_err)?;
        // FOR UPDATE: two controllers redeeming one token at once take turns.
        let row = tx
            .query_opt(
                "SELECT identity, expires_at, used_at FROM perimeter_tokens WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .map_err(pg_err)?
            .map(|r| (r.get(0), r.get(1), r.get(2)));
        let identity = redeemable(row, now)?;
        tx.execute(
            "UPDATE perimeter_tokens SET used_at = $2 WHERE id = $1",
            &[&id, &now],
        )
        .map_err(pg_err)?;
        tx.execute(
            "INSERT INTO perimeter_identities (name, spa_public_key, cert_serial, enrolled_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET spa_public_key = excluded.spa_public_key,
               cert_serial = excluded.cert_serial, enrolled_at = excluded.enrolled_at,
               revoked_at = NULL",
            &[&identity, &key, &serial, &now],
        )
        .map_err(pg_err)?;
        bump(&mut tx, now, &identity, &format!("{identity} enrolled"))?;
        tx.commit().map_err(pg_err)?;
        Ok(identity)
    }

    pub fn set_cert_serial(c: &mut Client, identity: &str, serial: &str, now: i64) -> R<()> {
        let mut tx = c.transaction().map_err(pg_err)?;
        let n = tx
            .execute(
                "UPDATE perimeter_identities SET cert_serial = $2 WHERE name = $1 AND revoked_at IS NULL",
                &[&identity, &serial],
            )
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "enrolled identity {identity}"
            )));
        }
        bump(
            &mut tx,
            now,
            identity,
            &format!("{identity} renewed its certificate"),
        )?;
        tx.commit().map_err(pg_err)
    }

    pub fn revoke(c: &mut Client, identity: &str, now: i64, actor: &str) -> R<u64> {
        let mut tx = c.transaction().map_err(pg_err)?;
        let n = tx
            .execute(
                "UPDATE perimeter_identities SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                &[&identity, &now],
            )
            .map_err(pg_err)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "an enrolled, unrevoked identity {identity}"
            )));
        }
        let v = bump(&mut tx, now, actor, &format!("{identity} revoked"))?;
        tx.commit().map_err(pg_err)?;
        Ok(v)
    }

    pub fn identities(c: &mut Client) -> R<Vec<EnrolledIdentity>> {
        Ok(c.query(
            "SELECT name, spa_public_key, cert_serial, enrolled_at, revoked_at
                 FROM perimeter_identities ORDER BY name",
            &[],
        )
        .map_err(pg_err)?
        .into_iter()
        .map(|r| EnrolledIdentity {
            name: r.get(0),
            spa_public_key: r.get(1),
            cert_serial: r.get(2),
            enrolled_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
    }

    pub fn contacts(c: &mut Client) -> R<Vec<(String, String)>> {
        Ok(c.query(
            "SELECT k, v FROM perimeter_meta WHERE k LIKE 'contact:%' ORDER BY k",
            &[],
        )
        .map_err(pg_err)?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    pub fn changes_since(c: &mut Client, seq: i64) -> R<Vec<Change>> {
        Ok(c.query(
            "SELECT seq, at, actor, what FROM perimeter_changes WHERE seq > $1 ORDER BY seq",
            &[&seq],
        )
        .map_err(pg_err)?
        .into_iter()
        .map(|r| Change {
            seq: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            what: r.get(3),
        })
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_time_and_changes_bump_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = PerimeterStore::open(&dir.path().join("p.db")).unwrap();
        let v0 = s.version().unwrap();
        assert!(s.init_meta(&[("ca_cert", "C")]).unwrap());
        assert!(!s.init_meta(&[("ca_cert", "D")]).unwrap());
        assert_eq!(s.meta("ca_cert").unwrap().as_deref(), Some("C"));
        s.set_policy("x = 1", 10, "root").unwrap();
        s.add_token("t1", "alice", "aa", 100, 10, "root").unwrap();
        s.add_token("t2", "bob", "bb", 20, 10, "root").unwrap();
        assert_eq!(s.pending_tokens(30).unwrap().len(), 1);
        assert!(matches!(
            s.redeem_token("t2", "b2", "s2", 30),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.redeem_token("t1", "a2", "s1", 30).unwrap(), "alice");
        assert!(matches!(
            s.redeem_token("t1", "a3", "s3", 31),
            Err(StoreError::Conflict(_))
        ));
        assert!(s.pending_tokens(30).unwrap().is_empty());
        s.set_cert_serial("alice", "s9", 40).unwrap();
        s.revoke("alice", 50, "root").unwrap();
        assert!(s.revoke("alice", 51, "root").is_err());
        assert!(s.set_cert_serial("alice", "s10", 52).is_err());
        let ids = s.identities().unwrap();
        assert_eq!(ids[0].cert_serial, "s9");
        assert_eq!(ids[0].revoked_at, Some(50));
        assert!(s.version().unwrap() >= v0 + 6);
        let changes = s.changes_since(0).unwrap();
        assert_eq!(changes.last().unwrap().what, "alice revoked");
        assert_eq!(
            s.changes_since(changes[2].seq).unwrap().len(),
            changes.len() - 3
        );
    }
}
