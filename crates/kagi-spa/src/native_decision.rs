//! What a gateway decides for one native SPA packet: pure, like [`crate::decision`] for fwknop.

use std::collections::HashMap;
use std::net::IpAddr;

use kagi_crypto::hpke::HpkeKeyPair;

use crate::message::Proto;
use crate::native::{open, NativeError};
use crate::replay_cache::ReplayCache;

/// An enrolled client: its public key and the services it may knock for.
#[derive(Debug, Clone)]
pub struct NativeClient {
    /// Name for logs.
    pub name: String,
    /// X25519 public key.
    pub public: [u8; 32],
    /// Services this client may open.
    pub services: Vec<String>,
}

/// A gateway's native SPA configuration.
#[derive(Debug)]
pub struct NativeGateway {
    /// The gateway's key pair (packets are sealed to its public key).
    pub key: HpkeKeyPair,
    /// Enrolled clients by key id.
    pub clients: HashMap<[u8; 8], NativeClient>,
    /// Service name → the ports it opens.
    pub services: HashMap<String, Vec<(Proto, u16)>>,
    /// Seconds a knock opens access for.
    pub timeout: u32,
}

/// What an accepted knock opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeGrant {
    /// The client's name.
    pub client: String,
    /// Its address.
    pub address: IpAddr,
    /// Its data connection's source port, if it bound one (5-tuple pinhole).
    pub src_port: Option<u16>,
    /// Ports to open.
    pub ports: Vec<(Proto, u16)>,
    /// Seconds.
    pub timeout: u32,
    /// The replay-cache key recorded for it.
    pub replay: [u8; 32],
}

/// Why a native packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NativeRefusal {
    /// The packet itself was refused.
    #[error("{0}")]
    Packet(#[from] NativeError),
    /// This knock was accepted before.
    #[error("replayed knock (its nonce was seen before)")]
    Replay,
    /// The client may not open this service.
    #[error("client {client} may not open service {service}")]
    NotAllowed {
        /// Who.
        client: String,
        /// What.
        service: String,
    },
    /// No such service on this gateway.
    #[error("this gateway has no service {0}")]
    UnknownService(String),
}

impl NativeGateway {
    /// Decides one datagram from `from` at `now`; on success records the knock in `cache`.
    pub fn decide(
        &self,
        packet: &[u8],
        from: IpAddr,
        now: u64,
        max_age: u64,
        cache: &mut ReplayCache,
    ) -> Result<NativeGrant, NativeRefusal> {
        let (id, knock) = open(&self.key, packet, |id| {
            self.clients.get(id).map(|c| c.public)
        })?;
        knock.check(from, now, max_age)?;
        let client = self
            .clients
            .get(&id)
            .ok_or(NativeRefusal::Packet(NativeError::UnknownClient))?;
        let mut ports = Vec::new();
        for s in &knock.services {
            if !client.services.iter().any(|c| c == s) {
                return Err(NativeRefusal::NotAllowed {
                    client: client.name.clone(),
                    service: s.clone(),
                });
            }
            let p = self
                .services
                .get(s)
                .ok_or_else(|| NativeRefusal::UnknownService(s.clone()))?;
            ports.extend_from_slice(p);
        }
        ports.sort();
        ports.dedup();
        let replay = knock.replay_digest(&id);
        if !cache.insert(replay, now as i64) {
            return Err(NativeRefusal::Replay);
        }
        Ok(NativeGrant {
            client: client.name.clone(),
            address: knock.addr,
            src_port: (knock.port != 0).then_some(knock.port),
            ports,
            timeout: self.timeout,
            replay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{key_id, seal, Knock};

    #[test]
    fn policy_replay_and_pinholes() {
        let client = HpkeKeyPair::generate();
        let gw = NativeGateway {
            key: HpkeKeyPair::generate(),
            clients: [(
                key_id(&client.public()),
                NativeClient {
                    name: "alice".into(),
                    public: client.public(),
                    services: vec!["kms".into()],
                },
            )]
            .into(),
            services: [
                ("kms".to_string(), vec![(Proto::Tcp, 7300)]),
                ("db".to_string(), vec![(Proto::Tcp, 5432)]),
            ]
            .into(),
            timeout: 30,
        };
        let from: IpAddr = "10.0.0.2".parse().unwrap();
        let mut cache = ReplayCache::new();
        let knock = Knock::new(100, from, 40_000, vec!["kms".into()]);
        let p = seal(&client, &gw.key.public(), &knock).unwrap();
        let g = gw.decide(&p, from, 100, 120, &mut cache).unwrap();
        assert_eq!(
            (g.client.as_str(), g.src_port, g.ports.clone()),
            ("alice", Some(40_000), vec![(Proto::Tcp, 7300)])
        );
        assert_eq!(
            gw.decide(&p, from, 101, 120, &mut cache),
            Err(NativeRefusal::Replay)
        );
        let db = seal(
            &client,
            &gw.key.public(),
            &Knock::new(100, from, 0, vec!["db".into()]),
        )
        .unwrap();
        assert!(matches!(
            gw.decide(&db, from, 100, 120, &mut cache),
            Err(NativeRefusal::NotAllowed { .. })
        ));
        let stranger = HpkeKeyPair::generate();
        let s = seal(&stranger, &gw.key.public(), &knock).unwrap();
        assert_eq!(
            gw.decide(&s, from, 100, 120, &mut cache),
            Err(NativeRefusal::Packet(NativeError::UnknownClient))
        );
        let fresh = seal(
            &client,
            &gw.key.public(),
            &Knock::new(100, from, 0, vec!["kms".into()]),
        )
        .unwrap();
        assert_eq!(
            gw.decide(&fresh, "10.0.0.9".parse().unwrap(), 100, 120, &mut cache),
            Err(NativeRefusal::Packet(NativeError::AddressMismatch))
        );
        let g = gw.decide(&fresh, from, 100, 120, &mut cache).unwrap();
        assert_eq!(g.src_port, None, "port 0 opens for the whole address");
    }
}
