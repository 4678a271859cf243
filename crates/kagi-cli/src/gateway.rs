//! `kagi gateway`: the perimeter's enforcement point. Mutual TLS in (the client certificate's
//! subject is the identity), one request line naming a service, the perimeter policy's
//! decision, then a TCP splice to the one address the policy names for that service — the
//! gateway connects nowhere else. Live tunnels are re-decided every second and whenever the
//! policy file changes, so a revoked identity loses its connections within seconds. Put
//! `kagi spad` with a `[native]` section in front to hide the TLS port behind SPA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use kagi_sdp::policy::{PerimeterPolicy, Posture, Request};
use kagi_sdp::tunnel::{answer, ConnectRequest, MAX_LINE};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::output::Fail;

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Gateway settings (TOML): listen, cert, key, client_ca, policy.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    /// TLS address to listen on.
    listen: SocketAddr,
    /// PEM certificate chain and key of the gateway.
    cert: PathBuf,
    key: PathBuf,
    /// PEM CA that signs client certificates.
    client_ca: PathBuf,
    /// Perimeter policy file (docs/perimeter-policy.md), re-read when it changes.
    policy: PathBuf,
    /// SQLite audit chain of this gateway's decisions (`kagi audit verify --db FILE`).
    audit: PathBuf,
    /// Node name in audit records (default: the host name).
    node: Option<String>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A tunnel in use, re-decided while it lives.
struct Live {
    identity: String,
    service: String,
    posture: Posture,
    abort: tokio::task::AbortHandle,
}

struct State {
    policy: RwLock<Arc<PerimeterPolicy>>,
    live: Mutex<HashMap<u64, Live>>,
    audit: kagi_audit::AuditLog,
    node: String,
}

/// One perimeter event for the audit chain, in the key operations' record format.
struct Event<'a> {
    operation: &'static str,
    identity: &'a str,
    peer: Option<SocketAddr>,
    service: &'a str,
    outcome: kagi_audit::Outcome,
    reason: String,
    extra: &'a [(&'a str, String)],
}

impl State {
    async fn record(&self, e: Event<'_>) -> Result<u64, kagi_audit::AuditError> {
        let mut context = std::collections::BTreeMap::new();
        context.insert("service".to_string(), e.service.to_string());
        for (k, v) in e.extra {
            context.insert(k.to_string(), v.clone());
        }
        self.audit
            .record(kagi_audit::AuditEvent {
                time: kagi_audit::AuditEvent::now_string(),
                node: self.node.clone(),
                principal: format!("cert:{}", e.identity),
                source: e.peer.map(|p| p.ip().to_string()),
                operation: e.operation.to_string(),
                key: None,
                key_version: None,
                context,
                justification: None,
                request_id: hex::encode(kagi_crypto::random_array::<12>()),
                outcome: e.outcome,
                reason: Some(e.reason),
            })
            .await
    }
}

fn load_policy(path: &std::path::Path) -> Result<PerimeterPolicy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PerimeterPolicy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn mtime(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub async fn run(a: GatewayArgs) -> Result<(), Fail> {
    crate::output::init_logging();
    let text = std::fs::read_to_string(&a.config)
        .map_err(|e| Fail(format!("cannot read {}: {e}", a.config.display())))?;
    let cfg: GatewayConfig = toml::from_str(&text)
        .map_err(|e| Fail(format!("config {}: {}", a.config.display(), e.message())))?;
    let policy = load_policy(&cfg.policy).map_err(Fail)?;
    let acceptor = kagi_server::mtls_acceptor(
        &kagi_server::config::TlsConfig {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            client_ca: Some(cfg.client_ca.clone()),
        },
        &[b"kagi-connect/1"],
    )
    .map_err(Fail)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Fail(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let store: Arc<dyn kagi_store::AuditStore> = Arc::new(
        kagi_store::sqlite::SqliteAuditStore::open(&cfg.audit).map_err(|e| {
            Fail(format!(
                "cannot open the audit store {}: {e}",
                cfg.audit.display()
            ))
        })?,
    );
    let audit = kagi_audit::AuditLog::start(store)
        .map_err(|e| Fail(format!("cannot start the audit log: {e}")))?;
    let state = Arc::new(State {
        policy: RwLock::new(Arc::new(policy)),
        live: Mutex::new(HashMap::new()),
        audit,
        node: cfg
            .node
            .clone()
            .unwrap_or_else(crate::server_cmd::host_name),
    });

    tokio::spawn(watch(state.clone(), cfg.policy.clone()));
    tracing::info!(listen = %cfg.listen, "kagi gateway listening");
    let shutdown = crate::server_cmd::shutdown_signal();
    tokio::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        next_id += 1;
        let (acceptor, state, id) = (acceptor.clone(), state.clone(), next_id);
        let task = tokio::spawn(async move {
            if let Err(why) = tunnel(acceptor, tcp, peer, state.clone(), id).await {
                tracing::info!(%peer, verdict = "refused", reason = %why, "gateway decision");
            }
            state
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        drop(task);
    }
}

/// Re-reads the policy when its file changes and re-decides every live tunnel every second.
async fn watch(state: Arc<State>, path: PathBuf) {
    let mut seen = mtime(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = mtime(&path);
        if now != seen {
            seen = now;
            match load_policy(&path) {
                Ok(p) => {
                    *state.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                    tracing::info!("perimeter policy reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new policy refused; keeping the last good one")
                }
            }
        }
        let policy = state
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = jiff::Timestamp::now();
        let mut closed = Vec::new();
        state
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, l| {
                let d = policy.decide(&Request {
                    identity: &l.identity,
                    service: &l.service,
                    now,
                    posture: &l.posture,
                });
                if !d.allowed {
                    l.abort.abort();
                    closed.push((l.identity.clone(), l.service.clone(), d.reason));
                }
                d.allowed
            });
        for (identity, service, reason) in closed {
            tracing::info!(%identity, %service, verdict = "closed", %reason, "gateway decision");
            let _ = state
                .record(Event {
                    operation: "perimeter.revoke",
                    identity: &identity,
                    peer: None,
                    service: &service,
                    outcome: kagi_audit::Outcome::Denied,
                    reason: format!("live tunnel closed: {reason}"),
                    extra: &[],
                })
                .await;
        }
    }
}

async fn tunnel(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    id: u64,
) -> Result<(), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(kagi_server::subject_cn)
        .ok_or("the client certificate has no subject common name")?;
    let mut stream = BufReader::new(tls);
    let mut line = String::new();
    let read = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        (&mut stream).take(MAX_LINE as u64).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return Err(format!("{identity} sent no request line"));
    }
    let req = match ConnectRequest::parse(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = stream
                .write_all(answer(Err(&e.to_string())).as_bytes())
                .await;
            return Err(format!("{identity}: {e}"));
        }
    };
    let posture = req.posture();
    let policy = state
        .policy
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let d = policy.decide(&Request {
        identity: &identity,
        service: &req.service,
        now: jiff::Timestamp::now(),
        posture: &posture,
    });
    let rule = d.rule.clone().unwrap_or_else(|| "default".into());
    let recorded = state
        .record(Event {
            operation: "perimeter.connect",
            identity: &identity,
            peer: Some(peer),
            service: &req.service,
            outcome: if d.allowed {
                kagi_audit::Outcome::Success
            } else {
                kagi_audit::Outcome::Denied
            },
            reason: d.reason.clone(),
            extra: &[("rule", rule)],
        })
        .await;
    if !d.allowed || recorded.is_err() {
        // Fail closed: no tunnel without its audit record.
        let reason = if d.allowed {
            "the audit log cannot record this connection".to_string()
        } else {
            d.reason.clone()
        };
        let _ = stream.write_all(answer(Err(&reason)).as_bytes()).await;
        tracing::info!(%peer, %identity, service = %req.service, verdict = "deny", rule = ?d.rule, %reason, "gateway decision");
        return Ok(());
    }
    // Egress: only the address the policy names for this service.
    let target = policy
        .service_address(&req.service)
        .ok_or("the policy has no address for this service")?
        .to_string();
    let mut upstream =
        match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            _ => {
                let why = format!("service {} at {target} is unreachable", req.service);
                let _ = stream.write_all(answer(Err(&why)).as_bytes()).await;
                return Err(why);
            }
        };
    stream
        .write_all(answer(Ok(())).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%peer, %identity, service = %req.service, verdict = "allow", rule = ?d.rule, "gateway decision");
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let splice = tokio::spawn(async move {
        let r = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        let _ = tx.send(r);
    });
    state.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id,
        Live {
            identity: identity.clone(),
            service: req.service.clone(),
            posture,
            abort: splice.abort_handle(),
        },
    );
    let (up, down) = match rx.await {
        Ok(Ok(b)) => b,
        _ => (0, 0),
    };
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(%peer, %identity, service = %req.service, bytes_up = up, bytes_down = down, duration_ms = ms, "tunnel closed");
    let _ = state
        .record(Event {
            operation: "perimeter.close",
            identity: &identity,
            peer: Some(peer),
            service: &req.service,
            outcome: kagi_audit::Outcome::Success,
            reason: "tunnel closed".into(),
            extra: &[
                ("bytes_up", up.to_string()),
                ("bytes_down", down.to_string()),
                ("duration_ms", ms.to_string()),
            ],
        })
        .await;
    Ok(())
}
