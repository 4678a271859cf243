//! Group commit: one thread owns the chain head and the store's write connection. Callers
//! hand it events and wait; it takes everything queued, seals the records, writes them in
//! one fsynced transaction, and only then answers every waiter. A failed write answers
//! every waiter with an error and leaves the head where it was, so the chain never has a
//! hole and no operation proceeds without its record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_crypto::SigningKey;
use kagi_store::{AuditStore, Checkpoint, StoreError};
use tokio::sync::oneshot;

use crate::chain::{checkpoint_message, seal, GENESIS_HASH};
use crate::{AuditError, AuditEvent, AuditRecord};

/// Records between signed checkpoints.
const CHECKPOINT_EVERY: u64 = 1000;
/// A checkpoint is also written after this long with uncovered records.
const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);
/// Largest batch in one transaction.
const MAX_BATCH: usize = 4096;
/// Events queued beyond this are refused at once (503) rather than piling up.
const QUEUE_DEPTH: usize = 65_536;

/// The key that signs checkpoints; empty while the service is sealed.
pub type SignerSlot = Arc<Mutex<Option<SigningKey>>>;

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records made durable.
    pub records: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Transactions that failed.
    pub failures: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// True while the last write failed.
    pub failing: AtomicBool,
    /// Sequence number of the newest durable record (the writer's chain head).
    pub head: AtomicU64,
}

/// The handle callers use. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: SyncSender<Pending>,
    signer: SignerSlot,
    store: Arc<dyn AuditStore>,
    stats: Arc<AuditStats>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Starts the writer thread over `store`, continuing its chain.
    pub fn start(store: Arc<dyn AuditStore>) -> Result<Self, AuditError> {
        let (seq, hash) = match store.last().map_err(|e| AuditError::Read(e.to_string()))? {
            None => (0, GENESIS_HASH.to_string()),
            Some((_, line)) => {
                let r: AuditRecord = serde_json::from_str(&line).map_err(|e| {
                    AuditError::Read(format!(
                        "the newest audit record is unreadable ({e}); run `kagi audit verify`"
                    ))
                })?;
                (r.seq, r.hash)
            }
        };
        let last_cp = store
            .checkpoints()
            .map_err(|e| AuditError::Read(e.to_string()))?
            .last()
            .map_or(0, |c| c.seq);
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let signer: SignerSlot = Arc::new(Mutex::new(None));
        let stats = Arc::new(AuditStats::default());
        stats.head.store(seq, Ordering::Relaxed);
        let w = Writer {
            rx,
            store: store.clone(),
            signer: signer.clone(),
            stats: stats.clone(),
            seq,
            hash,
            last_cp,
            last_cp_at: Instant::now(),
        };
        std::thread::Builder::new()
            .name("kagi-audit-writer".into())
            .spawn(move || w.run())
            .map_err(|e| AuditError::Unavailable(format!("cannot start the audit writer: {e}")))?;
        Ok(Self {
            tx,
            signer,
            store,
            stats,
        })
    }

    /// Records `event` durably; returns its sequence number. Fails closed.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (done, wait) = oneshot::channel();
        match self.tx.try_send(Pending { event, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(AuditError::Unavailable("the audit queue is full".into()))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AuditError::Unavailable(
                    "the audit writer has stopped".into(),
                ))
            }
        }
        wait.await
            .map_err(|_| AuditError::Unavailable("the audit writer has stopped".into()))?
    }

    /// Sets (on unseal) or clears (on seal) the checkpoint signing key.
    pub fn set_signer(&self, key: Option<SigningKey>) {
        if let Ok(mut s) = self.signer.lock() {
            *s = key;
        }
    }

    /// The store, for readers (tail, export, verify).
    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

struct Writer {
    rx: Receiver<Pending>,
    store: Arc<dyn AuditStore>,
    signer: SignerSlot,
    stats: Arc<AuditStats>,
    seq: u64,
    hash: String,
    last_cp: u64,
    last_cp_at: Instant,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        loop {
            match self.rx.recv_timeout(CHECKPOINT_IDLE) {
                Ok(p) => batch.push(p),
                Err(RecvTimeoutError::Timeout) => {
                    self.idle_checkpoint();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    fn make_checkpoint(&self, seq: u64, hash: &str) -> Option<Checkpoint> {
        let guard = self.signer.lock().ok()?;
        let key = guard.as_ref()?;
        let time = AuditEvent::now_string();
        Some(Checkpoint {
            seq,
            hash: hash.to_string(),
            public_key: hex::encode(key.public_key()),
            signature: hex::encode(key.sign(&checkpoint_message(seq, hash, &time))),
            time,
        })
    }

    /// Reloads the chain head after another node appended (shared PostgreSQL chain).
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        if let Err(e) = self.try_commit(batch) {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            if !self.stats.failing.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "audit log cannot write; refusing key operations");
            }
            let msg = e.to_string();
            for p in batch.drain(..) {
                let _ = p.done.send(Err(AuditError::Unavailable(msg.clone())));
            }
        }
    }

    /// Where the batch chains on: this writer's own head, or — for a chain shared by several
    /// nodes — the stored head, which may only have moved forward. A stored head behind what
    /// this node itself wrote means records were removed; chaining over that gap would hide
    /// it, so the append fails instead.
    fn base(&self, stored: Option<(u64, String)>) -> Result<(u64, String), StoreError> {
        let Some((stored_seq, line)) = stored else {
            return Ok((self.seq, self.hash.clone()));
        };
        // An empty shared chain comes as (0, ""): the genesis head.
        let r = if stored_seq == 0 && line.is_empty() {
            (0, GENESIS_HASH.to_string())
        } else {
            let r: AuditRecord =
                serde_json::from_str(&line).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            (r.seq, r.hash)
        };
        if r.0 < self.seq {
            return Err(StoreError::Corrupt(format!(
                "the stored audit chain ends at record {} but this node already wrote record {}: records were removed; run `kagi audit verify`",
                r.0, self.seq
            )));
        }
        Ok(r)
    }

    fn try_commit(&mut self, batch: &mut Vec<Pending>) -> Result<(), StoreError> {
        let mut sealed: Option<(u64, u64, String, bool)> = None;
        {
            let this = &*self;
            let batch = &*batch;
            this.store.append_at_head(&mut |stored| {
                let (first_base, mut hash) = this.base(stored)?;
                let mut seq = first_base;
                let mut lines = Vec::with_capacity(batch.len());
                for p in batch {
                    seq += 1;
                    let (h, line) = seal(seq, &hash, &p.event);
                    hash = h;
                    lines.push((seq, line));
                }
                let cp = if seq.saturating_sub(this.last_cp) >= CHECKPOINT_EVERY {
                    this.make_checkpoint(seq, &hash)
                } else {
                    None
                };
                sealed = Some((first_base + 1, seq, hash, cp.is_some()));
                Ok((lines, cp))
            })?;
        }
        let Some((first, seq, hash, checkpointed)) = sealed else {
            return Err(StoreError::Backend("the audit store did not append".into()));
        };
        self.seq = seq;
        self.hash = hash;
        self.stats.head.store(seq, Ordering::Relaxed);
        if checkpointed {
            self.last_cp = seq;
            self.last_cp_at = Instant::now();
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if self.stats.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!("audit log is writable again; key operations resume");
        }
        for (i, p) in batch.drain(..).enumerate() {
            let _ = p.done.send(Ok(first + i as u64));
        }
        Ok(())
    }

    fn idle_checkpoint(&mut self) {
        if self.seq > self.last_cp && self.last_cp_at.elapsed() >= CHECKPOINT_IDLE {
            if let Some(cp) = self.make_checkpoint(self.seq, &self.hash) {
                if self.store.append(&[], Some(&cp)).is_ok() {
                    self.last_cp = self.seq;
                    self.last_cp_at = Instant::now();
                    self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_store::sqlite::SqliteAuditStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_form_one_chain_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        {
            let store: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&path).unwrap());
            let log = AuditLog::start(store.clone()).unwrap();
            log.set_signer(Some(
                SigningKey::from_seed(&kagi_crypto::SecretKey32::generate()).unwrap(),
            ));
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    log.record(crate::chain::tests_support::event(i)).await
                }));
            }
            let mut seqs: Vec<u64> = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap().unwrap());
            }
            seqs.sort();
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        }
        let store: Arc<dyn AuditStore> = Arc::new(SqliteAuditStore::open(&path).unwrap());
        let log = AuditLog::start(store.clone()).unwrap();
        assert_eq!(
            log.record(crate::chain::tests_support::event(0))
                .await
                .unwrap(),
            201
        );
        let rows = store.read(1, 1000).unwrap();
        let r = crate::verify(
            rows.into_iter().map(|(s, l)| (Some(s), l)),
            &store.checkpoints().unwrap(),
        )
        .unwrap();
        assert_eq!(r.last_seq, 201);
    }
}
