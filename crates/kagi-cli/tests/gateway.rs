//! The perimeter gateway on loopback: mutual TLS, per-identity policy, egress only to the
//! service's policy address, policy changes applied within seconds — new tunnels refused and
//! live ones closed.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, kagi_bin, Proc, Server};

fn policy(kms: &str, allow_alice: bool) -> String {
    let rule = if allow_alice {
        "[[rule]]\nname = \"alice-kms\"\neffect = \"allow\"\nfrom = [\"alice\"]\nto = [\"kms\"]\n"
    } else {
        ""
    };
    format!(
        "[[identity]]\nname = \"alice\"\nkind = \"user\"\n[[service]]\nname = \"kms\"\naddress = \"{kms}\"\n{rule}"
    )
}

/// `kagi connect` as `who` for `service`; returns it and its local address.
fn connect(d: &Path, gw: &str, who: &str, service: &str) -> (Proc, String, std::path::PathBuf) {
    let err = d.join(format!("connect-{who}-{service}.log"));
    let (c, addr) = support::start_connect(
        Command::new(kagi_bin())
            .args(["connect", service, "--gateway", gw])
            .args(["--cert", d.join(format!("{who}.pem")).to_str().unwrap()])
            .args(["--key", d.join(format!("{who}.key")).to_str().unwrap()])
            .args(["--gateway-ca", d.join("ca.pem").to_str().unwrap()])
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    (c, addr, err)
}

#[test]
fn gateway_enforces_identity_policy_egress_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::perimeter_certs(d, "127.0.0.1", &["alice", "eve"]);
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let kms = s.addr.trim_start_matches("http://").to_string();
    std::fs::write(d.join("perimeter.toml"), policy(&kms, true)).unwrap();
    let gw = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "listen = \"{gw}\"\ncert = \"{p}/gw.pem\"\nkey = \"{p}/gw.key\"\nclient_ca = \"{p}/ca.pem\"\npolicy = \"{p}/perimeter.toml\"\naudit = \"{p}/gateway-audit.db\"\nnode = \"gw1\"\n",
            p = d.display()
        ),
    )
    .unwrap();
    let log = d.join("gateway.log");
    let _gateway = Proc(
        Command::new(kagi_bin())
            .args([
                "gateway",
                "--config",
                d.join("gateway.toml").to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let via = |addr: &str| {
        Command::new(kagi_bin())
            .args(["datakey", "generate", "k1"])
            .env("KAGI_ADDR", format!("http://{addr}"))
            .env("KAGI_TOKEN", &s.token)
            .output()
            .unwrap()
    };

    // Alice reaches the key service through the tunnel.
    let (_alice, alice_addr, _) = connect(d, &gw, "alice", "kms");
    let o = via(&alice_addr);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Eve has a valid certificate but no identity in the policy; nothing else is reachable.
    let (_eve, eve_addr, eve_err) = connect(d, &gw, "eve", "kms");
    assert!(!via(&eve_addr).status.success());
    let (_ssh, ssh_addr, ssh_err) = connect(d, &gw, "alice", "ssh");
    assert!(!via(&ssh_addr).status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::read_to_string(&eve_err)
        .unwrap()
        .contains("eve is not an enrolled identity"));
    assert!(std::fs::read_to_string(&ssh_err)
        .unwrap()
        .contains("there is no service ssh"));

    // A live tunnel, then the policy drops Alice: new tunnels are refused within 2 s and the
    // live one is closed within 5 s.
    let mut live = std::net::TcpStream::connect(&alice_addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(d.join("perimeter.toml"), policy(&kms, false)).unwrap();
    let changed = Instant::now();
    while via(&alice_addr).status.success() {
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "policy change not applied in 2 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut buf = [0u8; 16];
    let n = live.read(&mut buf);
    assert!(
        matches!(n, Ok(0)) || n.is_err() && changed.elapsed() < Duration::from_secs(6),
        "live tunnel not closed: {n:?}"
    );
    assert!(
        changed.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        changed.elapsed()
    );
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.contains("verdict=\"closed\"") || l.contains("verdict=closed"),
        "{l}"
    );
    assert!(l.contains("rule=Some(\"rule:alice-kms\")"), "{l}");

    // Every decision is on the gateway's own audit chain, in the key service's format.
    let o = Command::new(kagi_bin())
        .args([
            "audit",
            "verify",
            "--db",
            d.join("gateway-audit.db").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("verified"),
        "{o:?}"
    );
    let db = rusqlite::Connection::open(d.join("gateway-audit.db")).unwrap();
    let records: Vec<serde_json::Value> = db
        .prepare("SELECT record FROM audit_records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect();
    let find = |op: &str, who: &str, outcome: &str| {
        records.iter().any(|r| {
            r["operation"] == op
                && r["principal"] == format!("cert:{who}")
                && r["outcome"] == outcome
        })
    };
    assert!(find("perimeter.connect", "alice", "success"));
    assert!(find("perimeter.connect", "eve", "denied"));
    assert!(find("perimeter.revoke", "alice", "denied"));
    assert!(records.iter().any(|r| r["operation"] == "perimeter.connect"
        && r["context"]["rule"] == "rule:alice-kms"
        && r["node"] == "gw1"));
    assert!(records
        .iter()
        .any(|r| r["operation"] == "perimeter.close" && r["context"]["bytes_up"].is_string()));
}
