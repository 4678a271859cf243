//! What the controller and its clients and gateways say to each other (docs/perimeter-controller.md).
//!
//! Inside TLS (ALPN `kagi-control/1`), the caller sends one JSON request line and reads one
//! JSON answer line. Enrollment needs no client certificate (the one-time token authenticates
//! it); everything else needs the certificate the controller issued.
//!
//! ```text
//! {"op":"enroll","token":"<hex>","tls_public_key":"<hex>","spa_public_key":"<hex>"}
//! {"op":"sync","since":N}          (a gateway: the answer waits until the state is newer)
//! {"op":"renew","tls_public_key":"<hex>"}
//! ```

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::policy::PolicyError;

/// Longest request line the controller reads, newline included.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Longest answer line a client reads, newline included.
pub const MAX_ANSWER: usize = 8 << 20;
/// ALPN protocol of the control channel.
pub const ALPN: &[u8] = b"kagi-control/1";
/// SPA service name that opens a controller's TLS port.
pub const SPA_CONTROLLER: &str = "kagi-controller";
/// SPA service name that opens a gateway's TLS port.
pub const SPA_GATEWAY: &str = "kagi-gateway";

const TOKEN_PREFIX: &str = "kagi-enroll-v1.";

fn bad(m: impl Into<String>) -> PolicyError {
    PolicyError(m.into())
}

/// A one-time enrollment token, as `kagi controller token create` prints it. It carries
/// everything a new client needs to reach a controller it has never seen: the secret that
/// authenticates it, the SHA-256 of the controller's CA certificate (so the first TLS
/// connection is verified, not trusted), a one-time SPA key the controller accepts until the
/// token is used or expires, and the controller's SPA public key.
pub struct EnrollToken {
    /// The secret; the controller stores only its SHA-256.
    pub secret: Zeroizing<[u8; 32]>,
    /// SHA-256 of the controller CA's DER certificate.
    pub ca_pin: [u8; 32],
    /// One-time X25519 private key for knocking on the controller before enrollment.
    pub spa_private: Zeroizing<[u8; 32]>,
    /// The controller's X25519 SPA public key.
    pub controller_spa: [u8; 32],
}

impl std::fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollToken")
            .field("ca_pin", &hex::encode(self.ca_pin))
            .finish_non_exhaustive()
    }
}

impl EnrollToken {
    /// `kagi-enroll-v1.` + base64url (no padding) of secret ‖ ca_pin ‖ spa_private ‖ controller_spa.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 128]);
        raw[..32].copy_from_slice(&self.secret[..]);
        raw[32..64].copy_from_slice(&self.ca_pin);
        raw[64..96].copy_from_slice(&self.spa_private[..]);
        raw[96..].copy_from_slice(&self.controller_spa);
        Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
        ))
    }

    /// Parses a token string.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("enrollment token: does not start with kagi-enroll-v1."))?;
        let raw = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|_| bad("enrollment token: not base64url"))?,
        );
        if raw.len() != 128 {
            return Err(bad(
                "enrollment token: wrong length (copied only part of it?)",
            ));
        }
        let part = |i: usize| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&raw[i * 32..(i + 1) * 32]);
            a
        };
        Ok(Self {
            secret: Zeroizing::new(part(0)),
            ca_pin: part(1),
            spa_private: Zeroizing::new(part(2)),
            controller_spa: part(3),
        })
    }
}

/// A request to the controller. (`Debug` leaves out the token's secret.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Redeem a one-time token: get a certificate for `tls_public_key` and register the SPA key.
    Enroll {
        /// The token's secret, hex.
        token: String,
        /// Uncompressed P-256 point (65 bytes), hex: the key the certificate is issued for.
        tls_public_key: String,
        /// X25519 public key (32 bytes), hex: this identity's SPA key from now on.
        spa_public_key: String,
    },
    /// A gateway asks for the perimeter state newer than `since` (long poll).
    Sync {
        /// The version the gateway already has (0 = none).
        since: u64,
    },
    /// A fresh short-lived certificate for the caller's identity.
    Renew {
        /// Uncompressed P-256 point, hex.
        tls_public_key: String,
    },
}

impl std::fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Enroll {
                tls_public_key,
                spa_public_key,
                ..
            } => f
                .debug_struct("Enroll")
                .field("tls_public_key", tls_public_key)
                .field("spa_public_key", spa_public_key)
                .finish_non_exhaustive(),
            Self::Sync { since } => f.debug_struct("Sync").field("since", since).finish(),
            Self::Renew { tls_public_key } => f
                .debug_struct("Renew")
                .field("tls_public_key", tls_public_key)
                .finish(),
        }
    }
}

impl ControlRequest {
    /// Parses one request line and checks its fields' shapes.
    pub fn parse(line: &[u8]) -> Result<Self, PolicyError> {
        if line.len() > MAX_REQUEST {
            return Err(bad("control request: longer than 16 KiB"));
        }
        let r: Self =
            serde_json::from_slice(line).map_err(|e| bad(format!("control request: {e}")))?;
        match &r {
            Self::Enroll {
                token,
                tls_public_key,
                spa_public_key,
            } => {
                hex_bytes::<32>("token", token)?;
                p256_point(tls_public_key)?;
                hex_bytes::<32>("spa_public_key", spa_public_key)?;
            }
            Self::Renew { tls_public_key } => {
                p256_point(tls_public_key)?;
            }
            Self::Sync { .. } => {}
        }
        Ok(r)
    }

    /// The request line, newline included.
    pub fn encode(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Exactly `N` bytes from hex, or one sentence naming the field.
pub fn hex_bytes<const N: usize>(field: &str, s: &str) -> Result<[u8; N], PolicyError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| bad(format!("{field} must be {} hex digits", N * 2)))?;
    Ok(out)
}

/// An uncompressed P-256 point (0x04 ‖ X ‖ Y), from hex.
pub fn p256_point(s: &str) -> Result<[u8; 65], PolicyError> {
    let p = hex_bytes::<65>("tls_public_key", s)?;
    if p[0] != 4 {
        return Err(bad(
            "tls_public_key must be an uncompressed P-256 point (04...)",
        ));
    }
    Ok(p)
}

/// A gateway, as an enrolled client needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayInfo {
    /// Identity name (and certificate subject).
    pub name: String,
    /// `host:port` of its TLS port.
    pub address: String,
    /// Its SPA UDP port.
    pub spa_port: u16,
    /// Its X25519 SPA public key, hex (empty until the gateway has enrolled).
    pub spa_public_key: String,
    /// Services it fronts.
    pub services: Vec<String>,
}

/// The answer to `enroll` and `renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// The identity the certificate names.
    pub identity: String,
    /// The certificate (PEM).
    pub certificate: String,
    /// The controller's CA (PEM): trust anchor for gateways and the controller.
    pub ca: String,
    /// When the certificate expires (RFC 3339).
    pub expires_at: String,
    /// The controller's X25519 SPA public key, hex.
    pub controller_spa_key: String,
    /// Gateways and the services they front.
    pub gateways: Vec<GatewayInfo>,
}

/// One enrolled identity as gateways see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientInfo {
    /// Identity name.
    pub identity: String,
    /// X25519 SPA public key, hex.
    pub spa_public_key: String,
    /// Serial number (hex) of its current certificate; older ones are refused.
    pub cert_serial: String,
}

/// The perimeter state a gateway enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncState {
    /// Increases with every change.
    pub version: u64,
    /// The perimeter policy (TOML, docs/perimeter-policy.md).
    pub policy: String,
    /// Enrolled, not revoked identities.
    pub clients: Vec<ClientInfo>,
    /// Revoked identities.
    pub revoked: Vec<String>,
}

/// The controller's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlAnswer {
    /// A certificate (enroll, renew).
    Enrolled(Enrolled),
    /// Newer state (sync).
    Sync(SyncState),
    /// Nothing newer within the poll (sync).
    Unchanged {
        /// The current version.
        version: u64,
    },
    /// Refused, in one sentence.
    Error {
        /// Why.
        message: String,
    },
}

impl ControlAnswer {
    /// Parses one answer line.
    pub fn parse(line: &[u8]) -> Result<Self, PolicyError> {
        if line.len() > MAX_ANSWER {
            return Err(bad("control answer: longer than 8 MiB"));
        }
        serde_json::from_slice(line).map_err(|e| bad(format!("control answer: {e}")))
    }

    /// The answer line, newline included.
    pub fn encode(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_refuses_damage() {
        let t = EnrollToken {
            secret: Zeroizing::new([1; 32]),
            ca_pin: [2; 32],
            spa_private: Zeroizing::new([3; 32]),
            controller_spa: [4; 32],
        };
        let s = t.encode();
        let back = EnrollToken::parse(&s).unwrap();
        assert_eq!(*back.secret, [1; 32]);
        assert_eq!(back.ca_pin, [2; 32]);
        assert_eq!(*back.spa_private, [3; 32]);
        assert_eq!(back.controller_spa, [4; 32]);
        assert!(!format!("{back:?}").contains(&hex::encode([1u8; 32])));
        assert!(EnrollToken::parse(&s[..s.len() - 2]).is_err());
        assert!(EnrollToken::parse("kagi-enroll-v2.AAAA").is_err());
        assert!(EnrollToken::parse(&s.replace('.', "!")).is_err());
    }

    #[test]
    fn requests_are_checked() {
        let ok = ControlRequest::Enroll {
            token: "00".repeat(32),
            tls_public_key: format!("04{}", "11".repeat(64)),
            spa_public_key: "22".repeat(32),
        };
        assert_eq!(ControlRequest::parse(ok.encode().as_bytes()).unwrap(), ok);
        assert!(
            !format!("{ok:?}").contains(&"00".repeat(32)),
            "the token secret in Debug"
        );
        let short = ok.encode().replace(&"22".repeat(32), "22");
        assert!(ControlRequest::parse(short.as_bytes())
            .unwrap_err()
            .0
            .contains("spa_public_key"));
        let compressed = ok.encode().replace("\"04", "\"02");
        assert!(ControlRequest::parse(compressed.as_bytes()).is_err());
        assert!(ControlRequest::parse(br#"{"op":"sync","since":1,"x":2}"#).is_err());
        assert!(ControlRequest::parse(br#"{"op":"rm -rf"}"#).is_err());
        assert!(ControlRequest::parse(&vec![b' '; MAX_REQUEST + 1]).is_err());
        let a = ControlAnswer::Unchanged { version: 7 };
        assert_eq!(ControlAnswer::parse(a.encode().as_bytes()).unwrap(), a);
    }
}
