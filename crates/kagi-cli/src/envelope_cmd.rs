//! `kagi encrypt` / `kagi decrypt`: envelope encryption of files, pipes and trees (seed steps
//! 4-5). The format and the key-service calls live in `kagi_client::envelope`; this module
//! only chooses inputs and outputs, shows progress, and never leaves a partial output file.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kagi_client::envelope::{CacheLimits, Envelope};
use kagi_keys::EncryptionContext;

use crate::output::Fail;
use crate::Conn;

/// Inputs above this size get a progress bar (when stderr is a terminal).
const PROGRESS_OVER: u64 = 64 << 20;
/// File name suffix of envelope files in tree mode.
const SUFFIX: &str = "kagi";

/// Opt-in data-key cache limits (the AWS Encryption SDK's).
#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    /// Reuse data keys for up to this long (e.g. 30s, 5m); turns the cache on.
    #[arg(long, value_name = "DURATION")]
    cache_max_age: Option<String>,
    /// Messages per cached data key.
    #[arg(long, value_name = "N", requires = "cache_max_age")]
    cache_max_messages: Option<u64>,
    /// Plaintext bytes per cached data key.
    #[arg(long, value_name = "BYTES", requires = "cache_max_age")]
    cache_max_bytes: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct EncryptArgs {
    /// The key (KEK) to wrap the data key under.
    #[arg(long)]
    key: String,
    /// Encryption context pair, stored in the header and bound to the data.
    #[arg(long = "context", value_name = "K=V")]
    context: Vec<String>,
    /// Output file (default stdout); with -r, the output directory.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
    /// Encrypt every file under the input directory into the -o directory (NAME -> NAME.kagi).
    #[arg(short = 'r', long)]
    recursive: bool,
    #[command(flatten)]
    cache: CacheArgs,
    /// Input file, or - for stdin (default); with -r, a directory.
    input: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DecryptArgs {
    /// Refuse the file unless its context has this pair.
    #[arg(long = "require-context", value_name = "K=V")]
    require_context: Vec<String>,
    /// Output file (default stdout); with -r, the output directory. Written to a temporary
    /// file, renamed only on success.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
    /// Decrypt every NAME.kagi under the input directory into the -o directory (-> NAME).
    #[arg(short = 'r', long)]
    recursive: bool,
    #[command(flatten)]
    cache: CacheArgs,
    /// Input file, or - for stdin (default); with -r, a directory.
    input: Option<PathBuf>,
}

fn envelope(conn: &Conn, c: &CacheArgs) -> Result<Envelope, Fail> {
    let env = Envelope::new(conn.client()?);
    let Some(age) = &c.cache_max_age else {
        return Ok(env);
    };
    let secs = kagi_keys::duration::parse_seconds(age)
        .map_err(|e| Fail(format!("--cache-max-age: {e}")))?;
    let mut l = CacheLimits::new(Duration::from_secs(secs));
    if let Some(n) = c.cache_max_messages {
        l.max_messages = n;
    }
    if let Some(b) = c.cache_max_bytes {
        l.max_bytes = b;
    }
    Ok(env.with_cache(l))
}

fn is_stdio(p: &Option<PathBuf>) -> bool {
    p.as_ref().is_none_or(|p| p.as_os_str() == "-")
}

type Input = Box<dyn Read + Send>;

/// Opens the input; returns it and its size when it is a regular file.
fn open_input(p: &Option<PathBuf>) -> Result<(Input, Option<u64>), Fail> {
    if is_stdio(p) {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let p = p.as_deref().unwrap_or(Path::new("-"));
    let f =
        std::fs::File::open(p).map_err(|e| Fail(format!("cannot read {}: {e}", p.display())))?;
    let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    Ok((Box::new(f), size))
}

/// Where output goes: stdout, or a temporary file beside the destination that is renamed
/// into place by `commit` and removed if dropped before.
enum Output {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        w: std::io::BufWriter<tempfile::NamedTempFile>,
        dest: PathBuf,
    },
}

impl Output {
    fn open(dest: Option<&Path>, force: bool) -> Result<Self, Fail> {
        let Some(dest) = dest.filter(|d| d.as_os_str() != "-") else {
            return Ok(Output::Stdout(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout(),
            )));
        };
        if dest.exists() && !force {
            return Err(Fail(format!(
                "{} exists: pass --force to overwrite it",
                dest.display()
            )));
        }
        let dir = dest
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
        Ok(Output::File {
            w: std::io::BufWriter::with_capacity(1 << 20, tmp),
            dest: dest.to_path_buf(),
        })
    }

    fn writer(&mut self) -> &mut (dyn Write + Send) {
        match self {
            Output::Stdout(w) => w,
            Output::File { w, .. } => w,
        }
    }

    /// Flushes, syncs and renames into place.
    fn commit(self) -> Result<(), Fail> {
        match self {
            Output::Stdout(mut w) => Ok(w.flush()?),
            Output::File { w, dest } => {
                let tmp = w
                    .into_inner()
                    .map_err(|e| Fail(format!("cannot write {}: {}", dest.display(), e.error())))?;
                tmp.as_file().sync_all()?;
                tmp.persist(&dest)
                    .map_err(|e| Fail(format!("cannot write {}: {}", dest.display(), e.error)))?;
                Ok(())
            }
        }
    }
}

/// A byte progress bar on stderr, only when stderr is a terminal.
fn progress(total: u64, always: bool) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || (!always && total <= PROGRESS_OVER) {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn with_bar(input: Input, bar: &Option<ProgressBar>) -> Input {
    match bar {
        Some(b) => Box::new(b.wrap_read(input)),
        None => input,
    }
}

pub async fn encrypt(conn: &Conn, a: EncryptArgs) -> Result<(), Fail> {
    let ctx = EncryptionContext::from_kv_args(&a.context).map_err(|e| Fail(e.to_string()))?;
    let env = envelope(conn, &a.cache)?;
    if a.recursive {
        let job = Arc::new(Job::Encrypt { key: a.key, ctx });
        return tree(env, job, &a.input, &a.output, a.force).await;
    }
    let (input, size) = open_input(&a.input)?;
    let bar = size.and_then(|s| progress(s, false));
    let mut input = with_bar(input, &bar);
    let mut out = Output::open(a.output.as_deref(), a.force)?;
    match size {
        Some(n) => {
            env.encrypt_sized(&a.key, &ctx, n, &mut input, out.writer())
                .await
        }
        None => env.encrypt(&a.key, &ctx, &mut input, out.writer()).await,
    }
    .map_err(|e| Fail(e.to_string()))?;
    out.commit()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

pub async fn decrypt(conn: &Conn, a: DecryptArgs) -> Result<(), Fail> {
    let required =
        EncryptionContext::from_kv_args(&a.require_context).map_err(|e| Fail(e.to_string()))?;
    let env = envelope(conn, &a.cache)?;
    if a.recursive {
        let job = Arc::new(Job::Decrypt { required });
        return tree(env, job, &a.input, &a.output, a.force).await;
    }
    let (input, size) = open_input(&a.input)?;
    let bar = size.and_then(|s| progress(s, false));
    let mut input = with_bar(input, &bar);
    let mut out = Output::open(a.output.as_deref(), a.force)?;
    env.decrypt_requiring(&required, &mut input, out.writer())
        .await
        .map_err(|e| Fail(e.to_string()))?;
    out.commit()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// What tree mode does to each file.
enum Job {
    Encrypt { key: String, ctx: EncryptionContext },
    Decrypt { required: EncryptionContext },
}

impl Job {
    /// The output path for `rel`, or None if this file is not for this job.
    fn target(&self, out_dir: &Path, rel: &Path) -> Option<PathBuf> {
        match self {
            Job::Encrypt { .. } => {
                let mut name = rel.as_os_str().to_os_string();
                name.push(".");
                name.push(SUFFIX);
                Some(out_dir.join(name))
            }
            Job::Decrypt { .. } => {
                (rel.extension()? == SUFFIX).then(|| out_dir.join(rel.with_extension("")))
            }
        }
    }

    async fn run(
        &self,
        env: &Envelope,
        src: &Path,
        dest: &Path,
        force: bool,
        bar: &Option<ProgressBar>,
    ) -> Result<(), Fail> {
        let f = std::fs::File::open(src).map_err(|e| Fail(format!("cannot read: {e}")))?;
        let size = f.metadata()?.len();
        let mut input = with_bar(Box::new(f), bar);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut out = Output::open(Some(dest), force)?;
        match self {
            Job::Encrypt { key, ctx } => env
                .encrypt_sized(key, ctx, size, &mut input, out.writer())
                .await
                .map(drop),
            Job::Decrypt { required } => env
                .decrypt_requiring(required, &mut input, out.writer())
                .await
                .map(drop),
        }
        .map_err(|e| Fail(e.to_string()))?;
        out.commit()
    }
}

/// Regular files under `dir` (recursively), as paths relative to it, with their total size.
fn walk(dir: &Path) -> Result<(Vec<PathBuf>, u64), Fail> {
    let mut files = Vec::new();
    let mut total = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let entries = std::fs::read_dir(&here)
            .map_err(|e| Fail(format!("cannot read directory {}: {e}", here.display())))?;
        for e in entries {
            let e = e?;
            let t = e.file_type()?;
            let r = rel.join(e.file_name());
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                total += e.metadata()?.len();
                files.push(r);
            }
        }
    }
    files.sort();
    Ok((files, total))
}

/// Tree mode: every file under `input` into `output`, a few at a time, under one progress bar.
async fn tree(
    env: Envelope,
    job: Arc<Job>,
    input: &Option<PathBuf>,
    output: &Option<PathBuf>,
    force: bool,
) -> Result<(), Fail> {
    let (Some(src), Some(dst)) = (input.as_deref(), output.as_deref()) else {
        return Err(Fail(
            "-r needs an input directory and -o OUTPUT_DIRECTORY".into(),
        ));
    };
    if !src.is_dir() {
        return Err(Fail(format!("{} is not a directory", src.display())));
    }
    std::fs::create_dir_all(dst)
        .map_err(|e| Fail(format!("cannot create {}: {e}", dst.display())))?;
    let (s, d) = (src.canonicalize()?, dst.canonicalize()?);
    if d.starts_with(&s) {
        return Err(Fail(format!(
            "the output directory {} is inside the input directory {}",
            dst.display(),
            src.display()
        )));
    }
    let (files, total) = walk(src)?;
    let todo: VecDeque<(PathBuf, PathBuf)> = files
        .iter()
        .filter_map(|rel| job.target(dst, rel).map(|t| (src.join(rel), t)))
        .collect();
    let count = todo.len();
    let skipped = files.len() - count;
    let todo = Arc::new(Mutex::new(todo));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let bar = progress(total, true);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (env, job, todo, failures, bar) = (
            env.clone(),
            job.clone(),
            todo.clone(),
            failures.clone(),
            bar.clone(),
        );
        tasks.spawn(async move {
            loop {
                let next = todo.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((from, to)) = next else { return };
                if let Err(e) = job.run(&env, &from, &to, force, &bar).await {
                    let line = format!("{}: {}", from.display(), e.0);
                    match &bar {
                        Some(b) => b.println(&line),
                        None => eprintln!("{line}"),
                    }
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| Fail(format!("a worker stopped: {e}")))?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).len();
    let verb = match *job {
        Job::Encrypt { .. } => "encrypted",
        Job::Decrypt { .. } => "decrypted",
    };
    let mut summary = format!(
        "{verb} {} of {count} files into {}",
        count - failed,
        dst.display()
    );
    if skipped > 0 {
        summary.push_str(&format!(" ({skipped} without .{SUFFIX} skipped)"));
    }
    if let Some(s) = env.cache_stats() {
        summary.push_str(&format!(
            "; data-key cache: {} hits, {} misses",
            s.encrypt_hits + s.decrypt_hits,
            s.encrypt_misses + s.decrypt_misses
        ));
    }
    if failed > 0 {
        return Err(Fail(format!("{failed} of {count} files failed; {summary}")));
    }
    eprintln!("{summary}");
    Ok(())
}
