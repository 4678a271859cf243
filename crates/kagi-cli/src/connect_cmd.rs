//! `kagi connect SERVICE`: a local TCP port that reaches SERVICE through a perimeter gateway —
//! mutual TLS with this client's certificate, one request line, then the service's bytes.
//!
//! With an identity from `kagi enroll` (the default), the gateway, certificates and SPA keys
//! come from the identity directory, and every connection is preceded by a native SPA knock
//! (at most one per 10 s: a knock opens the gateway for new connections for 30 s). With
//! `--gateway --cert --key --gateway-ca`, knock yourself (`kagi spa knock-native`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kagi_sdp::tunnel::{parse_answer, ConnectRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::control_client::{self as cc, SPLICE_BUF};
use crate::output::Fail;

/// Knocks on the gateway before a connection unless a recent knock still holds the door.
struct Knocker {
    id: cc::IdentityDir,
    gateway: kagi_sdp::control::GatewayInfo,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Re-knock after this long (a knock opens new connections for 30 s by default).
const REKNOCK: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a long-running `kagi connect` checks whether its certificate is due for renewal.
const RENEW_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Renews this identity's certificate at two thirds of its life (same key, `kagi enroll
/// --renew`), so a `kagi connect` left running does not stop at the certificate's expiry; new
/// connections use the new certificate.
async fn renew_when_due(
    dir: PathBuf,
    connector: Arc<std::sync::RwLock<tokio_rustls::TlsConnector>>,
) {
    // Another process using the same directory may renew first (the old certificate then
    // stops working): follow the certificate on disk, not only our own renewals.
    let mut in_use = cc::IdentityDir::load(&dir)
        .map(|i| i.cert_pem)
        .unwrap_or_default();
    loop {
        tokio::time::sleep(RENEW_CHECK).await;
        let mut id = match cc::IdentityDir::load(&dir) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("kagi connect: {}", e.0);
                continue;
            }
        };
        if id.renewal_due() {
            if let Err(e) = id.renew(&dir).await {
                eprintln!("kagi connect: cannot renew the certificate yet: {}", e.0);
                continue;
            }
            eprintln!(
                "kagi connect: certificate renewed, valid until {}",
                id.profile.expires_at
            );
        } else if id.cert_pem == in_use {
            continue;
        }
        match id.tls(b"kagi-connect/1") {
            Ok(tls) => {
                *connector.write().unwrap_or_else(|p| p.into_inner()) =
                    tokio_rustls::TlsConnector::from(tls);
                in_use = id.cert_pem;
            }
            Err(e) => eprintln!("kagi connect: {}", e.0),
        }
    }
}

/// How long reaching the gateway's TLS port may take.
const DIAL_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Knocker {
    fn new(id: cc::IdentityDir, gateway: kagi_sdp::control::GatewayInfo) -> Self {
        Self {
            id,
            gateway,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Knocks unless a knock within `REKNOCK` still holds the door (or `force`); with a
    /// `source_port`, the knock opens only connections from that port (5-tuple pinhole).
    fn knock(&self, force: bool, source_port: u16) -> Result<(), Fail> {
        if self.gateway.spa_public_key.is_empty() {
            return Ok(());
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.is_some_and(|t| t.elapsed() < REKNOCK) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        crate::spa_cmd::send_native_knock(
            &self.id.spa,
            &self.gateway.spa_public_key,
            &cc::host_of(&self.gateway.address)?,
            self.gateway.spa_port,
            vec![kagi_sdp::control::SPA_GATEWAY.to_string()],
            source_port,
            None,
        )?;
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The service to reach (a name in the perimeter policy).
    service: String,
    /// Local address to listen on (port 0 = any; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The gateway, HOST:PORT (default: from the identity directory).
    #[arg(long, env = "KAGI_GATEWAY", requires_all = ["cert", "key", "gateway_ca"])]
    gateway: Option<String>,
    /// This client's certificate (PEM).
    #[arg(long, env = "KAGI_CLIENT_CERT")]
    cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "KAGI_CLIENT_KEY")]
    key: Option<PathBuf>,
    /// CA that signed the gateway's certificate (PEM).
    #[arg(long = "gateway-ca", env = "KAGI_GATEWAY_CA")]
    gateway_ca: Option<PathBuf>,
    /// Knock for each connection naming its source port, so the gateway opens only that
    /// 5-tuple (for clients behind NAT shared with others).
    #[arg(long = "pin-source-port")]
    pin_source_port: bool,
    /// Benchmark: make N tunnel set-ups (each with its own knock) and print their latency.
    #[arg(long, hide = true, value_name = "N")]
    probe: Option<u32>,
    /// The identity from `kagi enroll` (env KAGI_IDENTITY_DIR; default ~/.config/kagi/identity).
    #[arg(long, env = "KAGI_IDENTITY_DIR")]
    dir: Option<PathBuf>,
    /// Device posture claim to report: os=, os_version=, disk_encryption=, agent_version=.
    #[arg(long = "posture", value_name = "K=V")]
    posture: Vec<String>,
}

pub async fn run(a: ConnectArgs) -> Result<(), Fail> {
    crate::output::init_logging();
    let request = ConnectRequest {
        service: a.service.clone(),
        claims: a.posture.clone(),
    };
    // Validate locally: one clear error instead of a refusal from the gateway.
    ConnectRequest::parse(&request.encode()).map_err(|e| Fail(e.to_string()))?;
    let mut identity_dir = None;
    let (tls, gateway, knock) = match (&a.gateway, &a.cert, &a.key, &a.gateway_ca) {
        (Some(g), Some(cert), Some(key), Some(ca)) => {
            let mut tls = kagi_client::tls_config(&kagi_client::ClientConfig {
                ca_cert: Some(ca.clone()),
                client_cert: Some((cert.clone(), key.clone())),
                ..Default::default()
            })?;
            tls.alpn_protocols = vec![b"kagi-connect/1".to_vec()];
            (Arc::new(tls), g.clone(), None)
        }
        _ => {
            let dir = a.dir.clone().unwrap_or_else(cc::default_identity_dir);
            let id = cc::IdentityDir::load(&dir)?;
            let gws = &id.profile.gateways;
            let g = gws
                .iter()
                .find(|g| g.services.iter().any(|s| s == &a.service))
                .or(if gws.len() == 1 { gws.first() } else { None })
                .ok_or_else(|| {
                    Fail(format!(
                        "no gateway in {} fronts {} (run kagi enroll again if it is new)",
                        dir.display(),
                        a.service
                    ))
                })?
                .clone();
            let tls = id.tls(b"kagi-connect/1")?;
            identity_dir = Some(dir);
            (tls, g.address.clone(), Some(Arc::new(Knocker::new(id, g))))
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let server_name = cc::server_name(&gateway)?;
    if let Some(n) = a.probe {
        if n == 0 {
            return Err(Fail("--probe needs at least 1".into()));
        }
        return probe(
            n,
            &gateway,
            connector,
            server_name,
            &request.encode(),
            knock.as_deref(),
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Fail(format!("cannot listen on {}: {e}", a.listen)))?;
    println!("kagi connect: {} on {}", a.service, listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    let connector = Arc::new(std::sync::RwLock::new(connector));
    if let Some(dir) = identity_dir {
        tokio::spawn(renew_when_due(dir, connector.clone()));
    }
    let line = Arc::new(request.encode());
    let gateway = Arc::new(gateway);
    let pin = a.pin_source_port;
    let shutdown = crate::server_cmd::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (local, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => r?,
        };
        let (connector, name, line, gateway, knock) = (
            connector.read().unwrap_or_else(|p| p.into_inner()).clone(),
            server_name.clone(),
            line.clone(),
            gateway.clone(),
            knock.clone(),
        );
        tokio::spawn(async move {
            // With --pin-source-port every connection gets its own knock naming its source
            // port, so another host behind the same NAT address cannot use the opening.
            let mut source_port = 0;
            if let Some(k) = knock {
                let r = if pin {
                    cc::free_local_port(gateway.starts_with('['))
                        .map_err(|e| Fail(format!("no free local port: {e}")))
                        .and_then(|p| {
                            source_port = p;
                            k.knock(true, p)
                        })
                } else {
                    k.knock(false, 0)
                };
                if let Err(e) = r {
                    eprintln!("kagi connect: {}", e.0);
                }
            }
            if let Err(e) = forward(local, &gateway, source_port, connector, name, &line).await {
                eprintln!("kagi connect: {e}");
            }
        });
    }
}

async fn forward(
    mut local: tokio::net::TcpStream,
    gateway: &str,
    source_port: u16,
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    line: &str,
) -> Result<(), String> {
    let mut remote = open(gateway, source_port, connector, name, line).await?;
    let _ =
        tokio::io::copy_bidirectional_with_sizes(&mut local, &mut remote, SPLICE_BUF, SPLICE_BUF)
            .await;
    Ok(())
}

/// TCP (retrying quickly after a knock), mutual TLS, the request line and the gateway's OK.
async fn open(
    gateway: &str,
    source_port: u16,
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    line: &str,
) -> Result<BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    let tcp = cc::dial_from(gateway, DIAL_LIMIT, source_port)
        .await
        .map_err(|e| format!("cannot reach the gateway {gateway}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the gateway failed: {e}"))?;
    let mut remote = BufReader::new(tls);
    remote
        .write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    remote
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("the gateway closed the connection: {e}"))?;
    parse_answer(&answer).map_err(|why| format!("the gateway refused: {why}"))?;
    Ok(remote)
}

/// `--probe N`: N complete set-ups one after another — knock, TCP, mutual TLS, request, OK —
/// and their latency percentiles (scripts/bench-perimeter).
async fn probe(
    n: u32,
    gateway: &str,
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    line: &str,
    knock: Option<&Knocker>,
) -> Result<(), Fail> {
    let mut ms = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = std::time::Instant::now();
        if let Some(k) = knock {
            k.knock(true, 0)?;
        }
        let s = open(gateway, 0, connector.clone(), name.clone(), line)
            .await
            .map_err(Fail)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(s);
        // Let the knock's replay-cache entry and the pinhole settle apart per probe.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "setups": ms.len(),
            "spa": knock.is_some(),
            "p50_ms": pct(0.5),
            "p90_ms": pct(0.9),
            "max_ms": pct(1.0),
        })
    );
    Ok(())
}
