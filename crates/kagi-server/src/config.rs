//! The server configuration file (`kagi server --config FILE`), TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Where keys and audit records live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite` (embedded, one node) or `postgres` (any number of nodes).
    pub backend: String,
    /// SQLite file.
    pub path: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user:password@host:port/db`).
    pub url: Option<String>,
    /// Environment variable holding the PostgreSQL URL (keeps the password out of the file).
    pub url_env: Option<String>,
}

impl StorageConfig {
    /// The PostgreSQL URL from `url` or `url_env`.
    pub fn postgres_url(&self) -> Result<String, String> {
        match (&self.url, &self.url_env) {
            (Some(u), None) => Ok(u.clone()),
            (None, Some(v)) => std::env::var(v)
                .ok()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    format!("[storage] url_env = {v:?}, but that environment variable is not set")
                }),
            _ => {
                Err("[storage] backend = \"postgres\" needs exactly one of url and url_env".into())
            }
        }
    }
}

/// The audit store.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// SQLite file for the audit chain; default `audit.db` beside the key store.
    pub path: Option<PathBuf>,
}

/// How the master key is protected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealConfig {
    /// `shamir` (operator unseal shares) or `pkcs11` (an HSM-held master key, auto-unseal).
    #[serde(rename = "type")]
    pub kind: String,
    /// PKCS#11 module path.
    pub library: Option<PathBuf>,
    /// PKCS#11 token label.
    pub token_label: Option<String>,
    /// PKCS#11 slot id (instead of token_label).
    pub slot: Option<u64>,
    /// Environment variable holding the PKCS#11 PIN.
    pub pin_env: Option<String>,
    /// File holding the PKCS#11 PIN (first line).
    pub pin_file: Option<PathBuf>,
    /// Label of the master key object.
    pub key_label: Option<String>,
}

impl SealConfig {
    /// The PKCS#11 settings, with the PIN read from its environment variable or file.
    pub fn pkcs11(&self) -> Result<crate::seal_pkcs11::Pkcs11Config, String> {
        let library = self
            .library
            .clone()
            .ok_or("[seal] type = \"pkcs11\" needs library (the PKCS#11 module path)")?;
        let key_label = self
            .key_label
            .clone()
            .ok_or("[seal] type = \"pkcs11\" needs key_label")?;
        let pin = match (&self.pin_env, &self.pin_file) {
            (Some(v), None) => std::env::var(v).map_err(|_| {
                format!("[seal] pin_env = {v:?}, but that environment variable is not set")
            })?,
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| format!("[seal] pin_file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            _ => {
                return Err(
                    "[seal] type = \"pkcs11\" needs exactly one of pin_env and pin_file".into(),
                )
            }
        };
        Ok(crate::seal_pkcs11::Pkcs11Config {
            library,
            token_label: self.token_label.clone(),
            slot: self.slot,
            pin,
            key_label,
        })
    }
}

/// TLS for the listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; when set, clients may authenticate with one.
    pub client_ca: Option<PathBuf>,
}

/// Principals for client certificates, by subject common name.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Subject CN → policies.
    #[serde(default)]
    pub certificates: BTreeMap<String, Vec<String>>,
}

/// `[notify]`: the customer's webhook for uses that policies' `notify` rules match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFileConfig {
    /// `https://...` (or `http://` on a trusted network).
    pub url: String,
    /// Environment variable holding the HMAC secret for `X-Kagi-Signature`.
    pub secret_env: String,
    /// Attempts per notification (default 5).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Wait before the second attempt, doubled after each (default `1s`).
    #[serde(default)]
    pub backoff: Option<String>,
}

impl NotifyFileConfig {
    /// The delivery settings, with the secret read from the environment.
    pub fn resolve(&self) -> Result<crate::notify::NotifyConfig, String> {
        crate::notify::NotifyConfig::new(
            &self.url,
            &self.secret_env,
            self.max_attempts,
            self.backoff.as_deref(),
        )
    }
}

/// `[[forward]]`: continuous SIEM forwarding of the audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFileConfig {
    /// `tcp://HOST:PORT` or `tls://HOST:PORT` (syslog, RFC 5425 framing).
    pub to: String,
    /// Cursor file: the next record to send, kept across restarts.
    pub cursor: std::path::PathBuf,
    /// `syslog` (default), `cef` or `jsonl`.
    #[serde(default)]
    pub format: Option<String>,
    /// For `tls://`: the receiver's CA.
    #[serde(default)]
    pub ca_cert: Option<std::path::PathBuf>,
}

impl ForwardFileConfig {
    /// The forwarder's settings.
    pub fn resolve(&self, hostname: &str) -> Result<crate::forward::ForwardConfig, String> {
        let cfg = crate::forward::ForwardConfig {
            to: self.to.clone(),
            cursor: self.cursor.clone(),
            format: self.format.as_deref().unwrap_or("syslog").parse()?,
            ca_cert: self.ca_cert.clone(),
            hostname: hostname.to_string(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `[console]`: what the console shows besides the key service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFileConfig {
    /// The perimeter controller's state (its `state`: a SQLite file, or a `postgres://` URL),
    /// read for the Perimeter page.
    #[serde(default)]
    pub perimeter_state: Option<String>,
    /// Name of an environment variable holding that `postgres://` URL, instead.
    #[serde(default)]
    pub perimeter_state_env: Option<String>,
    /// Perimeter audit chains (SQLite files of the controller, gateways or spad) whose latest
    /// SPA and connection decisions the Perimeter page lists.
    #[serde(default)]
    pub perimeter_audit: Vec<std::path::PathBuf>,
}

impl ConsoleFileConfig {
    /// The console's settings.
    pub fn resolve(&self) -> Result<crate::console::ConsoleOptions, String> {
        let state = match (&self.perimeter_state, &self.perimeter_state_env) {
            (Some(s), None) => Some(s.clone()),
            (None, Some(v)) => Some(std::env::var(v).map_err(|_| {
                format!("[console] perimeter_state_env = {v:?}, but that environment variable is not set")
            })?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(
                    "[console] takes one of perimeter_state and perimeter_state_env".into(),
                )
            }
        };
        if state.is_none() && !self.perimeter_audit.is_empty() {
            return Err("[console] perimeter_audit needs perimeter_state".into());
        }
        Ok(crate::console::ConsoleOptions {
            perimeter: state.map(|state| crate::console::PerimeterSource {
                state,
                audit: self.perimeter_audit.clone(),
            }),
        })
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `ADDR:PORT` to listen on.
    pub listen: SocketAddr,
    /// Node name in audit records; default the host name.
    pub node: Option<String>,
    /// Allow `--pending-days 0`.
    #[serde(default)]
    pub allow_immediate_deletion: bool,
    /// Storage.
    pub storage: StorageConfig,
    /// Audit store.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Seal.
    pub seal: SealConfig,
    /// TLS; without it the server speaks plain HTTP and only on a loopback address.
    pub tls: Option<TlsConfig>,
    /// Certificate principals.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Customer notification webhook.
    #[serde(default)]
    pub notify: Option<NotifyFileConfig>,
    /// SIEM forwarding targets.
    #[serde(default)]
    pub forward: Vec<ForwardFileConfig>,
    /// The console's extra sources.
    #[serde(default)]
    pub console: ConsoleFileConfig,
}

impl ServerConfig {
    /// Reads and checks a config file; errors name the file and the problem.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: ServerConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        match c.storage.backend.as_str() {
            "sqlite" if c.storage.path.is_some() => {}
            "sqlite" => return Err("[storage] backend = \"sqlite\" needs path".into()),
            "postgres" => {
                if c.storage.url.is_some() == c.storage.url_env.is_some() {
                    return Err(
                        "[storage] backend = \"postgres\" needs exactly one of url and url_env"
                            .into(),
                    );
                }
                if c.audit.path.is_some() {
                    return Err("[audit] path is for SQLite; with PostgreSQL the audit chain lives in the same database".into());
                }
            }
            other => {
                return Err(format!(
                    "[storage] backend {other:?} is unknown: use \"sqlite\" or \"postgres\""
                ))
            }
        }
        match c.seal.kind.as_str() {
            "shamir" => {}
            "pkcs11" => {
                if c.seal.library.is_none() || c.seal.key_label.is_none() {
                    return Err("[seal] type = \"pkcs11\" needs library and key_label".into());
                }
                if c.seal.token_label.is_none() == c.seal.slot.is_none() {
                    return Err(
                        "[seal] type = \"pkcs11\" needs exactly one of token_label and slot".into(),
                    );
                }
                if c.seal.pin_env.is_none() == c.seal.pin_file.is_none() {
                    return Err(
                        "[seal] type = \"pkcs11\" needs exactly one of pin_env and pin_file".into(),
                    );
                }
            }
            other => {
                return Err(format!(
                    "[seal] type {other:?} is unknown: use \"shamir\" or \"pkcs11\""
                ))
            }
        }
        if c.tls.is_none() && !c.listen.ip().is_loopback() {
            return Err(format!(
                "listen = \"{}\" is not a loopback address: plain HTTP is only allowed on loopback; add a [tls] section",
                c.listen
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_minimal_and_refuses_plain_http_off_loopback() {
        let ok = "listen = \"127.0.0.1:7300\"\n[storage]\nbackend = \"sqlite\"\npath = \"/tmp/k.db\"\n[seal]\ntype = \"shamir\"\n";
        ServerConfig::parse(ok).unwrap();
        let open = ok.replace("127.0.0.1", "0.0.0.0");
        assert!(ServerConfig::parse(&open).unwrap_err().contains("loopback"));
        let typo = ok.replace("[seal]", "lisen = 1\n[seal]");
        assert!(ServerConfig::parse(&typo).unwrap_err().contains("lisen"));
    }

    #[test]
    fn console_section_is_checked() {
        let base = "listen = \"127.0.0.1:7300\"\n[storage]\nbackend = \"sqlite\"\npath = \"/tmp/k.db\"\n[seal]\ntype = \"shamir\"\n";
        let with = |c: &str| ServerConfig::parse(&format!("{base}[console]\n{c}")).unwrap();
        let o = with("perimeter_state = \"/s.db\"\nperimeter_audit = [\"/a.db\"]\n")
            .console
            .resolve()
            .unwrap();
        let p = o.perimeter.unwrap();
        assert_eq!((p.state.as_str(), p.audit.len()), ("/s.db", 1));
        assert!(with("perimeter_audit = [\"/a.db\"]\n")
            .console
            .resolve()
            .unwrap_err()
            .contains("needs perimeter_state"));
        assert!(
            with("perimeter_state = \"x\"\nperimeter_state_env = \"Y\"\n")
                .console
                .resolve()
                .unwrap_err()
                .contains("one of")
        );
        assert!(ServerConfig::parse(&format!("{base}[console]\nperimeter = 1\n")).is_err());
        assert!(ServerConfig::parse(base)
            .unwrap()
            .console
            .resolve()
            .unwrap()
            .perimeter
            .is_none());
    }
}
