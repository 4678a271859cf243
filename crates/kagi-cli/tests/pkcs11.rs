//! The master key in an HSM (SoftHSM2 through PKCS#11): init, automatic unseal at every start,
//! and a server that refuses to start, writing nothing, when the HSM key is gone.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{assert_one_line_error, free_port, Server};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A fresh SoftHSM2 token "kagi" (PIN 1234) with a non-extractable AES-256 key.
fn token(dir: &Path) -> String {
    let conf = dir.join("softhsm2.conf");
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", dir.join("tokens").display()),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let run = |cmd: &mut Command| {
        let o = cmd.env("SOFTHSM2_CONF", &conf).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        "kagi",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    ]));
    run(Command::new("pkcs11-tool").args([
        "--module",
        MODULE,
        "--token-label",
        "kagi",
        "--login",
        "--pin",
        "1234",
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "kagi-master",
        "--sensitive",
    ]));
    conf
}

/// True when SoftHSM2 and opensc are here; otherwise reports `test` as skipped.
fn hsm_tools(test: &str) -> bool {
    let ok = Path::new(MODULE).exists() && have("softhsm2-util") && have("pkcs11-tool");
    if !ok {
        support::skip(
            test,
            "SoftHSM2 and opensc are not installed (scripts/test installs them)",
        );
    }
    ok
}

/// `[seal] type = "pkcs11"` for the token made by [`token`], PIN in `pin`.
fn hsm_seal(pin: &Path) -> String {
    format!(
        "[seal]\ntype = \"pkcs11\"\nlibrary = \"{MODULE}\"\ntoken_label = \"kagi\"\npin_file = \"{}\"\nkey_label = \"kagi-master\"\n",
        pin.display()
    )
}

fn sha(p: &Path) -> Vec<u8> {
    std::fs::read(p)
        .map(|b| kagi_crypto::sha256(&b).to_vec())
        .unwrap_or_default()
}

#[test]
fn hsm_seal_auto_unseals_and_refuses_without_its_key() {
    if !hsm_tools("hsm_seal_auto_unseals_and_refuses_without_its_key") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = token(&d.join("hsm"));
    std::fs::write(d.join("pin"), "1234\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = d.join("kagi.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{addr}\"\n[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n{}",
            d.join("data/kagi.db").display(),
            hsm_seal(&d.join("pin"))
        ),
    )
    .unwrap();
    let env = [("SOFTHSM2_CONF", conf.as_str())];
    let url = format!("http://{addr}");
    let (ct, pt);
    {
        let mut s = Server::config_env(&cfg, &url, &d.join("data"), &env);
        let init = s.json(&["operator", "init"]);
        assert_eq!(
            init["shares"].as_array().unwrap().len(),
            0,
            "an HSM seal has no shares"
        );
        s.token = init["root_token"].as_str().unwrap().to_string();
        let st = s.json(&["status"]);
        assert_eq!(
            (st["sealed"].clone(), st["seal_type"].clone()),
            (false.into(), "pkcs11".into())
        );
        s.ok(&["key", "create", "k1"]);
        let g = s.json(&["datakey", "generate", "k1", "--context", "t=1"]);
        ct = g["ciphertext"].as_str().unwrap().to_string();
        pt = g["plaintext"].as_str().unwrap().to_string();
        assert_one_line_error(&s.kagi(&["operator", "init"]), "already initialized");
        let token = s.token.clone();
        drop(s);
        // Restart: unsealed by itself, the old blob decrypts.
        let mut s = Server::config_env(&cfg, &url, &d.join("data"), &env);
        s.token = token;
        assert_eq!(s.json(&["status"])["sealed"], false);
        let back = s.json(&["datakey", "decrypt", &ct, "--context", "t=1"]);
        assert_eq!(back["plaintext"].as_str().unwrap(), pt);
        assert!(s.ok(&["audit", "verify"]).contains("verified"));
    }

    // The HSM key is removed: the server refuses to start, says why, and writes nothing.
    let o = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--module",
            MODULE,
            "--token-label",
            "kagi",
            "--login",
            "--pin",
            "1234",
            "--delete-object",
            "--type",
            "secrkey",
            "--label",
            "kagi-master",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let files = [
        "data/kagi.db",
        "data/kagi.db-wal",
        "data/audit.db",
        "data/audit.db-wal",
    ];
    let before: Vec<Vec<u8>> = files.iter().map(|f| sha(&d.join(f))).collect();
    let o = Command::new(support::kagi_bin())
        .args(["server", "--config", cfg.to_str().unwrap()])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no AES key labelled \"kagi-master\""), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| sha(&d.join(f))).collect();
    assert_eq!(before, after, "a refused start wrote to the stores");
}

#[test]
fn seal_migrates_from_shamir_to_the_hsm_and_back() {
    if !hsm_tools("seal_migrates_from_shamir_to_the_hsm_and_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = token(&d.join("hsm"));
    std::fs::write(d.join("pin"), "1234\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let base = format!(
        "listen = \"{addr}\"\n[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n",
        d.join("data/kagi.db").display()
    );
    let shamir = d.join("shamir.toml");
    std::fs::write(&shamir, format!("{base}[seal]\ntype = \"shamir\"\n")).unwrap();
    let hsm = d.join("hsm.toml");
    std::fs::write(&hsm, format!("{base}{}", hsm_seal(&d.join("pin")))).unwrap();
    let env = [("SOFTHSM2_CONF", conf.as_str())];
    let shares_of = |v: &serde_json::Value| -> Vec<String> {
        v["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };

    let mut s = Server::config_env(&shamir, &url, &d.join("data"), &env);
    let init = s.json(&["operator", "init", "--shares", "3", "--threshold", "2"]);
    let old_shares = shares_of(&init);
    s.token = init["root_token"].as_str().unwrap().to_string();
    let token = s.token.clone();
    s.ok(&["operator", "unseal", &old_shares[0]]);
    s.ok(&["operator", "unseal", &old_shares[1]]);
    s.ok(&["key", "create", "k1"]);
    let mut blobs = Vec::new();
    for round in 0..3 {
        let g = s.json(&["datakey", "generate", "k1", "--context", "t=1"]);
        blobs.push((
            g["ciphertext"].as_str().unwrap().to_string(),
            g["plaintext"].as_str().unwrap().to_string(),
        ));
        if round < 2 {
            s.ok(&["key", "rotate", "k1"]);
        }
    }
    // Cloud credentials are wrapped by the master key too: they must survive every migration.
    let xks = s.json(&["xks", "add-store", "migrating"]);
    let check = |s: &Server| {
        for (ct, pt) in &blobs {
            let got = s.json(&["datakey", "decrypt", ct, "--context", "t=1"]);
            assert_eq!(got["plaintext"].as_str().unwrap(), pt);
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&s.ok(&["xks", "config", "migrating"])).unwrap();
        assert_eq!(
            cfg["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
            xks["secret_access_key"]
        );
        assert!(s.ok(&["audit", "verify"]).contains("verified"));
    };
    drop(s);

    // Shamir -> HSM: the HSM-configured server starts sealed; the old shares unseal it.
    let mut s = Server::config_env(&hsm, &url, &d.join("data"), &env);
    s.token = token.clone();
    let st = s.json(&["status"]);
    assert_eq!(
        (st["sealed"].clone(), st["seal_type"].clone()),
        (true.into(), "shamir".into())
    );
    s.ok(&["operator", "unseal", &old_shares[2]]);
    s.ok(&["operator", "unseal", &old_shares[0]]);
    // Reads keep working while the migration runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, url, token, ct) = (stop.clone(), url.clone(), token.clone(), blobs[0].0.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = Command::new(support::kagi_bin())
                    .args(["datakey", "decrypt", &ct, "--context", "t=1"])
                    .env("KAGI_ADDR", &url)
                    .env("KAGI_TOKEN", &token)
                    .output()
                    .unwrap();
                if o.status.success() {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let m = s.json(&["operator", "migrate-seal", "--to", "pkcs11"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = reader.join().unwrap();
    assert!(
        ok > 0 && failed == 0,
        "{ok} reads succeeded, {failed} failed"
    );
    assert_eq!(m["status"]["seal_type"], "pkcs11");
    assert!(shares_of(&m).is_empty());
    check(&s);
    drop(s);
    let mut s = Server::config_env(&hsm, &url, &d.join("data"), &env);
    s.token = token.clone();
    assert_eq!(
        s.json(&["status"])["sealed"],
        false,
        "the HSM unseals by itself"
    );
    check(&s);

    // HSM -> Shamir: new shares; the old ones no longer open anything.
    let m = s.json(&[
        "operator",
        "migrate-seal",
        "--to",
        "shamir",
        "--shares",
        "3",
        "--threshold",
        "2",
    ]);
    let new_shares = shares_of(&m);
    assert_eq!(new_shares.len(), 3);
    check(&s);
    drop(s);
    let mut s = Server::config_env(&shamir, &url, &d.join("data"), &env);
    s.token = token;
    s.ok(&["operator", "unseal", &old_shares[0]]);
    assert_one_line_error(
        &s.kagi(&["operator", "unseal", &old_shares[1]]),
        "do not reconstruct",
    );
    s.ok(&["operator", "unseal", &new_shares[2]]);
    assert_eq!(
        s.json(&["operator", "unseal", &new_shares[1]])["sealed"],
        false
    );
    check(&s);
}
