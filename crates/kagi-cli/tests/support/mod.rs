//! Drives the real `kagi` binary: servers as child processes, the CLI as a user would.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn kagi_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kagi")
}

/// A running `kagi server`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub token: String,
    pub data_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `kagi server --dev --listen 127.0.0.1:0 --data-dir DIR [extra...]`.
    pub fn dev(data_dir: &Path, extra: &[&str]) -> Server {
        Self::dev_env(data_dir, extra, &[])
    }

    /// As [`dev`](Self::dev), with extra environment variables for the server.
    pub fn dev_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(kagi_bin());
        cmd.args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = String::new();
        let mut token = String::new();
        while addr.is_empty() || token.is_empty() {
            let l = lines
                .next()
                .expect("server exited before printing its exports")
                .unwrap();
            if let Some(a) = l.strip_prefix("export KAGI_ADDR=") {
                addr = a.to_string();
            } else if let Some(t) = l.strip_prefix("export KAGI_TOKEN=") {
                token = t.to_string();
            }
        }
        Server {
            child,
            addr,
            token,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// `kagi server --config FILE`, waiting until it answers.
    pub fn config(file: &Path, addr: &str, data_dir: &Path) -> Server {
        Self::config_env(file, addr, data_dir, &[])
    }

    /// As [`config`](Self::config), with extra environment variables for the server.
    pub fn config_env(file: &Path, addr: &str, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let child = Command::new(kagi_bin())
            .args(["server", "--config"])
            .arg(file)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            addr: addr.to_string(),
            token: String::new(),
            data_dir: data_dir.to_path_buf(),
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.kagi(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server at {} did not come up", self.addr);
    }

    /// Runs the CLI against this server with its root token.
    pub fn kagi(&self, args: &[&str]) -> Output {
        self.kagi_as(&self.token, args)
    }

    /// Runs the CLI with another token.
    pub fn kagi_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(kagi_bin())
            .args(args)
            .env("KAGI_ADDR", &self.addr)
            .env("KAGI_TOKEN", token)
            .env_remove("KAGI_CACERT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kagi(args);
        assert!(
            o.status.success(),
            "kagi {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs the CLI with `-o json` expecting success.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `curl` against this server: returns (status, body).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: &str,
    ) -> (u16, String) {
        let dir = tempfile::tempdir().unwrap();
        let bodyf = dir.path().join("body");
        std::fs::write(&bodyf, body.unwrap_or(b"")).unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg(format!("{}{path}", self.addr))
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", &format!("Content-Type: {content_type}")]);
        if body.is_some() {
            cmd.arg("--data-binary")
                .arg(format!("@{}", bodyf.display()));
        }
        let o = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }
}

/// Asserts a failed command printed exactly one line on stderr, containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "expected one line on stderr, got: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} should contain {needle:?}"
    );
}

/// Is this process root (namespaces, mounts)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reports a test that cannot run here: prints why and, when `KAGI_SKIP_LOG` names a file
/// (scripts/test sets it), appends the reason there so the suite counts it as skipped rather
/// than passed.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(p) = std::env::var_os("KAGI_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// `metric{labels} value` from a Prometheus exposition.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

/// Where a test server keeps its state: the embedded SQLite default, or a fresh PostgreSQL
/// database of its own (dropped when the test ends).
pub enum Backend {
    Sqlite,
    Postgres { url: String, name: String },
}

/// The PostgreSQL role scripts/test creates (TESTING.md); override with KAGI_TEST_PG.
pub fn pg_admin_url() -> String {
    std::env::var("KAGI_TEST_PG")
        .unwrap_or_else(|_| "postgres://kagitest:kagitest@127.0.0.1:5432/kagitest".into())
}

/// `psql` against `url`, one statement, unaligned tuples-only output.
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl Backend {
    /// A fresh PostgreSQL database for `test`, or None (reported as skipped) when PostgreSQL
    /// is not reachable.
    pub fn postgres(test: &str) -> Option<Backend> {
        let admin = pg_admin_url();
        let name = format!(
            "kt_{}_{:x}",
            std::process::id(),
            u64::from_le_bytes(kagi_crypto::random_array())
        );
        if let Err(e) = psql(&admin, &format!("CREATE DATABASE {name}")) {
            skip(
                test,
                &format!("PostgreSQL is not reachable at {admin} ({e}); scripts/test starts it"),
            );
            return None;
        }
        let (base, _) = admin.rsplit_once('/').unwrap();
        Some(Backend::Postgres {
            url: format!("{base}/{name}"),
            name,
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }

    /// Extra `kagi server --dev` arguments for this backend.
    pub fn args(&self) -> Vec<String> {
        match self {
            Backend::Sqlite => vec![],
            Backend::Postgres { url, .. } => vec!["--storage-url".into(), url.clone()],
        }
    }

    /// One value from the key store (`db = "kagi"`) or audit store (`"audit"`) by raw SQL.
    pub fn query(&self, dir: &Path, db: &str, sql: &str) -> String {
        match self {
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(dir.join(format!("{db}.db"))).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                c.query_row(sql, [], |r| {
                    Ok(match r.get_ref(0)? {
                        rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).to_string()
                        }
                        other => format!("{other:?}"),
                    })
                })
                .unwrap()
            }
            Backend::Postgres { url, .. } => psql(url, sql).unwrap(),
        }
    }

    /// Runs a statement against the key store or audit store behind the server's back.
    pub fn execute(&self, dir: &Path, db: &str, sql: &str) {
        match self {
            Backend::Sqlite => {
                let c = rusqlite::Connection::open(dir.join(format!("{db}.db"))).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                c.execute_batch(sql).unwrap();
            }
            Backend::Postgres { url, .. } => {
                psql(url, sql).unwrap();
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres { name, .. } = self {
            let _ = psql(
                &pg_admin_url(),
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

impl Server {
    /// A dev server on `backend`.
    pub fn on(backend: &Backend, data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<String> = backend.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::dev(data_dir, &refs)
    }
}

/// Single-quoted SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A test CA (`ca.pem`), a gateway certificate for `gateway_san` (`gw.pem`, `gw.key`) and a
/// client certificate per name (`NAME.pem`, `NAME.key`, subject CN = NAME) in `d`.
/// A test CA (`ca.pem`) and a server certificate for `sans` (`{server}.pem`, `{server}.key`)
/// in `d`; returns the CA to sign more certificates with.
pub fn test_ca(d: &Path, server: &str, sans: &[&str]) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kagi test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(d.join(format!("{server}.pem")), cert.pem()).unwrap();
    std::fs::write(d.join(format!("{server}.key")), key.serialize_pem()).unwrap();
    issuer
}

pub fn perimeter_certs(d: &Path, gateway_san: &str, clients: &[&str]) {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let issuer = test_ca(d, "gw", &[gateway_san]);
    for who in clients {
        let k = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, *who);
        let c = p.signed_by(&k, &issuer).unwrap();
        std::fs::write(d.join(format!("{who}.pem")), c.pem()).unwrap();
        std::fs::write(d.join(format!("{who}.key")), k.serialize_pem()).unwrap();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it holds or `limit` passes.
pub fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Is `tool` on the PATH?
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// For tests in network namespaces: true (and the test is recorded as skipped, with why)
/// unless running as root with every tool in `tools` installed.
pub fn skip_unless_ready(test: &str, tools: &[&str]) -> bool {
    if !is_root() {
        skip(test, "needs root for network namespaces and nftables");
        return true;
    }
    for t in tools {
        if !have(t) {
            skip(
                test,
                &format!("{t} is not installed (scripts/test installs it)"),
            );
            return true;
        }
    }
    false
}

/// Spawns a prepared `kagi connect` command (stderr as the caller set it) and waits for its
/// `kagi connect: SERVICE on ADDR` line; returns the process and ADDR.
pub fn start_connect(cmd: &mut Command) -> (Proc, String) {
    let mut c = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (Proc(c), addr)
}

/// curl with a cookie jar (the console's session); returns (HTTP status, headers and body).
pub fn curl_jar(jar: &Path, args: &[&str]) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-s", "-i", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Signs in to `server`'s console with `token` (`POST /ui/login`), keeping the session in `jar`.
pub fn console_sign_in(server: &Server, jar: &Path, token: &str) {
    let (st, r) = curl_jar(
        jar,
        &[
            "--data-urlencode",
            &format!("token={token}"),
            &format!("{}/ui/login", server.addr),
        ],
    );
    assert_eq!(st, 303, "console sign-in: {r}");
}
