//! The SPA plaintext: `rand:b64(user):timestamp:version:type:b64(message)[:b64(nat)]
//! [:b64(server_auth)][:client_timeout]:digest`, with every check fwknopd applies.

use std::net::Ipv4Addr;

use crate::{b64, SpaError};

/// fwknop message types (`fko_message_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 0: run a command (refused by default).
    Command,
    /// 1: open ports for an address.
    Access,
    /// 2: NAT access.
    NatAccess,
    /// 3: access with a client-chosen timeout.
    ClientTimeoutAccess,
    /// 4: NAT access with a client timeout.
    ClientTimeoutNatAccess,
    /// 5: local NAT access.
    LocalNatAccess,
    /// 6: local NAT access with a client timeout.
    ClientTimeoutLocalNatAccess,
}

impl MessageType {
    /// The wire number.
    pub fn code(self) -> u8 {
        self as u8
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::Command,
            1 => Self::Access,
            2 => Self::NatAccess,
            3 => Self::ClientTimeoutAccess,
            4 => Self::ClientTimeoutNatAccess,
            5 => Self::LocalNatAccess,
            6 => Self::ClientTimeoutLocalNatAccess,
            _ => return None,
        })
    }
    /// True for the types that carry a NAT field.
    pub fn has_nat(self) -> bool {
        matches!(
            self,
            Self::NatAccess
                | Self::ClientTimeoutNatAccess
                | Self::LocalNatAccess
                | Self::ClientTimeoutLocalNatAccess
        )
    }
    /// True for the types that carry a client timeout.
    pub fn has_timeout(self) -> bool {
        matches!(
            self,
            Self::ClientTimeoutAccess
                | Self::ClientTimeoutNatAccess
                | Self::ClientTimeoutLocalNatAccess
        )
    }
}

/// The inner digest type (fwknop's `-m`), inferred from its base64 length when decoding.
pub use kagi_crypto::legacy::LegacyHash as DigestType;

/// Digest types whose base64 has `len` characters, in the order fwknopd tries them.
fn digest_candidates(len: usize) -> &'static [DigestType] {
    match len {
        22 => &[DigestType::Md5],
        27 => &[DigestType::Sha1],
        43 => &[DigestType::Sha256, DigestType::Sha3_256],
        64 => &[DigestType::Sha384],
        86 => &[DigestType::Sha512, DigestType::Sha3_512],
        _ => &[],
    }
}

/// A protocol in an access request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// tcp
    Tcp,
    /// udp
    Udp,
    /// icmp
    Icmp,
    /// none
    None,
}

impl Proto {
    /// The name in access messages, access.conf and nftables (`tcp`, `udp`, `icmp`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::None => "none",
        }
    }
}

/// `proto/port`, as access messages write it.
pub fn port_spec(proto: Proto, port: u16) -> String {
    format!("{}/{port}", proto.as_str())
}

/// `ip,proto/port[,proto/port...]` from an access message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSpec {
    /// The address to open for (`0.0.0.0` = the packet's source).
    pub allow_ip: Ipv4Addr,
    /// Requested protocol/port pairs.
    pub ports: Vec<(Proto, u16)>,
}

impl AccessSpec {
    /// Parses and validates an access message (fwknop `validate_access_msg`).
    pub fn parse(msg: &str) -> Result<Self, SpaError> {
        let (ip, rest) = msg.split_once(',').ok_or(SpaError::Message)?;
        let allow_ip: Ipv4Addr = ip.parse().map_err(|_| SpaError::Message)?;
        let mut ports = Vec::new();
        for spec in rest.split(',') {
            let (p, port) = spec.trim().split_once('/').ok_or(SpaError::Message)?;
            let proto = match p {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                "icmp" => Proto::Icmp,
                "none" => Proto::None,
                _ => return Err(SpaError::Message),
            };
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SpaError::Message);
            }
            let n: u32 = port.parse().map_err(|_| SpaError::Message)?;
            if !(1..=65535).contains(&n) {
                return Err(SpaError::Message);
            }
            ports.push((proto, n as u16));
        }
        Ok(Self { allow_ip, ports })
    }

    /// The message text, as the client writes it.
    pub fn to_message(&self) -> String {
        let mut s = self.allow_ip.to_string();
        for (p, port) in &self.ports {
            s.push(',');
            s.push_str(&port_spec(*p, *port));
        }
        s
    }
}

/// A decoded SPA message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaMessage {
    /// 16 decimal digits.
    pub rand: String,
    /// User name.
    pub username: String,
    /// Unix seconds.
    pub timestamp: u64,
    /// Client version string (`3.0.0`).
    pub version: String,
    /// Message type.
    pub msg_type: MessageType,
    /// The message (access spec or `ip,command`).
    pub message: String,
    /// NAT `host,port`.
    pub nat_access: Option<String>,
    /// Server auth (never set by the 2.6.10 client).
    pub server_auth: Option<String>,
    /// Client timeout (seconds).
    pub client_timeout: Option<u32>,
}

/// fwknop `validate_username`: printable, none of `" / \ [ ] : ; | = , + * ? < >`.
fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() < 64
        && u.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"\"/\\[]:;|=,+*?<>".contains(&b))
}

fn valid_nat(nat: &str) -> bool {
    let Some((host, port)) = nat.split_once(',') else {
        return false;
    };
    if port.contains(',') || host.is_empty() || host.len() > 253 {
        return false;
    }
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    // An IPv4 address or an RFC 1123 host name (fwknopd refuses anything else when it acts on it).
    let host_ok = host.parse::<Ipv4Addr>().is_ok()
        || host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

impl SpaMessage {
    /// The encoded fields `E` (without the digest).
    pub fn encode_fields(&self) -> String {
        let mut e = format!(
            "{}:{}:{}:{}:{}:{}",
            self.rand,
            b64::encode(self.username.as_bytes()),
            self.timestamp,
            self.version,
            self.msg_type.code(),
            b64::encode(self.message.as_bytes())
        );
        if let Some(n) = &self.nat_access {
            e.push(':');
            e.push_str(&b64::encode(n.as_bytes()));
        }
        if let Some(a) = &self.server_auth {
            e.push(':');
            e.push_str(&b64::encode(a.as_bytes()));
        }
        if let Some(t) = self.client_timeout.filter(|_| self.msg_type.has_timeout()) {
            e.push_str(&format!(":{t}"));
        }
        e
    }

    /// `E:b64nopad(H(E))`: the plaintext that gets encrypted.
    pub fn encode(&self, digest: DigestType) -> String {
        let e = self.encode_fields();
        let d = b64::encode(&digest.digest(e.as_bytes()));
        format!("{e}:{d}")
    }

    /// Decodes and validates a decrypted plaintext, checking its inner digest.
    pub fn decode(plaintext: &str) -> Result<(Self, DigestType), SpaError> {
        if !plaintext.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(SpaError::DecryptFailed);
        }
        let colons = plaintext.bytes().filter(|&b| b == b':').count();
        if !(6..=9).contains(&colons) {
            return Err(SpaError::FieldCount);
        }
        let (e, digest) = plaintext.rsplit_once(':').ok_or(SpaError::FieldCount)?;
        let cands = digest_candidates(digest.len());
        if cands.is_empty() {
            return Err(SpaError::DigestLength);
        }
        let dtype = cands
            .iter()
            .copied()
            .find(|d| {
                kagi_crypto::ct_eq(
                    b64::encode(&d.digest(e.as_bytes())).as_bytes(),
                    digest.as_bytes(),
                )
            })
            .ok_or(SpaError::DigestMismatch)?;
        let f: Vec<&str> = e.split(':').collect();
        let rand = f[0];
        if rand.len() != 16 || !rand.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SpaError::RandomValue);
        }
        let username = b64::decode(f[1])
            .and_then(|u| String::from_utf8(u).ok())
            .filter(|u| valid_username(u))
            .ok_or(SpaError::Username)?;
        if f[2].is_empty() || !f[2].bytes().all(|b| b.is_ascii_digit()) {
            return Err(SpaError::Timestamp);
        }
        let timestamp: u64 = f[2].parse().map_err(|_| SpaError::Timestamp)?;
        let version = f[3];
        if version.is_empty() || version.len() > 8 {
            return Err(SpaError::Version);
        }
        let code: u8 = f[4].parse().map_err(|_| SpaError::MessageType)?;
        let msg_type = MessageType::from_code(code).ok_or(SpaError::MessageType)?;
        let rest = &f[5..];
        let (min, max) = match (msg_type.has_nat(), msg_type.has_timeout()) {
            (false, false) => (1, 2),
            (true, false) | (false, true) => (2, 3),
            (true, true) => (3, 4),
        };
        if rest.len() < min || rest.len() > max {
            return Err(SpaError::FieldCount);
        }
        if rest[0].len() > 256 {
            return Err(SpaError::Message);
        }
        let message = b64::decode(rest[0])
            .and_then(|m| String::from_utf8(m).ok())
            .ok_or(SpaError::Message)?;
        match msg_type {
            MessageType::Command => {
                let (ip, cmd) = message.split_once(',').ok_or(SpaError::Message)?;
                if ip.parse::<Ipv4Addr>().is_err() || cmd.is_empty() {
                    return Err(SpaError::Message);
                }
            }
            _ => {
                AccessSpec::parse(&message)?;
            }
        }
        let mut i = 1;
        let nat_access = if msg_type.has_nat() {
            let n = b64::decode(rest[i])
                .and_then(|n| String::from_utf8(n).ok())
                .filter(|n| valid_nat(n))
                .ok_or(SpaError::NatAccess)?;
            i += 1;
            Some(n)
        } else {
            None
        };
        let optional = rest.len() - i;
        let has_auth = if msg_type.has_timeout() {
            optional == 2
        } else {
            optional == 1
        };
        let server_auth = if has_auth {
            let a = b64::decode(rest[i])
                .and_then(|a| String::from_utf8(a).ok())
                .ok_or(SpaError::Message)?;
            i += 1;
            Some(a)
        } else {
            None
        };
        let client_timeout = if msg_type.has_timeout() {
            let t = rest[i];
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SpaError::ClientTimeout);
            }
            let v: u32 = t.parse().map_err(|_| SpaError::ClientTimeout)?;
            if v > 65536 {
                return Err(SpaError::ClientTimeout);
            }
            Some(v)
        } else {
            None
        };
        Ok((
            Self {
                rand: rand.to_string(),
                username,
                timestamp,
                version: version.to_string(),
                msg_type,
                message,
                nat_access,
                server_auth,
                client_timeout,
            },
            dtype,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> SpaMessage {
        SpaMessage {
            rand: "9048659081339271".into(),
            username: "root".into(),
            timestamp: 1795878118,
            version: "3.0.0".into(),
            msg_type: MessageType::Access,
            message: "127.0.0.1,tcp/22".into(),
            nat_access: None,
            server_auth: None,
            client_timeout: None,
        }
    }

    /// The reference's verified example (§1.8): fields and SHA-256 digest.
    #[test]
    fn encodes_the_reference_example() {
        let p = msg().encode(DigestType::Sha256);
        assert_eq!(p, "9048659081339271:cm9vdA:1795878118:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg:dfJLsmz9hz3QkHax7OJqTlo477vrQoX+MpGtMQgPjHA");
        let (back, d) = SpaMessage::decode(&p).unwrap();
        assert_eq!(back, msg());
        assert_eq!(d, DigestType::Sha256);
    }

    #[test]
    fn every_digest_type_round_trips() {
        for d in [
            DigestType::Md5,
            DigestType::Sha1,
            DigestType::Sha256,
            DigestType::Sha384,
            DigestType::Sha512,
            DigestType::Sha3_256,
            DigestType::Sha3_512,
        ] {
            assert_eq!(SpaMessage::decode(&msg().encode(d)).unwrap().1, d);
        }
    }

    #[test]
    fn refuses_bad_fields() {
        let good = msg();
        let cases: Vec<(SpaMessage, SpaError)> = vec![
            (
                SpaMessage {
                    rand: "123".into(),
                    ..good.clone()
                },
                SpaError::RandomValue,
            ),
            (
                SpaMessage {
                    username: "a:b".into(),
                    ..good.clone()
                },
                SpaError::Username,
            ),
            (
                SpaMessage {
                    version: "123456789".into(),
                    ..good.clone()
                },
                SpaError::Version,
            ),
            (
                SpaMessage {
                    message: "10.0.0.1,tcp/0".into(),
                    ..good.clone()
                },
                SpaError::Message,
            ),
            (
                SpaMessage {
                    message: "10.0.0.1,tcp/70000".into(),
                    ..good.clone()
                },
                SpaError::Message,
            ),
            (
                SpaMessage {
                    message: "10.0.0.1,sctp/22".into(),
                    ..good.clone()
                },
                SpaError::Message,
            ),
            (
                SpaMessage {
                    message: "10.0.0.999,tcp/22".into(),
                    ..good.clone()
                },
                SpaError::Message,
            ),
            (
                SpaMessage {
                    msg_type: MessageType::NatAccess,
                    nat_access: Some("bad%host,22".into()),
                    ..good.clone()
                },
                SpaError::NatAccess,
            ),
            (
                SpaMessage {
                    msg_type: MessageType::ClientTimeoutAccess,
                    client_timeout: Some(70000),
                    ..good.clone()
                },
                SpaError::ClientTimeout,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(
                SpaMessage::decode(&m.encode(DigestType::Sha256)).unwrap_err(),
                want,
                "{m:?}"
            );
        }
        let p = good.encode(DigestType::Sha256);
        let tampered = p.replacen("1795878118", "1795878119", 1);
        assert_eq!(
            SpaMessage::decode(&tampered).unwrap_err(),
            SpaError::DigestMismatch
        );
        assert_eq!(SpaMessage::decode("a:b").unwrap_err(), SpaError::FieldCount);
        assert_eq!(
            SpaMessage::decode(&format!("{p}x")).unwrap_err(),
            SpaError::DigestLength
        );
    }

    #[test]
    fn access_spec() {
        let a = AccessSpec::parse("0.0.0.0,tcp/22,udp/53").unwrap();
        assert_eq!(a.ports, vec![(Proto::Tcp, 22), (Proto::Udp, 53)]);
        assert_eq!(a.to_message(), "0.0.0.0,tcp/22,udp/53");
        assert!(AccessSpec::parse("::1,tcp/22").is_err());
        assert!(AccessSpec::parse("1.2.3.4").is_err());
    }
}
