//! `kagi key ...`

use clap::Subcommand;
use kagi_client::segment;
use serde_json::{json, Value};

use crate::output::{fields, s, Fail, Out};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create a key.
    Create {
        /// Key name.
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Rotate automatically this often (e.g. 90d).
        #[arg(long = "rotation-period")]
        rotation_period: Option<String>,
        /// Key type: aes256-gcm (default) or fpe.
        #[arg(long = "type")]
        key_type: Option<String>,
        /// Directions the key works in: encrypt-decrypt (default), encrypt or decrypt.
        #[arg(long)]
        usage: Option<String>,
        #[command(flatten)]
        out: Out,
    },
    /// List keys.
    List {
        #[command(flatten)]
        out: Out,
    },
    /// Show a key.
    Show {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Add a new version; old versions keep decrypting.
    Rotate {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// The kill switch: refuse every operation with the key.
    Disable {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Undo `disable`.
    Enable {
        name: String,
        #[command(flatten)]
        out: Out,
    },
    /// Destroy the key after a pending window (default 30 days).
    ScheduleDeletion {
        name: String,
        /// Days until destruction; 0 destroys now (dev servers, or allow_immediate_deletion).
        #[arg(long = "pending-days")]
        pending_days: Option<u32>,
        #[command(flatten)]
        out: Out,
    },
    /// Stop a scheduled deletion (the key comes back disabled).
    CancelDeletion {
        name: String,
        #[command(flatten)]
        out: Out,
    },
}

fn human_key(v: &Value) -> String {
    let mut t = fields(
        v,
        &[
            "name",
            "id",
            "key_type",
            "state",
            "usage",
            "current_version",
            "created_at",
            "rotation_period",
            "next_rotation",
            "deletion_date",
            "destroyed_at",
            "description",
        ],
    );
    if let Some(vs) = v["versions"].as_array() {
        t.push_str("versions\n");
        for x in vs {
            t.push_str(&format!(
                "  v{}  {}\n",
                s(&x["version"]),
                s(&x["created_at"])
            ));
        }
    }
    t
}

pub async fn run(conn: &Conn, cmd: KeyCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    let (v, out): (Value, Out) = match cmd {
        KeyCmd::Create { name, description, rotation_period, key_type, usage, out } => (
            c.post("/v1/keys", &json!({"name": name, "description": description, "rotation_period": rotation_period, "key_type": key_type, "usage": usage})).await?,
            out,
        ),
        KeyCmd::List { out } => {
            let v: Value = c.get("/v1/keys").await?;
            out.print(&v, |v| {
                let mut t = format!("{:<32} {:<17} {:>7}  {}\n", "NAME", "STATE", "VERSION", "TYPE");
                for k in v["keys"].as_array().into_iter().flatten() {
                    t.push_str(&format!("{:<32} {:<17} {:>7}  {}\n", s(&k["name"]), s(&k["state"]), s(&k["current_version"]), s(&k["key_type"])));
                }
                t
            });
            return Ok(());
        }
        KeyCmd::Show { name, out } => (c.get(&format!("/v1/keys/{}", segment(&name))).await?, out),
        KeyCmd::Rotate { name, out } => (c.post(&format!("/v1/keys/{}/rotate", segment(&name)), &json!({})).await?, out),
        KeyCmd::Disable { name, out } => (c.post(&format!("/v1/keys/{}/disable", segment(&name)), &json!({})).await?, out),
        KeyCmd::Enable { name, out } => (c.post(&format!("/v1/keys/{}/enable", segment(&name)), &json!({})).await?, out),
        KeyCmd::ScheduleDeletion { name, pending_days, out } => (
            c.post(&format!("/v1/keys/{}/schedule-deletion", segment(&name)), &json!({"pending_days": pending_days})).await?,
            out,
        ),
        KeyCmd::CancelDeletion { name, out } => (c.post(&format!("/v1/keys/{}/cancel-deletion", segment(&name)), &json!({})).await?, out),
    };
    out.print(&v, human_key);
    Ok(())
}
