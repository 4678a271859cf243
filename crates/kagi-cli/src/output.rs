//! Output: human text by default, JSON with `-o json`; errors as one line on stderr.

use serde_json::Value;

/// A failure to report: one sentence.
#[derive(Debug)]
pub struct Fail(pub String);

impl From<kagi_client::ClientError> for Fail {
    fn from(e: kagi_client::ClientError) -> Self {
        Fail(e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail(e.to_string())
    }
}

/// Prints `error: msg` and exits 1.
pub fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}

/// `-o human|json`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Out {
    /// Output format: human or json.
    #[arg(short = 'o', long = "output", default_value = "human", value_parser = ["human", "json"])]
    pub format: String,
}

impl Out {
    /// True for `-o json`.
    pub fn json(&self) -> bool {
        self.format == "json"
    }

    /// Prints `v` as JSON, or via `human` as text.
    pub fn print(&self, v: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json() {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            let s = human(v);
            if !s.is_empty() {
                println!("{}", s.trim_end());
            }
        }
    }
}

/// A JSON scalar as text (`-` for null).
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Aligned `key: value` lines.
pub fn fields(v: &Value, names: &[&str]) -> String {
    let w = names.iter().map(|n| n.len()).max().unwrap_or(0);
    names
        .iter()
        .map(|n| format!("{n:<w$}  {}\n", s(&v[*n])))
        .collect()
}

/// Parses repeated `K=V` arguments into a JSON object.
pub fn context(args: &[String]) -> Result<Value, Fail> {
    let ctx = kagi_keys::EncryptionContext::from_kv_args(args).map_err(|e| Fail(e.to_string()))?;
    Ok(serde_json::to_value(ctx.pairs()).unwrap_or_default())
}

/// Logs to stderr, filtered by `KAGI_LOG` (default info), coloured only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KAGI_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Raises the soft open-files limit to the hard limit. Each tunnel holds two sockets, so the
/// common soft default of 1,024 would stop a gateway or `kagi connect` near 500 tunnels (and a
/// server near 1,000 connections) with EMFILE.
pub fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current < l.maximum || (l.maximum.is_none() && l.current.is_some()) {
        let want = Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, want) {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
        }
    }
}
