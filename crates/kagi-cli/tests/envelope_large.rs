//! A 1 GiB random file through `kagi encrypt` / `kagi decrypt`, through files and through
//! pipes, with identical SHA-256, and decryption peaking below 64 MiB of resident memory.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{kagi_bin, Server};

fn sh(script: &str, s: &Server) -> String {
    sh2(script, s).0
}

/// Runs `script` under bash; returns (stdout, stderr).
fn sh2(script: &str, s: &Server) -> (String, String) {
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("KAGI", kagi_bin())
        .env("KAGI_ADDR", &s.addr)
        .env("KAGI_TOKEN", &s.token)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn sha(s: &Server, path: &std::path::Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()), s)
}

#[test]
fn one_gib_round_trip_through_files_and_pipes_in_bounded_memory() {
    if !std::path::Path::new("/usr/bin/time").exists() {
        support::skip(
            "one_gib_round_trip_through_files_and_pipes_in_bounded_memory",
            "GNU time (/usr/bin/time) is not installed (scripts/test installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "big"]);
    let (inp, enc, out) = (d.join("in.bin"), d.join("in.kagi"), d.join("out.bin"));
    sh(
        &format!("head -c 1G /dev/urandom > '{}'", inp.display()),
        &s,
    );
    let want = sha(&s, &inp);

    // Files.
    s.ok(&[
        "encrypt",
        "--key",
        "big",
        "--context",
        "tenant=acme",
        "-o",
        enc.to_str().unwrap(),
        inp.to_str().unwrap(),
    ]);
    let rss_kib: u64 = sh(
        &format!(
            "/usr/bin/time -f '%M' -o /dev/stdout \"$KAGI\" decrypt --require-context tenant=acme -o '{}' '{}'",
            out.display(),
            enc.display()
        ),
        &s,
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(sha(&s, &out), want, "file round trip");
    assert!(
        rss_kib < 64 * 1024,
        "decrypting 1 GiB peaked at {rss_kib} KiB resident"
    );
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&enc).unwrap();

    // Pipes, both ends: no progress bar, nothing at all on stderr.
    let (piped, noise) = sh2(
        &format!(
            "cat '{}' | \"$KAGI\" encrypt --key big --context tenant=acme | \"$KAGI\" decrypt | sha256sum",
            inp.display()
        ),
        &s,
    );
    assert_eq!(piped, want, "pipe round trip");
    assert_eq!(noise, "", "nothing on stderr when piped");

    // On a terminal (a pty from script(1)), an input over 64 MiB shows a progress bar.
    let tty = sh(
        &format!(
            "script -qec '\"$KAGI\" encrypt --key big -o {} {}' /dev/null",
            enc.display(),
            inp.display()
        ),
        &s,
    );
    assert!(
        tty.contains("GiB"),
        "no progress bar on a terminal: {tty:?}"
    );
}
