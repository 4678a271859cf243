//! `GET /v1/compliance/report`: CAIQ-style answers (Yes / No / N/A with a comment) to the
//! control questions a key service can answer for itself, each from live state — the seal,
//! the key inventory and its rotation ages, destroyed keys, policies on third-party requests,
//! the audit chain as verified now. An answer is `Yes` only when the evidence shows it.

use axum::extract::State;
use axum::Json;
use kagi_keys::{Justification, KeyRecord, KeyState, KeyType};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::{verify_chain, ApiResult, AppState, Authed, ErrorBody, VerifyView};
use crate::service::ComplianceFacts;

/// One answered control question.
#[derive(Debug, Serialize, ToSchema)]
pub struct ControlAnswer {
    /// `CSA CCM v4`, `ISO/IEC 27017`, `ISMAP`.
    pub framework: &'static str,
    /// Control id, e.g. `CEK-12`.
    pub control: &'static str,
    /// Control title.
    pub title: &'static str,
    /// The question answered for this deployment.
    pub question: &'static str,
    /// `Yes`, `No` or `N/A`.
    pub answer: &'static str,
    /// Why, with the evidence.
    pub comment: String,
}

/// The report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComplianceReport {
    /// RFC 3339.
    pub generated_at: String,
    /// The node that made it.
    pub node: String,
    /// Answers, in framework and control order.
    pub controls: Vec<ControlAnswer>,
}

fn ts(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

fn days(secs: i64) -> i64 {
    secs / 86_400
}

/// Builds the answers from the facts and the chain verification, at `now` (unix seconds).
pub fn answers(f: &ComplianceFacts, chain: &VerifyView, now: i64) -> Vec<ControlAnswer> {
    let live: Vec<&KeyRecord> = f
        .keys
        .iter()
        .filter(|k| k.state != KeyState::Destroyed)
        .collect();
    let destroyed: Vec<&KeyRecord> = f
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Destroyed)
        .collect();
    let mut out = Vec::new();
    let mut add = |framework, control, title, question, answer, comment: String| {
        out.push(ControlAnswer {
            framework,
            control,
            title,
            question,
            answer,
            comment,
        })
    };

    // Who holds the master key.
    let (custody_answer, custody) = match f.seal_kind.as_deref() {
        Some("shamir") => (
            "Yes",
            format!(
                "the master key exists only as {} Shamir shares held by the customer's custodians, {} needed to unseal",
                f.shares, f.threshold
            ),
        ),
        Some("pkcs11") => ("Yes", "the master key is a non-extractable AES-256 key in the customer's HSM (PKCS#11)".to_string()),
        Some("dev") => ("No", "dev seal: the master key is stored in clear in the data directory".to_string()),
        _ => ("No", "the key service is not initialized".to_string()),
    };
    add(
        "ISO/IEC 27017",
        "10.1.2",
        "Key management",
        "Are the cryptographic keys that protect the customer's cloud data generated, held and controlled by the customer, outside the cloud service provider's control?",
        custody_answer,
        format!("{custody}; {} keys (KEKs) wrapped by it", live.len()),
    );
    add(
        "CSA CCM v4",
        "CEK-04",
        "Encryption Algorithm",
        "Are only approved algorithms and key sizes used?",
        "Yes",
        format!(
            "AES-256-GCM for key wrapping and data keys; FF1 with AES-256 for tokens; SHA-256 hash chain and Ed25519-signed checkpoints for the audit log; key types in use: {}",
            {
                let mut t: Vec<&str> = live.iter().map(|k| k.key_type.as_str()).collect();
                t.sort_unstable();
                t.dedup();
                if t.is_empty() { "none yet".to_string() } else { t.join(", ") }
            }
        ),
    );
    add(
        "CSA CCM v4",
        "CEK-08",
        "CSC Key Management Capability",
        "Can the customer create, rotate, disable and destroy its own keys?",
        if custody_answer == "Yes" { "Yes" } else { "No" },
        format!("kagi key create/rotate/disable/schedule-deletion on a service whose master key is customer-held: {custody}"),
    );
    add(
        "CSA CCM v4",
        "CEK-09",
        "Encryption and Key Management Audit",
        "Is every key use recorded in a tamper-evident log?",
        if chain.ok { "Yes" } else { "No" },
        if chain.ok {
            format!(
                "audit chain verified now: {} records up to sequence {}, {} signed checkpoints; key operations fail closed when the log cannot record",
                chain.records, chain.last_seq, chain.checkpoints
            )
        } else {
            format!(
                "audit chain does NOT verify at record {}: {}",
                chain.bad_seq.unwrap_or(0),
                chain.reason.clone().unwrap_or_default()
            )
        },
    );
    add(
        "CSA CCM v4",
        "CEK-10",
        "Key Generation",
        "Are keys generated inside the key service with a cryptographically secure generator?",
        "Yes",
        "every key version is 32 bytes from AWS-LC's DRBG (aws-lc-rs), generated in the service and stored only wrapped by the master key; FIPS mode depends on how kagi was built".into(),
    );
    let aes: Vec<&&KeyRecord> = live
        .iter()
        .filter(|k| k.key_type == KeyType::Aes256Gcm || k.key_type == KeyType::Fpe)
        .collect();
    let no_period: Vec<&str> = aes
        .iter()
        .filter(|k| k.state == KeyState::Enabled && k.rotation_period_secs.is_none())
        .map(|k| k.name.as_str())
        .collect();
    let overdue: Vec<String> = aes
        .iter()
        .filter(|k| {
            k.state == KeyState::Enabled
                && k.rotation_period_secs
                    .is_some_and(|p| now - k.current_version_created() > p as i64)
        })
        .map(|k| {
            format!(
                "{} (version {} is {} days old)",
                k.name,
                k.current_version(),
                days(now - k.current_version_created())
            )
        })
        .collect();
    let (rot_answer, rot_comment) = if aes.is_empty() {
        ("N/A", "no keys yet".to_string())
    } else if no_period.is_empty() && overdue.is_empty() {
        (
            "Yes",
            format!(
                "all {} enabled keys have a rotation period and none is past it",
                aes.iter().filter(|k| k.state == KeyState::Enabled).count()
            ),
        )
    } else {
        let mut parts = Vec::new();
        if !no_period.is_empty() {
            parts.push(format!("no rotation period: {}", no_period.join(", ")));
        }
        if !overdue.is_empty() {
            parts.push(format!(
                "past their rotation period: {}",
                overdue.join(", ")
            ));
        }
        ("No", parts.join("; "))
    };
    add(
        "CSA CCM v4",
        "CEK-12",
        "Key Rotation",
        "Are keys rotated on a defined schedule?",
        rot_answer,
        rot_comment,
    );
    let disabled: Vec<&str> = live
        .iter()
        .filter(|k| k.state == KeyState::Disabled)
        .map(|k| k.name.as_str())
        .collect();
    add(
        "CSA CCM v4",
        "CEK-13",
        "Key Revocation",
        "Can a key be revoked at once, so that no further operation uses it?",
        "Yes",
        format!(
            "kagi key disable refuses every operation from the next request on (on every node); disabled now: {}",
            if disabled.is_empty() { "none".to_string() } else { disabled.join(", ") }
        ),
    );
    add(
        "CSA CCM v4",
        "CEK-14",
        "Key Destruction",
        "Is destroyed key material erased, with a record of when?",
        if destroyed.is_empty() { "N/A" } else { "Yes" },
        if destroyed.is_empty() {
            "no key has been destroyed yet (kagi key schedule-deletion erases every version's material after the waiting period)".to_string()
        } else {
            destroyed
                .iter()
                .map(|k| {
                    format!(
                        "{} destroyed at {}",
                        k.name,
                        k.destroyed_at.map_or("an unknown time".into(), ts)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    add(
        "CSA CCM v4",
        "CEK-21",
        "Key Inventory Management",
        "Does the key service keep an inventory of all keys and their status?",
        "Yes",
        format!(
            "{} keys: {}",
            f.keys.len(),
            f.keys
                .iter()
                .map(|k| format!(
                    "{} ({}, {}, v{})",
                    k.name,
                    k.key_type.as_str(),
                    k.state.as_str(),
                    k.current_version()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let third = Justification::ThirdPartyDataRequest;
    let refusing: Vec<&str> = f
        .policies
        .iter()
        .filter(|(_, p)| p.treats_justification(third).0)
        .map(|(n, _)| n.as_str())
        .collect();
    let notifying: Vec<&str> = f
        .policies
        .iter()
        .filter(|(_, p)| p.treats_justification(third).1)
        .map(|(n, _)| n.as_str())
        .collect();
    let (tp_answer, tp_comment) = match (
        refusing.is_empty(),
        notifying.is_empty() || !f.notify_configured,
    ) {
        (true, true) => (
            "No",
            format!(
                "no policy refuses uses justified THIRD_PARTY_DATA_REQUEST{}",
                if notifying.is_empty() {
                    ", and none notifies the customer of them".to_string()
                } else {
                    "; notify rules exist but no webhook is configured".to_string()
                }
            ),
        ),
        _ => (
            "Yes",
            format!(
                "refused by policies: {}; notified by policies: {}",
                if refusing.is_empty() {
                    "none".into()
                } else {
                    refusing.join(", ")
                },
                if notifying.is_empty() || !f.notify_configured {
                    "none".into()
                } else {
                    notifying.join(", ")
                }
            ),
        ),
    };
    add(
        "ISMAP",
        "10.1.1.9.PB",
        "Customer control of cryptographic keys",
        "Are uses of the customer's keys on a third party's request (e.g. a subpoena) refused or notified to the customer?",
        tp_answer,
        tp_comment,
    );
    out
}

#[utoipa::path(get, path = "/v1/compliance/report", tag = "audit", security(("token" = [])),
    responses((status = 200, body = ComplianceReport), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn report(
    State(svc): State<AppState>,
    Authed(c): Authed,
) -> ApiResult<ComplianceReport> {
    let facts = svc.compliance_facts(&c).await?;
    let chain = verify_chain(&svc).await?;
    let now = jiff::Timestamp::now();
    Ok(Json(ComplianceReport {
        generated_at: now.to_string(),
        node: facts.node.clone(),
        controls: answers(&facts, &chain, now.as_second()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kagi_keys::{KeyId, KeyUsage};

    fn key(name: &str, period: Option<u64>, created: i64) -> KeyRecord {
        let mut k = KeyRecord::new(
            KeyId([1; 16]),
            name,
            "",
            KeyType::Aes256Gcm,
            period,
            created,
        )
        .unwrap();
        k.usage = KeyUsage::EncryptDecrypt;
        k
    }

    fn facts(kind: &str, keys: Vec<KeyRecord>) -> ComplianceFacts {
        ComplianceFacts {
            node: "n".into(),
            seal_kind: Some(kind.into()),
            shares: 5,
            threshold: 3,
            keys,
            policies: vec![],
            notify_configured: false,
        }
    }

    fn chain(ok: bool) -> VerifyView {
        VerifyView {
            ok,
            records: 10,
            last_seq: 10,
            checkpoints: 1,
            checkpoint_key: None,
            bad_seq: (!ok).then_some(7),
            reason: (!ok).then(|| "hash mismatch".into()),
        }
    }

    fn get<'a>(a: &'a [ControlAnswer], control: &str) -> &'a ControlAnswer {
        a.iter().find(|c| c.control == control).unwrap()
    }

    #[test]
    fn a_key_past_its_rotation_period_is_named() {
        let now = 1_800_000_000;
        let ok = facts(
            "shamir",
            vec![key("fresh", Some(90 * 86_400), now - 86_400)],
        );
        let a = answers(&ok, &chain(true), now);
        assert_eq!(get(&a, "CEK-12").answer, "Yes");
        assert_eq!(get(&a, "10.1.2").answer, "Yes");
        assert!(get(&a, "10.1.2").comment.contains("5 Shamir shares"));
        let stale = facts(
            "pkcs11",
            vec![
                key("fresh", Some(90 * 86_400), now - 86_400),
                key("stale", Some(90 * 86_400), now - 200 * 86_400),
            ],
        );
        let a = answers(&stale, &chain(true), now);
        let r = get(&a, "CEK-12");
        assert_eq!(r.answer, "No");
        assert!(
            r.comment.contains("stale (version 1 is 200 days old)") && !r.comment.contains("fresh"),
            "{}",
            r.comment
        );
        assert!(get(&a, "10.1.2").comment.contains("HSM"));
    }

    #[test]
    fn a_broken_chain_is_never_yes() {
        let a = answers(&facts("dev", vec![]), &chain(false), 0);
        assert_eq!(get(&a, "CEK-09").answer, "No");
        assert!(get(&a, "CEK-09").comment.contains("record 7"));
        assert_eq!(get(&a, "10.1.2").answer, "No");
        assert_eq!(get(&a, "CEK-12").answer, "N/A");
    }
}
