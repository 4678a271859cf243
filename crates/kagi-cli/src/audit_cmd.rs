//! `kagi audit tail | export | verify`.

use std::io::{BufRead, Write};

use clap::Subcommand;
use kagi_audit::{AuditRecord, ExportFormat};
use serde_json::{json, Value};

use crate::output::{s, Fail, Out};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Show the newest records.
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        n: u32,
        #[command(flatten)]
        out: Out,
    },
    /// Write every record to stdout.
    Export {
        /// jsonl (verifiable with `audit verify --file`), syslog (RFC 5424) or cef.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Check the hash chain and the signed checkpoints; name the first bad record.
    Verify {
        /// Verify an exported JSON-lines file instead of the server's store.
        #[arg(long, conflicts_with = "db")]
        file: Option<std::path::PathBuf>,
        /// Verify a local SQLite audit store (a gateway's), with its signed checkpoints.
        #[arg(long)]
        db: Option<std::path::PathBuf>,
        /// With --db: every checkpoint must be signed by this Ed25519 public key (hex), the
        /// one the gateway or controller logs at start.
        #[arg(long = "public-key", requires = "db")]
        public_key: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

fn line(r: &Value) -> String {
    format!(
        "{:>6} {} {:<10} {:<22} {:<16} {:<24} {}{}",
        s(&r["seq"]),
        s(&r["time"]),
        s(&r["outcome"]),
        s(&r["operation"]),
        s(&r["key"]),
        s(&r["principal"]),
        r["justification"]
            .as_str()
            .map(|j| format!("[{j}] "))
            .unwrap_or_default(),
        r["reason"].as_str().unwrap_or("")
    )
}

pub async fn run(conn: &Conn, cmd: AuditCmd) -> Result<(), Fail> {
    match cmd {
        AuditCmd::Tail { n, out } => {
            let v: Value = conn.client()?.get(&format!("/v1/audit/tail?n={n}")).await?;
            out.print(&v, |v| {
                v["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| line(r) + "\n")
                    .collect()
            });
        }
        AuditCmd::Export { format } => {
            let fmt: ExportFormat = format.parse().map_err(Fail)?;
            let c = conn.client()?;
            let host = std::env::var("HOSTNAME").unwrap_or_default();
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let mut from = 1u64;
            loop {
                let page: Value = c
                    .get(&format!("/v1/audit/records?from={from}&limit=5000"))
                    .await?;
                for r in page["records"].as_array().into_iter().flatten() {
                    let text = match fmt {
                        ExportFormat::Jsonl => r.to_string(),
                        other => {
                            let rec: AuditRecord =
                                serde_json::from_value(r.clone()).map_err(|e| {
                                    Fail(format!("record {} is malformed: {e}", s(&r["seq"])))
                                })?;
                            if other == ExportFormat::Syslog {
                                kagi_audit::to_syslog(&rec, &host)
                            } else {
                                kagi_audit::to_cef(&rec)
                            }
                        }
                    };
                    writeln!(w, "{text}")?;
                }
                match page["next"].as_u64() {
                    Some(n) => from = n,
                    None => break,
                }
            }
            w.flush()?;
        }
        AuditCmd::Verify {
            db: Some(path),
            public_key,
            out,
            ..
        } => {
            if !path.exists() {
                return Err(Fail(format!("{} does not exist", path.display())));
            }
            let store = kagi_store::sqlite::SqliteAuditStore::open(&path)
                .map_err(|e| Fail(format!("cannot open {}: {e}", path.display())))?;
            use kagi_store::AuditStore;
            let cps = store.checkpoints().map_err(|e| Fail(e.to_string()))?;
            if let Some(pk) = &public_key {
                if let Some(c) = cps
                    .iter()
                    .find(|c| !c.public_key.eq_ignore_ascii_case(pk.trim()))
                {
                    return Err(Fail(format!(
                        "checkpoint at record {} is signed by {}, not by --public-key",
                        c.seq, c.public_key
                    )));
                }
            }
            let mut lines = Vec::new();
            let mut from = 1;
            loop {
                let page = store.read(from, 10_000).map_err(|e| Fail(e.to_string()))?;
                let Some(last) = page.last().map(|(s, _)| *s) else {
                    break;
                };
                lines.extend(page.into_iter().map(|(s, l)| (Some(s), l)));
                from = last + 1;
            }
            let r = kagi_audit::verify(lines, &cps).map_err(|e| Fail(e.to_string()))?;
            out.print(
                &json!({"ok": true, "records": r.records, "last_seq": r.last_seq, "checkpoints": cps.len()}),
                |v| {
                    format!(
                        "audit log verified: {} records, chain intact up to record {}, {} signed checkpoints",
                        s(&v["records"]),
                        s(&v["last_seq"]),
                        s(&v["checkpoints"])
                    )
                },
            );
        }
        AuditCmd::Verify {
            file: Some(path),
            out,
            ..
        } => {
            let f = std::fs::File::open(&path)
                .map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?;
            let mut lines = Vec::new();
            for l in std::io::BufReader::new(f).lines() {
                let l = l.map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?;
                if !l.trim().is_empty() {
                    lines.push((None, l));
                }
            }
            match kagi_audit::verify(lines, &[]) {
                Ok(r) => out.print(&json!({"ok": true, "records": r.records, "last_seq": r.last_seq, "last_hash": r.last_hash}), |v| {
                    format!("audit file verified: {} records, chain intact up to record {}", s(&v["records"]), s(&v["last_seq"]))
                }),
                Err(f) => {
                    if out.json() {
                        out.print(&json!({"ok": false, "bad_seq": f.seq, "reason": f.reason}), |_| String::new());
                    }
                    return Err(Fail(format!("{}: {f}", path.display())));
                }
            }
        }
        AuditCmd::Verify {
            file: None,
            db: None,
            out,
            ..
        } => {
            let v: Value = conn.client()?.get("/v1/audit/verify").await?;
            if v["ok"].as_bool() == Some(true) {
                out.print(&v, |v| {
                    format!(
                        "audit log verified: {} records, chain intact up to record {}, {} signed checkpoints",
                        s(&v["records"]),
                        s(&v["last_seq"]),
                        s(&v["checkpoints"])
                    )
                });
            } else {
                if out.json() {
                    out.print(&v, |_| String::new());
                }
                return Err(Fail(format!(
                    "audit chain broken at record {}: {}",
                    s(&v["bad_seq"]),
                    s(&v["reason"])
                )));
            }
        }
    }
    Ok(())
}
