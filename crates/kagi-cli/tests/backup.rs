//! Backup, drop the database, restore: every blob issued before the backup decrypts, keys
//! destroyed before it stay destroyed, and a tampered backup restores nothing.
#![allow(clippy::unwrap_used)]

mod support;

use support::{assert_one_line_error, free_port, psql, Backend, Server};

fn config(dir: &std::path::Path, port: u16, url: &str) -> std::path::PathBuf {
    let cfg = dir.join("kagi.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nallow_immediate_deletion = true\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n[seal]\ntype = \"shamir\"\n"
        ),
    )
    .unwrap();
    cfg
}

fn recreate(b: &Backend) {
    let Backend::Postgres { name, .. } = b else {
        unreachable!()
    };
    let admin = support::pg_admin_url();
    psql(&admin, &format!("DROP DATABASE {name} WITH (FORCE)")).unwrap();
    psql(&admin, &format!("CREATE DATABASE {name}")).unwrap();
}

/// Generates a data key under `key` and keeps (ciphertext, plaintext, context).
fn gen(s: &Server, blobs: &mut Vec<(String, String, String)>, key: &str, ctx: &str) {
    let g = s.json(&["datakey", "generate", key, "--context", ctx]);
    blobs.push((
        g["ciphertext"].as_str().unwrap().to_string(),
        g["plaintext"].as_str().unwrap().to_string(),
        ctx.to_string(),
    ));
}

#[test]
fn backup_drop_the_database_restore() {
    let test = "backup_drop_the_database_restore";
    let Some(b) = Backend::postgres(test) else {
        return;
    };
    let Backend::Postgres { url, .. } = &b else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let cfg = config(d, port, url);
    let file = d.join("kagi.backup");

    let mut s = Server::config(&cfg, &addr, d);
    let init = s.json(&["operator", "init", "--shares", "3", "--threshold", "2"]);
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    s.token = init["root_token"].as_str().unwrap().to_string();
    let token = s.token.clone();
    s.ok(&["operator", "unseal", &shares[0]]);
    s.ok(&["operator", "unseal", &shares[2]]);
    for k in ["k1", "k2", "gone"] {
        s.ok(&["key", "create", k]);
    }
    let mut blobs = Vec::new();
    gen(&s, &mut blobs, "k1", "t=1");
    gen(&s, &mut blobs, "k2", "t=2");
    let gone_ct = s.json(&["datakey", "generate", "gone"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["key", "rotate", "k1"]);
    gen(&s, &mut blobs, "k1", "t=3");
    s.ok(&["key", "schedule-deletion", "gone", "--pending-days", "0"]);
    let out = s.json(&["operator", "backup", file.to_str().unwrap()]);
    assert_eq!(out["keys"], 3);
    assert_one_line_error(
        &s.kagi(&["operator", "backup", file.to_str().unwrap()]),
        "--force",
    );
    // Made after the backup: not in it.
    s.ok(&["key", "create", "later"]);
    drop(s);

    recreate(&b);
    let mut s = Server::config(&cfg, &addr, d);
    assert_eq!(s.json(&["status"])["initialized"], false);
    let st = s.json(&["operator", "restore", file.to_str().unwrap()]);
    assert_eq!(
        (st["initialized"].clone(), st["sealed"].clone()),
        (true.into(), true.into())
    );
    s.token = token.clone();
    s.ok(&["operator", "unseal", &shares[1]]);
    assert_eq!(s.json(&["operator", "unseal", &shares[0]])["sealed"], false);
    for (ct, pt, ctx) in &blobs {
        let got = s.json(&["datakey", "decrypt", ct, "--context", ctx]);
        assert_eq!(got["plaintext"].as_str().unwrap(), pt);
    }
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &gone_ct]), "destroyed");
    assert_eq!(s.json(&["key", "show", "k1"])["current_version"], 2);
    assert_one_line_error(&s.kagi(&["key", "show", "later"]), "does not exist");
    assert!(s.ok(&["audit", "verify"]).contains("verified"));
    // A restored store is not empty: a second restore is refused.
    assert_one_line_error(
        &s.kagi(&["operator", "restore", file.to_str().unwrap()]),
        "initialized",
    );
    drop(s);

    // One changed byte in the backup: the shares unseal nothing and nothing is written.
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered = text.replacen("\"k2\"", "\"k9\"", 1);
    assert_ne!(text, tampered);
    let bad = d.join("tampered.backup");
    std::fs::write(&bad, tampered).unwrap();
    recreate(&b);
    let mut s = Server::config(&cfg, &addr, d);
    s.token = token;
    s.ok(&["operator", "restore", bad.to_str().unwrap()]);
    s.ok(&["operator", "unseal", &shares[0]]);
    assert_one_line_error(
        &s.kagi(&["operator", "unseal", &shares[1]]),
        "does not verify",
    );
    assert_eq!(s.json(&["status"])["initialized"], false);
    assert_eq!(b.query(d, "kagi", "SELECT count(*) FROM keys"), "0");
    assert_one_line_error(
        &s.kagi(&["operator", "restore", "/nonexistent"]),
        "cannot read",
    );
}
