//! The 50 fwknop known-answer packets of `shared/reference/vectors` (checked against the real
//! fwknopd 2.6.10), as one table-driven test: every `accept` row opens to exactly its
//! expected plaintext and re-seals to a packet that opens the same; every `reject` row is
//! refused.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use kagi_crypto::legacy::HmacKey;
use kagi_crypto::SecretBytes;
use kagi_spa::fwknop::{open, seal, StanzaKeys};
use kagi_spa::AccessSpec;

fn vectors() -> Option<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/reference/vectors/fwknop-known-answers.tsv");
    std::fs::read_to_string(&p).ok()
}

fn key(kind: &str, value: &str) -> SecretBytes {
    match kind {
        "text" => SecretBytes::new(value.as_bytes().to_vec()),
        "base64" => SecretBytes::new(
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .unwrap(),
        ),
        other => panic!("unknown key kind {other}"),
    }
}

#[test]
fn fwknop_known_answer_packets() {
    let Some(text) = vectors() else {
        let line = "SKIPPED fwknop_known_answer_packets: ../shared/reference/vectors/fwknop-known-answers.tsv is not beside the checkout";
        eprintln!("{line}");
        if let Some(p) = std::env::var_os("KAGI_SKIP_LOG") {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
                });
        }
        return;
    };
    let mut rows = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = rows.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (mut accepted, mut rejected) = (0, 0);
    for row in rows {
        let f: Vec<&str> = row.split('\t').collect();
        let name = f[col("name")];
        let keys = StanzaKeys {
            enc_key: key(f[col("enc_key_kind")], f[col("enc_key")]),
            hmac: match f[col("hmac_key_kind")] {
                "none" => None,
                kind => Some(HmacKey::new(
                    kagi_spa::access_conf::parse_digest(f[col("hmac_digest")]).unwrap(),
                    key(kind, f[col("hmac_key")]).expose(),
                )),
            },
            legacy_iv: f[col("encryption_mode")] == "legacy",
        };
        let packet = f[col("packet")];
        let result = open(packet, &keys).and_then(|o| {
            // Access messages must also parse as an access spec (the daemon acts on it).
            if o.message.msg_type != kagi_spa::MessageType::Command {
                AccessSpec::parse(&o.message.message)?;
            }
            Ok(o)
        });
        match f[col("expected")] {
            "accept" => {
                let o = result.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
                assert_eq!(o.encoded, f[col("expected_plaintext")], "{name}");
                // Our encoder reproduces the fields byte for byte, and our packets open.
                assert_eq!(
                    o.message.encode_fields(),
                    o.encoded,
                    "{name}: re-encoding differs"
                );
                let resealed = seal(&o.message, o.digest, &keys, [9; 8]).unwrap();
                assert_eq!(open(&resealed, &keys).unwrap().message, o.message, "{name}");
                accepted += 1;
            }
            "reject" => {
                assert!(result.is_err(), "{name}: accepted a packet fwknopd refuses");
                rejected += 1;
            }
            other => panic!("{name}: unknown expectation {other}"),
        }
    }
    assert_eq!((accepted, rejected), (42, 8));
}
