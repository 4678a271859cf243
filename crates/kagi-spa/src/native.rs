//! kagi's native SPA packet: no shared secret on the gateway. The knock is sealed to the
//! gateway's public key with HPKE auth mode (RFC 9180; X25519, HKDF-SHA256, ChaCha20-Poly1305)
//! and authenticated by the client's own static key, which the gateway looks up by the key id
//! in the clear header. The knock binds the client's address and, optionally, the source port
//! its data connection will use (the NAT pinhole fix of the SDP TLA+ model: the gateway opens
//! that exact 5-tuple, not the whole address), a timestamp and a random nonce. One UDP
//! datagram; `docs/spa-native.md` has the bytes.
//!
//! Pure: no I/O, no clock (the caller passes `now`), no allocation before the cheap checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kagi_crypto::hpke::{self, HpkeKeyPair, ENC_LEN, PUBLIC_KEY_LEN, TAG_LEN};

/// Packet magic.
pub const MAGIC: &[u8; 4] = b"kSPA";
/// Packet format version.
pub const VERSION: u8 = 1;
/// Suite id 1: HPKE auth mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
pub const SUITE: u8 = 1;
/// HPKE `info` string.
pub const INFO: &[u8] = b"kagi spa v1";
/// Header: magic, version, suite, key id.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 8;
/// Largest packet accepted (fits one datagram on any path).
pub const MAX_PACKET: usize = 1200;
/// Services per knock.
pub const MAX_SERVICES: usize = 16;
const MIN_PLAINTEXT: usize = 1 + 8 + 16 + 1 + 4 + 2 + 1;
const MIN_PACKET: usize = HEADER_LEN + ENC_LEN + MIN_PLAINTEXT + TAG_LEN;

/// Why a native packet was refused: one fixed sentence each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// Wrong length for a native packet.
    #[error("packet length is outside a native SPA packet's range")]
    Length,
    /// Not `kSPA`, or an unknown version or suite.
    #[error("not a kagi native SPA packet (magic, version or suite)")]
    NotNative,
    /// No enrolled client has this key id.
    #[error("no enrolled client has this packet's key id")]
    UnknownClient,
    /// HPKE open failed: not sealed by that client to this gateway, or altered.
    #[error("packet does not authenticate (wrong gateway or client key, or altered)")]
    Authentication,
    /// Authenticated, but the knock inside is malformed.
    #[error("knock is malformed")]
    Malformed,
    /// Timestamp outside the allowed window.
    #[error("knock is too old or from the future")]
    Stale,
    /// The datagram came from another address than the knock names.
    #[error("knock names another source address than the packet came from")]
    AddressMismatch,
    /// A service name is empty, too long or has characters outside [A-Za-z0-9._-].
    #[error("a service name is empty, longer than 64 bytes or not [A-Za-z0-9._-]")]
    BadService,
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knock {
    /// Unix seconds when made.
    pub timestamp: u64,
    /// Random; with the client id, the replay key.
    pub nonce: [u8; 16],
    /// The address the client knocks from (as the gateway sees it).
    pub addr: IpAddr,
    /// The source port the data connection will come from; 0 = any port.
    pub port: u16,
    /// Services to open, by name.
    pub services: Vec<String>,
}

/// The 8-byte id of a client public key: the first bytes of its SHA-256.
pub fn key_id(public: &[u8; PUBLIC_KEY_LEN]) -> [u8; 8] {
    let h = kagi_crypto::sha256(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[..8]);
    id
}

fn service_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Knock {
    /// A knock with a fresh random nonce.
    pub fn new(timestamp: u64, addr: IpAddr, port: u16, services: Vec<String>) -> Self {
        Self {
            timestamp,
            nonce: kagi_crypto::random_array(),
            addr,
            port,
            services,
        }
    }

    fn encode(&self) -> Result<Vec<u8>, NativeError> {
        if self.services.is_empty()
            || self.services.len() > MAX_SERVICES
            || !self.services.iter().all(|s| service_ok(s))
        {
            return Err(NativeError::BadService);
        }
        let mut m = Vec::with_capacity(64);
        m.push(1);
        m.extend_from_slice(&self.timestamp.to_be_bytes());
        m.extend_from_slice(&self.nonce);
        match self.addr {
            IpAddr::V4(a) => {
                m.push(4);
                m.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                m.push(6);
                m.extend_from_slice(&a.octets());
            }
        }
        m.extend_from_slice(&self.port.to_be_bytes());
        m.push(self.services.len() as u8);
        for s in &self.services {
            m.push(s.len() as u8);
            m.extend_from_slice(s.as_bytes());
        }
        Ok(m)
    }

    fn decode(m: &[u8]) -> Result<Self, NativeError> {
        let mut r = Reader(m);
        if r.u8()? != 1 {
            return Err(NativeError::Malformed);
        }
        let timestamp = u64::from_be_bytes(r.array()?);
        let nonce = r.array()?;
        let addr = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            _ => return Err(NativeError::Malformed),
        };
        let port = u16::from_be_bytes(r.array()?);
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_SERVICES {
            return Err(NativeError::Malformed);
        }
        let mut services = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u8()? as usize;
            let s = std::str::from_utf8(r.take(len)?).map_err(|_| NativeError::BadService)?;
            if !service_ok(s) {
                return Err(NativeError::BadService);
            }
            services.push(s.to_string());
        }
        if !r.0.is_empty() {
            return Err(NativeError::Malformed);
        }
        Ok(Self {
            timestamp,
            nonce,
            addr,
            port,
            services,
        })
    }

    /// Checks the knock against the datagram it came in and the clock: the address must be the
    /// datagram's source address and the timestamp within `max_age` seconds either way.
    pub fn check(&self, from: IpAddr, now: u64, max_age: u64) -> Result<(), NativeError> {
        if now.abs_diff(self.timestamp) > max_age {
            return Err(NativeError::Stale);
        }
        if from.to_canonical() != self.addr {
            return Err(NativeError::AddressMismatch);
        }
        Ok(())
    }

    /// The replay-cache key: SHA-256 over the client id and the nonce.
    pub fn replay_digest(&self, client: &[u8; 8]) -> [u8; 32] {
        let mut h = kagi_crypto::Sha256::default();
        h.update(b"kagi spa v1 replay");
        h.update(client);
        h.update(&self.nonce);
        h.finish()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NativeError> {
        if self.0.len() < n {
            return Err(NativeError::Malformed);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, NativeError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], NativeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Seals `knock` from `client` to the gateway's public key.
pub fn seal(
    client: &HpkeKeyPair,
    gateway: &[u8; PUBLIC_KEY_LEN],
    knock: &Knock,
) -> Result<Vec<u8>, NativeError> {
    let plaintext = knock.encode()?;
    let mut header = Vec::with_capacity(MAX_PACKET);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(SUITE);
    header.extend_from_slice(&key_id(&client.public()));
    let (enc, ct) = hpke::seal_auth(client, gateway, INFO, &header, &plaintext)
        .map_err(|_| NativeError::Authentication)?;
    header.extend_from_slice(&enc);
    header.extend_from_slice(&ct);
    if header.len() > MAX_PACKET {
        return Err(NativeError::Length);
    }
    Ok(header)
}

/// The cheap checks before any public-key work: length, magic, version, suite. Returns the
/// client key id.
pub fn precheck(packet: &[u8]) -> Result<[u8; 8], NativeError> {
    if packet.len() < MIN_PACKET || packet.len() > MAX_PACKET {
        return Err(NativeError::Length);
    }
    if &packet[..4] != MAGIC || packet[4] != VERSION || packet[5] != SUITE {
        return Err(NativeError::NotNative);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&packet[6..HEADER_LEN]);
    Ok(id)
}

/// Opens a packet at the gateway: finds the client's public key by its id, checks that this
/// client sealed it to this gateway unaltered, and decodes the knock. The caller then runs
/// [`Knock::check`] and its replay cache.
pub fn open(
    gateway: &HpkeKeyPair,
    packet: &[u8],
    client_key: impl FnOnce(&[u8; 8]) -> Option<[u8; PUBLIC_KEY_LEN]>,
) -> Result<([u8; 8], Knock), NativeError> {
    let id = precheck(packet)?;
    let client = client_key(&id).ok_or(NativeError::UnknownClient)?;
    let (header, rest) = packet.split_at(HEADER_LEN);
    let (enc, ct) = rest.split_at(ENC_LEN);
    let mut e = [0u8; ENC_LEN];
    e.copy_from_slice(enc);
    let plaintext = hpke::open_auth(gateway, &client, &e, INFO, header, ct)
        .map_err(|_| NativeError::Authentication)?;
    Ok((id, Knock::decode(plaintext.expose())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (HpkeKeyPair, HpkeKeyPair, Knock) {
        let knock = Knock::new(
            1_000,
            "10.201.0.2".parse().unwrap(),
            40_000,
            vec!["kms".into(), "db-01".into()],
        );
        (HpkeKeyPair::generate(), HpkeKeyPair::generate(), knock)
    }

    #[test]
    fn round_trip_and_every_binding() {
        let (client, gateway, knock) = setup();
        let p = seal(&client, &gateway.public(), &knock).unwrap();
        assert!(p.len() < 200, "one small datagram: {}", p.len());
        let cpk = client.public();
        let (id, got) = open(&gateway, &p, |id| (*id == key_id(&cpk)).then_some(cpk)).unwrap();
        assert_eq!(got, knock);
        let from: IpAddr = "10.201.0.2".parse().unwrap();
        got.check(from, 1_010, 30).unwrap();
        assert_eq!(got.check(from, 1_031, 30), Err(NativeError::Stale));
        assert_eq!(got.check(from, 969, 30), Err(NativeError::Stale));
        assert_eq!(
            got.check("10.201.0.3".parse().unwrap(), 1_000, 30),
            Err(NativeError::AddressMismatch)
        );
        // IPv4-mapped IPv6 sources (a dual-stack socket) count as the IPv4 address.
        got.check("::ffff:10.201.0.2".parse().unwrap(), 1_000, 30)
            .unwrap();
        let any = Knock {
            port: 0,
            ..knock.clone()
        };
        assert_ne!(got.replay_digest(&id), any.replay_digest(&[0; 8]));
    }

    #[test]
    fn every_flip_wrong_keys_and_garbage_are_refused() {
        let (client, gateway, knock) = setup();
        let p = seal(&client, &gateway.public(), &knock).unwrap();
        let cpk = client.public();
        let lookup = |_: &[u8; 8]| Some(cpk);
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x01;
            assert!(open(&gateway, &q, lookup).is_err(), "flip at {i}");
        }
        let other = HpkeKeyPair::generate();
        assert_eq!(
            open(&other, &p, lookup).unwrap_err(),
            NativeError::Authentication
        );
        let impostor = other.public();
        assert_eq!(
            open(&gateway, &p, |_| Some(impostor)).unwrap_err(),
            NativeError::Authentication
        );
        assert_eq!(
            open(&gateway, &p, |_| None).unwrap_err(),
            NativeError::UnknownClient
        );
        assert_eq!(
            open(&gateway, b"short", lookup).unwrap_err(),
            NativeError::Length
        );
        let mut wrong = p.clone();
        wrong[0] = b'X';
        assert_eq!(
            open(&gateway, &wrong, lookup).unwrap_err(),
            NativeError::NotNative
        );
        assert_eq!(
            open(&gateway, &vec![0u8; MAX_PACKET + 1], lookup).unwrap_err(),
            NativeError::Length
        );
        let bad = Knock {
            services: vec!["no spaces".into()],
            ..knock.clone()
        };
        assert_eq!(
            seal(&client, &gateway.public(), &bad).unwrap_err(),
            NativeError::BadService
        );
        let none = Knock {
            services: vec![],
            ..knock
        };
        assert_eq!(
            seal(&client, &gateway.public(), &none).unwrap_err(),
            NativeError::BadService
        );
    }

    #[test]
    fn the_documented_bounds_hold() {
        // docs/spa-native.md: packets are 95..=1200 bytes.
        assert_eq!(MIN_PACKET, 95);
        let (client, gateway, _) = setup();
        let max = Knock::new(
            0,
            "::1".parse().unwrap(),
            0,
            (0..MAX_SERVICES).map(|i| format!("{i:0>64}")).collect(),
        );
        assert!(seal(&client, &gateway.public(), &max).unwrap().len() <= MAX_PACKET);
    }

    #[test]
    fn malformed_plaintexts_are_refused() {
        for m in [vec![], vec![2; 40], vec![1; 30]] {
            assert!(Knock::decode(&m).is_err());
        }
        let (_, _, knock) = setup();
        let mut good = knock.encode().unwrap();
        assert_eq!(Knock::decode(&good).unwrap(), knock);
        good.push(0);
        assert_eq!(Knock::decode(&good), Err(NativeError::Malformed));
    }
}
