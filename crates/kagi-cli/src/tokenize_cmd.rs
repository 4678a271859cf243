//! `kagi tokenize` and `kagi detokenize`: format-preserving tokens, one per line in input
//! order; `-` (or no values) reads one value per line from stdin, sent in batches.

use std::io::BufRead;

use clap::Args;
use serde_json::{json, Value};

use crate::output::{Fail, Out};
use crate::Conn;

/// Values per request in stdin mode.
const BATCH: usize = 10_000;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// An fpe key (`kagi key create NAME --type fpe`).
    #[arg(long, required_unless_present = "mask")]
    key: Option<String>,
    /// Print irreversible masks (e.g. 4111-11**-****-1111) instead of tokens; no key needed.
    #[arg(long)]
    mask: bool,
    /// pan: leading digits kept (default 6).
    #[arg(long = "keep-first")]
    keep_first: Option<u8>,
    /// pan: trailing digits kept (default 4).
    #[arg(long = "keep-last")]
    keep_last: Option<u8>,
    /// custom: the alphabet's characters, in order (e.g. 0123456789abcdef).
    #[arg(long)]
    alphabet: Option<String>,
    /// pan, mynumber, phone, email, digits, alnum or custom (with --alphabet).
    #[arg(long)]
    template: String,
    /// Per-field tweak, e.g. users.card or a tenant id.
    #[arg(long, default_value = "")]
    tweak: String,
    /// Values; `-` or none: one per line from stdin.
    values: Vec<String>,
    #[command(flatten)]
    out: Out,
}

#[derive(Args, Debug)]
pub struct DetokenizeArgs {
    /// The fpe key the tokens were made with.
    #[arg(long)]
    key: String,
    /// The template they were made with.
    #[arg(long)]
    template: String,
    /// The tweak they were made with.
    #[arg(long, default_value = "")]
    tweak: String,
    /// pan: leading digits the tokens kept (default 6).
    #[arg(long = "keep-first")]
    keep_first: Option<u8>,
    /// pan: trailing digits the tokens kept (default 4).
    #[arg(long = "keep-last")]
    keep_last: Option<u8>,
    /// custom: the alphabet they were made with.
    #[arg(long)]
    alphabet: Option<String>,
    /// The key version they were made with (default: the newest).
    #[arg(long = "key-version")]
    key_version: Option<u32>,
    /// Tokens; `-` or none: one per line from stdin.
    tokens: Vec<String>,
    #[command(flatten)]
    out: Out,
}

/// The arguments, or stdin's lines.
fn inputs(args: Vec<String>) -> Result<Vec<String>, Fail> {
    if !args.is_empty() && args != ["-"] {
        return Ok(args);
    }
    let mut out = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Fail(format!("cannot read stdin: {e}")))?;
        out.push(line.trim_end_matches('\r').to_string());
    }
    Ok(out)
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// `kagi tokenize`.
pub async fn tokenize(conn: &Conn, a: TokenizeArgs) -> Result<(), Fail> {
    let values = inputs(a.values)?;
    if a.mask {
        let t: kagi_token::Template = a
            .template
            .parse()
            .map_err(|e: kagi_token::TokenError| Fail(e.to_string()))?;
        let masks = values
            .iter()
            .enumerate()
            .map(|(i, v)| kagi_token::mask(t, v).map_err(|e| Fail(format!("value {}: {e}", i + 1))))
            .collect::<Result<Vec<_>, _>>()?;
        let v = json!({"template": a.template, "masks": masks});
        a.out.print(&v, |v| strings(v, "masks").join("\n"));
        return Ok(());
    }
    let c = conn.client()?;
    let (mut tokens, mut version) = (Vec::with_capacity(values.len()), Value::Null);
    for chunk in values.chunks(BATCH) {
        let v: Value = c
            .post(
                "/v1/tokenize",
                &json!({"key": a.key, "template": a.template, "tweak": a.tweak,
                        "keep_first": a.keep_first, "keep_last": a.keep_last, "alphabet": a.alphabet, "values": chunk}),
            )
            .await?;
        version = v["key_version"].clone();
        tokens.extend(strings(&v, "tokens"));
    }
    let v = json!({"key": a.key, "key_version": version, "tokens": tokens});
    a.out.print(&v, |v| strings(v, "tokens").join("\n"));
    Ok(())
}

/// `kagi detokenize`.
pub async fn detokenize(conn: &Conn, a: DetokenizeArgs) -> Result<(), Fail> {
    let c = conn.client()?;
    let tokens = inputs(a.tokens)?;
    let mut values = Vec::with_capacity(tokens.len());
    for chunk in tokens.chunks(BATCH) {
        let v: Value = c
            .post(
                "/v1/detokenize",
                &json!({"key": a.key, "template": a.template, "tweak": a.tweak, "key_version": a.key_version,
                        "keep_first": a.keep_first, "keep_last": a.keep_last, "alphabet": a.alphabet, "tokens": chunk}),
            )
            .await?;
        values.extend(strings(&v, "values"));
    }
    let v = json!({"key": a.key, "values": values});
    a.out.print(&v, |v| strings(v, "values").join("\n"));
    Ok(())
}
