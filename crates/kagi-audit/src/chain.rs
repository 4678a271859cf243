//! The hash chain: sealing new records and verifying a sequence of stored ones.
//!
//! `hash = hex(SHA-256(JCS(record without the "hash" member)))`, where JCS is the JSON
//! Canonicalization Scheme (RFC 8785: members sorted by key, no whitespace). Every record
//! carries the previous record's hash in `prev_hash`, so editing, removing, inserting or
//! reordering any record breaks the chain at that point.

use kagi_store::Checkpoint;
use serde_json::Value;

use crate::{AuditEvent, AuditRecord};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
    format!("kagi-audit-checkpoint-v1\n{seq}\n{hash}\n{time}").into_bytes()
}

/// Hash of a record given as a JSON object (the "hash" member, if any, is left out).
#[cfg(test)]
fn hash_of(mut v: Value) -> String {
    hash_in_place(&mut v)
}

/// As [`hash_of`], leaving `v` as it was (the "hash" member is taken out for hashing and put
/// back), so the caller can go on to use `v` without a copy.
fn hash_in_place(v: &mut Value) -> String {
    let taken = match v {
        Value::Object(m) => m.remove("hash"),
        _ => None,
    };
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted, so
    // this is the RFC 8785 form for the strings, integers and nulls records contain.
    let bytes = serde_json::to_vec(&*v).unwrap_or_default();
    if let (Value::Object(m), Some(h)) = (v, taken) {
        m.insert("hash".into(), h);
    }
    hex::encode(kagi_crypto::sha256(&bytes))
}

/// A record's members in RFC 8785 order (sorted by name), without "hash": serializing this
/// gives the canonical bytes directly, without building a `Value` per record.
#[derive(serde::Serialize)]
struct Canonical<'a> {
    context: &'a std::collections::BTreeMap<String, String>,
    justification: &'a Option<String>,
    key: &'a Option<String>,
    key_version: Option<u32>,
    node: &'a str,
    operation: &'a str,
    outcome: crate::Outcome,
    prev_hash: &'a str,
    principal: &'a str,
    reason: &'a Option<String>,
    request_id: &'a str,
    seq: u64,
    source: &'a Option<String>,
    time: &'a str,
}

/// Makes the record at `seq` following `prev_hash`: returns (hash, JSON line).
pub(crate) fn seal(seq: u64, prev_hash: &str, e: &AuditEvent) -> (String, String) {
    let body = serde_json::to_string(&Canonical {
        context: &e.context,
        justification: &e.justification,
        key: &e.key,
        key_version: e.key_version,
        node: &e.node,
        operation: &e.operation,
        outcome: e.outcome,
        prev_hash,
        principal: &e.principal,
        reason: &e.reason,
        request_id: &e.request_id,
        seq,
        source: &e.source,
        time: &e.time,
    })
    .unwrap_or_default();
    let hash = hex::encode(kagi_crypto::sha256(body.as_bytes()));
    // The stored line is the canonical body with "hash" as its first member; member order
    // in stored lines does not matter, verification re-canonicalizes.
    let line = format!("{{\"hash\":\"{hash}\",{}", &body[1..]);
    (hash, line)
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Last sequence number (0 for an empty log).
    pub last_seq: u64,
    /// Last hash.
    pub last_hash: String,
    /// Checkpoints whose signature and position were checked.
    pub checkpoints: usize,
    /// The public key the checkpoints were signed with (hex), if any.
    pub checkpoint_key: Option<String>,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyFailure {
    /// The first bad sequence number.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit chain broken at record {}: {}",
            self.seq, self.reason
        )
    }
}

fn fail(seq: u64, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        seq,
        reason: reason.into(),
    }
}

/// Verifies records given in storage order as `(stored seq if any, JSON line)`, and the
/// checkpoints against them.
pub fn verify<I>(records: I, checkpoints: &[Checkpoint]) -> Result<VerifyReport, VerifyFailure>
where
    I: IntoIterator<Item = (Option<u64>, String)>,
{
    let mut cps = checkpoints.iter().peekable();
    let mut v = ChainVerifier::new();
    for (stored_seq, line) in records {
        let rec = v.push(stored_seq, &line)?;
        while let Some(cp) = cps.peek() {
            if cp.seq > rec.seq {
                break;
            }
            if cp.seq == rec.seq {
                v.checkpoint(cp)?;
            }
            cps.next();
        }
    }
    if let Some(cp) = cps.next() {
        return Err(fail(
            v.n + 1,
            format!(
                "missing: a signed checkpoint covers records up to {}, but the log ends at {}",
                cp.seq, v.n
            ),
        ));
    }
    Ok(v.report())
}

/// Verifies a chain one record at a time, so a reader that follows the log (the console)
/// keeps a verified position without reading the log again.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev_hash: String,
    n: u64,
    checked: usize,
    cp_key: Option<String>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// Before record 1.
    pub fn new() -> Self {
        Self {
            prev_hash: GENESIS_HASH.to_string(),
            n: 0,
            checked: 0,
            cp_key: None,
        }
    }

    /// The last record verified (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.n
    }

    /// What has been verified so far.
    pub fn report(&self) -> VerifyReport {
        VerifyReport {
            records: self.n,
            last_seq: self.n,
            last_hash: self.prev_hash.clone(),
            checkpoints: self.checked,
            checkpoint_key: self.cp_key.clone(),
        }
    }

    /// Verifies the next record (`stored_seq` is where the store keeps it, if it says) and
    /// returns it parsed. After an error the verifier stays where it was.
    pub fn push(
        &mut self,
        stored_seq: Option<u64>,
        line: &str,
    ) -> Result<AuditRecord, VerifyFailure> {
        let expected = self.n + 1;
        let mut v: Value = serde_json::from_str(line)
            .map_err(|e| fail(expected, format!("record is not valid JSON ({e})")))?;
        let computed = hash_in_place(&mut v);
        let rec: AuditRecord = serde_json::from_value(v).map_err(|e| {
            fail(
                expected,
                format!("record does not have the record format ({e})"),
            )
        })?;
        if rec.seq != expected {
            return Err(if rec.seq > expected {
                fail(
                    expected,
                    format!(
                        "record is missing or out of order (found record {} in its place)",
                        rec.seq
                    ),
                )
            } else {
                fail(
                    expected,
                    format!(
                        "record {} appears again or out of order in place of record {expected}",
                        rec.seq
                    ),
                )
            });
        }
        if let Some(s) = stored_seq {
            if s != rec.seq {
                return Err(fail(
                    expected,
                    format!("stored as record {s} but says it is record {}", rec.seq),
                ));
            }
        }
        if computed != rec.hash {
            return Err(fail(
                expected,
                "content does not match its hash: the record was altered",
            ));
        }
        if rec.prev_hash != self.prev_hash {
            // This record is intact (its own hash matches), so the one before it changed.
            return Err(if expected == 1 {
                fail(
                    1,
                    "the first record does not start the chain: records before it were removed",
                )
            } else {
                fail(expected - 1, format!("record {expected} does not chain to it: it was altered and re-hashed, or replaced"))
            });
        }
        self.prev_hash = rec.hash.clone();
        self.n = expected;
        Ok(rec)
    }

    /// Checks a signed checkpoint at the record just pushed (`cp.seq` must be
    /// [`last_seq`](Self::last_seq)).
    pub fn checkpoint(&mut self, cp: &Checkpoint) -> Result<(), VerifyFailure> {
        if cp.seq != self.n {
            return Err(fail(
                cp.seq,
                format!(
                    "checkpoint for record {} checked at record {}",
                    cp.seq, self.n
                ),
            ));
        }
        let hash = self.prev_hash.clone();
        self.checkpoint_at(cp, &hash)
    }

    /// Checks a signed checkpoint at an already verified record whose hash is `hash` (a
    /// checkpoint can be signed after its record was read).
    pub fn checkpoint_at(&mut self, cp: &Checkpoint, hash: &str) -> Result<(), VerifyFailure> {
        if cp.seq > self.n {
            return Err(fail(
                cp.seq,
                format!(
                    "checkpoint for record {} is past the verified record {}",
                    cp.seq, self.n
                ),
            ));
        }
        if cp.hash != hash {
            return Err(fail(
                cp.seq,
                "differs from the signed checkpoint at this record",
            ));
        }
        let pk = hex::decode(&cp.public_key).unwrap_or_default();
        let sig = hex::decode(&cp.signature).unwrap_or_default();
        kagi_crypto::verify_ed25519(&pk, &checkpoint_message(cp.seq, &cp.hash, &cp.time), &sig)
            .map_err(|_| {
                fail(
                    cp.seq,
                    "the checkpoint signature at this record does not verify",
                )
            })?;
        if let Some(k) = &self.cp_key {
            if k != &cp.public_key {
                return Err(fail(
                    cp.seq,
                    "checkpoint signed with a different key than earlier checkpoints",
                ));
            }
        }
        self.cp_key = Some(cp.public_key.clone());
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::{AuditEvent, Outcome};

    pub(crate) fn event(i: u32) -> AuditEvent {
        AuditEvent {
            time: "2026-11-28T00:00:00.000000Z".into(),
            node: "n1".into(),
            principal: "root".into(),
            source: Some("127.0.0.1".into()),
            operation: "generate".into(),
            key: Some("k1".into()),
            key_version: Some(i),
            context: [("tenant".to_string(), "acme".to_string())].into(),
            justification: None,
            request_id: format!("r{i}"),
            outcome: Outcome::Success,
            reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::event;
    use super::*;

    fn chain(n: u32) -> Vec<String> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|i| {
                let (h, line) = seal(i as u64, &prev, &event(i));
                prev = h;
                line
            })
            .collect()
    }

    fn run(lines: &[String]) -> Result<VerifyReport, VerifyFailure> {
        verify(lines.iter().map(|l| (None, l.clone())), &[])
    }

    #[test]
    fn fast_canonical_form_equals_the_generic_one() {
        let mut e = event(7);
        e.reason = Some("quote \" backslash \\ newline \n tab \t ctl \u{1} é 鍵 \u{7f}".into());
        e.context.insert("ünï".into(), "</script>".into());
        e.source = None;
        let (h, line) = seal(42, "ab", &e);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(hash_of(v.clone()), h);
        let rec: AuditRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.event, e);
        assert_eq!(rec.hash, h);
    }

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        let (_, line) = seal(1, GENESIS_HASH, &event(1));
        let v: Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert!(keys.contains(&"hash".to_string()));
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let s = serde_json::to_string(&v).unwrap();
        assert!(
            s.starts_with("{\"context\":{\"tenant\":\"acme\"},\"hash\":"),
            "{s}"
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let r = run(&chain(5)).unwrap();
        assert_eq!(r.last_seq, 5);
        assert_eq!(run(&[]).unwrap().records, 0);
    }

    #[test]
    fn every_kind_of_damage_names_the_record() {
        let good = chain(6);
        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"acme\"", "\"evil\"");
        assert_eq!(run(&edited).unwrap_err().seq, 3);

        let mut removed = good.clone();
        removed.remove(3);
        assert_eq!(run(&removed).unwrap_err().seq, 4);

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(run(&swapped).unwrap_err().seq, 2);

        let mut inserted = good.clone();
        inserted.insert(2, good[1].clone());
        assert_eq!(run(&inserted).unwrap_err().seq, 3);

        let mut first_gone = good.clone();
        first_gone.remove(0);
        assert_eq!(run(&first_gone).unwrap_err().seq, 1);

        // Edited and re-hashed: the next record no longer chains, the edited one is named.
        let mut rehashed = good.clone();
        let mut v: Value = serde_json::from_str(&rehashed[3]).unwrap();
        v["principal"] = Value::String("someone-else".into());
        let h = hash_of(v.clone());
        v["hash"] = Value::String(h);
        rehashed[3] = serde_json::to_string(&v).unwrap();
        assert_eq!(run(&rehashed).unwrap_err().seq, 4);

        let mut garbage = good.clone();
        garbage[4] = "not json".into();
        assert_eq!(run(&garbage).unwrap_err().seq, 5);

        // Stored under a different seq than it says.
        let pairs: Vec<_> = good
            .iter()
            .enumerate()
            .map(|(i, l)| (Some(if i == 2 { 9 } else { i as u64 + 1 }), l.clone()))
            .collect();
        assert_eq!(verify(pairs, &[]).unwrap_err().seq, 3);
    }

    #[test]
    fn checkpoints_are_checked_and_pin_the_tail() {
        let key =
            kagi_crypto::SigningKey::from_seed(&kagi_crypto::SecretKey32::generate()).unwrap();
        let lines = chain(4);
        let r3: AuditRecord = serde_json::from_str(&lines[2]).unwrap();
        let time = "2026-11-28T00:00:01Z".to_string();
        let cp = Checkpoint {
            seq: 3,
            hash: r3.hash.clone(),
            public_key: hex::encode(key.public_key()),
            signature: hex::encode(key.sign(&checkpoint_message(3, &r3.hash, &time))),
            time,
        };
        let all = |l: &[String]| l.iter().map(|x| (None, x.clone())).collect::<Vec<_>>();
        assert_eq!(
            verify(all(&lines), std::slice::from_ref(&cp))
                .unwrap()
                .checkpoints,
            1
        );
        // Truncating below a checkpoint is caught.
        assert_eq!(
            verify(all(&lines[..2]), std::slice::from_ref(&cp))
                .unwrap_err()
                .seq,
            3
        );
        let mut forged = cp.clone();
        forged.signature = hex::encode([0u8; 64]);
        assert_eq!(verify(all(&lines), &[forged]).unwrap_err().seq, 3);
    }
}
