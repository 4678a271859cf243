//! `kagi policy test`: perimeter decisions explained by the rule that made them, without a
//! controller and without applying anything.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::kagi_bin;

const POLICY: &str = r#"
[[identity]]
name = "alice"
kind = "user"
groups = ["admins"]

[[service]]
name = "kms"
address = "10.201.0.1:7300"

[[rule]]
name = "admins-in-window"
effect = "allow"
from = ["group:admins"]
to = ["kms"]
[[rule.when.time]]
days = ["tue"]
start = "02:00"
end = "04:00"
tz = "Asia/Tokyo"
[rule.when.posture]
disk_encryption = true
"#;

fn test(file: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(kagi_bin())
        .args(["policy", "test", "--perimeter", file.to_str().unwrap()])
        .args(["--identity", "alice", "--service", "kms", "-o", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn policy_test_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("perimeter.toml");
    std::fs::write(&f, POLICY).unwrap();
    // Tuesday 03:00 Tokyo, encrypted disk: allowed by the rule.
    let v = test(
        &f,
        &[
            "--at",
            "2026-11-23T18:00:00Z",
            "--posture",
            "disk_encryption=true",
        ],
    );
    assert_eq!(
        (v["allowed"].clone(), v["rule"].clone()),
        (true.into(), "rule:admins-in-window".into())
    );
    // Same time, no disk encryption: refused, and the reason says why.
    let v = test(
        &f,
        &[
            "--at",
            "2026-11-23T18:00:00Z",
            "--posture",
            "disk_encryption=false",
        ],
    );
    assert_eq!(v["allowed"], false);
    assert!(
        v["reason"].as_str().unwrap().contains("disk encryption"),
        "{v}"
    );
    // Outside the window.
    let v = test(
        &f,
        &[
            "--at",
            "2026-11-24T18:00:00Z",
            "--posture",
            "disk_encryption=true",
        ],
    );
    assert!(v["reason"].as_str().unwrap().contains("time window"), "{v}");
    // A broken policy file is one clear line.
    std::fs::write(
        &f,
        "[[rule]]\nname=\"r\"\neffect=\"allow\"\nfrom=[\"ghost\"]\nto=[\"*\"]\n",
    )
    .unwrap();
    let o = Command::new(kagi_bin())
        .args([
            "policy",
            "test",
            "--perimeter",
            f.to_str().unwrap(),
            "--identity",
            "a",
            "--service",
            "b",
        ])
        .output()
        .unwrap();
    support::assert_one_line_error(&o, "ghost");
}
