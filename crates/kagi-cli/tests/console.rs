//! The custodian console (`/ui`): its HTTP rules with curl, and the whole custodian's path in
//! a real headless Chromium driven by Playwright (`console.mjs`).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{console_sign_in as sign_in, curl_jar as curl, have, skip, Server};

fn csrf_of(page: &str) -> String {
    let i = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    page[i..i + 64].to_string()
}

fn reader_token(s: &Server, dir: &Path) -> String {
    let pol = dir.join("reader.toml");
    std::fs::write(
        &pol,
        "description = \"sees keys and the audit log\"\n\n[[rule]]\neffect = \"allow\"\nkeys = [\"*\"]\noperations = [\"describe\", \"audit\"]\n",
    )
    .unwrap();
    s.ok(&["policy", "write", "reader", pol.to_str().unwrap()]);
    s.json(&["token", "create", "--policy", "reader"])["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn console_http_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    let reader = reader_token(&s, dir.path());
    let jar = dir.path().join("jar");
    let ui = format!("{}/ui", s.addr);

    // No session: pages redirect to the login form, with the security headers.
    let (st, r) = curl(&jar, &[&format!("{ui}/keys")]);
    assert_eq!(st, 303, "{r}");
    assert!(r.contains("location: /ui/login"), "{r}");
    for path in ["/login", "/keys", "/audit", "/nope"] {
        let (_, r) = curl(&jar, &[&format!("{ui}{path}")]);
        assert!(
            r.contains("content-security-policy: default-src 'none'; script-src 'self'")
                && r.contains("frame-ancestors 'none'")
                && r.contains("x-frame-options: DENY"),
            "{path}: {r}"
        );
    }

    // A wrong token is refused, clearly, and sets no cookie.
    let (st, r) = curl(&jar, &["-d", "token=kagi_wrong", &format!("{ui}/login")]);
    assert_eq!(st, 401);
    assert!(r.contains("Sign-in refused: the token is not valid"), "{r}");
    assert!(!r.to_lowercase().contains("set-cookie"), "{r}");

    // A sign-in posted from another site is refused.
    let (st, r) = curl(
        &jar,
        &[
            "-H",
            "Origin: https://evil.example",
            "--data-urlencode",
            &format!("token={}", s.token),
            &format!("{ui}/login"),
        ],
    );
    assert_eq!(st, 403, "{r}");

    // The contract: POST /ui/login with the form field `token`; an HttpOnly, SameSite=Strict cookie.
    let (st, r) = curl(
        &jar,
        &[
            "--data-urlencode",
            &format!("token={}", s.token),
            &format!("{ui}/login"),
        ],
    );
    assert_eq!(st, 303, "{r}");
    let cookie_line = r
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    // Names with a slash are one path segment.
    s.ok(&["key", "create", "team/app"]);
    let (st, r) = curl(&jar, &[&format!("{ui}/keys")]);
    assert_eq!(st, 200);
    assert!(r.contains("href=\"/ui/keys/team%2Fapp\""), "{r}");
    let (st, r) = curl(&jar, &[&format!("{ui}/keys/team%2Fapp")]);
    assert_eq!(st, 200, "{r}");
    assert!(r.contains("<h1>team/app</h1>"), "{r}");
    let (st, page) = curl(&jar, &[&format!("{ui}/keys/k1")]);
    assert_eq!(st, 200);
    assert!(!page.contains(&s.token), "the token is never rendered");
    let csrf = csrf_of(&page);

    // State changes need the session's CSRF token.
    for form in [
        "",
        "csrf=",
        "csrf=0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let (st, r) = curl(&jar, &["-d", form, &format!("{ui}/keys/k1/disable")]);
        assert_eq!(st, 403, "{form}: {r}");
        assert!(r.contains("CSRF"), "{r}");
    }
    assert!(s.ok(&["key", "show", "k1"]).contains("enabled"));
    let (st, r) = curl(
        &jar,
        &[
            "-d",
            &format!("csrf={csrf}"),
            &format!("{ui}/keys/k1/disable"),
        ],
    );
    assert_eq!(st, 303, "{r}");
    assert!(s.ok(&["key", "show", "k1"]).contains("disabled"));

    // Schedule deletion needs the key's name typed exactly.
    let (st, r) = curl(
        &jar,
        &[
            "-d",
            &format!("csrf={csrf}&confirm=k2&pending_days=7"),
            &format!("{ui}/keys/k1/schedule-deletion"),
        ],
    );
    assert_eq!(st, 400, "{r}");
    assert!(r.contains("type the key name"), "{r}");
    assert!(!s.ok(&["key", "show", "k1"]).contains("pending"));
    // Typed right, with no waiting period (a dev server allows it): destroyed at once.
    s.ok(&["key", "create", "gone"]);
    let (st, r) = curl(
        &jar,
        &[
            "-d",
            &format!("csrf={csrf}&confirm=gone&pending_days=0"),
            &format!("{ui}/keys/gone/schedule-deletion"),
        ],
    );
    assert_eq!(st, 303, "{r}");
    assert!(r.contains("msg=destroyed"), "{r}");
    assert!(s.ok(&["key", "show", "gone"]).contains("destroyed"));

    // A reader's forged disable (valid session and CSRF token) is refused and recorded.
    let rjar = dir.path().join("rjar");
    sign_in(&s, &rjar, &reader);
    let (_, page) = curl(&rjar, &[&format!("{ui}/keys/k1")]);
    assert!(page.contains("do not allow"), "the reader is told why");
    let rcsrf = csrf_of(&page);
    let (st, r) = curl(
        &rjar,
        &[
            "-d",
            &format!("csrf={rcsrf}"),
            &format!("{ui}/keys/k1/enable"),
        ],
    );
    assert_eq!(st, 403, "{r}");
    assert!(r.contains("permission denied"), "{r}");
    let audit = s.json(&["audit", "tail", "-n", "20"]);
    let text = audit.to_string();
    assert!(
        text.contains("\"operation\":\"key.enable\"") && text.contains("\"outcome\":\"denied\""),
        "{text}"
    );
    assert!(
        text.contains("console.login"),
        "sign-ins are recorded: {text}"
    );

    // Paging back through the log reads the store below `before`.
    let (st, r) = curl(&jar, &[&format!("{ui}/audit?before=4")]);
    assert_eq!(st, 200, "{r}");
    let seqs: Vec<u64> = r
        .split("<tr class=\"o-")
        .skip(1)
        .filter_map(|row| row.split("<td>").nth(1)?.split('<').next()?.parse().ok())
        .collect();
    assert_eq!(seqs, vec![3, 2, 1], "{r}");

    // Sign-out ends the session on the server: the old cookie no longer works.
    let saved = std::fs::read_to_string(&jar).unwrap();
    let (st, _) = curl(
        &jar,
        &["-d", &format!("csrf={csrf}"), &format!("{ui}/logout")],
    );
    assert_eq!(st, 303);
    std::fs::write(&jar, saved).unwrap();
    let (st, r) = curl(&jar, &[&format!("{ui}/keys")]);
    assert_eq!(st, 303, "{r}");
    assert!(r.contains("location: /ui/login"), "{r}");
}

#[test]
fn console_session_ends_with_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path(), &[]);
    let reader = reader_token(&s, dir.path());
    let jar = dir.path().join("jar");
    sign_in(&s, &jar, &reader);
    let (st, _) = curl(&jar, &[&format!("{}/ui/keys", s.addr)]);
    assert_eq!(st, 200);
    // Revoking the token ends the console session at the next request.
    s.ok(&["token", "revoke", &reader]);
    let (st, r) = curl(&jar, &[&format!("{}/ui/keys", s.addr)]);
    assert_eq!(st, 303, "{r}");
    assert!(r.contains("why=revoked"), "{r}");
}

fn playwright_dir() -> Option<PathBuf> {
    let d = std::env::var_os("KAGI_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/uitest"));
    d.join("node_modules/playwright-core").is_dir().then_some(d)
}

#[test]
fn console_in_headless_chromium() {
    let test = "console_in_headless_chromium";
    if !have("node") {
        return skip(test, "node is not installed (scripts/test installs it)");
    }
    if !Path::new("/usr/bin/chromium").exists() {
        return skip(
            test,
            "/usr/bin/chromium is not installed (scripts/test installs it)",
        );
    }
    let Some(pw) = playwright_dir() else {
        return skip(
            test,
            "playwright-core is not installed in target/uitest (scripts/test installs it)",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(dir.path(), &[]);
    s.ok(&["key", "create", "cli-key-1"]);
    s.ok(&["key", "create", "cli-key-2"]);
    let reader = reader_token(&s, dir.path());
    let ct = s.json(&["datakey", "generate", "cli-key-1"])["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let o = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console.mjs"))
        .env("KAGI_ADDR", &s.addr)
        .env("ROOT_TOKEN", &s.token)
        .env("READER_TOKEN", &reader)
        .env("KAGI_BIN", support::kagi_bin())
        .env("SHOT_DIR", &shots)
        .env("PW_DIR", &pw)
        .env("CIPHERTEXT", &ct)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{out}");
    assert!(o.status.success(), "console.mjs failed:\n{out}\n{err}");
    assert!(out.contains("checks passed"), "{out}");
    for f in ["keys.png", "key.png", "audit.png"] {
        let len = std::fs::metadata(shots.join(f))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            len > 10_000,
            "screenshot {f} is missing or empty ({len} bytes)"
        );
    }
}
