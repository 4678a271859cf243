//! What `kagi spad` decides for one datagram, given its stanzas, the time and the replay
//! cache: pure, so `kagi spa inspect`, the daemon and the tests share one code path.

use std::net::{IpAddr, Ipv4Addr};

use crate::access_conf::Stanza;
use crate::fwknop::{open, precheck};
use crate::message::{AccessSpec, MessageType, Proto};
use crate::replay_cache::ReplayCache;
use crate::SpaError;

/// Daemon-wide settings that shape decisions.
#[derive(Debug, Clone, Copy)]
pub struct DaemonPolicy {
    /// Packet-age window in seconds, past and future; None disables aging (inspect only).
    pub max_age: Option<u64>,
}

/// Access granted by one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The stanza that opened it (`file:line`).
    pub stanza: String,
    /// Address to open for.
    pub address: IpAddr,
    /// Protocol/port pairs.
    pub ports: Vec<(Proto, u16)>,
    /// Seconds.
    pub timeout: u32,
    /// User name in the packet.
    pub username: String,
}

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not an SPA packet at all (length, alphabet, prefix).
    #[error("not an SPA packet: {0}")]
    Malformed(SpaError),
    /// No stanza's SOURCE (and DESTINATION) matches the sender.
    #[error("no stanza matches this source address")]
    NoStanza,
    /// Every matching stanza has expired (ACCESS_EXPIRE).
    #[error("the matching stanza has expired")]
    StanzaExpired,
    /// No matching stanza's keys open it; the last stanza's reason.
    #[error("no stanza's keys open it: {0}")]
    NotOpened(SpaError),
    /// This exact packet was accepted before.
    #[error("replayed packet (this exact packet was seen before)")]
    Replay,
    /// Its timestamp is too old.
    #[error("stale packet: its timestamp is {0} seconds old (limit {1})")]
    Stale(u64, u64),
    /// Its timestamp is in the future.
    #[error("packet from the future: its timestamp is {0} seconds ahead (limit {1})")]
    Future(u64, u64),
    /// A command message (type 0): never executed.
    #[error("command messages are refused")]
    Command,
    /// NAT access: not supported.
    #[error("NAT access messages are refused")]
    Nat,
    /// REQUIRE_USERNAME does not match.
    #[error("user name does not match REQUIRE_USERNAME")]
    Username,
    /// `0.0.0.0` requested but REQUIRE_SOURCE_ADDRESS is set.
    #[error("the packet asks for its source address but the stanza requires an explicit one")]
    SourceRequired,
    /// A requested port is restricted or outside OPEN_PORTS.
    #[error("a requested port is not allowed (RESTRICT_PORTS or outside OPEN_PORTS)")]
    Port,
    /// Only tcp and udp can be opened.
    #[error("only tcp and udp ports can be opened")]
    Protocol,
}

/// The outcome for one packet.
pub type Verdict = Result<Grant, Refusal>;

/// Decides one datagram `packet` from `src` to `dst` at unix time `now`.
pub fn decide(
    packet: &[u8],
    src: IpAddr,
    dst: Option<IpAddr>,
    now: i64,
    stanzas: &[Stanza],
    policy: DaemonPolicy,
    replay: &mut ReplayCache,
) -> Verdict {
    precheck(packet).map_err(Refusal::Malformed)?;
    let text = std::str::from_utf8(packet).map_err(|_| Refusal::Malformed(SpaError::NotBase64))?;
    let mut candidates = stanzas.iter().filter(|s| s.matches(src, dst)).peekable();
    if candidates.peek().is_none() {
        return Err(Refusal::NoStanza);
    }
    let mut last = Refusal::StanzaExpired;
    for st in candidates {
        if st.access_expire.is_some_and(|e| now >= e) {
            continue;
        }
        let opened = match open(text, &st.keys) {
            Ok(o) => o,
            Err(e) => {
                last = Refusal::NotOpened(e);
                continue;
            }
        };
        // Only packets that pass an HMAC are hashed for the replay cache, so a flood of
        // garbage costs one HMAC each and nothing more. As fwknopd, an opened packet is
        // recorded before any later check can refuse it.
        if !replay.insert(kagi_crypto::sha256(packet), now) {
            return Err(Refusal::Replay);
        }
        let m = opened.message;
        if let Some(max) = policy.max_age {
            let ts = m.timestamp as i64;
            if now - ts > max as i64 {
                return Err(Refusal::Stale((now - ts) as u64, max));
            }
            if ts - now > max as i64 {
                return Err(Refusal::Future((ts - now) as u64, max));
            }
        }
        match m.msg_type {
            MessageType::Command => return Err(Refusal::Command),
            t if t.has_nat() => return Err(Refusal::Nat),
            _ => {}
        }
        if let Some(u) = &st.require_username {
            if *u != m.username {
                return Err(Refusal::Username);
            }
        }
        let spec = AccessSpec::parse(&m.message).map_err(Refusal::NotOpened)?;
        let address = if spec.allow_ip == Ipv4Addr::UNSPECIFIED {
            if st.require_source_address {
                return Err(Refusal::SourceRequired);
            }
            src
        } else {
            IpAddr::V4(spec.allow_ip)
        };
        if spec
            .ports
            .iter()
            .any(|(p, _)| !matches!(p, Proto::Tcp | Proto::Udp))
        {
            return Err(Refusal::Protocol);
        }
        if spec.ports.iter().any(|p| st.restrict_ports.contains(p))
            || (!st.open_ports.is_empty() && !spec.ports.iter().all(|p| st.open_ports.contains(p)))
        {
            return Err(Refusal::Port);
        }
        let wanted = m
            .client_timeout
            .filter(|t| *t > 0)
            .unwrap_or(st.fw_access_timeout);
        return Ok(Grant {
            stanza: st.origin.clone(),
            address,
            ports: spec.ports,
            timeout: wanted.min(st.max_fw_timeout).max(1),
            username: m.username,
        });
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fwknop::seal;
    use crate::message::{DigestType, SpaMessage};

    fn stanzas() -> Vec<Stanza> {
        crate::access_conf::parse(
            "SOURCE 10.0.0.0/8, fd00::/8\nOPEN_PORTS tcp/22, udp/53\nKEY encryption-key\nHMAC_KEY hmac-key\nFW_ACCESS_TIMEOUT 30\nMAX_FW_TIMEOUT 60\n",
            "a.conf",
            &mut |_| Err("none".into()),
        )
        .unwrap()
    }

    fn packet(msg: &str, ts: u64, t: MessageType, timeout: Option<u32>) -> String {
        let m = SpaMessage {
            rand: "1234567890123456".into(),
            username: "alice".into(),
            timestamp: ts,
            version: "3.0.0".into(),
            msg_type: t,
            message: msg.into(),
            nat_access: t.has_nat().then(|| "10.0.0.9,22".to_string()),
            server_auth: None,
            client_timeout: timeout,
        };
        seal(
            &m,
            DigestType::Sha256,
            &stanzas()[0].keys,
            kagi_crypto::random_array(),
        )
        .unwrap()
    }

    const NOW: i64 = 1_800_000_000;
    const POLICY: DaemonPolicy = DaemonPolicy { max_age: Some(120) };

    fn run(p: &str, src: &str, cache: &mut ReplayCache) -> Verdict {
        decide(
            p.as_bytes(),
            src.parse().unwrap(),
            None,
            NOW,
            &stanzas(),
            POLICY,
            cache,
        )
    }

    #[test]
    fn decision_table() {
        let mut c = ReplayCache::new();
        let ok = packet("0.0.0.0,tcp/22", NOW as u64, MessageType::Access, None);
        let g = run(&ok, "10.1.2.3", &mut c).unwrap();
        assert_eq!(g.address, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(g.timeout, 30);
        assert_eq!(run(&ok, "10.1.2.3", &mut c), Err(Refusal::Replay));
        let v6 = packet("0.0.0.0,udp/53", NOW as u64, MessageType::Access, None);
        assert_eq!(
            run(&v6, "fd00::2", &mut c).unwrap().address,
            "fd00::2".parse::<IpAddr>().unwrap()
        );
        let timeout = packet(
            "10.9.9.9,tcp/22",
            NOW as u64,
            MessageType::ClientTimeoutAccess,
            Some(600),
        );
        let g = run(&timeout, "10.1.2.3", &mut c).unwrap();
        assert_eq!((g.address, g.timeout), ("10.9.9.9".parse().unwrap(), 60));
        let cases = [
            (
                packet(
                    "0.0.0.0,tcp/22",
                    NOW as u64 - 121,
                    MessageType::Access,
                    None,
                ),
                "10.1.1.1",
                Refusal::Stale(121, 120),
            ),
            (
                packet(
                    "0.0.0.0,tcp/22",
                    NOW as u64 + 300,
                    MessageType::Access,
                    None,
                ),
                "10.1.1.1",
                Refusal::Future(300, 120),
            ),
            (
                packet("0.0.0.0,tcp/23", NOW as u64, MessageType::Access, None),
                "10.1.1.1",
                Refusal::Port,
            ),
            (
                packet("0.0.0.0,uname -a", NOW as u64, MessageType::Command, None),
                "10.1.1.1",
                Refusal::Command,
            ),
            (
                packet("0.0.0.0,tcp/22", NOW as u64, MessageType::NatAccess, None),
                "10.1.1.1",
                Refusal::Nat,
            ),
            (
                packet("0.0.0.0,tcp/22", NOW as u64, MessageType::Access, None),
                "192.0.2.1",
                Refusal::NoStanza,
            ),
        ];
        for (p, src, want) in cases {
            assert_eq!(run(&p, src, &mut c), Err(want));
        }
        let mut flipped = ok.clone().into_bytes();
        flipped[30] = if flipped[30] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            decide(
                &flipped,
                "10.1.1.1".parse().unwrap(),
                None,
                NOW,
                &stanzas(),
                POLICY,
                &mut c
            ),
            Err(Refusal::NotOpened(SpaError::BadHmac))
        );
        assert_eq!(
            run("garbage", "10.1.1.1", &mut c),
            Err(Refusal::Malformed(SpaError::TooShort))
        );
    }
}
