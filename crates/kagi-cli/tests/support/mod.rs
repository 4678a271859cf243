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
        let mut cmd = Command::new(kagi_bin());
        cmd.args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
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
        let child = Command::new(kagi_bin())
            .args(["server", "--config"])
            .arg(file)
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
