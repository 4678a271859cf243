//! The XKS proxy API: `tests/xks_conformance.sh` (curl --aws-sigv4 and jq) against a kagi
//! server speaking TLS with client certificates, as AWS KMS would reach it.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use rcgen::{CertificateParams, DnType, KeyPair};
use support::{free_port, have, skip, Server};

/// KMS's client certificate subject in the region the test pretends to be.
const KMS_SUBJECT: &str = "cks.kms.us-east-1.amazonaws.com";

fn write_certs(d: &Path) {
    let issuer = support::test_ca(d, "srv", &["localhost", "127.0.0.1"]);
    let mut files = Vec::new();
    for (name, cn, expired, self_signed) in [
        ("kms", KMS_SUBJECT, false, false),
        ("expired", KMS_SUBJECT, true, false),
        ("self", KMS_SUBJECT, false, true),
        ("other", "someone-else.example", false, false),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = if self_signed {
            p.self_signed(&key).unwrap()
        } else {
            p.signed_by(&key, &issuer).unwrap()
        };
        files.push((format!("{name}.pem"), cert.pem()));
        files.push((format!("{name}.key"), key.serialize_pem()));
    }
    for (n, t) in files {
        std::fs::write(d.join(n), t).unwrap();
    }
}

#[test]
fn xks_conformance_over_mutual_tls() {
    for tool in ["curl", "jq", "sha256sum"] {
        if !have(tool) {
            skip(
                "xks_conformance_over_mutual_tls",
                &format!("{tool} is not installed (scripts/test installs it)"),
            );
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_certs(d);
    let port = free_port();
    let cfg = d.join("kagi.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"sqlite\"\npath = \"{p}/kagi.db\"\n[seal]\ntype = \"shamir\"\n[tls]\ncert = \"{p}/srv.pem\"\nkey = \"{p}/srv.key\"\nclient_ca = \"{p}/ca.pem\"\n",
            p = d.display()
        ),
    )
    .unwrap();
    let addr = format!("https://127.0.0.1:{port}");
    let ca = d.join("ca.pem");
    let child = Command::new(support::kagi_bin())
        .args(["server", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut srv = Server {
        child,
        addr: addr.clone(),
        token: String::new(),
        data_dir: d.to_path_buf(),
    };
    let kagi = |token: &str, args: &[&str]| {
        Command::new(support::kagi_bin())
            .args(args)
            .env("KAGI_ADDR", &addr)
            .env("KAGI_TOKEN", token)
            .env("KAGI_CACERT", &ca)
            .output()
            .unwrap()
    };
    assert!(
        support::wait_until(std::time::Duration::from_secs(20), || kagi("", &["status"])
            .status
            .success()),
        "TLS server did not come up"
    );
    let init: serde_json::Value = serde_json::from_slice(
        &kagi(
            "",
            &[
                "operator",
                "init",
                "--shares",
                "1",
                "--threshold",
                "1",
                "-o",
                "json",
            ],
        )
        .stdout,
    )
    .unwrap();
    srv.token = init["root_token"].as_str().unwrap().to_string();
    assert!(kagi(
        "",
        &["operator", "unseal", init["shares"][0].as_str().unwrap()]
    )
    .status
    .success());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/xks_conformance.sh");
    let p = |n: &str| d.join(n).display().to_string();
    let out = Command::new("bash")
        .arg(&script)
        .env("KAGI", support::kagi_bin())
        .env("KAGI_ADDR", &addr)
        .env("KAGI_TOKEN", &srv.token)
        .env("KAGI_CACERT", &ca)
        .env("XKS_SUBJECT", KMS_SUBJECT)
        .env("XKS_CERT", p("kms.pem"))
        .env("XKS_KEY", p("kms.key"))
        .env("XKS_EXPIRED_CERT", p("expired.pem"))
        .env("XKS_EXPIRED_KEY", p("expired.key"))
        .env("XKS_SELF_CERT", p("self.pem"))
        .env("XKS_SELF_KEY", p("self.key"))
        .env("XKS_OTHER_CERT", p("other.pem"))
        .env("XKS_OTHER_KEY", p("other.key"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "XKS conformance failed:\n{stdout}");
    let summary = stdout.lines().last().unwrap();
    let passed: usize = summary
        .strip_prefix("conformance: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Every check in the script ran (a check that silently stopped running would lower it).
    assert!(passed >= 55, "only {passed} checks ran:\n{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");

    // With Shamir shares the compliance report says the customer holds the master key.
    let r: serde_json::Value = serde_json::from_slice(
        &kagi(&srv.token, &["compliance", "report", "--format", "json"]).stdout,
    )
    .unwrap();
    let custody = r["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["control"] == "10.1.2")
        .unwrap();
    assert_eq!(custody["answer"], "Yes");
    assert!(custody["comment"]
        .as_str()
        .unwrap()
        .contains("1 Shamir shares"));
}
