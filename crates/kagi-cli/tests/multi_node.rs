//! Several `kagi server` nodes on one PostgreSQL database: any node serves any request, the
//! kill switch holds on every node within a second, and nodes killed with SIGKILL under load
//! lose nothing that was acknowledged.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_client::{Client, ClientConfig};
use serde_json::{json, Value};
use support::{assert_one_line_error, Backend, Server};

fn node(b: &Backend, dir: &std::path::Path, name: &str) -> Server {
    Server::on(b, dir, &["--node", name])
}

fn client(addr: &str, token: &str) -> Client {
    Client::new(ClientConfig {
        addr: addr.into(),
        token: Some(token.into()),
        max_retries: Some(0),
        timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn two_nodes_share_keys_and_the_kill_switch() {
    let Some(b) = Backend::postgres("two_nodes_share_keys_and_the_kill_switch") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&b, dir.path(), "a");
    let n2 = node(&b, dir.path(), "b");
    assert_eq!(a.token, n2.token, "one deployment, one root token");
    a.ok(&["key", "create", "k1"]);
    let g = a.json(&["datakey", "generate", "k1", "--context", "tenant=acme"]);
    let ct = g["ciphertext"].as_str().unwrap();
    let d = n2.json(&["datakey", "decrypt", ct, "--context", "tenant=acme"]);
    assert_eq!(d["plaintext"], g["plaintext"]);

    // A warms its cache, B pulls the kill switch, A refuses within a second.
    a.ok(&["datakey", "generate", "k1"]);
    n2.ok(&["key", "disable", "k1"]);
    let start = Instant::now();
    loop {
        let o = a.kagi(&["datakey", "generate", "k1"]);
        if !o.status.success() {
            assert_one_line_error(&o, "disabled");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "node a still generates under a key disabled on node b after {:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n2.ok(&["key", "enable", "k1"]);
    let start = Instant::now();
    while !a.kagi(&["datakey", "generate", "k1"]).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "enable did not reach node a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Rotation on one node is used by the other; blobs of every version decrypt anywhere.
    n2.ok(&["key", "rotate", "k1"]);
    let g2 = a.json(&["datakey", "generate", "k1"]);
    assert_eq!(g2["key_version"], 2);
    assert_eq!(
        n2.json(&["datakey", "decrypt", g2["ciphertext"].as_str().unwrap()])["key_version"],
        2
    );
    // Policies and token revocation written on one node bind the other.
    let pol = dir.path().join("p.toml");
    let write = |ops: &str| {
        std::fs::write(
            &pol,
            format!("[[rule]]\neffect = \"allow\"\nkeys = [\"k1\"]\noperations = [{ops}]\n"),
        )
        .unwrap();
        n2.ok(&["policy", "write", "app", pol.to_str().unwrap()]);
    };
    write("\"describe\"");
    let t = n2.json(&["token", "create", "--policy", "app", "--ttl", "1h"]);
    let tok = t["token"].as_str().unwrap();
    assert_one_line_error(&a.kagi_as(tok, &["datakey", "generate", "k1"]), "denied");
    write("\"describe\", \"generate\"");
    let start = Instant::now();
    while !a
        .kagi_as(tok, &["datakey", "generate", "k1"])
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "policy did not reach node a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    n2.ok(&["token", "revoke", tok]);
    let start = Instant::now();
    while a
        .kagi_as(tok, &["datakey", "generate", "k1"])
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revocation did not reach node a"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cloud credentials made on one node (kept wrapped in the shared store) are accepted by
    // the other without a restart: an XKS store, its rotation, and KMS API credentials.
    let store = n2.json(&["xks", "add-store", "shared"]);
    let sigv4 = |node: &Server, service: &str, user: String, path: &str, target: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--aws-sigv4",
        ])
        .arg(format!("aws:amz:us-east-1:{service}"))
        .arg("--user")
        .arg(user)
        .args(["-H", "Content-Type: application/json"]);
        if let Some(t) = target {
            c.args(["-H", &format!("X-Amz-Target: {t}")]);
        }
        c.args([
            "-d",
            r#"{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"m"}}"#,
        ])
        .arg(format!("{}{path}", node.addr));
        String::from_utf8(c.output().unwrap().stdout).unwrap()
    };
    let user = |v: &serde_json::Value| {
        format!(
            "{}:{}",
            v["access_key_id"].as_str().unwrap(),
            v["secret_access_key"].as_str().unwrap()
        )
    };
    let xks_ok = |cred: &serde_json::Value| {
        sigv4(
            &a,
            "kms-xks-proxy",
            user(cred),
            "/shared/kms/xks/v1/health",
            None,
        ) == "200"
    };
    assert!(
        support::wait_until(Duration::from_secs(10), || xks_ok(&store)),
        "an XKS store made on node b is not accepted by node a"
    );
    let rotated = n2.json(&["xks", "rotate-credential", "shared"]);
    assert!(support::wait_until(Duration::from_secs(10), || xks_ok(
        &rotated
    )));
    assert!(
        xks_ok(&store),
        "the previous credential stops working at the first rotation"
    );
    let aws = n2.json(&["aws", "create-credentials", "--policy", "app"]);
    assert!(support::wait_until(Duration::from_secs(10), || sigv4(
        &a,
        "kms",
        user(&aws),
        "/",
        Some("TrentService.ListKeys")
    ) == "200"));

    // One audit chain, written by both nodes, verifies from either.
    for n in [&a, &n2] {
        assert!(n.ok(&["audit", "verify"]).contains("verified"));
    }
    let tail = a.json(&["audit", "tail", "-n", "200"]);
    let nodes: std::collections::BTreeSet<&str> = tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(nodes, ["a", "b"].into_iter().collect());
}

/// Successful generate calls: (ciphertext, plaintext).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

async fn load(c: Client, acked: Acked, stop: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        if n.is_multiple_of(10) {
            let _ = c
                .post::<Value, _>("/v1/keys/crash/rotate", &json!({}))
                .await;
            continue;
        }
        match c
            .post::<Value, _>("/v1/datakey/generate", &json!({"key": "crash"}))
            .await
        {
            Ok(v) => acked.lock().unwrap().push((
                v["ciphertext"].as_str().unwrap().to_string(),
                v["plaintext"].as_str().unwrap().to_string(),
            )),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    n
}

#[test]
fn nodes_killed_under_load_lose_nothing_acknowledged() {
    let Some(b) = Backend::postgres("nodes_killed_under_load_lose_nothing_acknowledged") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&b, dir.path(), "a");
    let mut victim = node(&b, dir.path(), "b");
    a.ok(&["key", "create", "crash"]);
    let token = a.token.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_a = rt.spawn(load(client(&a.addr, &token), acked.clone(), stop.clone()));
    let mut kills = 0;
    let mut seed = u64::from_le_bytes(kagi_crypto::random_array());
    while kills < 10 {
        let on_b = rt.spawn(load(
            client(&victim.addr, &token),
            acked.clone(),
            stop.clone(),
        ));
        // A random moment between 100 and 700 ms into the load.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(100 + (seed >> 33) % 600));
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        kills += 1;
        on_b.abort();
        victim = node(&b, dir.path(), "b");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ops_a = rt.block_on(on_a).unwrap();
    assert!(ops_a > 10, "node a served only {ops_a} requests");

    // Every acknowledged data key decrypts, on either node, to what was handed out.
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} data keys acknowledged",
        acked.len()
    );
    for (i, (ct, pt)) in acked.iter().enumerate() {
        let n = if i % 2 == 0 { &a } else { &victim };
        let got: Value = rt
            .block_on(
                client(&n.addr, &token).post("/v1/datakey/decrypt", &json!({"ciphertext": ct})),
            )
            .unwrap();
        assert_eq!(got["plaintext"].as_str().unwrap(), pt, "data key {i}");
    }
    // Versions: 1..=current, each exactly once, record and material agreeing.
    let show = a.json(&["key", "show", "crash"]);
    let current = show["current_version"].as_u64().unwrap();
    assert!(current > 1, "no rotation happened");
    let versions = b.query(
        dir.path(),
        "kagi",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.name = 'crash'",
    );
    let want: Vec<String> = (1..=current).map(|v| v.to_string()).collect();
    assert_eq!(versions, want.join(","));
    for n in [&a, &victim] {
        assert!(n.ok(&["audit", "verify"]).contains("verified"));
    }
}

/// The console on one node shows uses served by another (it follows the shared audit chain)
/// and verifies that chain, records from both nodes.
#[test]
fn console_on_one_node_follows_uses_on_another() {
    let Some(b) = Backend::postgres("console_on_one_node_follows_uses_on_another") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&b, dir.path(), "a");
    let n2 = node(&b, dir.path(), "b");
    a.ok(&["key", "create", "k1"]);
    let jar = dir.path().join("jar");
    support::console_sign_in(&a, &jar, &a.token);
    let (st, _) = support::curl_jar(&jar, &[&format!("{}/ui/keys/k1", a.addr)]);
    assert_eq!(st, 200);
    n2.ok(&[
        "datakey",
        "generate",
        "k1",
        "--justification",
        "THIRD_PARTY_DATA_REQUEST",
    ]);
    let seen = support::wait_until(Duration::from_secs(10), || {
        let (_, page) = support::curl_jar(&jar, &[&format!("{}/ui/keys/k1/activity", a.addr)]);
        page.contains("THIRD_PARTY_DATA_REQUEST")
    });
    assert!(seen, "node a's console never showed node b's use");
    let head = a.json(&["audit", "tail", "-n", "1"])["records"][0]["seq"]
        .as_u64()
        .unwrap();
    let verified = support::wait_until(Duration::from_secs(10), || {
        let (_, page) = support::curl_jar(&jar, &[&format!("{}/ui/audit", a.addr)]);
        page.split("id=\"verified-seq\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= head)
    });
    assert!(
        verified,
        "node a's console did not verify the shared chain to {head}"
    );
}
