//! Rust SDK for kagi's key service: a thin, typed-by-JSON client for the `/v1` API.
//!
//! ```no_run
//! # async fn f() -> Result<(), kagi_client::ClientError> {
//! let c = kagi_client::Client::new(kagi_client::ClientConfig::from_env())?;
//! let dk: serde_json::Value = c.post("/v1/datakey/generate", &serde_json::json!({"key": "k1"})).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod envelope;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default address of a local key service.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7300";

/// Why a call failed; `Display` is the one line a user sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// The server's sentence.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the key service at {addr}: {detail}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Why.
        detail: String,
    },
    /// Local configuration is wrong (CA file, address ...).
    #[error("{0}")]
    Config(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from the key service: {0}")]
    Decode(String),
}

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// `http(s)://host:port`.
    pub addr: String,
    /// Bearer token.
    pub token: Option<String>,
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Per-request timeout (default 30 s).
    pub timeout: Option<Duration>,
}

impl ClientConfig {
    /// `KAGI_ADDR`, `KAGI_TOKEN`, `KAGI_CACERT`, `KAGI_CLIENT_CERT` + `KAGI_CLIENT_KEY`.
    pub fn from_env() -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        Self {
            addr: var("KAGI_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_string()),
            token: var("KAGI_TOKEN"),
            ca_cert: var("KAGI_CACERT").map(PathBuf::from),
            client_cert: var("KAGI_CLIENT_CERT")
                .zip(var("KAGI_CLIENT_KEY"))
                .map(|(c, k)| (c.into(), k.into())),
            timeout: None,
        }
    }
}

/// A connection to the key service.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn tls_config(cfg: &ClientConfig) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &cfg.ca_cert {
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| {
            ClientError::Config(format!("cannot read CA certificate {}: {e}", ca.display()))
        })?;
        for c in certs {
            let c = c.map_err(|e| {
                ClientError::Config(format!(
                    "CA certificate {} is not valid PEM: {e}",
                    ca.display()
                ))
            })?;
            roots.add(c).map_err(|e| {
                ClientError::Config(format!("CA certificate {}: {e}", ca.display()))
            })?;
        }
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match &cfg.client_cert {
        None => Ok(b.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| {
                    ClientError::Config(format!(
                        "cannot read client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ClientError::Config(format!("cannot read client key {}: {e}", key.display()))
            })?;
            b.with_client_auth_cert(chain, k).map_err(|e| {
                ClientError::Config(format!(
                    "client certificate and key do not fit together: {e}"
                ))
            })
        }
    }
}

impl Client {
    /// Builds a client. `https://` addresses need `ca_cert` (kagi deployments use their own CA).
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let base = cfg.addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "KAGI_ADDR {base:?} must start with http:// or https://"
            )));
        }
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout.unwrap_or(Duration::from_secs(30)))
            .user_agent(concat!("kagi-client/", env!("CARGO_PKG_VERSION")));
        if base.starts_with("https://") {
            if cfg.ca_cert.is_none() {
                return Err(ClientError::Config(
                    "an https:// address needs the server's CA: set KAGI_CACERT or pass --ca-cert"
                        .into(),
                ));
            }
            b = b.tls_backend_preconfigured(tls_config(&cfg)?);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            base,
            token: cfg.token,
            http,
        })
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| ClientError::Connect {
            addr: self.base.clone(),
            detail: root_cause(&e),
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
        } else {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Err(ClientError::Api {
                status: status.as_u16(),
                code: v["code"].as_str().unwrap_or("").to_string(),
                message: v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the server answered {status}")),
            })
        }
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }
}

/// Percent-encodes one path segment (key and policy names may contain `/`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
