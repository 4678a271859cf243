//! `kagi datakey ...`: the key service's side of the seed's encrypt and decrypt flows.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::output::{context, fields, Fail, Out};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum DatakeyCmd {
    /// Make a data key: plaintext (to encrypt with, then wipe) and ciphertext (to store).
    Generate {
        /// KEK name.
        name: String,
        /// Encryption context pair, required again to decrypt.
        #[arg(long = "context", value_name = "K=V")]
        context: Vec<String>,
        /// Key Access Justification code.
        #[arg(long)]
        justification: Option<String>,
        /// Return only the wrapped key.
        #[arg(long = "no-plaintext")]
        no_plaintext: bool,
        #[command(flatten)]
        out: Out,
    },
    /// Unwrap a data key.
    Decrypt {
        /// The wrapped key, base64.
        ciphertext: String,
        #[arg(long = "context", value_name = "K=V")]
        context: Vec<String>,
        #[arg(long)]
        justification: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// Re-wrap a data key under another key (or the newest version) without revealing it.
    Reencrypt {
        ciphertext: String,
        /// Destination key.
        #[arg(long)]
        to: String,
        #[arg(long = "context", value_name = "K=V")]
        context: Vec<String>,
        /// Destination context (default: the same).
        #[arg(long = "to-context", value_name = "K=V")]
        to_context: Vec<String>,
        #[arg(long)]
        justification: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

pub async fn run(conn: &Conn, cmd: DatakeyCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        DatakeyCmd::Generate {
            name,
            context: ctx,
            justification,
            no_plaintext,
            out,
        } => {
            let v: Value = c
                .post("/v1/datakey/generate", &json!({"key": name, "context": context(&ctx)?, "justification": justification, "plaintext": !no_plaintext}))
                .await?;
            out.print(&v, |v| {
                fields(
                    v,
                    if no_plaintext {
                        &["key", "key_version", "ciphertext"]
                    } else {
                        &["key", "key_version", "plaintext", "ciphertext"]
                    },
                )
            });
        }
        DatakeyCmd::Decrypt {
            ciphertext,
            context: ctx,
            justification,
            out,
        } => {
            let v: Value = c
                .post("/v1/datakey/decrypt", &json!({"ciphertext": ciphertext, "context": context(&ctx)?, "justification": justification}))
                .await?;
            out.print(&v, |v| fields(v, &["key", "key_version", "plaintext"]));
        }
        DatakeyCmd::Reencrypt {
            ciphertext,
            to,
            context: ctx,
            to_context,
            justification,
            out,
        } => {
            let to_ctx = if to_context.is_empty() {
                Value::Null
            } else {
                context(&to_context)?
            };
            let v: Value = c
                .post(
                    "/v1/datakey/reencrypt",
                    &json!({"ciphertext": ciphertext, "context": context(&ctx)?, "to_key": to, "to_context": to_ctx, "justification": justification}),
                )
                .await?;
            out.print(&v, |v| {
                fields(
                    v,
                    &[
                        "key",
                        "key_version",
                        "ciphertext",
                        "source_key",
                        "source_key_version",
                    ],
                )
            });
        }
    }
    Ok(())
}
