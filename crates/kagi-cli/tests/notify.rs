//! Customer notification: a policy's `notify` rules send signed webhooks for the uses they
//! match (a justification code, an XKS principal); a dead receiver blocks nothing and its
//! failed deliveries are on the audit log.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use support::{free_port, wait_until, Server};

const SECRET: &str = "notify-test-secret-0123456789";

/// One received webhook: lower-case headers and the body.
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hook {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// A minimal HTTP receiver that answers 200 to everything and hands each request over.
fn receiver() -> (String, mpsc::Receiver<Hook>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            let _ = tx.send(Hook { headers, body });
        }
    });
    (url, rx)
}

fn policy(srv: &Server, dir: &std::path::Path, name: &str, text: &str) {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(&f, text).unwrap();
    srv.ok(&["policy", "write", name, f.to_str().unwrap()]);
}

const APP_POLICY: &str = r#"
[[rule]]
effect = "allow"
keys = ["*"]
operations = ["*"]
[[rule]]
effect = "notify"
keys = ["*"]
operations = ["*"]
[rule.when]
justifications = ["THIRD_PARTY_DATA_REQUEST"]
"#;

/// Key `k1` and a token whose policy `app` allows everything and notifies
/// `THIRD_PARTY_DATA_REQUEST` uses.
fn app_token(srv: &Server, dir: &std::path::Path) -> String {
    srv.ok(&["key", "create", "k1"]);
    policy(srv, dir, "app", APP_POLICY);
    srv.json(&["token", "create", "--policy", "app"])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn audit_records(srv: &Server) -> Vec<serde_json::Value> {
    srv.ok(&["audit", "export", "--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn notify_rules_send_signed_webhooks() {
    let (url, hooks) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::dev_env(
        &dir.path().join("d"),
        &["--notify-url", &url],
        &[("KAGI_NOTIFY_SECRET", SECRET)],
    );
    let token = app_token(&srv, dir.path());
    let as_app = |args: &[&str]| {
        let o = srv.kagi_as(&token, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // A use no notify rule matches, then one the justification rule matches.
    as_app(&["datakey", "generate", "k1"]);
    as_app(&[
        "datakey",
        "generate",
        "k1",
        "--justification",
        "THIRD_PARTY_DATA_REQUEST",
    ]);
    let hook = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("no webhook arrived");
    let want = format!(
        "sha256={}",
        hex::encode(kagi_crypto::hmac_sha256(SECRET.as_bytes(), &hook.body))
    );
    assert_eq!(
        hook.header("x-kagi-signature"),
        want,
        "signature over the body"
    );
    assert_eq!(hook.header("content-type"), "application/json");
    let v: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(v["operation"], "generate");
    assert_eq!(v["key"], "k1");
    assert_eq!(v["justification"], "THIRD_PARTY_DATA_REQUEST");
    assert_eq!(v["outcome"], "success");
    assert_eq!(v["rules"][0], "policy app rule 2");
    assert_eq!(v["notification_id"], hook.header("x-kagi-notification"));
    assert!(v["principal"].as_str().unwrap().starts_with("token:"));
    // The signature fails for a body changed in one byte.
    let mut changed = hook.body.clone();
    changed[0] ^= 1;
    assert_ne!(
        format!(
            "sha256={}",
            hex::encode(kagi_crypto::hmac_sha256(SECRET.as_bytes(), &changed))
        ),
        want
    );
    assert!(
        hooks.recv_timeout(Duration::from_millis(500)).is_err(),
        "the use without the justification was notified too"
    );
    // The delivery is on the audit log.
    assert!(wait_until(Duration::from_secs(10), || audit_records(&srv)
        .iter()
        .any(|r| {
            r["operation"] == "notify.delivery"
                && r["outcome"] == "success"
                && r["reason"]
                    .as_str()
                    .unwrap()
                    .contains(v["notification_id"].as_str().unwrap())
        })));

    // An XKS principal marked notify: the XKS store's own policy carries the rule.
    policy(
        &srv,
        dir.path(),
        "xks-watch",
        r#"
[[rule]]
effect = "allow"
keys = ["k1"]
operations = ["encrypt", "decrypt", "describe"]
[[rule]]
effect = "notify"
keys = ["*"]
operations = ["*"]
[rule.when]
context = { "xks:awsPrincipalArn" = "arn:aws:iam::*:role/support-*" }
"#,
    );
    let store = srv.json(&["xks", "add-store", "watch", "--policy", "xks-watch"]);
    let xks = |principal: &str| {
        let body = format!(
            r#"{{"requestMetadata":{{"awsPrincipalArn":"{principal}","kmsOperation":"Encrypt","kmsRequestId":"n-1"}},"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}}"#
        );
        let o = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:kms-xks-proxy",
            ])
            .arg("--user")
            .arg(format!(
                "{}:{}",
                store["access_key_id"].as_str().unwrap(),
                store["secret_access_key"].as_str().unwrap()
            ))
            .args([
                "-H",
                "Content-Type: application/json",
                "-X",
                "POST",
                "-d",
                &body,
            ])
            .arg(format!("{}/watch/kms/xks/v1/keys/k1/encrypt", srv.addr))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
    };
    xks("arn:aws:iam::111122223333:role/app");
    xks("arn:aws:iam::111122223333:role/support-oncall");
    let hook = hooks
        .recv_timeout(Duration::from_secs(20))
        .expect("no XKS webhook arrived");
    let v: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(
        v["context"]["xks:awsPrincipalArn"],
        "arn:aws:iam::111122223333:role/support-oncall"
    );
    assert_eq!(v["request_id"], "n-1");
    assert_eq!(v["principal"], "xks:/watch");
    assert!(hooks.recv_timeout(Duration::from_millis(500)).is_err());
}

#[test]
fn a_dead_receiver_blocks_nothing_and_failures_are_audited() {
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::dev_env(
        &dir.path().join("d"),
        &[
            "--notify-url",
            &dead,
            "--notify-attempts",
            "3",
            "--notify-backoff",
            "100ms",
        ],
        &[("KAGI_NOTIFY_SECRET", SECRET)],
    );
    let token = app_token(&srv, dir.path());
    // Every key operation succeeds while nobody receives the notifications.
    for _ in 0..5 {
        let o = srv.kagi_as(
            &token,
            &[
                "datakey",
                "generate",
                "k1",
                "--justification",
                "THIRD_PARTY_DATA_REQUEST",
                "-o",
                "json",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dk: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let d = srv.kagi_as(
            &token,
            &[
                "datakey",
                "decrypt",
                dk["ciphertext"].as_str().unwrap(),
                "--justification",
                "THIRD_PARTY_DATA_REQUEST",
            ],
        );
        assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    }
    let failed = |srv: &Server| {
        audit_records(srv)
            .into_iter()
            .filter(|r| {
                r["operation"] == "notify.delivery"
                    && r["outcome"] == "error"
                    && r["reason"].as_str().unwrap().contains("after 3 attempts")
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || failed(&srv) == 10),
        "expected 10 failed deliveries on the audit log, found {}",
        failed(&srv)
    );
    srv.ok(&["audit", "verify"]);
}
