//! Keeps the console's [`UsageIndex`] up to date: reads the audit store from where it left
//! off (records any node wrote, since the store is shared), in pages, and checks new signed
//! checkpoints. Started by the first console request, so a server whose console is never
//! opened never reads its log for it.

use std::sync::{Arc, Once, RwLock, RwLockReadGuard};
use std::time::Duration;

use kagi_store::AuditStore;

use super::usage::UsageIndex;

/// Records read per store query.
const PAGE: usize = 1_000;
/// How often a caught-up indexer looks for new records.
const POLL: Duration = Duration::from_millis(500);

/// The shared index and its feeder.
pub(crate) struct Index {
    store: Arc<dyn AuditStore>,
    inner: Arc<RwLock<UsageIndex>>,
    started: Once,
}

impl Index {
    pub(crate) fn new(store: Arc<dyn AuditStore>) -> Self {
        Self {
            store,
            inner: Arc::new(RwLock::new(UsageIndex::new())),
            started: Once::new(),
        }
    }

    /// The index as far as it has read (starting the feeder on first use).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, UsageIndex> {
        self.started.call_once(|| {
            let store = self.store.clone();
            let inner = self.inner.clone();
            tokio::spawn(feed(store, inner));
        });
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

async fn feed(store: Arc<dyn AuditStore>, inner: Arc<RwLock<UsageIndex>>) {
    loop {
        let st = store.clone();
        let ix = inner.clone();
        let r = tokio::task::spawn_blocking(move || step(&*st, &ix)).await;
        let full = match r {
            Ok(Ok(full)) => full,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "console index: audit store read failed; retrying");
                false
            }
            Err(_) => false,
        };
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Reads one page; true when the page was full (more may wait).
fn step(
    store: &dyn AuditStore,
    inner: &RwLock<UsageIndex>,
) -> Result<bool, kagi_store::StoreError> {
    let from = inner.read().unwrap_or_else(|e| e.into_inner()).next_seq();
    let rows = store.read(from, PAGE)?;
    let head = match rows.last() {
        Some(_) => store.last()?.map_or(0, |l| l.0),
        None => from.saturating_sub(1),
    };
    let caught_up = rows.len() < PAGE;
    let mut ix = inner.write().unwrap_or_else(|e| e.into_inner());
    for (seq, line) in &rows {
        // A gap or a reordering is named by the chain verifier.
        ix.ingest(*seq, line);
    }
    ix.log_head = ix.log_head.max(head);
    ix.started = true;
    // Checkpoints can be signed after their record was written (when the log goes idle), so
    // they are looked at after reading, and only when some verified record is not yet pinned.
    if ix.wants_checkpoints(caught_up) {
        let cps = store.checkpoints()?;
        // The hashes of recent records are in memory; an older one is read from the store.
        ix.check_checkpoints(&cps, |seq| {
            store
                .read(seq, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|(_, l)| super::usage::parse_hash(&l))
        });
    }
    Ok(!caught_up)
}
