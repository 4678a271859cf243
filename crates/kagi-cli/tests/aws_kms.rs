//! The AWS-KMS-compatible API through the real AWS SDK for Python (boto3) and the aws CLI
//! (`tests/aws_sdk.py`), which `scripts/test` installs from PyPI.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{skip, Server};

fn python() -> String {
    std::env::var("KAGI_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn boto3_and_aws_cli_against_kagi() {
    let py = python();
    let has_boto3 = Command::new(&py)
        .args(["-c", "import boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    let aws = std::env::var("KAGI_AWS_CLI").unwrap_or_else(|_| "aws".into());
    let has_cli = Command::new(&aws)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_boto3 || !has_cli {
        skip(
            "boto3_and_aws_cli_against_kagi",
            "boto3 or the aws CLI is not installed (scripts/test installs both from PyPI)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::dev(dir.path(), &[]);
    let write = |name: &str, text: &str| {
        let f = dir.path().join(format!("{name}.toml"));
        std::fs::write(&f, text).unwrap();
        srv.ok(&["policy", "write", name, f.to_str().unwrap()]);
    };
    write(
        "sdk-app",
        "[[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"*\"]\n",
    );
    write(
        "sdk-narrow",
        "[[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"generate\", \"describe\"]\n",
    );
    let app = srv.json(&["aws", "create-credentials", "--policy", "sdk-app"]);
    let narrow = srv.json(&["aws", "create-credentials", "--policy", "sdk-narrow"]);
    assert_eq!(app["policies"][0], "sdk-app");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws_sdk.py");
    let out = Command::new(&py)
        .arg(&script)
        .env("KAGI_ADDR", &srv.addr)
        .env("KAGI_AWS_CLI", &aws)
        .env("AWS_ACCESS_KEY_ID", app["access_key_id"].as_str().unwrap())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            app["secret_access_key"].as_str().unwrap(),
        )
        .env(
            "NARROW_ACCESS_KEY_ID",
            narrow["access_key_id"].as_str().unwrap(),
        )
        .env(
            "NARROW_SECRET_ACCESS_KEY",
            narrow["secret_access_key"].as_str().unwrap(),
        )
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "AWS SDK checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("aws-sdk: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n >= 35, "only {n} checks ran");

    // The SDK's calls are on the audit log under the credential's principal.
    let id = app["access_key_id"].as_str().unwrap();
    let log = srv.ok(&["audit", "export", "--format", "jsonl"]);
    assert!(log.lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["principal"] == format!("aws:{id}")
            && v["operation"] == "generate"
            && v["outcome"] == "success"
    }));
}
