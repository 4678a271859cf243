//! `kagi encrypt` / `kagi decrypt`: envelope encryption of files and pipes (seed steps 4-5).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kagi_client::envelope::{open_stream, seal_stream, Header, DEFAULT_SEGMENT};
use kagi_keys::EncryptionContext;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::output::{context, Fail};
use crate::Conn;

#[derive(clap::Args, Debug)]
pub struct EncryptArgs {
    /// The key (KEK) to wrap the data key under.
    #[arg(long)]
    key: String,
    /// Encryption context pair, stored in the header and bound to the data.
    #[arg(long = "context", value_name = "K=V")]
    context: Vec<String>,
    /// Output file (default stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Input file, or - for stdin (default).
    input: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// Refuse the file unless its context has this pair.
    #[arg(long = "require-context", value_name = "K=V")]
    require_context: Vec<String>,
    /// Output file (default stdout). Written to a temporary file, renamed only on success.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Input file, or - for stdin (default).
    input: Option<PathBuf>,
}

fn open_input(p: &Option<PathBuf>) -> Result<Box<dyn Read>, Fail> {
    match p {
        None => Ok(Box::new(std::io::stdin().lock())),
        Some(p) if p.as_os_str() == "-" => Ok(Box::new(std::io::stdin().lock())),
        Some(p) => Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(p)
                .map_err(|e| Fail(format!("cannot read {}: {e}", p.display())))?,
        ))),
    }
}

/// Runs `write` into `out` (a temporary file renamed into place on success, removed on
/// failure) or stdout.
fn with_output(
    out: &Option<PathBuf>,
    force: bool,
    write: impl FnOnce(&mut dyn Write) -> Result<(), Fail>,
) -> Result<(), Fail> {
    match out {
        None => write(&mut std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        )),
        Some(p) if p.as_os_str() == "-" => write(&mut std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        )),
        Some(p) => {
            if p.exists() && !force {
                return Err(Fail(format!(
                    "{} exists: pass --force to overwrite it",
                    p.display()
                )));
            }
            let dir = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".kagi-")
                .tempfile_in(dir)
                .map_err(|e| {
                    Fail(format!(
                        "cannot create a temporary file in {}: {e}",
                        dir.display()
                    ))
                })?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp);
            write(&mut w)?;
            let tmp = w
                .into_inner()
                .map_err(|e| Fail(format!("cannot write {}: {}", p.display(), e.error())))?;
            tmp.as_file().sync_all()?;
            tmp.persist(p)
                .map_err(|e| Fail(format!("cannot write {}: {}", p.display(), e.error)))?;
            Ok(())
        }
    }
}

pub async fn encrypt(conn: &Conn, a: EncryptArgs) -> Result<(), Fail> {
    let ctx_json = context(&a.context)?;
    let ctx = EncryptionContext::from_kv_args(&a.context).map_err(|e| Fail(e.to_string()))?;
    let v: Value = conn
        .client()?
        .post(
            "/v1/datakey/generate",
            &json!({"key": a.key, "context": ctx_json}),
        )
        .await?;
    let dek = Zeroizing::new(
        B64.decode(v["plaintext"].as_str().unwrap_or(""))
            .map_err(|_| Fail("the key service returned no data key".into()))?,
    );
    let wrapped = B64
        .decode(v["ciphertext"].as_str().unwrap_or(""))
        .map_err(|_| Fail("the key service returned no wrapped key".into()))?;
    let header = Header {
        segment: DEFAULT_SEGMENT,
        wrapped_dek: wrapped,
        context: ctx.canonical(),
        prefix: kagi_crypto::random_array(),
    };
    let mut input = open_input(&a.input)?;
    tokio::task::block_in_place(|| {
        with_output(&a.output, a.force, |w| {
            seal_stream(&dek, &header, &mut input, w).map_err(|e| Fail(e.to_string()))?;
            Ok(())
        })
    })
}

pub async fn decrypt(conn: &Conn, a: DecryptArgs) -> Result<(), Fail> {
    let mut input = open_input(&a.input)?;
    let (header, header_bytes) = Header::read(&mut input).map_err(|e| Fail(e.to_string()))?;
    let ctx = EncryptionContext::from_canonical(&header.context)
        .map_err(|e| Fail(format!("not a valid kagi envelope: {e}")))?;
    let required =
        EncryptionContext::from_kv_args(&a.require_context).map_err(|e| Fail(e.to_string()))?;
    if !ctx.contains_all(&required) {
        return Err(Fail(format!(
            "the file's encryption context {} does not have the required {}",
            serde_json::to_string(ctx.pairs()).unwrap_or_default(),
            serde_json::to_string(required.pairs()).unwrap_or_default()
        )));
    }
    let v: Value = conn
        .client()?
        .post(
            "/v1/datakey/decrypt",
            &json!({"ciphertext": B64.encode(&header.wrapped_dek), "context": ctx.pairs()}),
        )
        .await?;
    let dek = Zeroizing::new(
        B64.decode(v["plaintext"].as_str().unwrap_or(""))
            .map_err(|_| Fail("the key service returned no data key".into()))?,
    );
    tokio::task::block_in_place(|| {
        with_output(&a.output, a.force, |w| {
            open_stream(&dek, &header, &header_bytes, &mut input, w)
                .map_err(|e| Fail(e.to_string()))?;
            Ok(())
        })
    })
}
