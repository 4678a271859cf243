//! Acceptance tests of the key service through the real binary and CLI.
#![allow(clippy::unwrap_used)]

mod support;

use support::{assert_one_line_error, sql_str, Backend, Server};

fn dev_server_generate_and_decrypt_with_context(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    assert!(s.addr.starts_with("http://127.0.0.1:"));
    s.ok(&["key", "create", "k1"]);
    let g = s.json(&["datakey", "generate", "k1", "--context", "tenant=acme"]);
    assert_eq!(g["key"], "k1");
    assert_eq!(g["key_version"], 1);
    let ct = g["ciphertext"].as_str().unwrap();
    let pt = g["plaintext"].as_str().unwrap();
    let d = s.json(&["datakey", "decrypt", ct, "--context", "tenant=acme"]);
    assert_eq!(d["plaintext"].as_str().unwrap(), pt);

    let wrong = s.kagi(&["datakey", "decrypt", ct, "--context", "tenant=other"]);
    assert_one_line_error(&wrong, "encryption context");
    let missing = s.kagi(&["datakey", "decrypt", ct]);
    assert_one_line_error(&missing, "encryption context");

    // Wrapped-only generation returns no plaintext.
    let w = s.json(&["datakey", "generate", "k1", "--no-plaintext"]);
    assert!(w.get("plaintext").is_none());
    assert!(w["ciphertext"].is_string());
}

fn rotation_kill_switch_deletion_and_restart(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (old_ct, new_ct, other_ct);
    {
        let s = Server::on(&b, dir.path(), &[]);
        s.ok(&["key", "create", "k1"]);
        s.ok(&["key", "create", "k2"]);
        old_ct = s.json(&["datakey", "generate", "k1"])["ciphertext"]
            .as_str()
            .unwrap()
            .to_string();
        let r = s.json(&["key", "rotate", "k1"]);
        assert_eq!(r["current_version"], 2);
        let g = s.json(&["datakey", "generate", "k1"]);
        assert_eq!(g["key_version"], 2);
        new_ct = g["ciphertext"].as_str().unwrap().to_string();
        assert_eq!(s.json(&["datakey", "decrypt", &old_ct])["key_version"], 1);
        assert_eq!(s.json(&["datakey", "decrypt", &new_ct])["key_version"], 2);

        // Re-encrypt to the newest version without seeing the plaintext.
        let re = s.json(&[
            "datakey",
            "reencrypt",
            &old_ct,
            "--to",
            "k2",
            "--to-context",
            "t=x",
        ]);
        assert_eq!(re["key"], "k2");
        assert!(re.get("plaintext").is_none());
        other_ct = re["ciphertext"].as_str().unwrap().to_string();
        assert_eq!(
            s.json(&["datakey", "decrypt", &other_ct, "--context", "t=x"])["plaintext"],
            s.json(&["datakey", "decrypt", &old_ct])["plaintext"]
        );

        s.ok(&["key", "disable", "k1"]);
        assert_one_line_error(&s.kagi(&["datakey", "decrypt", &old_ct]), "disabled");
        assert_one_line_error(&s.kagi(&["datakey", "generate", "k1"]), "disabled");
        s.ok(&["key", "enable", "k1"]);
        s.ok(&["datakey", "decrypt", &old_ct]);
    }
    // Restart on the same data dir: every key and blob still works, with the same token.
    let s = Server::on(&b, dir.path(), &[]);
    assert_eq!(s.json(&["datakey", "decrypt", &old_ct])["key_version"], 1);
    assert_eq!(s.json(&["datakey", "decrypt", &new_ct])["key_version"], 2);
    assert_eq!(s.json(&["key", "show", "k1"])["current_version"], 2);

    let del = s.json(&["key", "schedule-deletion", "k1", "--pending-days", "0"]);
    assert_eq!(del["state"], "destroyed");
    assert!(del["destroyed_at"].is_string());
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &old_ct]), "destroyed");
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &new_ct]), "destroyed");
    drop(s);
    let s = Server::on(&b, dir.path(), &[]);
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &old_ct]), "destroyed");
    // The destruction is on the audit log, with its time.
    let tail = s.json(&["audit", "tail", "-n", "50"]);
    let destroy = tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["operation"] == "key.destroy")
        .unwrap();
    assert_eq!(destroy["key"], "k1");
    assert!(destroy["reason"].as_str().unwrap().contains("erased"));
    // Other keys are untouched.
    s.ok(&["datakey", "decrypt", &other_ct, "--context", "t=x"]);
    // The material is gone from the database.
    let n = b.query(
        dir.path(),
        "kagi",
        "SELECT count(*) FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'k1'",
    );
    assert_eq!(n, "0");
}

fn pending_window_and_cancel(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    let ct = s.json(&["datakey", "generate", "k1"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let p = s.json(&["key", "schedule-deletion", "k1"]);
    assert_eq!(p["state"], "pending_deletion");
    assert!(p["deletion_date"].is_string());
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &ct]), "pending_deletion");
    let c = s.json(&["key", "cancel-deletion", "k1"]);
    assert_eq!(c["state"], "disabled");
    s.ok(&["key", "enable", "k1"]);
    s.ok(&["datakey", "decrypt", &ct]);
    assert_one_line_error(
        &s.kagi(&["key", "schedule-deletion", "k1", "--pending-days", "400"]),
        "0-365",
    );
}

fn policies_restrict_tokens_and_denials_are_audited(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    s.ok(&["key", "create", "k2"]);
    let pol = dir.path().join("gen.toml");
    std::fs::write(
        &pol,
        "[[rule]]\neffect = \"allow\"\nkeys = [\"k1\"]\noperations = [\"generate\"]\n",
    )
    .unwrap();
    s.ok(&["policy", "write", "gen-only", pol.to_str().unwrap()]);
    let tok = s.json(&["token", "create", "--policy", "gen-only"])["token"]
        .as_str()
        .unwrap()
        .to_string();

    let g = s.kagi_as(&tok, &["datakey", "generate", "k1", "-o", "json"]);
    assert!(g.status.success());
    let ct = serde_json::from_slice::<serde_json::Value>(&g.stdout).unwrap()["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    assert_one_line_error(&s.kagi_as(&tok, &["datakey", "decrypt", &ct]), "denied");
    assert_one_line_error(&s.kagi_as(&tok, &["datakey", "generate", "k2"]), "denied");
    assert_one_line_error(&s.kagi_as(&tok, &["key", "create", "k3"]), "denied");
    assert_one_line_error(
        &s.kagi_as(&tok, &["token", "create", "--policy", "gen-only"]),
        "denied",
    );

    // Refuse the subpoena case whatever else allows it.
    let refuse = dir.path().join("refuse.toml");
    std::fs::write(
        &refuse,
        "[[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"*\"]\n\n[[rule]]\neffect = \"deny\"\nkeys = [\"*\"]\noperations = [\"*\"]\n[rule.when]\njustifications = [\"THIRD_PARTY_DATA_REQUEST\"]\n",
    )
    .unwrap();
    s.ok(&["policy", "write", "no-subpoena", refuse.to_str().unwrap()]);
    let app = s.json(&["token", "create", "--policy", "no-subpoena"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = s.kagi_as(
        &app,
        &[
            "datakey",
            "decrypt",
            &ct,
            "--justification",
            "CUSTOMER_INITIATED_ACCESS",
        ],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_one_line_error(
        &s.kagi_as(
            &app,
            &[
                "datakey",
                "decrypt",
                &ct,
                "--justification",
                "THIRD_PARTY_DATA_REQUEST",
            ],
        ),
        "denied",
    );
    assert_one_line_error(
        &s.kagi_as(
            &app,
            &["datakey", "decrypt", &ct, "--justification", "SUBPOENA"],
        ),
        "unknown justification",
    );

    // A bad policy is refused with its reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"fly\"]\n",
    )
    .unwrap();
    assert_one_line_error(
        &s.kagi(&["policy", "write", "bad", bad.to_str().unwrap()]),
        "fly",
    );

    // Both denials are on the audit log, with principal and justification.
    let tail = s.json(&["audit", "tail", "-n", "100"]);
    let recs = tail["records"].as_array().unwrap();
    let denied: Vec<_> = recs.iter().filter(|r| r["outcome"] == "denied").collect();
    assert!(denied
        .iter()
        .any(|r| r["operation"] == "decrypt" && r["key"] == "k1" && r["justification"].is_null()));
    assert!(denied.iter().any(|r| r["operation"] == "decrypt"
        && r["justification"] == "THIRD_PARTY_DATA_REQUEST"
        && r["reason"].as_str().unwrap().contains("no-subpoena")));

    // Revoked tokens stop working at once.
    s.ok(&["token", "revoke", &tok]);
    assert_one_line_error(
        &s.kagi_as(&tok, &["datakey", "generate", "k1"]),
        "not valid",
    );
    // No token at all: a clear line.
    assert_one_line_error(&s.kagi_as("", &["key", "list"]), "no credentials");
}

fn audit_verify_names_the_altered_record_in_store_and_file(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    for i in 0..5 {
        s.ok(&["datakey", "generate", "k1", "--context", &format!("n={i}")]);
    }
    assert!(s.ok(&["audit", "verify"]).contains("verified"));

    // Exported file: verifies, then fails on the edited record.
    let export = s.ok(&["audit", "export", "--format", "jsonl"]);
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, &export).unwrap();
    assert!(s
        .ok(&["audit", "verify", "--file", file.to_str().unwrap()])
        .contains("verified"));
    let mut lines: Vec<String> = export.lines().map(str::to_string).collect();
    assert!(lines.len() >= 7);
    lines[3] = lines[3].replace("\"n\":\"2\"", "\"n\":\"9\"");
    assert!(lines[3].contains("\"n\":\"9\""), "{}", lines[3]);
    std::fs::write(&file, lines.join("\n")).unwrap();
    assert_one_line_error(
        &s.kagi(&["audit", "verify", "--file", file.to_str().unwrap()]),
        "record 4",
    );
    // A removed line is named too.
    let mut removed: Vec<String> = export.lines().map(str::to_string).collect();
    removed.remove(2);
    std::fs::write(&file, removed.join("\n")).unwrap();
    assert_one_line_error(
        &s.kagi(&["audit", "verify", "--file", file.to_str().unwrap()]),
        "record 3",
    );

    // Syslog and CEF exports carry every record.
    let sys = s.ok(&["audit", "export", "--format", "syslog"]);
    assert!(sys.lines().all(|l| l.starts_with('<')));
    let cef = s.ok(&["audit", "export", "--format", "cef"]);
    assert!(cef.lines().all(|l| l.starts_with("CEF:0|kagi|kagi|")));

    // The store itself: alter record 5 behind the server's back.
    let rec = b.query(
        dir.path(),
        "audit",
        "SELECT record FROM audit_records WHERE seq = 5",
    );
    let altered = rec.replace("\"outcome\":\"success\"", "\"outcome\":\"denied\"");
    assert_ne!(rec, altered);
    let set5 = |r: &str| {
        b.execute(
            dir.path(),
            "audit",
            &format!(
                "UPDATE audit_records SET record = {} WHERE seq = 5",
                sql_str(r)
            ),
        )
    };
    set5(&altered);
    assert_one_line_error(&s.kagi(&["audit", "verify"]), "record 5");
    set5(&rec);
    assert!(s.ok(&["audit", "verify"]).contains("verified"));
    // Deleting the newest record is noticed as well.
    let last = b.query(dir.path(), "audit", "SELECT max(seq) FROM audit_records");
    b.execute(
        dir.path(),
        "audit",
        &format!("DELETE FROM audit_records WHERE seq = {last}"),
    );
    assert_one_line_error(&s.kagi(&["audit", "verify"]), &format!("record {last}"));
}

fn malformed_input_gets_a_clear_4xx(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    let ct = s.json(&["datakey", "generate", "k1"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64.decode(&ct).unwrap();

    let mut cases: Vec<(String, &str)> = vec![
        ("not base64 at all!".into(), "base64"),
        (b64.encode(b"random bytes that are not a blob"), "malformed"),
        (b64.encode(&raw[..20]), "truncated"),
        (b64.encode(&raw[..raw.len() - 1]), "decryption failed"),
        (String::new(), "empty"),
    ];
    for i in [0usize, 5, 18, 25, 40, raw.len() - 1] {
        let mut f = raw.clone();
        f[i] ^= 0x01;
        let needle = match i {
            0 => "format",
            1..=16 => "does not have",
            17..=20 => "no version",
            _ => "decryption failed",
        };
        cases.push((b64.encode(&f), needle));
    }
    for (blob, needle) in &cases {
        let body = serde_json::json!({ "ciphertext": blob }).to_string();
        let (code, text) = s.curl(
            "POST",
            "/v1/datakey/decrypt",
            Some(body.as_bytes()),
            "application/json",
        );
        assert!((400..500).contains(&code), "{blob}: got {code} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{blob}: {text} should mention {needle}"
        );
    }
    for (body, ct_header, want) in [
        ("{not json", "application/json", 400),
        ("{\"ciphertext\": 5}", "application/json", 400),
        (
            "{\"ciphertext\": \"AA==\", \"extra\": 1}",
            "application/json",
            400,
        ),
        ("{\"ciphertext\": \"AA==\"}", "text/plain", 415),
    ] {
        let (code, text) = s.curl(
            "POST",
            "/v1/datakey/decrypt",
            Some(body.as_bytes()),
            ct_header,
        );
        assert_eq!(code, want, "{body}: {text}");
        assert!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"].is_string());
    }
    let big = vec![b'a'; 2 << 20];
    let (code, _) = s.curl(
        "POST",
        "/v1/datakey/decrypt",
        Some(&big),
        "application/json",
    );
    assert_eq!(code, 413);
    let (code, text) = s.curl("GET", "/v1/no/such/thing", None, "application/json");
    assert_eq!(code, 404, "{text}");
    let (code, _) = s.curl("DELETE", "/v1/datakey/decrypt", None, "application/json");
    assert_eq!(code, 405);
    // Over-long payload for the small-payload encrypt.
    let body =
        serde_json::json!({"key": "k1", "plaintext": b64.encode(vec![0u8; 5000])}).to_string();
    let (code, text) = s.curl(
        "POST",
        "/v1/encrypt",
        Some(body.as_bytes()),
        "application/json",
    );
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("4096"));
    // The server is still healthy after all of it.
    let (code, text) = s.curl("GET", "/v1/health", None, "application/json");
    assert_eq!(code, 200, "{text}");
}

fn small_payloads_and_batches(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    let body = serde_json::json!({"key": "k1", "plaintext": "aGVsbG8=", "context": {"a": "b"}})
        .to_string();
    let (code, text) = s.curl(
        "POST",
        "/v1/encrypt",
        Some(body.as_bytes()),
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    let ct = serde_json::from_str::<serde_json::Value>(&text).unwrap()["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let body = serde_json::json!({"ciphertext": ct, "context": {"a": "b"}}).to_string();
    let (code, text) = s.curl(
        "POST",
        "/v1/decrypt",
        Some(body.as_bytes()),
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["plaintext"],
        "aGVsbG8="
    );

    let body = serde_json::json!({"key": "k1", "count": 3}).to_string();
    let (code, text) = s.curl(
        "POST",
        "/v1/datakey/generate-batch",
        Some(body.as_bytes()),
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    let keys = serde_json::from_str::<serde_json::Value>(&text).unwrap()["data_keys"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(keys.len(), 3);
    let mut items: Vec<_> = keys
        .iter()
        .map(|k| serde_json::json!({"ciphertext": k["ciphertext"]}))
        .collect();
    items.push(serde_json::json!({"ciphertext": "AQ=="}));
    let body = serde_json::json!({ "items": items }).to_string();
    let (code, text) = s.curl(
        "POST",
        "/v1/datakey/decrypt-batch",
        Some(body.as_bytes()),
        "application/json",
    );
    assert_eq!(code, 200, "{text}");
    let res = serde_json::from_str::<serde_json::Value>(&text).unwrap()["results"]
        .as_array()
        .unwrap()
        .clone();
    for (r, k) in res.iter().zip(&keys) {
        assert_eq!(r["plaintext"], k["plaintext"]);
    }
    assert!(res[3]["error"].as_str().unwrap().contains("truncated"));
}

fn automatic_rotation_follows_the_period(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    let k = s.json(&["key", "create", "auto", "--rotation-period", "2s"]);
    assert_eq!(k["rotation_period"], "2s");
    assert!(k["next_rotation"].is_string());
    let ct = s.json(&["datakey", "generate", "auto"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    // Bounded wait for the maintenance task (every second on a dev server).
    let mut version = 1;
    for _ in 0..100 {
        version = s.json(&["key", "show", "auto"])["current_version"]
            .as_u64()
            .unwrap();
        if version >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(version >= 2, "the key was not rotated automatically");
    assert_eq!(s.json(&["datakey", "decrypt", &ct])["key_version"], 1);
    let rotated = s.json(&["audit", "tail", "-n", "50"]);
    assert!(rotated["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["operation"] == "key.rotate" && r["principal"] == "system"));
    assert_one_line_error(
        &s.kagi(&["key", "create", "bad", "--rotation-period", "soon"]),
        "invalid duration",
    );
}

/// Every test above, once on SQLite and once on its own PostgreSQL database.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Backend::Sqlite)
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if let Some(b) = super::Backend::postgres(concat!("postgres::", stringify!($name))) {
                    super::$name(b)
                }
            })*
        }
    };
}

on_both_backends!(
    dev_server_generate_and_decrypt_with_context,
    rotation_kill_switch_deletion_and_restart,
    pending_window_and_cancel,
    policies_restrict_tokens_and_denials_are_audited,
    audit_verify_names_the_altered_record_in_store_and_file,
    malformed_input_gets_a_clear_4xx,
    small_payloads_and_batches,
    automatic_rotation_follows_the_period,
);
