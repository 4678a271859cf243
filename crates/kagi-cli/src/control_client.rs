//! The client side of the controller's control channel (used by `kagi enroll`, `kagi connect`
//! and `kagi gateway`): TLS to the controller — verified against the CA pin in an enrollment
//! token before enrollment, against the CA it handed out afterwards — one request line, one
//! answer line. And the identity directory `kagi enroll` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kagi_sdp::control::{ControlAnswer, ControlRequest, GatewayInfo, MAX_ANSWER};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::output::Fail;

/// Copy buffer per direction of a tunnel: 64 KiB moves four full TLS records per read
/// instead of half of one (tokio's default is 8 KiB).
pub const SPLICE_BUF: usize = 64 * 1024;

/// How long a TCP connect to the controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// TCP connect to a host behind SPA right after a knock. The knock and the first SYN race:
/// if the SYN arrives before the firewall opened, it is dropped and the kernel would resend
/// it only after a second. So each attempt gets a short deadline and a fresh SYN, up to
/// `limit` in all; a refused connection is final.
pub async fn dial(addr: &str, limit: Duration) -> std::io::Result<tokio::net::TcpStream> {
    dial_from(addr, limit, 0).await
}

/// [`dial`] from local port `local_port` (0 = any): the port a 5-tuple knock named.
pub async fn dial_from(
    addr: &str,
    limit: Duration,
    local_port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let target = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
    })?;
    let started = std::time::Instant::now();
    // A fresh SYN every 2 ms while the knock is likely still being applied (a few ms), then
    // doubling deadlines for slow links.
    let mut attempt = Duration::from_millis(2);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer (is the SPA knock accepted?)",
            ));
        }
        let sock = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if local_port != 0 {
            // An attempt that got no answer left no connection behind: the port is free again.
            sock.set_reuseaddr(true)?;
            let any: std::net::IpAddr = if target.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            sock.bind(std::net::SocketAddr::new(any, local_port))?;
        }
        match tokio::time::timeout(attempt.min(left), sock.connect(target)).await {
            Ok(r) => return r,
            Err(_) if tries < 25 => {}
            Err(_) => attempt = (attempt * 2).min(Duration::from_secs(1)),
        }
    }
}

/// A local TCP port that is free right now, for a connection to `addr`'s family.
pub fn free_local_port(ipv6: bool) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" })?;
    Ok(l.local_addr()?.port())
}

/// How to trust the controller.
pub enum Trust {
    /// Before enrollment: the SHA-256 of its CA certificate, from the token.
    Pin([u8; 32]),
    /// After: the CA certificate (PEM) it handed out.
    Ca(String),
}

/// Accepts a server chain that includes the pinned CA and verifies the chain under it.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| kagi_crypto::ct_eq(&kagi_crypto::sha256(c.as_ref()), &self.pin))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the controller's CA is not the one the enrollment token names".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and key, from PEM.
pub fn client_auth(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Fail> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Fail(format!("the identity certificate is not valid PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Fail(format!("the identity key is not valid PEM: {e}")))?;
    Ok((certs, key))
}

/// A TLS client config for the controller or a gateway.
pub fn tls_config(
    trust: &Trust,
    auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, Fail> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Fail(e.to_string()))?;
    let b = match trust {
        Trust::Pin(pin) => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa {
                pin: *pin,
                provider,
            })),
        Trust::Ca(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(c.map_err(|e| Fail(format!("the CA certificate: {e}")))?)
                    .map_err(|e| Fail(format!("the CA certificate: {e}")))?;
            }
            b.with_root_certificates(roots)
        }
    };
    let mut cfg = match auth {
        Some((certs, key)) => b
            .with_client_auth_cert(certs, key)
            .map_err(|e| Fail(format!("the identity certificate and key: {e}")))?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The host part of `host:port` as a TLS server name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, Fail> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| Fail(format!("{addr:?} is not HOST:PORT")))?;
    ServerName::try_from(host.clone())
        .map_err(|_| Fail(format!("{host:?} is not a valid host name or address")))
}

/// Sends one request to the controller at `addr` and reads its answer; `Err` when the
/// controller cannot be reached, refuses TLS, or answers with an error.
pub async fn request(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    req: &ControlRequest,
    limit: Duration,
) -> Result<ControlAnswer, Fail> {
    let name = server_name(addr)?;
    let work = async {
        let tcp = dial(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| Fail(format!("cannot reach the controller {addr}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| Fail(format!("TLS with the controller {addr} failed: {e}")))?;
        let mut s = BufReader::new(tls);
        s.write_all(req.encode().as_bytes()).await?;
        let mut line = Vec::new();
        (&mut s)
            .take(MAX_ANSWER as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if line.is_empty() {
            return Err(Fail(format!(
                "the controller {addr} closed the connection without an answer"
            )));
        }
        match ControlAnswer::parse(&line).map_err(|e| Fail(e.to_string()))? {
            ControlAnswer::Error { message } => {
                Err(Fail(format!("the controller refused: {message}")))
            }
            a => Ok(a),
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| Fail(format!("the controller {addr} did not answer in time")))?
}

/// `profile.json` in an identity directory: where this identity's controller and gateways are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub identity: String,
    pub controller: String,
    /// The controller's SPA public key, hex (empty: the controller is not behind SPA).
    pub controller_spa_key: String,
    pub controller_spa_port: u16,
    pub expires_at: String,
    pub gateways: Vec<GatewayInfo>,
}

/// An identity directory: cert.pem, key.pem, ca.pem, spa.key, profile.json.
pub struct IdentityDir {
    pub profile: Profile,
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub ca_pem: String,
    pub spa: kagi_crypto::hpke::HpkeKeyPair,
}

/// `$KAGI_IDENTITY_DIR`, else `$HOME/.config/kagi/identity`.
pub fn default_identity_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".config/kagi/identity"),
        None => PathBuf::from(".kagi-identity"),
    }
}

fn read(dir: &Path, name: &str) -> Result<String, Fail> {
    let p = dir.join(name);
    std::fs::read_to_string(&p).map_err(|e| {
        Fail(format!(
            "cannot read {} (run kagi enroll first?): {e}",
            p.display()
        ))
    })
}

impl IdentityDir {
    /// Loads an identity directory written by `kagi enroll`.
    pub fn load(dir: &Path) -> Result<Self, Fail> {
        let profile: Profile = serde_json::from_str(&read(dir, "profile.json")?)
            .map_err(|e| Fail(format!("{}/profile.json: {e}", dir.display())))?;
        let spa_hex = zeroize::Zeroizing::new(read(dir, "spa.key")?);
        let spa_raw = zeroize::Zeroizing::new(
            hex::decode(spa_hex.trim())
                .map_err(|_| Fail(format!("{}/spa.key does not hold a hex key", dir.display())))?,
        );
        let spa = kagi_crypto::hpke::HpkeKeyPair::from_private(&spa_raw)
            .map_err(|e| Fail(format!("{}/spa.key: {e}", dir.display())))?;
        Ok(Self {
            profile,
            cert_pem: read(dir, "cert.pem")?,
            key_pem: zeroize::Zeroizing::new(read(dir, "key.pem")?),
            ca_pem: read(dir, "ca.pem")?,
            spa,
        })
    }

    /// A TLS config presenting this identity's certificate, trusting its controller's CA.
    pub fn tls(&self, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, Fail> {
        Ok(Arc::new(tls_config(
            &Trust::Ca(self.ca_pem.clone()),
            Some(client_auth(&self.cert_pem, &self.key_pem)?),
            alpn,
        )?))
    }

    /// Is the certificate past two thirds of its lifetime (or unreadable)?
    pub fn renewal_due(&self) -> bool {
        let Ok(der) = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()) else {
            return true;
        };
        let Ok((_, c)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return true;
        };
        let (from, to) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        jiff::Timestamp::now().as_second() >= from + (to - from) * 2 / 3
    }

    /// A new certificate for the same TLS key: only `cert.pem` (one atomic replace) and
    /// `profile.json` change, so a crash cannot leave a key that does not fit its certificate.
    pub async fn renew(&mut self, dir: &Path) -> Result<(), Fail> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem)
            .map_err(|e| Fail(format!("{}/key.pem: {e}", dir.display())))?;
        self.knock_controller()?;
        let req = ControlRequest::Renew {
            tls_public_key: hex::encode(key.public_key_raw()),
        };
        let answer = request(
            &self.profile.controller,
            self.tls(kagi_sdp::control::ALPN)?,
            &req,
            Duration::from_secs(15),
        )
        .await?;
        let ControlAnswer::Enrolled(e) = answer else {
            return Err(Fail(
                "the controller answered something other than a certificate".into(),
            ));
        };
        self.profile.expires_at = e.expires_at.clone();
        self.profile.gateways = e.gateways.clone();
        write_file(dir, "cert.pem", e.certificate.as_bytes(), false)?;
        write_file(
            dir,
            "profile.json",
            serde_json::to_string_pretty(&self.profile)
                .map_err(|e| Fail(e.to_string()))?
                .as_bytes(),
            false,
        )?;
        self.cert_pem = e.certificate;
        Ok(())
    }

    /// Knocks on the controller when it hides behind SPA.
    pub fn knock_controller(&self) -> Result<(), Fail> {
        if self.profile.controller_spa_key.is_empty() {
            return Ok(());
        }
        let host = host_of(&self.profile.controller)?;
        crate::spa_cmd::send_native_knock(
            &self.spa,
            &self.profile.controller_spa_key,
            &host,
            self.profile.controller_spa_port,
            vec![kagi_sdp::control::SPA_CONTROLLER.to_string()],
            0,
            None,
        )
    }
}

/// The host of `host:port`, without brackets.
pub fn host_of(addr: &str) -> Result<String, Fail> {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| Fail(format!("{addr:?} is not HOST:PORT")))
}

/// Writes `body` to `dir/name` through a temporary file (mode 0600 for secrets).
pub fn write_file(dir: &Path, name: &str, body: &[u8], secret: bool) -> Result<(), Fail> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| Fail(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(body)
        .and_then(|_| f.sync_all())
        .map_err(|e| Fail(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(name))
        .map_err(|e| Fail(format!("cannot replace {}: {e}", dir.join(name).display())))
}
