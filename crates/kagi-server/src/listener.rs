//! The TCP (and TLS) listener: accepts connections, terminates TLS with rustls, reads the
//! client certificate's subject, and hands each request to the router with a [`ConnInfo`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::ConnInfo;
use crate::config::TlsConfig;

/// Builds the rustls server config: TLS 1.2+ (aws-lc-rs provider), HTTP/2 and 1.1 via
/// ALPN, optional client certificates verified against `client_ca`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, String> {
    tls_acceptor_with(tls, false, &[b"h2", b"http/1.1"])
}

/// A TLS acceptor that requires a client certificate signed by `tls.client_ca` (mutual TLS,
/// for the perimeter gateway), with the given ALPN protocols.
pub fn mtls_acceptor(tls: &TlsConfig, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    if tls.client_ca.is_none() {
        return Err("mutual TLS needs client_ca".into());
    }
    tls_acceptor_with(tls, true, alpn)
}

fn tls_acceptor_with(
    tls: &TlsConfig,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "TLS certificate {} is not valid PEM: {e}",
                tls.cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate {} holds no certificate",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("cannot read TLS key {}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read client CA {}: {e}", ca.display()))?
            {
                roots
                    .add(
                        c.map_err(|e| format!("client CA {} is not valid PEM: {e}", ca.display()))?,
                    )
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The subject common name of a DER certificate.
pub fn subject_cn(cert: &CertificateDer<'_>) -> Option<String> {
    subject_cn_and_serial(cert.as_ref()).map(|(cn, _)| cn)
}

/// The subject common name and the serial number (hex of its DER INTEGER bytes) of a DER
/// certificate.
pub fn subject_cn_and_serial(der: &[u8]) -> Option<(String, String)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some((cn, hex::encode(parsed.raw_serial())))
}

async fn serve_conn<I>(io: I, router: Router, info: ConnInfo)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info.clone());
        req
    });
    let svc = TowerToHyperService::new(svc);
    if let Err(e) = Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    serve_conn(
                        tcp,
                        router,
                        ConnInfo {
                            peer,
                            cert_cn: None,
                            tls: false,
                        },
                    )
                    .await
                }
                Some(acc) => match acc.accept(tcp).await {
                    Ok(stream) => {
                        let cn = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(subject_cn);
                        serve_conn(
                            stream,
                            router,
                            ConnInfo {
                                peer,
                                cert_cn: cn,
                                tls: true,
                            },
                        )
                        .await
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
        });
    }
}
