//! `kagi status`, `kagi operator ...`, `kagi policy ...`, `kagi token ...`.

use std::io::BufRead;

use clap::Subcommand;
use kagi_client::segment;
use serde_json::{json, Value};

use crate::output::{fields, s, Fail, Out};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Make the master key, split it into unseal shares, and make a root token (with an HSM
    /// seal: no shares, the HSM key is the master key).
    Init {
        /// Number of shares (Shamir).
        #[arg(long, requires = "threshold")]
        shares: Option<u8>,
        /// Shares needed to unseal (Shamir).
        #[arg(long, requires = "shares")]
        threshold: Option<u8>,
        #[command(flatten)]
        out: Out,
    },
    /// Give one unseal share (read from stdin when not given).
    Unseal {
        share: Option<String>,
        /// Discard the shares given so far.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Forget the master key and every KEK until unsealed again.
    Seal {
        #[command(flatten)]
        out: Out,
    },
    /// Re-wrap every key under a new master key: the configured HSM key (--to pkcs11) or a
    /// new Shamir-split key (--to shamir --shares N --threshold M, shares shown once).
    MigrateSeal {
        #[arg(long, value_parser = ["pkcs11", "shamir"])]
        to: String,
        #[arg(long, requires = "threshold")]
        shares: Option<u8>,
        #[arg(long, requires = "shares")]
        threshold: Option<u8>,
        #[command(flatten)]
        out: Out,
    },
    /// Write a consistent, integrity-protected snapshot of the key store to FILE (key
    /// material stays wrapped by the master key).
    Backup {
        file: std::path::PathBuf,
        /// Overwrite FILE.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Load a backup into an empty, uninitialized key service (Shamir: then unseal with the
    /// backed-up deployment's shares, which verify the backup before anything is written).
    Restore {
        file: std::path::PathBuf,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or replace a policy from a TOML file (- for stdin).
    Write {
        name: String,
        file: String,
        #[command(flatten)]
        out: Out,
    },
    /// List policies.
    List {
        #[command(flatten)]
        out: Out,
    },
    /// Show a policy.
    Show {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Delete a policy.
    Delete {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Would IDENTITY reach SERVICE at a time with a device posture, and by which rule?
    /// Evaluates a perimeter policy file (docs/perimeter-policy.md); applies nothing.
    Test {
        /// Perimeter policy (TOML).
        #[arg(long)]
        perimeter: std::path::PathBuf,
        /// Identity name.
        #[arg(long)]
        identity: String,
        /// Service name.
        #[arg(long)]
        service: String,
        /// When (RFC 3339; default now).
        #[arg(long)]
        at: Option<String>,
        /// Device posture claim: os=, os_version=, disk_encryption=, agent_version=.
        #[arg(long = "posture", value_name = "K=V")]
        posture: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token carrying policies.
    Create {
        /// A policy (repeat for several).
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        /// Lifetime, e.g. 24h.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Revoke a token.
    Revoke {
        token: String,
        #[command(flatten)]
        out: Out,
    },
}

fn human_status(v: &Value) -> String {
    fields(
        v,
        &[
            "initialized",
            "sealed",
            "seal_type",
            "threshold",
            "shares",
            "progress",
            "node",
            "version",
        ],
    )
}

pub async fn status(conn: &Conn, out: &Out) -> Result<(), Fail> {
    let v: Value = conn.client()?.get("/v1/sys/status").await?;
    out.print(&v, human_status);
    Ok(())
}

pub async fn operator(conn: &Conn, cmd: OperatorCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        OperatorCmd::Init {
            shares,
            threshold,
            out,
        } => {
            let v: Value = c
                .post(
                    "/v1/sys/init",
                    &json!({"shares": shares, "threshold": threshold}),
                )
                .await?;
            out.print(&v, |v| {
                let mut t = String::new();
                for (i, sh) in v["shares"].as_array().into_iter().flatten().enumerate() {
                    t.push_str(&format!("Unseal share {}: {}\n", i + 1, s(sh)));
                }
                t.push_str(&format!("Root token: {}\n\n", s(&v["root_token"])));
                if v["shares"].as_array().is_none_or(|a| a.is_empty()) {
                    t.push_str("The master key is the HSM's: the key service is unsealed, and unseals by itself at every start.\n");
                } else {
                    t.push_str(&format!(
                        "The key service is sealed. Give {} of these shares with `kagi operator unseal`.\nKeep each share with a different person; kagi does not keep them.\n",
                        s(&v["threshold"])
                    ));
                }
                t
            });
        }
        OperatorCmd::Unseal { share, reset, out } => {
            let share = match share {
                Some(s) => Some(s),
                None if reset => None,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    let l = line.trim().to_string();
                    if l.is_empty() {
                        return Err(Fail(
                            "no share given: pass it as an argument or on stdin".into(),
                        ));
                    }
                    Some(l)
                }
            };
            let v: Value = c
                .post("/v1/sys/unseal", &json!({"share": share, "reset": reset}))
                .await?;
            out.print(&v, human_status);
        }
        OperatorCmd::Seal { out } => {
            let v: Value = c.post("/v1/sys/seal", &json!({})).await?;
            out.print(&v, human_status);
        }
        OperatorCmd::MigrateSeal {
            to,
            shares,
            threshold,
            out,
        } => {
            let v: Value = c
                .post(
                    "/v1/sys/migrate-seal",
                    &json!({"to": to, "shares": shares, "threshold": threshold}),
                )
                .await?;
            out.print(&v, |v| {
                let mut t = String::new();
                for (i, sh) in v["shares"].as_array().into_iter().flatten().enumerate() {
                    t.push_str(&format!("New unseal share {}: {}\n", i + 1, s(sh)));
                }
                t.push_str(&format!(
                    "Every key is now wrapped by the {} seal. Change [seal] in the config to match before the next restart.\n",
                    s(&v["status"]["seal_type"])
                ));
                t
            });
        }
        OperatorCmd::Backup { file, force, out } => {
            if file.exists() && !force {
                return Err(Fail(format!(
                    "{} exists: pass --force to overwrite it",
                    file.display()
                )));
            }
            let v: Value = c.get("/v1/sys/backup").await?;
            let body = serde_json::to_vec(&v).map_err(|e| Fail(e.to_string()))?;
            write_file_atomically(&file, &body)?;
            let summary = json!({
                "file": file.display().to_string(),
                "created_at": v["created_at"],
                "keys": v["snapshot"]["keys"].as_array().map_or(0, |a| a.len()),
                "bytes": body.len(),
            });
            out.print(&summary, |v| {
                format!(
                    "backup of {} keys written to {} ({} bytes)\n",
                    v["keys"],
                    s(&v["file"]),
                    v["bytes"]
                )
            });
        }
        OperatorCmd::Restore { file, out } => {
            let text = std::fs::read(&file)
                .map_err(|e| Fail(format!("cannot read {}: {e}", file.display())))?;
            let b: Value = serde_json::from_slice(&text)
                .map_err(|e| Fail(format!("{} is not a kagi backup: {e}", file.display())))?;
            let v: Value = c.post("/v1/sys/restore", &b).await?;
            out.print(&v, human_status);
        }
    }
    Ok(())
}

/// Writes `data` to a private temporary file beside `path`, syncs it and renames it into place.
fn write_file_atomically(path: &std::path::Path, data: &[u8]) -> Result<(), Fail> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".kagi-")
        .tempfile_in(dir)
        .map_err(|e| Fail(format!("cannot write in {}: {e}", dir.display())))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| Fail(format!("cannot write {}: {}", path.display(), e.error)))?;
    Ok(())
}

pub async fn policy(conn: &Conn, cmd: PolicyCmd) -> Result<(), Fail> {
    if let PolicyCmd::Test {
        perimeter,
        identity,
        service,
        at,
        posture,
        out,
    } = cmd
    {
        return perimeter_test(
            &perimeter,
            &identity,
            &service,
            at.as_deref(),
            &posture,
            &out,
        );
    }
    let c = conn.client()?;
    match cmd {
        PolicyCmd::Write { name, file, out } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Fail(format!("cannot read {file}: {e}")))?
            };
            let v: Value = c
                .put(
                    &format!("/v1/policies/{}", segment(&name)),
                    &json!({"policy": text}),
                )
                .await?;
            out.print(&v, |v| {
                format!(
                    "policy {} written ({} rules)",
                    s(&v["name"]),
                    s(&v["rules"])
                )
            });
        }
        PolicyCmd::List { out } => {
            let v: Value = c.get("/v1/policies").await?;
            out.print(&v, |v| {
                v["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}\n", s(&p["name"])))
                    .collect()
            });
        }
        PolicyCmd::Show { name, out } => {
            let v: Value = c.get(&format!("/v1/policies/{}", segment(&name))).await?;
            out.print(&v, |v| s(&v["policy"]));
        }
        PolicyCmd::Delete { name, out } => {
            let v: Value = c
                .delete(&format!("/v1/policies/{}", segment(&name)))
                .await?;
            out.print(&v, |_| format!("policy {name} deleted"));
        }
        PolicyCmd::Test { .. } => {}
    }
    Ok(())
}

/// `kagi policy test`: one perimeter decision, explained; exits 0 whether allowed or not.
fn perimeter_test(
    file: &std::path::Path,
    identity: &str,
    service: &str,
    at: Option<&str>,
    posture: &[String],
    out: &Out,
) -> Result<(), Fail> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Fail(format!("cannot read {}: {e}", file.display())))?;
    let policy = kagi_sdp::policy::PerimeterPolicy::parse(&text)
        .map_err(|e| Fail(format!("{}: {e}", file.display())))?;
    let now = match at {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .map_err(|_| Fail(format!("--at {t:?} is not an RFC 3339 time")))?,
        None => jiff::Timestamp::now(),
    };
    let posture =
        kagi_sdp::policy::Posture::from_claims(posture).map_err(|e| Fail(e.to_string()))?;
    let d = policy.decide(&kagi_sdp::policy::Request {
        identity,
        service,
        now,
        posture: &posture,
    });
    let v = json!({
        "identity": identity,
        "service": service,
        "at": now.to_string(),
        "allowed": d.allowed,
        "rule": d.rule,
        "reason": d.reason,
    });
    out.print(&v, |v| {
        format!(
            "{}: {} ({})\n",
            if v["allowed"] == true {
                "allow"
            } else {
                "deny"
            },
            s(&v["reason"]),
            v["rule"].as_str().unwrap_or("default")
        )
    });
    Ok(())
}

pub async fn token(conn: &Conn, cmd: TokenCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        TokenCmd::Create { policies, ttl, out } => {
            let v: Value = c
                .post("/v1/tokens", &json!({"policies": policies, "ttl": ttl}))
                .await?;
            out.print(&v, |v| {
                fields(v, &["token", "accessor", "policies", "expires_at"])
            });
        }
        TokenCmd::Revoke { token, out } => {
            let v: Value = c
                .post("/v1/tokens/revoke", &json!({"token": token}))
                .await?;
            out.print(&v, |_| "token revoked".into());
        }
    }
    Ok(())
}
