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
    #[error("{message} (HTTP {status}, request {request_id})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// The server's sentence.
        message: String,
        /// The `x-request-id` sent, which the server's audit records carry.
        request_id: String,
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
    /// Retries after 429, 503 or a failed connection (default 3; 0 disables).
    pub max_retries: Option<u32>,
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
            max_retries: None,
        }
    }
}

/// A connection to the key service.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    retry: Backoff,
}

/// Capped exponential backoff with full jitter (the AWS SDKs' "full jitter" policy): the n-th
/// retry waits a uniformly random time in `[0, min(cap, base * 2^n))`, or what the server's
/// `Retry-After` asks if that is longer (still capped).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    max_retries: u32,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        let r = u64::from_be_bytes(kagi_crypto::random_array());
        let jittered = ceiling.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64);
        jittered.max(retry_after.unwrap_or_default()).min(self.cap)
    }
}

/// The rustls client configuration for `cfg` (its CA, and its client certificate if any).
pub fn tls_config(cfg: &ClientConfig) -> Result<rustls::ClientConfig, ClientError> {
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
            retry: Backoff {
                max_retries: cfg.max_retries.unwrap_or(3),
                base: Duration::from_millis(50),
                cap: Duration::from_secs(2),
            },
        })
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.base
    }

    /// Sends `req` with one request id, retrying with backoff on 429, 503 and failed
    /// connections (requests that never reached the server, or that it refused to process).
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let request_id = hex::encode(kagi_crypto::random_array::<12>());
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
        .header("x-request-id", &request_id);
        let mut attempt = 0;
        loop {
            let this = req
                .try_clone()
                .ok_or_else(|| ClientError::Config("request body cannot be retried".into()))?;
            let (err, retry_after) = match this.send().await {
                Err(e) if e.is_connect() => (
                    ClientError::Connect {
                        addr: self.base.clone(),
                        detail: root_cause(&e),
                    },
                    None,
                ),
                Err(e) => {
                    return Err(ClientError::Connect {
                        addr: self.base.clone(),
                        detail: root_cause(&e),
                    })
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| ClientError::Decode(e.to_string()))?;
                    if status.is_success() {
                        return serde_json::from_slice(&bytes)
                            .map_err(|e| ClientError::Decode(e.to_string()));
                    }
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    let err = ClientError::Api {
                        status: status.as_u16(),
                        code: v["code"].as_str().unwrap_or("").to_string(),
                        message: v["error"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("the server answered {status}")),
                        request_id: request_id.clone(),
                    };
                    if !matches!(status.as_u16(), 429 | 503) {
                        return Err(err);
                    }
                    (err, retry_after)
                }
            };
            if attempt >= self.retry.max_retries {
                return Err(err);
            }
            tokio::time::sleep(self.retry.delay(attempt, retry_after)).await;
            attempt += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake HTTP server, for faults the real key service cannot be made to produce on
    /// demand (a 429/503 burst): answers each connection with the next canned status and
    /// reports the `x-request-id` it saw.
    async fn fake(statuses: Vec<u16>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let mut ids = Vec::new();
            for st in statuses {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let id = req
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id: "))
                    .unwrap_or("")
                    .to_string();
                ids.push(id);
                let body = if st == 200 {
                    "{\"ok\":true}"
                } else {
                    "{\"error\":\"busy\",\"code\":\"busy\"}"
                };
                let resp = format!(
                    "HTTP/1.1 {st} X\r\ncontent-type: application/json\r\nretry-after: 0\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).await.unwrap();
            }
            ids
        });
        (addr, h)
    }

    fn client(addr: &str, retries: u32) -> Client {
        Client::new(ClientConfig {
            addr: addr.into(),
            max_retries: Some(retries),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn retries_429_and_503_with_one_request_id() {
        let (addr, h) = fake(vec![503, 429, 200]).await;
        let v: serde_json::Value = client(&addr, 3).get("/v1/x").await.unwrap();
        assert_eq!(v["ok"], true);
        let ids = h.await.unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0].len(), 24);
        assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    }

    #[tokio::test]
    async fn gives_up_after_max_retries_and_never_retries_other_errors() {
        let (addr, h) = fake(vec![503, 503]).await;
        match client(&addr, 1).get::<serde_json::Value>("/v1/x").await {
            Err(ClientError::Api {
                status: 503,
                request_id,
                ..
            }) => assert_eq!(request_id.len(), 24),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.await.unwrap().len(), 2);
        let (addr, h) = fake(vec![400]).await;
        assert!(matches!(
            client(&addr, 3).get::<serde_json::Value>("/v1/x").await,
            Err(ClientError::Api { status: 400, .. })
        ));
        assert_eq!(h.await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_reported() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        assert!(matches!(
            client(&addr, 2).get::<serde_json::Value>("/v1/x").await,
            Err(ClientError::Connect { .. })
        ));
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let b = Backoff {
            max_retries: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        };
        for n in 0..40 {
            assert!(b.delay(n, None) <= Duration::from_secs(2));
            assert!(b.delay(0, None) < Duration::from_millis(50));
        }
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
    }
}
