//! `kagi controller`: the perimeter's decision point (docs/perimeter-controller.md). It keeps
//! the perimeter state (policy, enrolled identities with their SPA keys and current
//! certificate serials, one-time enrollment tokens) in SQLite, runs an internal CA that issues
//! short-lived certificates, hands gateways the state they enforce (long poll: a change
//! reaches them within a second), and hides its own TLS port behind native SPA. The admin
//! subcommands change the state directly; the running controller notices within 200 ms.

pub mod ca;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kagi_sdp::control::{
    hex_bytes, ClientInfo, ControlAnswer, ControlRequest, EnrollToken, Enrolled, GatewayInfo,
    SyncState, ALPN, MAX_REQUEST, SPA_CONTROLLER,
};
use kagi_sdp::policy::{IdentityKind, PerimeterPolicy};
use kagi_store::perimeter::{EnrolledIdentity, PerimeterStore};
use kagi_store::StoreError;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use zeroize::Zeroizing;

use crate::output::Fail;
use crate::perimeter_audit::{Event, Recorder};
use ca::{Ca, Usage};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = false)]
pub struct ControllerArgs {
    /// Controller settings (TOML): listen, names, state, audit, cert_ttl, [spa].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<ControllerCmd>,
}

#[derive(clap::Subcommand, Debug)]
enum ControllerCmd {
    /// Replace the perimeter policy (validated first; gateways get it within a second).
    SetPolicy {
        /// Policy file (TOML, docs/perimeter-policy.md).
        file: PathBuf,
    },
    /// Create a one-time enrollment token for IDENTITY (printed on stdout).
    Token {
        /// An identity the policy defines.
        identity: String,
        /// How long the token can be redeemed (e.g. 15m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke an enrolled identity: gateways refuse it and close its tunnels.
    Revoke {
        /// The identity.
        identity: String,
    },
    /// The state: version, enrolled identities, pending tokens (JSON).
    Status,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControllerConfig {
    /// TLS address of the control channel.
    listen: SocketAddr,
    /// Host names and addresses clients use to reach it (its certificate's names).
    names: Vec<String>,
    /// The perimeter state (CA, policy, identities, tokens): a SQLite file, or a
    /// `postgres://` URL shared by several controllers.
    state: Option<String>,
    /// Name of an environment variable holding the `postgres://` URL (keeps the password out
    /// of the file); instead of `state`.
    state_url_env: Option<String>,
    /// SQLite audit chain of the controller's decisions.
    audit: PathBuf,
    /// Node name in audit records (default: host name).
    node: Option<String>,
    /// Ed25519 seed file (hex) signing the audit chain's checkpoints; created if absent
    /// (default: the state file's name + `.audit-key`).
    audit_key: Option<PathBuf>,
    /// Lifetime of issued client and gateway certificates (default 24h).
    cert_ttl: Option<String>,
    /// Native SPA in front of the TLS port.
    spa: Option<crate::spad::EmbeddedSpaConfig>,
}

/// Poll interval for changes made by admin commands in another process.
const STATE_POLL: Duration = Duration::from_millis(200);
/// How long a gateway's sync waits for a change before answering "unchanged".
const LONG_POLL: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the controller's own TLS certificate (re-issued at every start).
const SERVER_CERT_TTL: i64 = 30 * 86_400;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn store_fail(e: StoreError) -> Fail {
    Fail(format!("perimeter state: {e}"))
}

fn load_config(path: &Option<PathBuf>) -> Result<ControllerConfig, Fail> {
    let path = path
        .as_ref()
        .ok_or_else(|| Fail("give --config FILE (the controller's settings)".into()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?;
    let cfg: ControllerConfig = toml::from_str(&text)
        .map_err(|e| Fail(format!("config {}: {}", path.display(), e.message())))?;
    if cfg.names.is_empty() {
        return Err(Fail(format!(
            "config {}: names must list at least one host name or address",
            path.display()
        )));
    }
    Ok(cfg)
}

fn cert_ttl(cfg: &ControllerConfig) -> Result<i64, Fail> {
    let s = cfg.cert_ttl.as_deref().unwrap_or("24h");
    let secs = kagi_keys::duration::parse_seconds(s).map_err(|e| Fail(format!("cert_ttl: {e}")))?;
    if !(60..=90 * 86_400).contains(&secs) {
        return Err(Fail("cert_ttl must be between 1m and 90d".into()));
    }
    Ok(secs as i64)
}

/// The CA, created on first use.
fn ensure_ca(store: &PerimeterStore) -> Result<Ca, Fail> {
    if store.meta("ca_cert").map_err(store_fail)?.is_none() {
        let (name, cert, key) = Ca::generate(now()).map_err(Fail)?;
        let key = Zeroizing::new(key);
        // Another process may have won the race; then its CA is the one.
        store
            .init_meta(&[("ca_name", &name), ("ca_cert", &cert), ("ca_key", &key)])
            .map_err(store_fail)?;
    }
    let get = |k: &str| -> Result<String, Fail> {
        store
            .meta(k)
            .map_err(store_fail)?
            .ok_or_else(|| Fail(format!("perimeter state: {k} is missing")))
    };
    let key = Zeroizing::new(get("ca_key")?);
    Ca::load(&get("ca_name")?, &get("ca_cert")?, &key).map_err(Fail)
}

fn actor() -> String {
    format!(
        "admin:{}",
        std::env::var("USER").unwrap_or_else(|_| "local".into())
    )
}

pub async fn run(a: ControllerArgs) -> Result<(), Fail> {
    let cfg = load_config(&a.config)?;
    let store = open_state(&cfg).await?;
    match a.cmd {
        None => serve(cfg, store).await,
        Some(c) => admin(cfg, store, c),
    }
}

async fn open_state(cfg: &ControllerConfig) -> Result<PerimeterStore, Fail> {
    let state = match (&cfg.state, &cfg.state_url_env) {
        (Some(s), None) => s.clone(),
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| Fail(format!("state_url_env: {var} is not set")))?
        }
        _ => return Err(Fail("give one of state and state_url_env".into())),
    };
    if state.starts_with("postgres://") || state.starts_with("postgresql://") {
        PerimeterStore::connect_postgres(&state).await.map_err(|e| {
            Fail(format!(
                "cannot open the perimeter state on PostgreSQL: {e}"
            ))
        })
    } else {
        PerimeterStore::open(std::path::Path::new(&state))
            .map_err(|e| Fail(format!("cannot open the perimeter state {state}: {e}")))
    }
}

fn admin(cfg: ControllerConfig, store: PerimeterStore, c: ControllerCmd) -> Result<(), Fail> {
    match c {
        ControllerCmd::SetPolicy { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Fail(format!("cannot read {}: {e}", file.display())))?;
            PerimeterPolicy::parse(&text).map_err(|e| Fail(format!("{}: {e}", file.display())))?;
            let v = store
                .set_policy(&text, now(), &actor())
                .map_err(store_fail)?;
            println!("{}", serde_json::json!({ "version": v }));
        }
        ControllerCmd::Token { identity, ttl } => {
            let text = store.meta("policy").map_err(store_fail)?.ok_or_else(|| {
                Fail("set a policy first (kagi controller set-policy FILE)".into())
            })?;
            let policy = PerimeterPolicy::parse(&text).map_err(|e| Fail(e.to_string()))?;
            if policy.identity_kind(&identity).is_none() {
                return Err(Fail(format!(
                    "the policy does not define identity {identity}"
                )));
            }
            let ttl = kagi_keys::duration::parse_seconds(&ttl)
                .map_err(|e| Fail(format!("--ttl: {e}")))?;
            let ca = ensure_ca(&store)?;
            let controller_spa = match &cfg.spa {
                Some(s) => controller_spa_key(s)?.public(),
                None => [0u8; 32],
            };
            let one_time = kagi_crypto::hpke::HpkeKeyPair::generate();
            let mut spa_private = Zeroizing::new([0u8; 32]);
            spa_private.copy_from_slice(one_time.private_bytes().expose());
            let token = EnrollToken {
                secret: Zeroizing::new(kagi_crypto::random_array::<32>()),
                ca_pin: ca.pin,
                spa_private,
                controller_spa,
            };
            store
                .add_token(
                    &hex::encode(kagi_crypto::sha256(&token.secret[..])),
                    &identity,
                    &hex::encode(one_time.public()),
                    now() + ttl as i64,
                    now(),
                    &actor(),
                )
                .map_err(store_fail)?;
            println!("{}", token.encode().as_str());
        }
        ControllerCmd::Revoke { identity } => {
            let v = store
                .revoke(&identity, now(), &actor())
                .map_err(store_fail)?;
            println!(
                "{}",
                serde_json::json!({ "revoked": identity, "version": v })
            );
        }
        ControllerCmd::Status => {
            let ids: Vec<_> = store
                .identities()
                .map_err(store_fail)?
                .into_iter()
                .map(|i| {
                    serde_json::json!({
                        "identity": i.name,
                        "enrolled_at": i.enrolled_at,
                        "revoked": i.revoked_at.is_some(),
                        "cert_serial": i.cert_serial,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "version": store.version().map_err(store_fail)?,
                    "identities": ids,
                    "pending_tokens": store.pending_tokens(now()).map_err(store_fail)?.len(),
                })
            );
        }
    }
    Ok(())
}

fn controller_spa_key(
    s: &crate::spad::EmbeddedSpaConfig,
) -> Result<kagi_crypto::hpke::HpkeKeyPair, Fail> {
    let path = s
        .key_file
        .as_ref()
        .ok_or_else(|| Fail("[spa] key_file is required for the controller".into()))?;
    crate::spad::load_spa_key(path, true)
}

/// The state as the controller last read it.
struct Snapshot {
    version: u64,
    policy_text: String,
    policy: Option<PerimeterPolicy>,
    identities: Vec<EnrolledIdentity>,
}

impl Snapshot {
    fn load(store: &PerimeterStore) -> Result<Self, StoreError> {
        let version = store.version()?;
        let policy_text = store.meta("policy")?.unwrap_or_default();
        let policy = match PerimeterPolicy::parse(&policy_text) {
            Ok(p) if !policy_text.is_empty() => Some(p),
            _ => None,
        };
        Ok(Self {
            version,
            policy_text,
            policy,
            identities: store.identities()?,
        })
    }

    fn enrolled(&self, name: &str) -> Option<&EnrolledIdentity> {
        self.identities
            .iter()
            .find(|i| i.name == name && i.revoked_at.is_none())
    }

    fn gateways(&self) -> Vec<GatewayInfo> {
        let Some(p) = &self.policy else {
            return Vec::new();
        };
        p.gateways()
            .map(|g| GatewayInfo {
                name: g.name.clone(),
                address: g.address.clone(),
                spa_port: g.spa_port,
                spa_public_key: self
                    .enrolled(&g.name)
                    .map(|i| i.spa_public_key.clone())
                    .unwrap_or_default(),
                services: g.services.clone(),
            })
            .collect()
    }

    fn sync_state(&self) -> SyncState {
        SyncState {
            version: self.version,
            policy: self.policy_text.clone(),
            clients: self
                .identities
                .iter()
                .filter(|i| i.revoked_at.is_none())
                .map(|i| ClientInfo {
                    identity: i.name.clone(),
                    spa_public_key: i.spa_public_key.clone(),
                    cert_serial: i.cert_serial.clone(),
                })
                .collect(),
            revoked: self
                .identities
                .iter()
                .filter(|i| i.revoked_at.is_some())
                .map(|i| i.name.clone())
                .collect(),
        }
    }
}

struct Controller {
    store: PerimeterStore,
    ca: Ca,
    snapshot: RwLock<Arc<Snapshot>>,
    changed: tokio::sync::watch::Sender<u64>,
    audit: Arc<Recorder>,
    node: String,
    cert_ttl: i64,
    spa_public: String,
}

impl Controller {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn serve(cfg: ControllerConfig, store: PerimeterStore) -> Result<(), Fail> {
    crate::output::init_logging();
    let ca = ensure_ca(&store)?;
    let cert_ttl = cert_ttl(&cfg)?;
    let audit_key = cfg.audit_key.clone().unwrap_or_else(|| {
        let mut p = cfg.audit.clone().into_os_string();
        p.push(".key");
        PathBuf::from(p)
    });
    let node = cfg
        .node
        .clone()
        .unwrap_or_else(crate::server_cmd::host_name);
    let audit = Arc::new(Recorder::open(
        &cfg.audit,
        Some(node.clone()),
        Some(&audit_key),
    )?);

    // Its own TLS certificate, fresh at every start, for the names clients use.
    let server_key = rcgen::KeyPair::generate().map_err(|e| Fail(e.to_string()))?;
    let point: [u8; 65] = server_key
        .public_key_raw()
        .try_into()
        .map_err(|_| Fail("unexpected server key shape".into()))?;
    let leaf = ca
        .issue(
            Ca::new_serial(),
            "kagi controller",
            &point,
            &cfg.names,
            Usage::Server,
            now(),
            SERVER_CERT_TTL,
        )
        .map_err(Fail)?;
    let key_pem = Zeroizing::new(server_key.serialize_pem());
    let tls = server_tls(
        &format!("{}{}", leaf.pem, ca.cert_pem),
        &key_pem,
        &ca.cert_pem,
    )?;

    let snapshot = Snapshot::load(&store).map_err(store_fail)?;
    let (changed, _) = tokio::sync::watch::channel(snapshot.version);
    let spa = match &cfg.spa {
        Some(s) => {
            let key = controller_spa_key(s)?;
            let public = hex::encode(key.public());
            let (gate, clients) = s.gate(key, SPA_CONTROLLER, cfg.listen.port())?;
            Some((gate, clients, public))
        }
        None => None,
    };
    let ctl = Arc::new(Controller {
        store,
        ca,
        snapshot: RwLock::new(Arc::new(snapshot)),
        changed,
        audit,
        node,
        cert_ttl,
        spa_public: spa.as_ref().map(|s| s.2.clone()).unwrap_or_default(),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Fail(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let spa_task = match spa {
        Some((mut gate, clients, _)) => {
            gate.audit = Some(ctl.audit.clone());
            refresh_spa_clients(&ctl, &clients);
            tokio::spawn(watch_state(ctl.clone(), Some(clients)));
            Some(tokio::spawn(crate::spad::serve(gate)))
        }
        None => {
            tokio::spawn(watch_state(ctl.clone(), None));
            None
        }
    };
    tracing::info!(listen = %cfg.listen, spa = ctl.spa_public.len() == 64, "kagi controller listening");
    crate::server_cmd::accept_until_shutdown(&listener, |tcp, peer| {
        let (tls, ctl) = (tls.clone(), ctl.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tls, tcp, peer, ctl).await {
                tracing::info!(%peer, error = %e, "control connection refused");
            }
        });
    })
    .await;
    // The SPA task saw the same signal; wait for it to remove its nftables table.
    if let Some(t) = spa_task {
        let _ = t.await;
    }
    Ok(())
}

fn server_tls(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<tokio_rustls::TlsAcceptor, Fail> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fail(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| Fail(e.to_string()))?)
            .map_err(|e| Fail(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Enrollment comes without a certificate; everything else needs one from this CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Fail(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Fail(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Fail(e.to_string()))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Enrolled identities and pending tokens may knock on the controller.
fn refresh_spa_clients(ctl: &Controller, gate: &RwLock<kagi_spa::native_decision::NativeGateway>) {
    let snap = ctl.snapshot();
    let pending = ctl.store.pending_tokens(now()).unwrap_or_default();
    let keys = snap
        .identities
        .iter()
        .filter(|i| i.revoked_at.is_none())
        .map(|i| (i.name.clone(), i.spa_public_key.clone()))
        .chain(
            pending
                .into_iter()
                .map(|t| (format!("token:{}", t.identity), t.spa_public_key)),
        )
        .filter_map(|(n, k)| hex_bytes::<32>("spa key", &k).ok().map(|k| (n, k)));
    crate::spad::set_clients(gate, SPA_CONTROLLER, keys);
}

/// Notices changes (also those of admin commands in other processes), wakes long polls, keeps
/// the SPA client set current (and drops expired tokens from it), and puts every change on
/// the audit chain.
async fn watch_state(
    ctl: Arc<Controller>,
    gate: Option<Arc<RwLock<kagi_spa::native_decision::NativeGateway>>>,
) {
    // Per node: with a shared state each controller puts every change on its own chain.
    let marker = format!("audited_change:{}", ctl.node);
    let mut audited: i64 = ctl
        .store
        .meta(&marker)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut tick = tokio::time::interval(STATE_POLL);
    let mut last_spa_refresh = std::time::Instant::now();
    loop {
        tick.tick().await;
        let version = match ctl.store.version() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the perimeter state");
                continue;
            }
        };
        // Compared with what long polls were last told (a handler may have refreshed the
        // snapshot already).
        let changed = version != *ctl.changed.borrow();
        if changed {
            match Snapshot::load(&ctl.store) {
                Ok(s) => {
                    *ctl.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
                    ctl.changed.send_replace(version);
                    tracing::info!(version, "perimeter state changed");
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the perimeter state"),
            }
        }
        if let Some(g) = &gate {
            if changed || last_spa_refresh.elapsed() >= Duration::from_secs(5) {
                refresh_spa_clients(&ctl, g);
                last_spa_refresh = std::time::Instant::now();
            }
        }
        if let Ok(changes) = ctl.store.changes_since(audited) {
            for c in changes {
                let r = ctl
                    .audit
                    .record(Event {
                        operation: "perimeter.change",
                        identity: &c.actor,
                        peer: None,
                        service: "",
                        outcome: kagi_audit::Outcome::Success,
                        reason: c.what.clone(),
                        extra: &[("change", c.seq.to_string())],
                    })
                    .await;
                if r.is_err() {
                    break;
                }
                audited = c.seq;
                let _ = ctl.store.set_meta(&marker, &audited.to_string());
            }
        }
    }
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    ctl: Arc<Controller>,
) -> Result<(), String> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let who = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| ca::peer_identity(c.as_ref()));
    let mut s = BufReader::new(tls);
    let mut line = Vec::new();
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        (&mut s)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line),
    )
    .await
    .map_err(|_| "no request line in time".to_string())?
    .map_err(|e| e.to_string())?;
    let answer = match ControlRequest::parse(&line) {
        Err(e) => ControlAnswer::Error {
            message: e.to_string(),
        },
        Ok(req) => handle(&ctl, req, who, peer).await,
    };
    s.write_all(answer.encode().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())
}

fn refuse(message: impl Into<String>) -> ControlAnswer {
    ControlAnswer::Error {
        message: message.into(),
    }
}

async fn handle(
    ctl: &Controller,
    req: ControlRequest,
    who: Option<(String, String)>,
    peer: SocketAddr,
) -> ControlAnswer {
    match req {
        ControlRequest::Enroll {
            token,
            tls_public_key,
            spa_public_key,
        } => enroll(ctl, &token, &tls_public_key, &spa_public_key, peer).await,
        ControlRequest::Sync { since } => {
            let identity = match current_identity(ctl, who.as_ref()) {
                Ok(i) => i,
                Err(m) => return refuse(m),
            };
            let snap = ctl.snapshot();
            let is_gateway = snap
                .policy
                .as_ref()
                .and_then(|p| p.identity_kind(&identity))
                == Some(IdentityKind::Gateway);
            if !is_gateway {
                return refuse(format!("{identity} is not a gateway"));
            }
            // For the console's Perimeter page: when each gateway last asked.
            if let Err(e) = ctl
                .store
                .record_contact(&identity, now(), &peer.to_string())
            {
                tracing::warn!(gateway = %identity, error = %e, "cannot record the gateway's contact");
            }
            if snap.version <= since {
                let mut rx = ctl.changed.subscribe();
                let _ = tokio::time::timeout(LONG_POLL, rx.wait_for(|v| *v > since)).await;
            }
            let snap = ctl.snapshot();
            if snap.version > since {
                ControlAnswer::Sync(snap.sync_state())
            } else {
                ControlAnswer::Unchanged {
                    version: snap.version,
                }
            }
        }
        ControlRequest::Renew { tls_public_key } => {
            let identity = match current_identity(ctl, who.as_ref()) {
                Ok(i) => i,
                Err(m) => return refuse(m),
            };
            let serial = Ca::new_serial();
            if let Err(e) = ctl
                .store
                .set_cert_serial(&identity, &hex::encode(serial), now())
            {
                return refuse(format!("cannot renew: {e}"));
            }
            issue(ctl, &identity, serial, &tls_public_key)
        }
    }
}

/// The caller's identity if its certificate is the current one of an enrolled, unrevoked
/// identity.
fn current_identity(ctl: &Controller, who: Option<&(String, String)>) -> Result<String, String> {
    let (cn, serial) = who.ok_or("this request needs the certificate kagi enroll issued")?;
    let snap = ctl.snapshot();
    match snap.identities.iter().find(|i| &i.name == cn) {
        None => Err(format!("{cn} is not enrolled")),
        Some(i) if i.revoked_at.is_some() => Err(format!("{cn} is revoked")),
        Some(i) if !kagi_crypto::ct_eq(i.cert_serial.as_bytes(), serial.as_bytes()) => Err(
            format!("this certificate of {cn} was replaced by a newer one"),
        ),
        Some(_) => Ok(cn.clone()),
    }
}

async fn enroll(
    ctl: &Controller,
    token_hex: &str,
    tls_public_key: &str,
    spa_public_key: &str,
    peer: SocketAddr,
) -> ControlAnswer {
    let Ok(secret) = hex_bytes::<32>("token", token_hex) else {
        return refuse("the token is not 64 hex digits");
    };
    let id = hex::encode(kagi_crypto::sha256(&secret));
    let serial = Ca::new_serial();
    let redeemed = ctl
        .store
        .redeem_token(&id, spa_public_key, &hex::encode(serial), now());
    let identity = match redeemed {
        Ok(i) => i,
        Err(e) => {
            let why = match e {
                StoreError::NotFound(_) => "the enrollment token is unknown or expired".to_string(),
                StoreError::Conflict(_) => "the enrollment token was already used".to_string(),
                e => format!("cannot enroll: {e}"),
            };
            let _ = ctl
                .audit
                .record(Event {
                    operation: "perimeter.enroll",
                    identity: "-",
                    peer: Some(peer),
                    service: "",
                    outcome: kagi_audit::Outcome::Denied,
                    reason: why.clone(),
                    extra: &[],
                })
                .await;
            return refuse(why);
        }
    };
    // Fail closed: no certificate without its audit record.
    let recorded = ctl
        .audit
        .record(Event {
            operation: "perimeter.enroll",
            identity: &identity,
            peer: Some(peer),
            service: "",
            outcome: kagi_audit::Outcome::Success,
            reason: "enrolled with a one-time token".into(),
            extra: &[("cert_serial", hex::encode(serial))],
        })
        .await;
    if recorded.is_err() {
        let _ = ctl.store.revoke(&identity, now(), "controller");
        return refuse("the audit log cannot record this enrollment");
    }
    issue(ctl, &identity, serial, tls_public_key)
}

fn issue(
    ctl: &Controller,
    identity: &str,
    serial: [u8; 16],
    tls_public_key: &str,
) -> ControlAnswer {
    let Ok(point) = kagi_sdp::control::p256_point(tls_public_key) else {
        return refuse("tls_public_key is not an uncompressed P-256 point");
    };
    // The store changed; read it now rather than wait for the poll.
    if let Ok(s) = Snapshot::load(&ctl.store) {
        *ctl.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }
    let snap = ctl.snapshot();
    let gateway = snap
        .policy
        .as_ref()
        .and_then(|p| p.gateways().find(|g| g.name == identity).cloned());
    let (usage, sans) = match &gateway {
        Some(g) => (
            Usage::Both,
            crate::control_client::host_of(&g.address)
                .map(|h| vec![h])
                .unwrap_or_default(),
        ),
        None => (Usage::Client, Vec::new()),
    };
    let issued = match ctl
        .ca
        .issue(serial, identity, &point, &sans, usage, now(), ctl.cert_ttl)
    {
        Ok(c) => c,
        Err(e) => return refuse(format!("cannot issue the certificate: {e}")),
    };
    ControlAnswer::Enrolled(Enrolled {
        identity: identity.to_string(),
        certificate: issued.pem,
        ca: ctl.ca.cert_pem.clone(),
        expires_at: jiff::Timestamp::from_second(issued.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        controller_spa_key: ctl.spa_public.clone(),
        gateways: snap.gateways(),
    })
}
