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
    }
    Ok(())
}

pub async fn policy(conn: &Conn, cmd: PolicyCmd) -> Result<(), Fail> {
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
    }
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
