//! TLS and client-certificate authentication from the config file.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{assert_one_line_error, free_port, Server};

#[test]
fn tls_with_client_certificates_mapped_to_policies() {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let issuer = support::test_ca(d, "srv", &["localhost", "127.0.0.1"]);
    let cli_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "app1");
    let cli = cp.signed_by(&cli_key, &issuer).unwrap();
    std::fs::write(d.join("cli.pem"), cli.pem()).unwrap();
    std::fs::write(d.join("cli.key"), cli_key.serialize_pem()).unwrap();
    let port = free_port();
    let cfg = d.join("kagi.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"sqlite\"\npath = \"{p}/kagi.db\"\n[seal]\ntype = \"shamir\"\n[tls]\ncert = \"{p}/srv.pem\"\nkey = \"{p}/srv.key\"\nclient_ca = \"{p}/ca.pem\"\n[auth.certificates]\napp1 = [\"gen\"]\n",
            p = d.display()
        ),
    )
    .unwrap();
    let addr = format!("https://127.0.0.1:{port}");
    let child = Command::new(support::kagi_bin())
        .args(["server", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = |envs: &[(&str, String)], args: &[&str]| {
        let mut c = Command::new(support::kagi_bin());
        c.args(args)
            .env("KAGI_ADDR", &addr)
            .env_remove("KAGI_TOKEN")
            .env_remove("KAGI_CACERT");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ca = ("KAGI_CACERT", d.join("ca.pem").display().to_string());
    let mut up = false;
    for _ in 0..100 {
        if run(std::slice::from_ref(&ca), &["status"]).status.success() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _guard = Server {
        child,
        addr: addr.clone(),
        token: String::new(),
        data_dir: d.to_path_buf(),
    };
    assert!(up, "TLS server did not come up");

    // Without the CA the client refuses to talk, with one clear line.
    assert_one_line_error(&run(&[], &["status"]), "KAGI_CACERT");
    let init: serde_json::Value = serde_json::from_slice(
        &run(
            std::slice::from_ref(&ca),
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
    let root = (
        "KAGI_TOKEN",
        init["root_token"].as_str().unwrap().to_string(),
    );
    assert!(run(
        std::slice::from_ref(&ca),
        &["operator", "unseal", init["shares"][0].as_str().unwrap()]
    )
    .status
    .success());
    assert!(run(&[ca.clone(), root.clone()], &["key", "create", "k1"])
        .status
        .success());
    let pol = d.join("gen.toml");
    std::fs::write(
        &pol,
        "[[rule]]\neffect = \"allow\"\nkeys = [\"k1\"]\noperations = [\"generate\"]\n",
    )
    .unwrap();
    assert!(run(
        &[ca.clone(), root.clone()],
        &["policy", "write", "gen", pol.to_str().unwrap()]
    )
    .status
    .success());

    // The client certificate alone authenticates as cert:app1 with policy gen.
    let cert = [
        ca.clone(),
        ("KAGI_CLIENT_CERT", d.join("cli.pem").display().to_string()),
        ("KAGI_CLIENT_KEY", d.join("cli.key").display().to_string()),
    ];
    let g = run(&cert, &["datakey", "generate", "k1", "-o", "json"]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let ct = serde_json::from_slice::<serde_json::Value>(&g.stdout).unwrap()["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    assert_one_line_error(&run(&cert, &["datakey", "decrypt", &ct]), "denied");
    // Without certificate or token: refused.
    assert_one_line_error(
        &run(std::slice::from_ref(&ca), &["datakey", "generate", "k1"]),
        "no credentials",
    );
    // Over TLS the console's session cookie is also `Secure`.
    let o = Command::new("curl")
        .args(["-s", "-i", "--cacert"])
        .arg(d.join("ca.pem"))
        .args(["--data-urlencode", &format!("token={}", root.1)])
        .arg(format!("{addr}/ui/login"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    let cookie = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie over TLS: {head}"));
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let tail: serde_json::Value = serde_json::from_slice(
        &run(
            &[ca.clone(), root],
            &["audit", "tail", "-n", "30", "-o", "json"],
        )
        .stdout,
    )
    .unwrap();
    assert!(tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["principal"] == "cert:app1" && r["outcome"] == "denied"));
}
