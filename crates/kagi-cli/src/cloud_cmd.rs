//! `kagi xks ...` and `kagi aws ...`: credentials for the cloud key protocols the key service
//! speaks on its own listener (the XKS proxy API and the AWS-KMS-compatible API).

use clap::Subcommand;
use serde_json::{json, Value};

use crate::output::{fields, Fail, Out};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum XksCmd {
    /// Create a logical XKS key store under a path prefix; prints its SigV4 credential.
    AddStore {
        /// Path prefix, e.g. `acme` (XKS URIs are then /acme/kms/xks/v1/...).
        prefix: String,
        /// Policy its requests are checked against (repeat for several; default: a new
        /// policy `xks/PREFIX` allowing encrypt, decrypt and describe on every key).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Accept its requests only over mutual TLS from a client certificate with this CN
        /// (AWS KMS presents `cks.kms.<region>.amazonaws.com`).
        #[arg(long)]
        mtls_subject: Option<String>,
        /// Requests per second before ThrottlingException.
        #[arg(long)]
        max_rps: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// Print the JSON file the AWS KMS console imports for this key store.
    Config {
        /// Path prefix.
        prefix: String,
    },
    /// Add a new credential; the previous one keeps working until the next rotation.
    RotateCredential {
        /// Path prefix.
        prefix: String,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(Subcommand, Debug)]
pub enum AwsCmd {
    /// Create SigV4 credentials for the AWS-KMS-compatible API, carrying kagi policies.
    CreateCredentials {
        /// A policy (repeat for several).
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        #[command(flatten)]
        out: Out,
    },
}

fn human_store(v: &Value) -> String {
    fields(
        v,
        &["prefix", "uri_path", "access_key_id", "secret_access_key"],
    )
}

/// `kagi xks ...`.
pub async fn xks(conn: &Conn, cmd: XksCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        XksCmd::AddStore {
            prefix,
            policies,
            mtls_subject,
            max_rps,
            out,
        } => {
            let v: Value = c
                .post(
                    "/v1/xks/stores",
                    &json!({"prefix": prefix, "policies": policies, "mtls_subject": mtls_subject, "max_rps": max_rps}),
                )
                .await?;
            out.print(&v, human_store);
        }
        XksCmd::Config { prefix } => {
            let v: Value = c.post("/v1/xks/config", &json!({"prefix": prefix})).await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        XksCmd::RotateCredential { prefix, out } => {
            let v: Value = c
                .post("/v1/xks/rotate-credential", &json!({"prefix": prefix}))
                .await?;
            out.print(&v, human_store);
        }
    }
    Ok(())
}

/// `kagi aws ...`.
pub async fn aws(conn: &Conn, cmd: AwsCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        AwsCmd::CreateCredentials { policies, out } => {
            let v: Value = c
                .post("/v1/aws/credentials", &json!({"policies": policies}))
                .await?;
            out.print(&v, |v| {
                fields(v, &["access_key_id", "secret_access_key", "policies"])
            });
        }
    }
    Ok(())
}
