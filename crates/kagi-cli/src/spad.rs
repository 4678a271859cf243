//! `kagi spad`: the SPA daemon. A UDP socket that never answers, the pure decision of
//! kagi-spa, the nftables boundary, and a replay cache that survives restarts and kill -9
//! (each opened packet's digest is appended and fsynced before access is granted).

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kagi_crypto::hpke::HpkeKeyPair;
use kagi_firewall::{Firewall, LogOnly, Nftables};
use kagi_spa::decision::{decide, DaemonPolicy};
use kagi_spa::native_decision::{NativeClient, NativeGateway, NativeGrant, NativeRefusal};
use kagi_spa::replay_cache::ReplayCache;
use serde::Deserialize;

use crate::output::Fail;

#[derive(clap::Args, Debug)]
pub struct SpadArgs {
    /// fwknop access.conf (optional when the config has a [native] section).
    #[arg(long = "access-conf")]
    access_conf: Option<PathBuf>,
    /// Daemon settings (TOML): listen, max_packet_age, replay_cache, [native].
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address to listen on (default [::]:62201, IPv4 and IPv6).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// nftables (default) or none (only log decisions).
    #[arg(long, default_value = "nftables", value_parser = ["nftables", "none"])]
    firewall: String,
    /// Do not drop the protected ports by default.
    #[arg(long = "no-default-drop")]
    no_default_drop: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpadConfig {
    listen: Option<SocketAddr>,
    max_packet_age: Option<u64>,
    replay_cache: Option<PathBuf>,
    native: Option<NativeConfig>,
}

/// `[native]`: kagi's own SPA packets (docs/spa-native.md) — no shared secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeConfig {
    /// File holding this gateway's X25519 private key, hex (`kagi spa keygen --native`).
    key_file: PathBuf,
    /// Seconds a knock opens access for (default 30).
    timeout: Option<u32>,
    /// Service name -> ports, e.g. kms = ["tcp/7300"].
    services: std::collections::BTreeMap<String, Vec<String>>,
    /// Enrolled clients.
    #[serde(default, rename = "client")]
    clients: Vec<NativeClientConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeClientConfig {
    name: String,
    /// X25519 public key, hex.
    public_key: String,
    services: Vec<String>,
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32], Fail> {
    let mut k = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut k)
        .map_err(|_| Fail(format!("{what} must be 64 hex digits (32 bytes)")))?;
    Ok(k)
}

fn native_gateway(c: &NativeConfig) -> Result<NativeGateway, Fail> {
    let key = load_spa_key(&c.key_file, false)?;
    let mut services = std::collections::HashMap::new();
    for (name, specs) in &c.services {
        let spec =
            kagi_spa::AccessSpec::parse(&format!("0.0.0.0,{}", specs.join(","))).map_err(|_| {
                Fail(format!(
                    "[native.services] {name}: ports must be proto/port (e.g. \"tcp/7300\")"
                ))
            })?;
        services.insert(name.clone(), spec.ports);
    }
    let mut clients = std::collections::HashMap::new();
    for cl in &c.clients {
        let public = hex32(&format!("client {} public_key", cl.name), &cl.public_key)?;
        if let Some(s) = cl.services.iter().find(|s| !services.contains_key(*s)) {
            return Err(Fail(format!(
                "client {} names service {s}, which [native.services] does not define",
                cl.name
            )));
        }
        clients.insert(
            kagi_spa::native::key_id(&public),
            NativeClient {
                name: cl.name.clone(),
                public,
                services: cl.services.clone(),
            },
        );
    }
    Ok(NativeGateway {
        key,
        clients,
        services,
        timeout: c.timeout.unwrap_or(30),
    })
}

/// One datagram's outcome, from either packet format.
enum Outcome {
    Fwknop(kagi_spa::decision::Verdict),
    Native(Result<NativeGrant, NativeRefusal>),
}

/// Datagrams decided together (one fsync, one nft transaction).
const MAX_BATCH: usize = 256;

/// Receive queue requested from the kernel (capped by net.core.rmem_max).
const RECV_BUFFER: usize = 8 << 20;

/// Decision log lines per second before further lines are counted, not printed.
const LOG_PER_SEC: u32 = 100;

struct LogLimiter {
    window: Instant,
    n: u32,
    dropped: u64,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                tracing::warn!(
                    suppressed = self.dropped,
                    "decision log lines suppressed in the last second (flood)"
                );
            }
            self.window = Instant::now();
            self.n = 0;
            self.dropped = 0;
        }
        self.n += 1;
        if self.n > LOG_PER_SEC {
            self.dropped += 1;
            false
        } else {
            true
        }
    }
}

fn now() -> i64 {
    crate::spa_cmd::unix_now() as i64
}

fn load_replay(path: &std::path::Path, max_age: u64) -> Result<ReplayCache, Fail> {
    let mut cache = ReplayCache::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Fail(format!(
                "cannot read replay cache {}: {e}",
                path.display()
            )))
        }
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(h), Some(t)) = (it.next(), it.next()) {
            if let (Some(d), Ok(t)) = (hex_digest(h), t.parse::<i64>()) {
                cache.insert(d, t);
            }
        }
    }
    cache.evict(now(), max_age);
    Ok(cache)
}

/// One line of the replay file: `hex(sha256(datagram)) unix_time`.
fn replay_line(digest: &[u8; 32], t: i64) -> String {
    format!("{} {t}\n", hex::encode(digest))
}

fn hex_digest(h: &str) -> Option<[u8; 32]> {
    hex::decode(h).ok()?.try_into().ok()
}

/// Rewrites the replay file with only the live entries (on start), then appends to it.
fn open_replay_file(path: &std::path::Path, cache: &ReplayCache) -> Result<std::fs::File, Fail> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)
            .map_err(|e| Fail(format!("cannot create {}: {e}", p.display())))?;
    }
    let tmp = path.with_extension("tmp");
    let mut body = String::new();
    for (d, t) in cache.entries() {
        body.push_str(&replay_line(d, *t));
    }
    std::fs::write(&tmp, body).map_err(|e| Fail(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Fail(format!("cannot replace {}: {e}", path.display())))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Fail(format!("cannot open {}: {e}", path.display())))
}

pub async fn run(a: SpadArgs) -> Result<(), Fail> {
    crate::output::init_logging();
    let cfg: SpadConfig = match &a.config {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| Fail(format!("cannot read {}: {e}", p.display())))?;
            toml::from_str(&t)
                .map_err(|e| Fail(format!("config {}: {}", p.display(), e.message())))?
        }
        None => SpadConfig::default(),
    };
    let stanzas = match &a.access_conf {
        Some(p) => crate::spa_cmd::load_access_conf(p)?,
        None if cfg.native.is_some() => Vec::new(),
        None => {
            return Err(Fail(
                "give --access-conf (fwknop stanzas) or a [native] section in --config".into(),
            ))
        }
    };
    let native = cfg
        .native
        .as_ref()
        .map(native_gateway)
        .transpose()?
        .map(|n| Arc::new(RwLock::new(n)));
    let listen = a
        .listen
        .or(cfg.listen)
        .unwrap_or_else(|| SocketAddr::from(([0u16; 8], 62201)));
    serve(Gate {
        listen,
        stanzas,
        native,
        max_age: cfg.max_packet_age.unwrap_or(120),
        replay_path: cfg
            .replay_cache
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/kagi/spad.replay")),
        firewall: a.firewall,
        default_drop: !a.no_default_drop,
        stealth: false,
        audit: None,
    })
    .await
}

/// What an SPA daemon serves: fwknop stanzas and/or native clients. The native client set may
/// change while it runs (the gateway and controller update it from the perimeter state).
pub(crate) struct Gate {
    pub listen: SocketAddr,
    pub stanzas: Vec<kagi_spa::access_conf::Stanza>,
    pub native: Option<Arc<RwLock<NativeGateway>>>,
    pub max_age: u64,
    pub replay_path: PathBuf,
    /// "nftables" or "none".
    pub firewall: String,
    pub default_drop: bool,
    /// nftables: a stealth host (see `kagi_firewall::Nftables::stealth`).
    pub stealth: bool,
    /// Put every decision on this audit chain too (the gateway's and controller's).
    pub audit: Option<Arc<crate::perimeter_audit::Recorder>>,
}

/// One SPA decision for the audit chain.
struct SpaRecord {
    source: IpAddr,
    client: Option<String>,
    accepted: bool,
    detail: String,
}

/// Refused packets recorded one by one per second; beyond that they are counted into one
/// summary record (a flood must not turn into an audit-log flood).
const AUDIT_REFUSALS_PER_SEC: u32 = 50;

/// Records SPA decisions in order, off the receive path: a full queue drops records (counted
/// in the next summary) rather than slowing the daemon down.
fn spawn_spa_audit(
    audit: Arc<crate::perimeter_audit::Recorder>,
) -> tokio::sync::mpsc::Sender<SpaRecord> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SpaRecord>(4096);
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let peer = SocketAddr::new(r.source, 0);
            let result = audit
                .record(crate::perimeter_audit::Event {
                    operation: "perimeter.spa",
                    identity: r.client.as_deref().unwrap_or("-"),
                    peer: Some(peer),
                    service: "",
                    outcome: if r.accepted {
                        kagi_audit::Outcome::Success
                    } else {
                        kagi_audit::Outcome::Denied
                    },
                    reason: r.detail,
                    extra: &[],
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record an SPA decision on the audit chain");
            }
        }
    });
    tx
}

/// Runs an SPA daemon until SIGINT/SIGTERM, then removes its nftables table.
pub(crate) async fn serve(g: Gate) -> Result<(), Fail> {
    let Gate {
        listen,
        stanzas,
        native,
        max_age,
        replay_path,
        firewall,
        default_drop,
        stealth,
        audit,
    } = g;
    let audit_tx = audit.map(spawn_spa_audit);
    let mut audit_window = (Instant::now(), 0u32, 0u64);
    let mut cache = load_replay(&replay_path, max_age)?;
    let mut replay_file = open_replay_file(&replay_path, &cache)?;
    let std_sock =
        UdpSocket::bind(listen).map_err(|e| Fail(format!("cannot listen on udp {listen}: {e}")))?;
    // A deep queue absorbs bursts (fwknopd keeps the 208 KiB default and drops them).
    let _ = socket2::SockRef::from(&std_sock).set_recv_buffer_size(RECV_BUFFER);
    std_sock.set_nonblocking(true)?;
    let sock = tokio::net::UdpSocket::from_std(std_sock)?;
    let mut fw: Box<dyn Firewall> = if firewall == "none" {
        Box::new(LogOnly)
    } else if stealth {
        Box::new(Nftables::stealth(listen.port()))
    } else {
        Box::new(Nftables::default())
    };
    let mut protected: Vec<_> = stanzas
        .iter()
        .flat_map(|s| s.protected_ports().iter().copied())
        .chain(native.iter().flat_map(|n| {
            n.read()
                .unwrap_or_else(|p| p.into_inner())
                .services
                .values()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        }))
        .collect();
    protected.sort();
    protected.dedup();
    fw.setup(&protected, default_drop)
        .map_err(|e| Fail(e.to_string()))?;
    tracing::info!(%listen, stanzas = stanzas.len(), firewall = %firewall, replay_entries = cache.len(), "kagi spad listening");

    let policy = DaemonPolicy {
        max_age: Some(max_age),
    };
    let mut buf = [0u8; 1536];
    let mut log = LogLimiter {
        window: Instant::now(),
        n: 0,
        dropped: 0,
    };
    let mut last_evict = Instant::now();
    let mut replay_lines = String::new();
    let mut decided: Vec<(IpAddr, Outcome)> = Vec::with_capacity(MAX_BATCH);
    let shutdown = crate::server_cmd::shutdown_signal();
    tokio::pin!(shutdown);
    let result: Result<(), Fail> = loop {
        // Wait for one datagram, then take whatever else is already queued, so a burst costs
        // one fsync and one nft transaction instead of one each per packet.
        let first = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = sock.recv_from(&mut buf) => r,
        };
        decided.clear();
        replay_lines.clear();
        let t = now();
        let mut next = first;
        loop {
            let (n, peer) = match next {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    break;
                }
            };
            // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            let src = peer.ip().to_canonical();
            let packet = &buf[..n];
            let outcome = match &native {
                Some(gw) if packet.starts_with(kagi_spa::native::MAGIC) => {
                    let gw = gw.read().unwrap_or_else(|p| p.into_inner());
                    let v = gw.decide(packet, src, t as u64, max_age, &mut cache);
                    if let Ok(g) = &v {
                        replay_lines.push_str(&replay_line(&g.replay, t));
                    }
                    Outcome::Native(v)
                }
                _ => {
                    let before = cache.len();
                    let verdict = decide(packet, src, None, t, &stanzas, policy, &mut cache);
                    if cache.len() > before {
                        replay_lines.push_str(&replay_line(&kagi_crypto::sha256(packet), t));
                    }
                    Outcome::Fwknop(verdict)
                }
            };
            decided.push((src, outcome));
            if decided.len() >= MAX_BATCH {
                break;
            }
            next = sock.try_recv_from(&mut buf);
        }
        if decided.is_empty() {
            continue;
        }
        // Durable before access is granted: a kill -9 right after cannot re-open it.
        if !replay_lines.is_empty() {
            if let Err(e) = replay_file
                .write_all(replay_lines.as_bytes())
                .and_then(|_| replay_file.sync_data())
            {
                tracing::error!(error = %e, "cannot persist the replay cache; refusing this batch");
                continue;
            }
        }
        let grants: Vec<kagi_firewall::Access> = decided
            .iter()
            .flat_map(|(_, o)| -> Vec<kagi_firewall::Access> {
                match o {
                    Outcome::Fwknop(Ok(g)) => g
                        .ports
                        .iter()
                        .map(|(p, n)| kagi_firewall::Access::new(g.address, *p, *n, g.timeout))
                        .collect(),
                    Outcome::Native(Ok(g)) => g
                        .ports
                        .iter()
                        .map(|(p, n)| kagi_firewall::Access {
                            src_port: g.src_port,
                            ..kagi_firewall::Access::new(g.address, *p, *n, g.timeout)
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            })
            .collect();
        let fw_ok = match fw.grant(&grants) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "firewall grant failed");
                false
            }
        };
        let verdict = if fw_ok { "accept" } else { "error" };
        if let Some(tx) = &audit_tx {
            let (start, n, suppressed) = &mut audit_window;
            if start.elapsed() >= Duration::from_secs(1) {
                if *suppressed > 0 {
                    let _ = tx.try_send(SpaRecord {
                        source: IpAddr::from([0u8; 4]),
                        client: None,
                        accepted: false,
                        detail: format!(
                            "{suppressed} more refused SPA packets in one second (flood): counted, not recorded one by one"
                        ),
                    });
                }
                *start = Instant::now();
                *n = 0;
                *suppressed = 0;
            }
            for (src, o) in &decided {
                let (client, accepted, detail) = match o {
                    Outcome::Fwknop(Ok(g)) => (
                        Some(g.username.clone()),
                        fw_ok,
                        format!("fwknop stanza {} opened {:?}", g.stanza, g.ports),
                    ),
                    Outcome::Native(Ok(g)) => (
                        Some(g.client.clone()),
                        fw_ok,
                        format!(
                            "opened {} for {}s{}",
                            g.ports
                                .iter()
                                .map(|(p, n)| kagi_spa::port_spec(*p, *n))
                                .collect::<Vec<_>>()
                                .join(","),
                            g.timeout,
                            g.src_port
                                .map(|p| format!(" from source port {p} only"))
                                .unwrap_or_default()
                        ),
                    ),
                    Outcome::Fwknop(Err(r)) => (None, false, r.to_string()),
                    Outcome::Native(Err(r)) => (None, false, r.to_string()),
                };
                let detail = if client.is_some() && !fw_ok {
                    format!("accepted but the firewall failed: {detail}")
                } else {
                    detail
                };
                if !accepted && client.is_none() {
                    *n += 1;
                    if *n > AUDIT_REFUSALS_PER_SEC {
                        *suppressed += 1;
                        continue;
                    }
                }
                let r = SpaRecord {
                    source: *src,
                    client,
                    accepted,
                    detail,
                };
                if tx.try_send(r).is_err() {
                    *suppressed += 1;
                }
            }
        }
        for (src, o) in &decided {
            if !log.allow() {
                continue;
            }
            match o {
                Outcome::Fwknop(Ok(g)) => {
                    let ports: Vec<String> = g
                        .ports
                        .iter()
                        .map(|(p, n)| kagi_spa::port_spec(*p, *n))
                        .collect();
                    tracing::info!(source = %src, stanza = %g.stanza, verdict, address = %g.address, ports = %ports.join(","), timeout = g.timeout, user = %g.username, "spa decision");
                }
                Outcome::Native(Ok(g)) => {
                    let ports: Vec<String> = g
                        .ports
                        .iter()
                        .map(|(p, n)| kagi_spa::port_spec(*p, *n))
                        .collect();
                    tracing::info!(source = %src, client = %g.client, verdict, address = %g.address, source_port = ?g.src_port, ports = %ports.join(","), timeout = g.timeout, "native spa decision");
                }
                Outcome::Fwknop(Err(r)) => {
                    tracing::info!(source = %src, verdict = "reject", reason = %r, "spa decision")
                }
                Outcome::Native(Err(r)) => {
                    tracing::info!(source = %src, verdict = "reject", reason = %r, "native spa decision")
                }
            }
        }
        if last_evict.elapsed() >= Duration::from_secs(60) {
            cache.evict(t, max_age);
            last_evict = Instant::now();
        }
    };
    fw.teardown().map_err(|e| Fail(e.to_string()))?;
    tracing::info!("kagi spad stopped; its nftables table is removed");
    result
}

/// `[spa]` of `kagi gateway` and `kagi controller`: native SPA in front of their own TLS
/// port, admitting the client keys the perimeter state names (updated while it runs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbeddedSpaConfig {
    /// UDP address (default [::]:62201).
    pub listen: Option<SocketAddr>,
    /// The X25519 private key file (hex); the controller creates its own if absent, a
    /// gateway uses the SPA key from its identity directory.
    pub key_file: Option<PathBuf>,
    /// Seconds a knock opens the TLS port for (default 30).
    pub timeout: Option<u32>,
    /// "nftables" (default) or "none" (log only).
    pub firewall: Option<String>,
    /// Replay cache file.
    pub replay_cache: PathBuf,
    /// Drop every other TCP/UDP packet to this host and pings too, so a scan gets no reply
    /// at all (default false: only the TLS port is hidden).
    #[serde(default)]
    pub stealth: bool,
}

impl EmbeddedSpaConfig {
    /// A gate that opens `tcp/port` for knocks naming `service`.
    pub fn gate(
        &self,
        key: HpkeKeyPair,
        service: &str,
        port: u16,
    ) -> Result<(Gate, Arc<RwLock<NativeGateway>>), Fail> {
        let firewall = self.firewall.clone().unwrap_or_else(|| "nftables".into());
        if firewall != "nftables" && firewall != "none" {
            return Err(Fail(
                "[spa] firewall must be \"nftables\" or \"none\"".into(),
            ));
        }
        let native = Arc::new(RwLock::new(NativeGateway {
            key,
            clients: std::collections::HashMap::new(),
            services: [(service.to_string(), vec![(kagi_spa::Proto::Tcp, port)])].into(),
            timeout: self.timeout.unwrap_or(30),
        }));
        Ok((
            Gate {
                listen: self
                    .listen
                    .unwrap_or_else(|| SocketAddr::from(([0u16; 8], 62201))),
                stanzas: Vec::new(),
                native: Some(native.clone()),
                max_age: 120,
                replay_path: self.replay_cache.clone(),
                firewall,
                default_drop: true,
                stealth: self.stealth,
                audit: None,
            },
            native,
        ))
    }
}

/// Replaces a gate's clients: each may knock for `service`.
pub(crate) fn set_clients(
    gate: &RwLock<NativeGateway>,
    service: &str,
    clients: impl IntoIterator<Item = (String, [u8; 32])>,
) {
    let map = clients
        .into_iter()
        .map(|(name, public)| {
            (
                kagi_spa::native::key_id(&public),
                NativeClient {
                    name,
                    public,
                    services: vec![service.to_string()],
                },
            )
        })
        .collect();
    gate.write().unwrap_or_else(|p| p.into_inner()).clients = map;
}

/// Reads an X25519 private key (hex) from `path`, creating one (mode 0600) if `create` and
/// the file does not exist.
pub(crate) fn load_spa_key(path: &std::path::Path, create: bool) -> Result<HpkeKeyPair, Fail> {
    if create && !path.exists() {
        let k = HpkeKeyPair::generate();
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Fail(format!("{} is not a file path", path.display())))?;
        crate::control_client::write_file(
            dir,
            name,
            hex::encode(k.private_bytes().expose()).as_bytes(),
            true,
        )?;
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?,
    );
    let sk = zeroize::Zeroizing::new(hex32(&format!("the key in {}", path.display()), &text)?);
    HpkeKeyPair::from_private(&sk[..]).map_err(|e| Fail(e.to_string()))
}
