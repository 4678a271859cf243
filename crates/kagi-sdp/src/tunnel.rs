//! The one-line request a `kagi connect` client sends a gateway inside mutual TLS, and the
//! gateway's one-line answer, after which the connection carries the service's bytes.
//!
//! ```text
//! client:  KAGI-CONNECT/1 <service> [<posture claim k=v> ...]\n
//! gateway: OK\n   |   DENIED <one sentence>\n
//! ```
//! The identity is the client certificate's subject, never a field of the request; the
//! gateway connects only to the address the policy names for the service (egress allow-list).

use crate::policy::{PolicyError, Posture};

/// Protocol tag of the request line.
pub const TAG: &str = "KAGI-CONNECT/1";
/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The service asked for.
    pub service: String,
    /// Device posture claims.
    pub claims: Vec<String>,
}

impl ConnectRequest {
    /// The request line, newline included.
    pub fn encode(&self) -> String {
        let mut s = format!("{TAG} {}", self.service);
        for c in &self.claims {
            s.push(' ');
            s.push_str(c);
        }
        s.push('\n');
        s
    }

    /// Parses a request line (with or without its newline).
    pub fn parse(line: &str) -> Result<Self, PolicyError> {
        let bad = |m: &str| PolicyError(format!("connect request: {m}"));
        if line.len() > MAX_LINE {
            return Err(bad("longer than 1024 bytes"));
        }
        let mut parts = line.trim_end_matches(['\n', '\r']).split(' ');
        if parts.next() != Some(TAG) {
            return Err(bad("not KAGI-CONNECT/1"));
        }
        let service = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("no service"))?;
        if !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(bad("service name is not [A-Za-z0-9._-]"));
        }
        let claims: Vec<String> = parts.map(str::to_string).collect();
        Posture::from_claims(&claims)?;
        Ok(Self {
            service: service.to_string(),
            claims,
        })
    }

    /// The posture the claims describe.
    pub fn posture(&self) -> Posture {
        Posture::from_claims(&self.claims).unwrap_or_default()
    }
}

/// The gateway's answer line.
pub fn answer(result: Result<(), &str>) -> String {
    match result {
        Ok(()) => "OK\n".into(),
        // One line, whatever the reason held.
        Err(reason) => format!("DENIED {}\n", reason.replace(['\n', '\r'], " ")),
    }
}

/// Reads an answer line: Ok, or the gateway's reason.
pub fn parse_answer(line: &str) -> Result<(), String> {
    let l = line.trim_end_matches(['\n', '\r']);
    if l == "OK" {
        return Ok(());
    }
    Err(l.strip_prefix("DENIED ").map_or_else(
        || format!("unexpected answer from the gateway: {l:?}"),
        str::to_string,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = ConnectRequest {
            service: "kms".into(),
            claims: vec!["os=linux".into(), "disk_encryption=true".into()],
        };
        let line = r.encode();
        assert_eq!(line, "KAGI-CONNECT/1 kms os=linux disk_encryption=true\n");
        assert_eq!(ConnectRequest::parse(&line).unwrap(), r);
        assert_eq!(r.posture().disk_encryption, Some(true));
        for bad in [
            "GET / HTTP/1.1\n",
            "KAGI-CONNECT/1\n",
            "KAGI-CONNECT/1 k/ms\n",
            "KAGI-CONNECT/1 kms gpu=1\n",
        ] {
            assert!(ConnectRequest::parse(bad).is_err(), "{bad}");
        }
        assert!(ConnectRequest::parse(&"x".repeat(2000)).is_err());
        assert_eq!(parse_answer(&answer(Ok(()))), Ok(()));
        assert_eq!(parse_answer(&answer(Err("no\nway"))), Err("no way".into()));
        assert!(parse_answer("HTTP/1.1 400")
            .unwrap_err()
            .contains("unexpected"));
    }
}
