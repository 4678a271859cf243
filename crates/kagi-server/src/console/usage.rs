//! What the console shows about key use, aggregated as the audit log grows so that no page
//! reads the whole log: per key, hourly counts by operation and by justification code, the
//! latest accesses and the last use; for the whole log, the latest records and how far the
//! hash chain has been verified. Pure: the indexer feeds it records in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use kagi_audit::{AuditEvent, AuditRecord, ChainVerifier, Outcome, VerifyFailure};

/// Hours of per-key counts kept (the longest chart range).
pub const KEEP_HOURS: i64 = 30 * 24;
/// Latest accesses kept per key.
pub const KEY_RECENT: usize = 25;
/// Latest records kept for the audit page's live view and filters.
pub const LOG_RECENT: usize = 10_000;
/// The justification bucket for uses that gave none.
pub const NO_JUSTIFICATION: &str = "(none)";

/// One audit record as the console shows it: its place, its time in seconds, and the event
/// (no hashes). Derefs to the event, so `a.operation`, `a.key` … read as on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Place in the chain.
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// What was recorded.
    pub event: AuditEvent,
}

impl std::ops::Deref for Access {
    type Target = AuditEvent;
    fn deref(&self) -> &AuditEvent {
        &self.event
    }
}

impl Access {
    fn from_record(r: AuditRecord) -> Self {
        let at = r
            .event
            .time
            .parse::<jiff::Timestamp>()
            .map_or(0, |t| t.as_second());
        Self {
            seq: r.seq,
            at,
            event: r.event,
        }
    }
}

/// Whether an operation is a use of the key (not reading its metadata or changing it).
pub fn is_use(operation: &str) -> bool {
    operation != "describe" && !operation.starts_with("key.")
}

/// Counts of one hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourCounts {
    /// By operation name.
    pub by_operation: BTreeMap<String, u64>,
    /// By justification code ([`NO_JUSTIFICATION`] when none was given).
    pub by_justification: BTreeMap<String, u64>,
    /// Of them refused or failed.
    pub not_success: u64,
}

impl HourCounts {
    /// Every use in the hour.
    pub fn total(&self) -> u64 {
        self.by_operation.values().sum()
    }
}

/// What the console knows about one key's use.
#[derive(Debug, Clone, Default)]
pub struct KeyActivity {
    /// Unix seconds of the last successful use.
    pub last_use: Option<i64>,
    /// Hour start (unix seconds) → counts; the last [`KEEP_HOURS`] hours.
    pub hours: BTreeMap<i64, HourCounts>,
    /// Latest records naming the key (uses, reads and changes), newest last.
    pub recent: VecDeque<Arc<Access>>,
}

impl KeyActivity {
    /// Uses per hour for the `n` hours ending with the hour of `now`, oldest first.
    pub fn hourly(&self, now: i64, n: usize) -> Vec<u64> {
        let end = hour_of(now);
        (0..n as i64)
            .rev()
            .map(|i| {
                self.hours
                    .get(&(end - i * 3600))
                    .map_or(0, HourCounts::total)
            })
            .collect()
    }

    /// Counts per bucket of `hours_per_bucket` hours, `n` buckets ending with the hour of
    /// `now`, oldest first; each bucket is (start, by operation, by justification).
    pub fn buckets(&self, now: i64, n: usize, hours_per_bucket: i64) -> Vec<Bucket> {
        let end = hour_of(now) + 3600;
        let span = hours_per_bucket * 3600;
        let start = end - span * n as i64;
        let mut out: Vec<Bucket> = (0..n as i64)
            .map(|i| Bucket {
                start: start + i * span,
                counts: HourCounts::default(),
            })
            .collect();
        for (h, c) in self.hours.range(start..end) {
            let i = ((h - start) / span) as usize;
            if let Some(b) = out.get_mut(i) {
                for (k, v) in &c.by_operation {
                    *b.counts.by_operation.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &c.by_justification {
                    *b.counts.by_justification.entry(k.clone()).or_default() += v;
                }
                b.counts.not_success += c.not_success;
            }
        }
        out
    }
}

/// Counts of one chart bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Unix seconds.
    pub start: i64,
    /// The counts.
    pub counts: HourCounts,
}

fn hour_of(t: i64) -> i64 {
    t.div_euclid(3600) * 3600
}

/// The chain's verification as far as the index has read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// The last record whose hash and link were checked.
    pub verified_seq: u64,
    /// Signed checkpoints checked.
    pub checkpoints: usize,
    /// The first problem, if the chain is broken.
    pub broken: Option<VerifyFailure>,
}

/// Everything aggregated from the log so far.
#[derive(Debug, Default)]
pub struct UsageIndex {
    keys: HashMap<String, KeyActivity>,
    recent: VecDeque<Arc<Access>>,
    verifier: ChainVerifier,
    broken: Option<VerifyFailure>,
    /// Next record to read.
    next_seq: u64,
    /// Hashes of the latest records, for checkpoints signed after their record was read.
    recent_hashes: VecDeque<(u64, String)>,
    /// Checkpoints already checked (they arrive in order).
    checkpoints_seen: usize,
    /// The record the last checked checkpoint pins (0 before any).
    checkpointed_seq: u64,
    /// The log's last record when the indexer last looked (for progress while catching up).
    pub log_head: u64,
    /// Whether the indexer has looked at the store at least once.
    pub started: bool,
}

impl UsageIndex {
    /// An empty index, before record 1.
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            ..Self::default()
        }
    }

    /// The next record the index needs.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.max(1)
    }

    /// Adds the next stored record `(seq, JSON line)`. Once the chain is found broken the
    /// index keeps counting what it can parse, but the status stays broken.
    pub fn ingest(&mut self, seq: u64, line: &str) {
        self.next_seq = seq + 1;
        // Once the chain is broken, records are only parsed, not verified.
        let verified = if self.broken.is_some() {
            None
        } else {
            match self.verifier.push(Some(seq), line) {
                Ok(r) => Some(r),
                Err(f) => {
                    self.broken = Some(f);
                    None
                }
            }
        };
        let Some(rec) = verified.or_else(|| serde_json::from_str::<AuditRecord>(line).ok()) else {
            return;
        };
        self.recent_hashes.push_back((rec.seq, rec.hash.clone()));
        if self.recent_hashes.len() > LOG_RECENT {
            self.recent_hashes.pop_front();
        }
        let a = Arc::new(Access::from_record(rec));
        if let Some(k) = a.key.clone() {
            let act = self.keys.entry(k).or_default();
            if is_use(&a.operation) {
                let h = hour_of(a.at);
                let c = act.hours.entry(h).or_default();
                *c.by_operation.entry(a.operation.clone()).or_default() += 1;
                let j = a.justification.as_deref().unwrap_or(NO_JUSTIFICATION);
                *c.by_justification.entry(j.to_string()).or_default() += 1;
                if a.outcome == Outcome::Success {
                    act.last_use = Some(act.last_use.map_or(a.at, |l| l.max(a.at)));
                } else {
                    c.not_success += 1;
                }
                // Drop hours older than the longest range, counted from the newest hour.
                if let Some((&newest, _)) = act.hours.last_key_value() {
                    let keep_from = newest - KEEP_HOURS * 3600;
                    while act
                        .hours
                        .first_key_value()
                        .is_some_and(|(&f, _)| f < keep_from)
                    {
                        act.hours.pop_first();
                    }
                }
            }
            act.recent.push_back(a.clone());
            if act.recent.len() > KEY_RECENT {
                act.recent.pop_front();
            }
        }
        self.recent.push_back(a);
        if self.recent.len() > LOG_RECENT {
            self.recent.pop_front();
        }
    }

    /// Checks the signed checkpoints the index has not checked yet (`all` is the store's
    /// full, ascending list). `hash_at` fetches a verified record's hash that is no longer
    /// held in memory. Checkpoints past the verified position wait for the next call.
    pub fn check_checkpoints(
        &mut self,
        all: &[kagi_store::Checkpoint],
        mut hash_at: impl FnMut(u64) -> Option<String>,
    ) {
        while let Some(cp) = all.get(self.checkpoints_seen) {
            if self.broken.is_some() || cp.seq > self.verifier.last_seq() {
                return;
            }
            let hash = self
                .recent_hashes
                .iter()
                .rev()
                .find(|(s, _)| *s == cp.seq)
                .map(|(_, h)| h.clone())
                .or_else(|| hash_at(cp.seq))
                .unwrap_or_default();
            if let Err(f) = self.verifier.checkpoint_at(cp, &hash) {
                self.broken = Some(f);
                return;
            }
            self.checkpoints_seen += 1;
            self.checkpointed_seq = cp.seq;
        }
    }

    /// Whether the store's checkpoints are worth reading now: while catching up, before the
    /// hashes of unchecked records leave memory; once caught up, while verified records are
    /// not yet pinned by a checkpoint (one is signed when the log goes idle).
    pub fn wants_checkpoints(&self, caught_up: bool) -> bool {
        let unpinned =
            self.verifier.last_seq() - self.checkpointed_seq.min(self.verifier.last_seq());
        self.broken.is_none()
            && if caught_up {
                unpinned > 0
            } else {
                unpinned as usize >= LOG_RECENT / 2
            }
    }

    /// One key's activity.
    pub fn key(&self, name: &str) -> Option<&KeyActivity> {
        self.keys.get(name)
    }

    /// The latest records, newest first, that `keep` selects, at most `n`.
    pub fn latest(&self, n: usize, keep: impl Fn(&Access) -> bool) -> Vec<Arc<Access>> {
        self.recent
            .iter()
            .rev()
            .filter(|a| keep(a))
            .take(n)
            .cloned()
            .collect()
    }

    /// The oldest record held for [`latest`](Self::latest) (older ones are read from the
    /// store).
    pub fn oldest_recent(&self) -> Option<u64> {
        self.recent.front().map(|a| a.seq)
    }

    /// While the index is still reading the log: (records read, records in the log); the
    /// log size is 0 before the first look.
    pub fn catching_up(&self) -> Option<(u64, u64)> {
        let read = self.next_seq() - 1;
        (!self.started || read < self.log_head).then_some((read, self.log_head))
    }

    /// How far the chain is verified.
    pub fn chain(&self) -> ChainStatus {
        ChainStatus {
            verified_seq: self.verifier.last_seq(),
            checkpoints: self.verifier.report().checkpoints,
            broken: self.broken.clone(),
        }
    }
}

/// Parses a stored line for display (used for records older than the index holds).
pub fn parse_access(line: &str) -> Option<Access> {
    serde_json::from_str::<AuditRecord>(line)
        .ok()
        .map(Access::from_record)
}

/// The `hash` member of a stored line.
pub fn parse_hash(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct H {
        hash: String,
    }
    serde_json::from_str::<H>(line).ok().map(|h| h.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_audit::AuditLog;
    use kagi_store::{sqlite::SqliteAuditStore, AuditStore};

    fn event(op: &str, key: &str, just: Option<&str>, outcome: Outcome, time: &str) -> AuditEvent {
        AuditEvent {
            time: time.into(),
            node: "n1".into(),
            principal: "token:abcd".into(),
            source: Some("127.0.0.1".into()),
            operation: op.into(),
            key: Some(key.into()),
            key_version: Some(1),
            context: BTreeMap::new(),
            justification: just.map(str::to_string),
            request_id: "r".into(),
            outcome,
            reason: None,
        }
    }

    /// Writes events through the real writer into a SQLite audit store and returns its lines.
    fn lines(events: Vec<AuditEvent>) -> Vec<(u64, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn AuditStore> =
            Arc::new(SqliteAuditStore::open(&dir.path().join("a.db")).expect("store"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let log = AuditLog::start(store.clone()).expect("log");
            for e in events {
                log.record(e).await.expect("record");
            }
        });
        store.read(1, 1000).expect("read")
    }

    #[test]
    fn counts_uses_by_hour_operation_and_justification() {
        let t0 = "2026-11-28T10:05:00.000000Z";
        let t1 = "2026-11-28T11:30:00.000000Z";
        let rows = lines(vec![
            event(
                "generate",
                "k1",
                Some("CUSTOMER_INITIATED_ACCESS"),
                Outcome::Success,
                t0,
            ),
            event("decrypt", "k1", None, Outcome::Success, t1),
            event(
                "decrypt",
                "k1",
                Some("THIRD_PARTY_DATA_REQUEST"),
                Outcome::Denied,
                t1,
            ),
            event("describe", "k1", None, Outcome::Success, t1),
            event("key.disable", "k1", None, Outcome::Success, t1),
            event("generate", "k2", None, Outcome::Success, t0),
        ]);
        let mut ix = UsageIndex::new();
        for (s, l) in &rows {
            ix.ingest(*s, l);
        }
        let k1 = ix.key("k1").expect("k1");
        let now = "2026-11-28T11:59:00Z"
            .parse::<jiff::Timestamp>()
            .expect("t")
            .as_second();
        assert_eq!(k1.hourly(now, 3), vec![0, 1, 2]);
        let b = k1.buckets(now, 2, 1);
        assert_eq!(b[0].counts.by_operation.get("generate"), Some(&1));
        assert_eq!(b[1].counts.by_operation.get("decrypt"), Some(&2));
        assert_eq!(b[1].counts.by_justification.get(NO_JUSTIFICATION), Some(&1));
        assert_eq!(
            b[1].counts.by_justification.get("THIRD_PARTY_DATA_REQUEST"),
            Some(&1)
        );
        assert_eq!(b[1].counts.not_success, 1);
        // Last use is the last successful use, not the denied one or the disable.
        let t1s = t1.parse::<jiff::Timestamp>().expect("t").as_second();
        assert_eq!(k1.last_use, Some(t1s));
        assert_eq!(k1.recent.len(), 5);
        let chain = ix.chain();
        assert_eq!(chain.verified_seq, 6);
        assert!(chain.broken.is_none());
        let denied = ix.latest(10, |a| a.outcome == Outcome::Denied);
        assert_eq!(denied.len(), 1);
        assert_eq!(denied[0].seq, 3);
    }

    #[test]
    fn signed_checkpoints_are_checked_and_then_no_longer_wanted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn AuditStore> =
            Arc::new(SqliteAuditStore::open(&dir.path().join("a.db")).expect("store"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let t = "2026-11-28T10:05:00.000000Z";
        rt.block_on(async {
            let log = AuditLog::start(store.clone()).expect("log");
            log.set_signer(Some(
                kagi_crypto::SigningKey::from_seed(&kagi_crypto::SecretKey32::generate())
                    .expect("key"),
            ));
            for _ in 0..2_500 {
                log.record(event("generate", "k1", None, Outcome::Success, t))
                    .await
                    .expect("record");
            }
        });
        let cps = store.checkpoints().expect("checkpoints");
        assert!(cps.len() >= 2, "the writer signs every 1,000 records");
        let mut ix = UsageIndex::new();
        assert!(
            !ix.wants_checkpoints(true),
            "nothing verified, nothing to pin"
        );
        for (s, l) in store.read(1, 10_000).expect("read") {
            ix.ingest(s, &l);
        }
        assert!(ix.wants_checkpoints(true));
        let mut fetched = Vec::new();
        ix.check_checkpoints(&cps, |seq| {
            fetched.push(seq);
            None
        });
        assert!(fetched.is_empty(), "recent hashes are in memory");
        assert_eq!(ix.chain().checkpoints, cps.len());
        assert!(ix.chain().broken.is_none());
        let last = cps.last().map_or(0, |c| c.seq);
        assert_eq!(ix.wants_checkpoints(true), last < 2_500);

        // A checkpoint whose signature does not verify breaks the chain.
        let mut bad = cps.clone();
        bad[0].signature = "00".repeat(64);
        let mut ix = UsageIndex::new();
        for (s, l) in store.read(1, 10_000).expect("read") {
            ix.ingest(s, &l);
        }
        ix.check_checkpoints(&bad, |_| None);
        assert_eq!(ix.chain().broken.map(|b| b.seq), Some(bad[0].seq));
        assert!(
            !ix.wants_checkpoints(true),
            "a broken chain wants nothing more"
        );
    }

    #[test]
    fn latest_records_per_key_are_bounded() {
        let t = "2026-11-28T10:05:00.000000Z";
        let rows = lines(
            (0..KEY_RECENT + 5)
                .map(|_| event("decrypt", "k1", None, Outcome::Success, t))
                .collect(),
        );
        let mut ix = UsageIndex::new();
        for (s, l) in &rows {
            ix.ingest(*s, l);
        }
        let k = ix.key("k1").expect("k1");
        assert_eq!(k.recent.len(), KEY_RECENT);
        assert_eq!(k.recent.back().map(|a| a.seq), Some(KEY_RECENT as u64 + 5));
        assert_eq!(
            k.hours.values().map(HourCounts::total).sum::<u64>(),
            KEY_RECENT as u64 + 5
        );
    }

    #[test]
    fn a_tampered_record_marks_the_chain_broken_but_counting_goes_on() {
        let t = "2026-11-28T10:05:00.000000Z";
        let mut rows = lines(vec![
            event("generate", "k1", None, Outcome::Success, t),
            event("generate", "k1", None, Outcome::Success, t),
            event("generate", "k1", None, Outcome::Success, t),
        ]);
        rows[1].1 = rows[1].1.replace("token:abcd", "token:evil");
        let mut ix = UsageIndex::new();
        for (s, l) in &rows {
            ix.ingest(*s, l);
        }
        let c = ix.chain();
        assert_eq!(c.verified_seq, 1);
        assert_eq!(c.broken.map(|b| b.seq), Some(2));
        assert_eq!(ix.key("k1").map(|k| k.recent.len()), Some(3));
    }
}
