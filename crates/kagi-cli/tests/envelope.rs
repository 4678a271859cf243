//! `kagi encrypt` / `kagi decrypt` through the real binary: files and pipes, every kind of
//! damage refused with no output left behind, context requirements, the kill switch.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{assert_one_line_error, kagi_bin, metric, Server};

fn pipe(s: &Server, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut c = Command::new(kagi_bin())
        .args(args)
        .env("KAGI_ADDR", &s.addr)
        .env("KAGI_TOKEN", &s.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[test]
fn envelope_files_and_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let data: Vec<u8> = (0..(3 << 20) + 12345)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (inp, enc, out) = (d.join("in.bin"), d.join("in.kagi"), d.join("out.bin"));
    std::fs::write(&inp, &data).unwrap();
    s.ok(&[
        "encrypt",
        "--key",
        "k1",
        "--context",
        "tenant=acme",
        "-o",
        enc.to_str().unwrap(),
        inp.to_str().unwrap(),
    ]);
    s.ok(&[
        "decrypt",
        "--require-context",
        "tenant=acme",
        "-o",
        out.to_str().unwrap(),
        enc.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Pipes.
    let e = pipe(&s, &["encrypt", "--key", "k1"], &data);
    assert!(e.status.success());
    let p = pipe(&s, &["decrypt"], &e.stdout);
    assert!(p.status.success());
    assert_eq!(p.stdout, data);
    // No overwrite without --force.
    assert_one_line_error(
        &s.kagi(&[
            "decrypt",
            "-o",
            out.to_str().unwrap(),
            enc.to_str().unwrap(),
        ]),
        "--force",
    );
    s.ok(&[
        "decrypt",
        "--force",
        "-o",
        out.to_str().unwrap(),
        enc.to_str().unwrap(),
    ]);

    let file = std::fs::read(&enc).unwrap();
    let seg = 65536 + 16;
    let header = file.len() - ((data.len() / 65536) * seg + (data.len() % 65536 + 16));
    let mut appended = file.clone();
    appended.extend_from_slice(b"more");
    let mut swapped = file.clone();
    let (a, b) = (header, header + seg);
    let s0 = file[a..a + seg].to_vec();
    swapped[a..a + seg].copy_from_slice(&file[b..b + seg]);
    swapped[b..b + seg].copy_from_slice(&s0);
    let mut flipped = file.clone();
    flipped[file.len() / 2] ^= 0x01;
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte", flipped),
        (
            "cut at a segment boundary",
            file[..header + 2 * seg].to_vec(),
        ),
        (
            "cut inside a segment",
            file[..header + 2 * seg + 100].to_vec(),
        ),
        ("appended bytes", appended),
        ("swapped segments", swapped),
    ];
    for (what, bytes) in damaged {
        let bad = d.join("bad.kagi");
        std::fs::write(&bad, &bytes).unwrap();
        let target = d.join("bad.out");
        let o = s.kagi(&[
            "decrypt",
            "-o",
            target.to_str().unwrap(),
            bad.to_str().unwrap(),
        ]);
        assert_one_line_error(&o, "");
        assert!(!target.exists(), "{what}: output left behind");
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kagi-"))
            .collect();
        assert!(leftovers.is_empty(), "{what}: temporary file left behind");
    }
    assert_one_line_error(
        &s.kagi(&[
            "decrypt",
            "--require-context",
            "tenant=other",
            enc.to_str().unwrap(),
        ]),
        "required",
    );
    s.ok(&["key", "disable", "k1"]);
    assert_one_line_error(
        &s.kagi(&[
            "decrypt",
            "-o",
            d.join("x").to_str().unwrap(),
            enc.to_str().unwrap(),
        ]),
        "disabled",
    );
    assert!(!d.join("x").exists());
}

fn body_offset(file_len: usize, plain_len: usize) -> usize {
    let seg = 65536 + 16;
    let full = plain_len / 65536;
    let rest = plain_len % 65536;
    // A multiple of the segment size ends with a full final segment.
    let body = if rest == 0 && full > 0 {
        full * seg
    } else {
        full * seg + rest + 16
    };
    file_len - body
}

#[test]
fn spliced_segments_and_destroyed_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let data = vec![0x5au8; 200_000];
    let inp = d.join("in.bin");
    std::fs::write(&inp, &data).unwrap();
    let (a, b) = (d.join("a.kagi"), d.join("b.kagi"));
    for f in [&a, &b] {
        s.ok(&[
            "encrypt",
            "--key",
            "k1",
            "--context",
            "tenant=acme",
            "-o",
            f.to_str().unwrap(),
            inp.to_str().unwrap(),
        ]);
    }
    let (fa, fb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_ne!(fa, fb, "every file gets its own data key and nonce prefix");
    let (ha, hb) = (
        body_offset(fa.len(), data.len()),
        body_offset(fb.len(), data.len()),
    );
    let seg = 65536 + 16;
    let mut spliced = fa.clone();
    spliced[ha + seg..ha + 2 * seg].copy_from_slice(&fb[hb + seg..hb + 2 * seg]);
    let bad = d.join("spliced.kagi");
    std::fs::write(&bad, &spliced).unwrap();
    let out = d.join("out");
    let o = s.kagi(&[
        "decrypt",
        "-o",
        out.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "segment 1");
    assert!(!out.exists());

    s.ok(&["decrypt", "-o", out.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    s.ok(&["key", "schedule-deletion", "k1", "--pending-days", "0"]);
    let gone = d.join("gone");
    assert_one_line_error(
        &s.kagi(&["decrypt", "-o", gone.to_str().unwrap(), a.to_str().unwrap()]),
        "destroyed",
    );
    assert!(!gone.exists());
}

fn tree_files(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn tree_mode_with_the_data_key_cache() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let src = d.join("src");
    for i in 0..12usize {
        let sub = src.join(format!("dir{}", i % 3)).join("deeper");
        std::fs::create_dir_all(&sub).unwrap();
        let len = [0, 1, 1000, 70_000, 200_001][i % 5];
        std::fs::write(sub.join(format!("f{i}.dat")), vec![i as u8; len]).unwrap();
    }
    let generated = || {
        metric(
            &s.curl("GET", "/metrics", None, "text/plain").1,
            "kagi_requests_total{operation=\"generate\",outcome=\"success\"}",
        )
    };
    let before = generated();
    let enc = d.join("enc");
    let o = s.kagi(&[
        "encrypt",
        "-r",
        "--key",
        "k1",
        "--context",
        "app=tree",
        "--cache-max-age",
        "5m",
        "--cache-max-messages",
        "4",
        "-o",
        enc.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(summary.contains("encrypted 12 of 12 files"), "{summary}");
    // The summary's misses are exactly the key-service calls made.
    let misses: u64 = summary
        .split("hits, ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(generated() - before, misses);
    // 12 files, 4 messages per data key, concurrent misses coalesced: exactly 3 data keys.
    assert_eq!(misses, 3, "{summary}");
    let encrypted = tree_files(&enc);
    assert_eq!(encrypted.len(), 12);
    assert!(encrypted.iter().all(|(n, _)| n.ends_with(".dat.kagi")));

    // A stray file is skipped; the output may not be inside the input.
    std::fs::write(enc.join("README"), b"not an envelope").unwrap();
    let plain = d.join("plain");
    let o = s.kagi(&[
        "decrypt",
        "-r",
        "--require-context",
        "app=tree",
        "-o",
        plain.to_str().unwrap(),
        enc.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 without .kagi skipped"));
    assert_eq!(tree_files(&plain), tree_files(&src));
    assert_one_line_error(
        &s.kagi(&[
            "encrypt",
            "-r",
            "--key",
            "k1",
            "-o",
            src.join("dir0").to_str().unwrap(),
            src.to_str().unwrap(),
        ]),
        "inside the input directory",
    );
    // Existing outputs are kept without --force, and every failure is named.
    let o = s.kagi(&[
        "decrypt",
        "-r",
        "-o",
        plain.to_str().unwrap(),
        enc.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--force") && err.contains("12 of 12 files failed"),
        "{err}"
    );
    assert_eq!(tree_files(&plain), tree_files(&src));
}

#[test]
fn sdk_data_key_cache_saves_key_service_calls() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::dev(&dir.path().join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let metrics = || s.curl("GET", "/metrics", None, "text/plain").1;
    let calls = |op: &str| {
        metric(
            &metrics(),
            &format!("kagi_requests_total{{operation=\"{op}\",outcome=\"success\"}}"),
        )
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = kagi_client::Client::new(kagi_client::ClientConfig {
        addr: s.addr.clone(),
        token: Some(s.token.clone()),
        ..Default::default()
    })
    .unwrap();
    let limits = kagi_client::envelope::CacheLimits {
        max_messages: 10,
        ..kagi_client::envelope::CacheLimits::new(std::time::Duration::from_secs(300))
    };
    let ctx = kagi_keys::EncryptionContext::from_kv_args(&["tenant=acme"]).unwrap();
    let (g0, d0) = (calls("generate"), calls("decrypt"));
    let objects: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1024]).collect();
    let enc = kagi_client::envelope::Envelope::new(client.clone()).with_cache(limits);
    let sealed: Vec<Vec<u8>> = objects
        .iter()
        .map(|o| rt.block_on(enc.encrypt_bytes("k1", &ctx, o)).unwrap())
        .collect();
    let st = enc.cache_stats().unwrap();
    assert_eq!((st.encrypt_misses, st.encrypt_hits), (5, 45));
    assert_eq!(calls("generate") - g0, 5);

    let dec = kagi_client::envelope::Envelope::new(client.clone()).with_cache(limits);
    for (o, c) in objects.iter().zip(&sealed) {
        let mut out = Vec::new();
        let opened = rt.block_on(dec.decrypt(&mut &c[..], &mut out)).unwrap();
        assert_eq!(&out, o);
        assert_eq!(opened.context, ctx);
    }
    let st = dec.cache_stats().unwrap();
    assert_eq!((st.decrypt_misses, st.decrypt_hits), (5, 45));
    assert_eq!(calls("decrypt") - d0, 5);
    assert!(st.prometheus().contains("result=\"hit\"} 45"));

    // Without the cache every object costs one call.
    let plain = kagi_client::envelope::Envelope::new(client);
    let g1 = calls("generate");
    for o in &objects[..7] {
        rt.block_on(plain.encrypt_bytes("k1", &ctx, o)).unwrap();
    }
    assert_eq!(calls("generate") - g1, 7);
    assert!(plain.cache_stats().is_none());
}

#[test]
fn an_independent_reader_written_from_the_docs_reads_kagi_files() {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        support::skip(
            "an_independent_reader_written_from_the_docs_reads_kagi_files",
            "python3 with the cryptography package is not installed (scripts/test installs it)",
        );
        return;
    }
    let reader = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/independent/envelope_reader.py");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = Server::dev(&d.join("data"), &[]);
    s.ok(&["key", "create", "k1"]);
    let run = |args: &[&str]| {
        Command::new("python3")
            .arg(&reader)
            .args(["--addr", &s.addr, "--token", &s.token])
            .args(args)
            .output()
            .unwrap()
    };
    for len in [0usize, 1, 65_535, 65_536, 65_537, 300_001] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let (inp, enc, out) = (d.join("in"), d.join("in.kagi"), d.join(format!("out{len}")));
        std::fs::write(&inp, &data).unwrap();
        s.ok(&[
            "encrypt",
            "--force",
            "--key",
            "k1",
            "--context",
            "tenant=acme",
            "--context",
            "purpose=ünïcode =x",
            "-o",
            enc.to_str().unwrap(),
            inp.to_str().unwrap(),
        ]);
        let o = run(&[
            "--require-context",
            "tenant=acme",
            enc.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "len {len}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(std::fs::read(&out).unwrap() == data, "len {len}");
        // The same reader refuses a damaged copy and leaves nothing behind.
        let mut bytes = std::fs::read(&enc).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x10;
        let bad = d.join("bad.kagi");
        std::fs::write(&bad, &bytes).unwrap();
        let target = d.join("never");
        let o = run(&[bad.to_str().unwrap(), target.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).starts_with("envelope_reader: "));
        assert!(!target.exists());
    }
}
