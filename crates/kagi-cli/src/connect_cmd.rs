//! `kagi connect SERVICE`: a local TCP port that reaches SERVICE through a perimeter gateway —
//! mutual TLS with this client's certificate, one request line, then the service's bytes.
//! (Knock first with `kagi spa knock-native` when the gateway hides behind SPA.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kagi_sdp::tunnel::{parse_answer, ConnectRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::output::Fail;

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The service to reach (a name in the perimeter policy).
    service: String,
    /// Local address to listen on (port 0 = any; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The gateway, HOST:PORT.
    #[arg(long, env = "KAGI_GATEWAY")]
    gateway: String,
    /// This client's certificate (PEM).
    #[arg(long, env = "KAGI_CLIENT_CERT")]
    cert: PathBuf,
    /// This client's private key (PEM).
    #[arg(long, env = "KAGI_CLIENT_KEY")]
    key: PathBuf,
    /// CA that signed the gateway's certificate (PEM).
    #[arg(long = "gateway-ca", env = "KAGI_GATEWAY_CA")]
    gateway_ca: PathBuf,
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
    let mut tls = kagi_client::tls_config(&kagi_client::ClientConfig {
        ca_cert: Some(a.gateway_ca.clone()),
        client_cert: Some((a.cert.clone(), a.key.clone())),
        ..Default::default()
    })?;
    tls.alpn_protocols = vec![b"kagi-connect/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let host = a
        .gateway
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| Fail(format!("--gateway {:?} is not HOST:PORT", a.gateway)))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| {
        Fail(format!(
            "--gateway host {host:?} is not a valid name or address"
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Fail(format!("cannot listen on {}: {e}", a.listen)))?;
    println!("kagi connect: {} on {}", a.service, listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    let line = Arc::new(request.encode());
    let gateway = Arc::new(a.gateway);
    let shutdown = crate::server_cmd::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (local, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => r?,
        };
        let (connector, name, line, gateway) = (
            connector.clone(),
            server_name.clone(),
            line.clone(),
            gateway.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = forward(local, &gateway, connector, name, &line).await {
                eprintln!("kagi connect: {e}");
            }
        });
    }
}

async fn forward(
    mut local: tokio::net::TcpStream,
    gateway: &str,
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    line: &str,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(gateway)
        .await
        .map_err(|e| format!("cannot reach the gateway {gateway}: {e}"))?;
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
    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
    Ok(())
}
