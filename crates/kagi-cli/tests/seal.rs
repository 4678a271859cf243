//! A production-configured server refuses key operations until unsealed with M of N shares.
#![allow(clippy::unwrap_used)]

mod support;

use support::{assert_one_line_error, free_port, Server};

#[test]
fn shamir_init_unseal_seal() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("kagi.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"sqlite\"\npath = \"{}/kagi.db\"\n[seal]\ntype = \"shamir\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut s = Server::config(&cfg, &format!("http://127.0.0.1:{port}"), dir.path());
    let st = s.json(&["status"]);
    assert_eq!(st["initialized"], false);
    let init = s.json(&["operator", "init", "--shares", "5", "--threshold", "3"]);
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);
    s.token = init["root_token"].as_str().unwrap().to_string();
    assert_one_line_error(
        &s.kagi(&["operator", "init", "--shares", "1", "--threshold", "1"]),
        "already initialized",
    );

    // Sealed: every key operation is refused.
    assert_one_line_error(&s.kagi(&["key", "create", "k1"]), "sealed");
    // Two shares are not enough.
    assert_eq!(s.json(&["operator", "unseal", &shares[0]])["progress"], 1);
    assert_eq!(s.json(&["operator", "unseal", &shares[3]])["sealed"], true);
    assert_one_line_error(&s.kagi(&["key", "create", "k1"]), "sealed");
    let st = s.json(&["operator", "unseal", &shares[4]]);
    assert_eq!(st["sealed"], false);
    s.ok(&["key", "create", "k1"]);
    let ct = s.json(&["datakey", "generate", "k1"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    s.ok(&["operator", "seal"]);
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &ct]), "sealed");
    // A wrong share combination is refused and resets progress.
    s.ok(&["operator", "unseal", &shares[1]]);
    s.ok(&["operator", "unseal", &shares[2]]);
    let mut fake = shares[0].clone();
    fake.replace_range(
        4..8,
        if &fake[4..8] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    assert_one_line_error(
        &s.kagi(&["operator", "unseal", &fake]),
        "do not reconstruct",
    );
    assert_eq!(s.json(&["status"])["progress"], 0);
    for sh in &shares[1..4] {
        s.ok(&["operator", "unseal", sh]);
    }
    assert_eq!(s.json(&["datakey", "decrypt", &ct])["key"], "k1");

    // After a restart the service is sealed again and the same shares open it.
    drop(s);
    let mut s = Server::config(&cfg, &format!("http://127.0.0.1:{port}"), dir.path());
    s.token = init["root_token"].as_str().unwrap().to_string();
    assert_eq!(s.json(&["status"])["sealed"], true);
    assert_one_line_error(&s.kagi(&["datakey", "decrypt", &ct]), "sealed");
    for sh in &shares[2..5] {
        s.ok(&["operator", "unseal", sh]);
    }
    assert_eq!(s.json(&["datakey", "decrypt", &ct])["key"], "k1");
    // --pending-days 0 is refused without allow_immediate_deletion.
    assert_one_line_error(
        &s.kagi(&["key", "schedule-deletion", "k1", "--pending-days", "0"]),
        "allow_immediate_deletion",
    );
    assert!(s.ok(&["audit", "verify"]).contains("verified"));
}
