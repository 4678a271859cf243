//! Format-preserving tokenization through the CLI: templates, stdin bulk mode, key versions,
//! and `tokenize` without `detokenize` enforced by policy.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{assert_one_line_error, Server};

const CARDS: [&str; 3] = [
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "4012888888881881",
];

#[test]
fn tokenize_detokenize_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::dev(&dir.path().join("d"), &[]);
    srv.ok(&["key", "create", "cards", "--type", "fpe"]);
    srv.ok(&["key", "create", "aes"]);

    // Arguments in, tokens out one per line in order; the format and kept digits hold.
    let mut args = vec![
        "tokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--tweak",
        "users.card",
    ];
    args.extend(CARDS);
    let out = srv.ok(&args);
    let tokens: Vec<&str> = out.lines().collect();
    assert_eq!(tokens.len(), 3);
    for (t, c) in tokens.iter().zip(CARDS) {
        assert_eq!(t.len(), c.len());
        assert_eq!(&t[..4], &c[..4]);
        assert_eq!(&t[t.len() - 4..], &c[c.len() - 4..]);
        assert_ne!(*t, c);
    }
    let mut back = vec![
        "detokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--tweak",
        "users.card",
    ];
    back.extend(tokens.iter().copied());
    assert_eq!(srv.ok(&back).lines().collect::<Vec<_>>(), CARDS);
    // Another tweak gives other tokens.
    let other = srv.ok(&[
        "tokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--tweak",
        "orders.card",
        CARDS[0],
    ]);
    assert_ne!(other.trim(), tokens[0]);

    // Stdin bulk mode: 2,500 My Numbers in, 2,500 tokens out, in order.
    let numbers: Vec<String> = (0..2500u64)
        .map(|i| {
            let d: Vec<u16> = format!("{:011}", 10_000_000_000 + i * 7919)
                .bytes()
                .map(|b| u16::from(b - b'0'))
                .collect();
            let check = kagi_token::mynumber_check_digit(&d);
            d.iter().map(|x| x.to_string()).collect::<String>() + &check.to_string()
        })
        .collect();
    let stdin_run = |args: &[&str], input: &str| {
        let mut c = Command::new(support::kagi_bin())
            .args(args)
            .env("KAGI_ADDR", &srv.addr)
            .env("KAGI_TOKEN", &srv.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let toks = stdin_run(
        &["tokenize", "--key", "cards", "--template", "mynumber", "-"],
        &numbers.join("\n"),
    );
    let toks: Vec<&str> = toks.lines().collect();
    assert_eq!(toks.len(), numbers.len());
    for t in &toks {
        let d: Vec<u16> = t.bytes().map(|b| u16::from(b - b'0')).collect();
        assert_eq!(
            kagi_token::mynumber_check_digit(&d[..11]),
            d[11],
            "token {t} has a valid check digit"
        );
    }
    let vals = stdin_run(
        &["detokenize", "--key", "cards", "--template", "mynumber"],
        &toks.join("\n"),
    );
    assert_eq!(vals.lines().collect::<Vec<_>>(), numbers);

    // Rotation: new tokens name version 2; version-1 tokens detokenize with --key-version 1.
    srv.ok(&["key", "rotate", "cards"]);
    let v2 = srv.json(&[
        "tokenize",
        "--key",
        "cards",
        "--template",
        "digits",
        "0123456789",
    ]);
    assert_eq!(v2["key_version"], 2);
    let old = srv.ok(&[
        "detokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--tweak",
        "users.card",
        "--key-version",
        "1",
        tokens[0],
    ]);
    assert_eq!(old.trim(), CARDS[0]);

    // Digits kept as configured; 15-digit cards need fewer kept digits.
    let amex = "3782-822463-10005";
    assert_one_line_error(
        &srv.kagi(&["tokenize", "--key", "cards", "--template", "pan", amex]),
        "keep fewer",
    );
    let t = srv.ok(&[
        "tokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--keep-first",
        "4",
        "--keep-last",
        "4",
        amex,
    ]);
    assert!(t.starts_with("3782-") && t.trim().ends_with("0005") && t.trim() != amex);
    let back = srv.ok(&[
        "detokenize",
        "--key",
        "cards",
        "--template",
        "pan",
        "--keep-first",
        "4",
        "--keep-last",
        "4",
        t.trim(),
    ]);
    assert_eq!(back.trim(), amex);
    // A custom alphabet.
    let t = srv.ok(&[
        "tokenize",
        "--key",
        "cards",
        "--template",
        "custom",
        "--alphabet",
        "0123456789abcdef",
        "deadbeef01",
    ]);
    assert!(t.trim().len() == 10 && t.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let back = srv.ok(&[
        "detokenize",
        "--key",
        "cards",
        "--template",
        "custom",
        "--alphabet",
        "0123456789abcdef",
        t.trim(),
    ]);
    assert_eq!(back.trim(), "deadbeef01");
    assert_one_line_error(
        &srv.kagi(&[
            "tokenize",
            "--key",
            "cards",
            "--template",
            "custom",
            "xyz123",
        ]),
        "alphabet",
    );

    // Masks are irreversible and need no key.
    let m = srv.ok(&[
        "tokenize",
        "--mask",
        "--template",
        "pan",
        "4111-1111-1111-1111",
    ]);
    assert_eq!(m.lines().next(), Some("4111-11**-****-1111"));

    // Clear refusals, one line each.
    assert_one_line_error(
        &srv.kagi(&["tokenize", "--key", "aes", "--template", "digits", "123456"]),
        "--type fpe",
    );
    assert_one_line_error(
        &srv.kagi(&[
            "tokenize",
            "--key",
            "cards",
            "--template",
            "pan",
            "4111111111111112",
        ]),
        "value 1",
    );
    assert_one_line_error(
        &srv.kagi(&["tokenize", "--key", "cards", "--template", "card", "123456"]),
        "unknown template",
    );
    assert_one_line_error(
        &srv.kagi(&[
            "tokenize",
            "--key",
            "cards",
            "--template",
            "digits",
            "12345",
        ]),
        "1,000,000",
    );

    // A policy that allows tokenize but not detokenize.
    let pol = dir.path().join("tok.toml");
    std::fs::write(
        &pol,
        "[[rule]]\neffect = \"allow\"\nkeys = [\"cards\"]\noperations = [\"tokenize\"]\n",
    )
    .unwrap();
    srv.ok(&["policy", "write", "tok-only", pol.to_str().unwrap()]);
    let tok = srv.json(&["token", "create", "--policy", "tok-only"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let o = srv.kagi_as(
        &tok,
        &[
            "tokenize",
            "--key",
            "cards",
            "--template",
            "digits",
            "0123456789",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = String::from_utf8(o.stdout).unwrap();
    assert_one_line_error(
        &srv.kagi_as(
            &tok,
            &[
                "detokenize",
                "--key",
                "cards",
                "--template",
                "digits",
                t.trim(),
            ],
        ),
        "denied",
    );

    // The audit log has the batches, never a value or a token.
    let log = srv.ok(&["audit", "export", "--format", "jsonl"]);
    assert!(
        log.contains("\"operation\":\"tokenize\"") && log.contains("\"operation\":\"detokenize\"")
    );
    for secret in CARDS
        .iter()
        .copied()
        .chain(tokens.iter().copied())
        .chain([numbers[0].as_str(), toks[0]])
    {
        assert!(!log.contains(secret), "{secret} is on the audit log");
    }
}
