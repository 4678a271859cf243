//! Fail closed: when the audit store's file system is full, key operations answer 503 and
//! none succeeds without its record; when space returns, service resumes by itself.
//! Needs root (it mounts a small tmpfs); elsewhere it says so and skips.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::process::Command;

use support::{is_root, Server};

struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body).
fn http(addr: &str, token: &str, path: &str, body: &str) -> (u16, String) {
    let hostport = addr.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn full_audit_disk_fails_closed_and_recovers() {
    if !is_root() {
        support::skip(
            "full_audit_disk_fails_closed_and_recovers",
            "needs root to mount a tmpfs",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&audit_dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs failed");
    let _m = Mount(audit_dir.clone());
    let s = Server::dev(
        &dir.path().join("data"),
        &["--audit-dir", audit_dir.to_str().unwrap()],
    );
    s.ok(&["key", "create", "k1"]);
    let ct = s.json(&["datakey", "generate", "k1"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    // Fill the file system.
    let mut f = std::fs::File::create(audit_dir.join("fill")).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    let gen = r#"{"key":"k1"}"#;
    let mut successes = 1u64; // the generate above
    let mut first_503 = None;
    for i in 0..5000 {
        let (code, body) = http(&s.addr, &s.token, "/v1/datakey/generate", gen);
        match code {
            200 => successes += 1,
            503 => {
                assert!(body.contains("audit"), "503 should say why: {body}");
                first_503 = Some(i);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        first_503.is_some(),
        "the audit store never reported a full disk"
    );
    // While full, nothing succeeds: not generate, not decrypt.
    for _ in 0..20 {
        assert_eq!(http(&s.addr, &s.token, "/v1/datakey/generate", gen).0, 503);
        let (code, body) = http(
            &s.addr,
            &s.token,
            "/v1/datakey/decrypt",
            &format!(r#"{{"ciphertext":"{ct}"}}"#),
        );
        assert_eq!(code, 503, "{body}");
    }
    // Space returns: service resumes without a restart.
    std::fs::remove_file(audit_dir.join("fill")).unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        let (code, _) = http(&s.addr, &s.token, "/v1/datakey/generate", gen);
        if code == 200 {
            successes += 1;
            resumed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(resumed, "service did not resume after space returned");
    assert!(s.ok(&["audit", "verify"]).contains("verified"));
    // Every successful generate has its record, and no more.
    let export = s.ok(&["audit", "export"]);
    let recorded = export
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["operation"] == "generate" && r["outcome"] == "success")
        .count() as u64;
    assert_eq!(recorded, successes);
}
