//! `kagi encrypt` / `kagi decrypt` through the real binary: files and pipes, every kind of
//! damage refused with no output left behind, context requirements, the kill switch.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{assert_one_line_error, kagi_bin, Server};

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
