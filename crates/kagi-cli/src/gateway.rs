//! `kagi gateway`: the perimeter's enforcement point. Mutual TLS in (the client certificate's
//! subject is the identity), one request line naming a service, the perimeter policy's
//! decision, then a TCP splice to the one address the policy names for that service — the
//! gateway connects nowhere else. Live tunnels are re-decided every second and whenever the
//! policy changes, so a revoked identity loses its connections within seconds.
//!
//! Two ways to get the policy: a file (`policy = ...`, re-read when it changes), or a
//! controller (`controller = ...` with the identity `kagi enroll` gave this gateway): then the
//! gateway long-polls the controller for the perimeter state, refuses certificates that are
//! not an identity's current one or belong to a revoked identity, hides its TLS port behind
//! native SPA for enrolled clients (`[spa]`), and when the controller is unreachable keeps
//! enforcing the last state it got for `grace`, then fails closed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use kagi_sdp::control::{hex_bytes, ControlAnswer, ControlRequest, SyncState, SPA_GATEWAY};
use kagi_sdp::policy::{Decision, PerimeterPolicy, Posture, Request};
use kagi_sdp::tunnel::{answer, ConnectRequest, MAX_LINE};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::control_client::{self as cc, IdentityDir, SPLICE_BUF};
use crate::output::Fail;
use crate::perimeter_audit::{Event, Recorder};

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Gateway settings (TOML): listen, audit, and either cert/key/client_ca/policy files or
    /// controller/identity_dir (docs/perimeter-controller.md).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    /// TLS address to listen on.
    listen: SocketAddr,
    /// PEM certificate chain and key of the gateway (file mode).
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// PEM CA that signs client certificates (file mode).
    client_ca: Option<PathBuf>,
    /// Perimeter policy file (docs/perimeter-policy.md), re-read when it changes (file mode).
    policy: Option<PathBuf>,
    /// The controller's TLS address, or a list of controllers sharing one state (tried in
    /// turn when one is unreachable) (controller mode).
    controller: Option<Controllers>,
    /// This gateway's identity from `kagi enroll` (controller mode).
    identity_dir: Option<PathBuf>,
    /// How long to keep enforcing the last state while the controller is unreachable
    /// (default 5m); after that every tunnel is refused and closed.
    grace: Option<String>,
    /// Native SPA in front of the TLS port for enrolled clients (controller mode).
    spa: Option<crate::spad::EmbeddedSpaConfig>,
    /// Default-deny egress for this host in nftables: new outbound connections only to the
    /// policy's service addresses and the controller (default false).
    #[serde(default)]
    egress: bool,
    /// SQLite audit chain of this gateway's decisions (`kagi audit verify --db FILE`).
    audit: PathBuf,
    /// Ed25519 seed file (hex) that signs the chain's checkpoints; created if absent
    /// (default in controller mode: `audit.key` in the identity directory).
    audit_key: Option<PathBuf>,
    /// Node name in audit records (default: the host name).
    node: Option<String>,
}

/// `controller = "A"` or `controller = ["A", "B"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Controllers {
    One(String),
    Many(Vec<String>),
}

impl Controllers {
    fn list(&self) -> Vec<String> {
        match self {
            Self::One(a) => vec![a.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a sync request may take (the controller holds it up to 10 s).
const SYNC_LIMIT: Duration = Duration::from_secs(20);

/// An egress destination: address, protocol, port.
type Destination = (std::net::IpAddr, kagi_spa::Proto, u16);

/// A tunnel in use, re-decided while it lives.
struct Live {
    who: Who,
    service: String,
    posture: Posture,
    abort: tokio::task::AbortHandle,
}

/// A client, from its certificate.
#[derive(Clone)]
struct Who {
    identity: String,
    serial: String,
}

/// What the gateway enforces.
struct Perimeter {
    policy: PerimeterPolicy,
    /// Controller mode: each enrolled identity's current certificate serial.
    serials: Option<HashMap<String, String>>,
    revoked: HashSet<String>,
}

/// The controller link's health (controller mode).
struct Link {
    grace: Duration,
    /// Since when the controller has been unreachable.
    down_since: Mutex<Option<Instant>>,
}

struct State {
    /// Replaced when the gateway renews its certificate (controller mode).
    acceptor: RwLock<tokio_rustls::TlsAcceptor>,
    /// None until the first sync (controller mode): everything is refused.
    perimeter: RwLock<Option<Arc<Perimeter>>>,
    link: Option<Link>,
    live: Mutex<HashMap<u64, Live>>,
    audit: Arc<Recorder>,
    /// Kernel egress allow-list and its fixed part (the controller), when enabled.
    egress: Option<(kagi_firewall::Egress, Vec<Destination>)>,
}

fn deny(rule: &str, reason: String) -> Decision {
    Decision {
        allowed: false,
        rule: Some(rule.to_string()),
        reason,
    }
}

impl State {
    fn perimeter(&self) -> Option<Arc<Perimeter>> {
        self.perimeter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy's decision, after the checks only a controller's state can make.
    fn decide(&self, who: &Who, service: &str, posture: &Posture) -> Decision {
        if let Some(link) = &self.link {
            let down = *link.down_since.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = down.filter(|t| t.elapsed() > link.grace) {
                return deny(
                    "grace",
                    format!(
                        "the controller has been unreachable for {} s, longer than the {} s grace period",
                        t.elapsed().as_secs(),
                        link.grace.as_secs()
                    ),
                );
            }
        }
        let Some(p) = self.perimeter() else {
            return Decision {
                allowed: false,
                rule: None,
                reason: "the gateway has no perimeter state from its controller yet".into(),
            };
        };
        if p.revoked.contains(&who.identity) {
            return deny("revoked", format!("{} is revoked", who.identity));
        }
        if let Some(serials) = &p.serials {
            match serials.get(&who.identity) {
                None => return deny("enrollment", format!("{} is not enrolled", who.identity)),
                Some(s) if !kagi_crypto::ct_eq(s.as_bytes(), who.serial.as_bytes()) => {
                    return deny(
                        "certificate",
                        format!(
                            "this certificate of {} was replaced by a newer one",
                            who.identity
                        ),
                    )
                }
                Some(_) => {}
            }
        }
        p.policy.decide(&Request {
            identity: &who.identity,
            service,
            now: jiff::Timestamp::now(),
            posture,
        })
    }

    fn install(&self, p: Perimeter) {
        self.apply_egress(Some(&p.policy));
        *self.perimeter.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(p));
    }

    /// Lets new outbound connections reach only the controller and `policy`'s services.
    fn apply_egress(&self, policy: Option<&PerimeterPolicy>) {
        let Some((egress, fixed)) = &self.egress else {
            return;
        };
        let mut allow = fixed.clone();
        for (name, addr) in policy.iter().flat_map(|p| p.service_addresses()) {
            match addr.parse::<SocketAddr>() {
                Ok(a) => allow.push((a.ip(), kagi_spa::Proto::Tcp, a.port())),
                Err(_) => {
                    tracing::warn!(service = name, %addr, "egress needs an IP address; this service stays unreachable")
                }
            }
        }
        match egress.apply(&allow) {
            Ok(()) => tracing::info!(destinations = allow.len(), "egress allow-list applied"),
            Err(e) => tracing::error!(error = %e, "cannot apply the egress allow-list"),
        }
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

/// Where the policy comes from.
enum Source {
    File(PathBuf),
    Controller {
        id: Box<IdentityDir>,
        controllers: Vec<String>,
        dir: PathBuf,
        tls: kagi_server::config::TlsConfig,
        spa: Option<Arc<RwLock<kagi_spa::native_decision::NativeGateway>>>,
    },
}

pub async fn run(a: GatewayArgs) -> Result<(), Fail> {
    crate::output::init_logging();
    let text = std::fs::read_to_string(&a.config)
        .map_err(|e| Fail(format!("cannot read {}: {e}", a.config.display())))?;
    let cfg: GatewayConfig = toml::from_str(&text)
        .map_err(|e| Fail(format!("config {}: {}", a.config.display(), e.message())))?;
    let bad = |m: &str| Fail(format!("config {}: {m}", a.config.display()));
    let mut spa_gate = None;
    let mut controller_spa_port = 62201;
    let (tls, source, initial, link) = match (&cfg.controller, &cfg.identity_dir) {
        (Some(controllers), Some(dir)) => {
            let controllers = controllers.list();
            if controllers.is_empty() {
                return Err(bad("controller lists no address"));
            }
            for c in &controllers {
                cc::server_name(c)?;
            }
            if cfg.policy.is_some() || cfg.cert.is_some() {
                return Err(bad(
                    "with a controller, leave out policy, cert, key and client_ca",
                ));
            }
            let id = IdentityDir::load(dir)?;
            controller_spa_port = id.profile.controller_spa_port;
            let grace = kagi_keys::duration::parse_seconds(cfg.grace.as_deref().unwrap_or("5m"))
                .map_err(|e| bad(&format!("grace: {e}")))?;
            let spa = match &cfg.spa {
                Some(s) => {
                    let key = match &s.key_file {
                        Some(f) => crate::spad::load_spa_key(f, false)?,
                        None => kagi_crypto::hpke::HpkeKeyPair::from_private(
                            id.spa.private_bytes().expose(),
                        )
                        .map_err(|e| Fail(e.to_string()))?,
                    };
                    let (gate, clients) = s.gate(key, SPA_GATEWAY, cfg.listen.port())?;
                    spa_gate = Some(gate);
                    Some(clients)
                }
                None => None,
            };
            let tls = kagi_server::config::TlsConfig {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
                client_ca: Some(dir.join("ca.pem")),
            };
            let link = Link {
                grace: Duration::from_secs(grace),
                down_since: Mutex::new(None),
            };
            (
                tls.clone(),
                Source::Controller {
                    id: Box::new(id),
                    controllers,
                    dir: dir.clone(),
                    tls,
                    spa,
                },
                None,
                Some(link),
            )
        }
        (None, None) => {
            let (Some(cert), Some(key), Some(ca), Some(policy)) =
                (&cfg.cert, &cfg.key, &cfg.client_ca, &cfg.policy)
            else {
                return Err(bad(
                    "give cert, key, client_ca and policy, or controller and identity_dir",
                ));
            };
            if cfg.spa.is_some() {
                return Err(bad("[spa] needs a controller; in file mode run kagi spad"));
            }
            let p = Perimeter {
                policy: load_policy(policy).map_err(Fail)?,
                serials: None,
                revoked: HashSet::new(),
            };
            let tls = kagi_server::config::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: Some(ca.clone()),
            };
            (tls, Source::File(policy.clone()), Some(Arc::new(p)), None)
        }
        _ => return Err(bad("controller and identity_dir go together")),
    };
    let acceptor = kagi_server::mtls_acceptor(&tls, &[b"kagi-connect/1"]).map_err(Fail)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Fail(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let audit_key = cfg
        .audit_key
        .clone()
        .or_else(|| cfg.identity_dir.as_ref().map(|d| d.join("audit.key")));
    let audit = Arc::new(Recorder::open(
        &cfg.audit,
        cfg.node.clone(),
        audit_key.as_deref(),
    )?);
    let egress = if cfg.egress {
        let mut fixed = Vec::new();
        if let Some(c) = &cfg.controller {
            let port = controller_spa_port;
            for c in c.list() {
                let a: SocketAddr = c
                    .parse()
                    .map_err(|_| bad("egress needs each controller as IP:PORT"))?;
                fixed.push((a.ip(), kagi_spa::Proto::Tcp, a.port()));
                fixed.push((a.ip(), kagi_spa::Proto::Udp, port));
            }
        }
        Some((kagi_firewall::Egress::default(), fixed))
    } else {
        None
    };
    let state = Arc::new(State {
        egress,
        acceptor: RwLock::new(acceptor),
        perimeter: RwLock::new(initial),
        link,
        live: Mutex::new(HashMap::new()),
        audit,
    });

    // Before the first state arrives: the controller only (or, in file mode, the policy).
    let initial_policy = state.perimeter();
    state.apply_egress(initial_policy.as_deref().map(|p| &p.policy));
    tokio::spawn(redecide(state.clone()));
    match source {
        Source::File(path) => drop(tokio::spawn(watch_file(state.clone(), path))),
        Source::Controller {
            id,
            controllers,
            dir,
            tls,
            spa,
        } => drop(tokio::spawn(sync(
            state.clone(),
            *id,
            controllers,
            dir,
            tls,
            spa,
        ))),
    }
    let spa_task = spa_gate.map(|mut g| {
        g.audit = Some(state.audit.clone());
        tokio::spawn(crate::spad::serve(g))
    });
    tracing::info!(listen = %cfg.listen, "kagi gateway listening");
    let mut next_id = 0u64;
    crate::server_cmd::accept_until_shutdown(&listener, |tcp, peer| {
        next_id += 1;
        let acceptor = state
            .acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (state, id) = (state.clone(), next_id);
        tokio::spawn(async move {
            if let Err(why) = tunnel(acceptor, tcp, peer, state.clone(), id).await {
                tracing::info!(%peer, verdict = "refused", reason = %why, "gateway decision");
            }
            state
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    })
    .await;
    // The SPA task saw the same signal; wait for it to remove its nftables table.
    if let Some(t) = spa_task {
        let _ = t.await;
    }
    if let Some((egress, _)) = &state.egress {
        if let Err(e) = egress.remove() {
            tracing::warn!(error = %e, "cannot remove the egress table");
        }
    }
    Ok(())
}

/// File mode: re-reads the policy when its file changes.
async fn watch_file(state: Arc<State>, path: PathBuf) {
    let mut seen = mtime(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = mtime(&path);
        if now != seen {
            seen = now;
            match load_policy(&path) {
                Ok(policy) => {
                    state.install(Perimeter {
                        policy,
                        serials: None,
                        revoked: HashSet::new(),
                    });
                    tracing::info!("perimeter policy reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new policy refused; keeping the last good one")
                }
            }
        }
    }
}

/// Controller mode: long-polls the controller for the perimeter state; installs each new
/// state (keeping the last good one if a policy does not parse) and the SPA client keys.
async fn sync(
    state: Arc<State>,
    mut id: IdentityDir,
    controllers: Vec<String>,
    dir: PathBuf,
    tls: kagi_server::config::TlsConfig,
    spa: Option<Arc<RwLock<kagi_spa::native_decision::NativeGateway>>>,
) {
    let mut cfg = match id.tls(kagi_sdp::control::ALPN) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.0, "cannot use this gateway's identity; failing closed");
            return;
        }
    };
    let Some(link) = &state.link else { return };
    let set_down = |down: bool| {
        let mut d = link.down_since.lock().unwrap_or_else(|p| p.into_inner());
        match (down, d.is_some()) {
            (true, false) => *d = Some(Instant::now()),
            (false, true) => *d = None,
            _ => {}
        }
    };
    // Not yet synced counts as unreachable from the start.
    set_down(true);
    let mut version = 0u64;
    // The controller in use; the next one in the list after a failure (they share a state).
    let mut current = 0usize;
    loop {
        id.profile.controller = controllers[current % controllers.len()].clone();
        // Short-lived certificate: renew at two thirds of its life, same key, and serve the
        // new one to clients from the next connection on.
        if id.renewal_due() {
            match id.renew(&dir).await {
                Ok(()) => {
                    match (
                        kagi_server::mtls_acceptor(&tls, &[b"kagi-connect/1"]),
                        id.tls(kagi_sdp::control::ALPN),
                    ) {
                        (Ok(a), Ok(c)) => {
                            *state.acceptor.write().unwrap_or_else(|p| p.into_inner()) = a;
                            cfg = c;
                            tracing::info!(expires_at = %id.profile.expires_at, "gateway certificate renewed");
                        }
                        (Err(e), _) => tracing::error!(error = %e, "renewed certificate unusable"),
                        (_, Err(e)) => {
                            tracing::error!(error = %e.0, "renewed certificate unusable")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e.0, "cannot renew the gateway certificate yet"),
            }
        }
        if let Err(e) = id.knock_controller() {
            tracing::warn!(error = %e.0, "cannot knock on the controller");
        }
        // After an outage ask for everything: the answer comes at once (no long poll), so
        // the link counts as up again without waiting for the next change.
        let down = link
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let req = ControlRequest::Sync {
            since: if down { 0 } else { version },
        };
        match cc::request(&id.profile.controller, cfg.clone(), &req, SYNC_LIMIT).await {
            Ok(ControlAnswer::Sync(s)) => {
                set_down(false);
                let v = s.version;
                match perimeter_from(&s) {
                    Ok(p) => {
                        if let Some(g) = &spa {
                            let keys = s.clients.iter().filter_map(|c| {
                                hex_bytes::<32>("spa key", &c.spa_public_key)
                                    .ok()
                                    .map(|k| (c.identity.clone(), k))
                            });
                            crate::spad::set_clients(g, SPA_GATEWAY, keys);
                        }
                        state.install(p);
                        tracing::info!(version = v, "perimeter state from the controller");
                    }
                    Err(e) => {
                        tracing::warn!(version = v, error = %e, "controller state refused; keeping the last good one")
                    }
                }
                version = v;
            }
            Ok(_) => set_down(false),
            Err(e) => {
                set_down(true);
                tracing::warn!(controller = %id.profile.controller, error = %e.0, "controller unreachable; enforcing the last state within the grace period");
                current += 1;
                // Try the next controller at once; pause after a full round.
                if current.is_multiple_of(controllers.len()) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn perimeter_from(s: &SyncState) -> Result<Perimeter, String> {
    Ok(Perimeter {
        policy: PerimeterPolicy::parse(&s.policy).map_err(|e| e.to_string())?,
        serials: Some(
            s.clients
                .iter()
                .map(|c| (c.identity.clone(), c.cert_serial.clone()))
                .collect(),
        ),
        revoked: s.revoked.iter().cloned().collect(),
    })
}

/// Re-decides every live tunnel every half second and closes those no longer allowed.
async fn redecide(state: Arc<State>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let mut closed = Vec::new();
        let live: Vec<(u64, Who, String, Posture)> = state
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, l)| (*k, l.who.clone(), l.service.clone(), l.posture.clone()))
            .collect();
        for (k, who, service, posture) in live {
            let d = state.decide(&who, &service, &posture);
            if !d.allowed {
                if let Some(l) = state
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&k)
                {
                    l.abort.abort();
                }
                closed.push((who.identity, service, d));
            }
        }
        for (identity, service, d) in closed {
            let reason = d.reason;
            tracing::info!(%identity, %service, verdict = "closed", rule = ?d.rule, %reason, "gateway decision");
            let _ = state
                .audit
                .record(Event {
                    operation: "perimeter.revoke",
                    identity: &identity,
                    peer: None,
                    service: &service,
                    outcome: kagi_audit::Outcome::Denied,
                    reason: format!("live tunnel closed: {reason}"),
                    extra: &[("rule", d.rule.unwrap_or_else(|| "default".into()))],
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
    let (identity, serial) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::controller::ca::peer_identity(c.as_ref()))
        .ok_or("the client certificate has no subject common name")?;
    let who = Who {
        identity: identity.clone(),
        serial,
    };
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
    let d = state.decide(&who, &req.service, &posture);
    let rule = d.rule.clone().unwrap_or_else(|| "default".into());
    let recorded = state
        .audit
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
    let target = state
        .perimeter()
        .as_ref()
        .and_then(|p| p.policy.service_address(&req.service).map(str::to_string))
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
        let r = tokio::io::copy_bidirectional_with_sizes(
            &mut stream,
            &mut upstream,
            SPLICE_BUF,
            SPLICE_BUF,
        )
        .await;
        let _ = tx.send(r);
    });
    state.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id,
        Live {
            who,
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
        .audit
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
