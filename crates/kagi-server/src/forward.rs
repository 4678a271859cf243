//! Continuous SIEM forwarding of the audit log: syslog over TCP or TLS (RFC 5425 framing:
//! `LENGTH SP MESSAGE`), at least once, with a cursor file that survives restarts.
//!
//! Plain syslog has no acknowledgement, so a record counts as delivered only once it was
//! written on a connection that was still alive [`LAG`] later; the cursor file holds the next
//! record not yet known delivered. A connection that breaks is reopened and everything from the
//! cursor is sent again, so a receiver that stopped mid-stream gets every record, with
//! duplicates only from the last [`LAG`] before the break (each record carries its `seq`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagi_audit::{AuditRecord, ExportFormat};
use kagi_store::AuditStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a written record must stay on a live connection before it counts as delivered.
pub const LAG: Duration = Duration::from_secs(2);
/// Records read from the store at once.
const PAGE: usize = 500;

/// Where and how to forward.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// `tcp://HOST:PORT` or `tls://HOST:PORT`.
    pub to: String,
    /// The cursor file (next record to send).
    pub cursor: PathBuf,
    /// `syslog` (RFC 5424), `cef` or `jsonl`.
    pub format: ExportFormat,
    /// For `tls://`: the CA that signed the receiver's certificate (default: none trusted).
    pub ca_cert: Option<PathBuf>,
    /// HOSTNAME field of syslog lines.
    pub hostname: String,
}

impl ForwardConfig {
    /// Checks the target's form.
    pub fn validate(&self) -> Result<(), String> {
        let rest = self
            .to
            .strip_prefix("tcp://")
            .or_else(|| self.to.strip_prefix("tls://"))
            .ok_or_else(|| {
                format!(
                    "forward target {:?} is not tcp://HOST:PORT or tls://HOST:PORT",
                    self.to
                )
            })?;
        if rest
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("forward target {:?} has no HOST:PORT", self.to));
        }
        if self.to.starts_with("tls://") && self.ca_cert.is_none() {
            return Err("a tls:// forward target needs ca_cert".into());
        }
        Ok(())
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

fn read_cursor(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn write_cursor(path: &std::path::Path, next: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut f, format!("{next}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

async fn connect(cfg: &ForwardConfig) -> std::io::Result<Box<dyn Stream>> {
    let (tls, addr) = match cfg.to.strip_prefix("tls://") {
        Some(a) => (true, a),
        None => (false, cfg.to.trim_start_matches("tcp://")),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let other = |e: String| std::io::Error::other(e);
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    let ca = cfg
        .ca_cert
        .as_ref()
        .ok_or_else(|| other("tls:// needs ca_cert".into()))?;
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let c: rustls_pki_types::CertificateDer<'static> = c.map_err(|e| other(e.to_string()))?;
        roots.add(c).map_err(|e| other(e.to_string()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| other(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| other(e.to_string()))?;
    let s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Box::new(s))
}

/// True while the receiver has not closed the connection (syslog receivers never write, so
/// anything readable is an end of stream or an error).
async fn alive(s: &mut Box<dyn Stream>) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(1), s.read(&mut b))
        .await
        .is_err()
}

fn frame(cfg: &ForwardConfig, seq: u64, line: &str, out: &mut Vec<u8>) {
    let msg = match cfg.format {
        ExportFormat::Jsonl => line.to_string(),
        fmt => match serde_json::from_str::<AuditRecord>(line) {
            Ok(r) if fmt == ExportFormat::Cef => kagi_audit::to_cef(&r),
            Ok(r) => kagi_audit::to_syslog(&r, &cfg.hostname),
            // A record that does not parse is still forwarded, raw, rather than skipped.
            Err(_) => format!("kagi audit record {seq} (unparsed): {line}"),
        },
    };
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Runs the forwarder until the process ends.
pub fn spawn(cfg: ForwardConfig, store: Arc<dyn AuditStore>) {
    tokio::spawn(async move {
        let mut durable = read_cursor(&cfg.cursor);
        let mut saved = durable;
        let mut conn: Option<Box<dyn Stream>> = None;
        let mut next = durable;
        let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut backoff = Duration::from_millis(200);
        loop {
            if conn.is_none() {
                match connect(&cfg).await {
                    Ok(c) => {
                        tracing::info!(to = %cfg.to, from = durable, "audit forwarding connected");
                        conn = Some(c);
                        next = durable;
                        inflight.clear();
                        backoff = Duration::from_millis(200);
                    }
                    Err(e) => {
                        tracing::warn!(to = %cfg.to, error = %e, "audit forwarding cannot connect; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let st = store.clone();
            let rows = tokio::task::spawn_blocking(move || st.read(next, PAGE))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if !rows.is_empty() {
                let mut buf = Vec::with_capacity(rows.len() * 512);
                for (seq, line) in &rows {
                    frame(&cfg, *seq, line, &mut buf);
                }
                if let Err(e) = async {
                    c.write_all(&buf).await?;
                    c.flush().await
                }
                .await
                {
                    tracing::warn!(error = %e, resend_from = durable, "audit forwarding connection lost");
                    conn = None;
                    continue;
                }
                let now = Instant::now();
                for (seq, _) in &rows {
                    inflight.push_back((*seq, now));
                }
                next = rows.last().map_or(next, |r| r.0 + 1);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // What stayed on a live connection for LAG counts as delivered.
            if inflight.front().is_some_and(|(_, t)| t.elapsed() >= LAG) {
                if !alive(c).await {
                    tracing::warn!(
                        resend_from = durable,
                        "audit forwarding receiver closed the connection"
                    );
                    conn = None;
                    continue;
                }
                while let Some(&(seq, t)) = inflight.front() {
                    if t.elapsed() < LAG {
                        break;
                    }
                    durable = seq + 1;
                    inflight.pop_front();
                }
            }
            if durable != saved {
                match write_cursor(&cfg.cursor, durable) {
                    Ok(()) => saved = durable,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot save the audit forwarding cursor")
                    }
                }
            }
        }
    });
}
