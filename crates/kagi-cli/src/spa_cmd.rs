//! `kagi spa keygen | knock | inspect`: the SPA client side and the offline explainer.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Subcommand;
use kagi_crypto::legacy::{HmacKey, LegacyHash};
use kagi_crypto::SecretBytes;
use kagi_spa::access_conf::{SourceMatch, Stanza};
use kagi_spa::decision::{decide, DaemonPolicy};
use kagi_spa::fwknop::{seal, StanzaKeys};
use kagi_spa::replay_cache::ReplayCache;
use kagi_spa::{AccessSpec, DigestType, MessageType, SpaMessage};
use serde_json::json;

use crate::output::{Fail, Out};

#[derive(Subcommand, Debug)]
pub enum SpaCmd {
    /// Make a fresh encryption key and HMAC key (fwknop's --key-gen format), or with --native
    /// an X25519 key pair for native SPA.
    Keygen {
        /// An X25519 key pair (PRIVATE_KEY / PUBLIC_KEY, hex) for native SPA.
        #[arg(long)]
        native: bool,
    },
    /// Send one SPA packet (fwknop-compatible) asking the server to open ports.
    Knock(KnockArgs),
    /// Send one native SPA packet (docs/spa-native.md): sealed to the gateway's public key,
    /// authenticated by this client's own key.
    KnockNative(KnockNativeArgs),
    /// Say for each packet whether an access.conf would accept it, and if not, why.
    Inspect {
        /// fwknop access.conf.
        #[arg(long = "access-conf")]
        access_conf: std::path::PathBuf,
        /// Skip the packet-age check (for old captured packets).
        #[arg(long = "no-packet-aging")]
        no_packet_aging: bool,
        /// Exit non-zero if any packet would be accepted.
        #[arg(long = "expect-reject")]
        expect_reject: bool,
        /// Treat packets as sent from this address (default: match every stanza's SOURCE).
        #[arg(long)]
        source: Option<IpAddr>,
        /// A packet, or - to read one per line from stdin.
        packet: Option<String>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(clap::Args, Debug)]
pub struct KnockArgs {
    /// The SPA server (host name or address).
    #[arg(long)]
    server: String,
    /// UDP port.
    #[arg(long, default_value_t = 62201)]
    port: u16,
    /// Encryption key, base64 (fwknop KEY_BASE64).
    #[arg(long = "key-base64")]
    key_base64: String,
    /// HMAC key, base64 (fwknop HMAC_KEY_BASE64).
    #[arg(long = "hmac-key-base64")]
    hmac_key_base64: String,
    /// Ports to open: tcp/PORT[,udp/PORT...].
    #[arg(long)]
    access: String,
    /// Address to open for.
    #[arg(
        long = "allow-ip",
        conflicts_with = "source_ip",
        required_unless_present = "source_ip"
    )]
    allow_ip: Option<Ipv4Addr>,
    /// Open for the address the packet arrives from (works over IPv6 too).
    #[arg(long = "source-ip")]
    source_ip: bool,
    /// Ask for this many seconds of access (capped by the server's MAX_FW_TIMEOUT).
    #[arg(long = "fw-timeout")]
    fw_timeout: Option<u32>,
    /// Also write the packet to this file (for replay tests).
    #[arg(long = "save-packet")]
    save_packet: Option<std::path::PathBuf>,
    /// Build and print the packet without sending it.
    #[arg(long = "dry-run")]
    dry_run: bool,
}

fn decode_key(what: &str, b64: &str) -> Result<SecretBytes, Fail> {
    B64.decode(b64.trim())
        .map(SecretBytes::new)
        .map_err(|_| Fail(format!("{what} is not valid base64")))
}

fn username() -> String {
    ["SPOOF_USER", "LOGNAME", "USER"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| {
            !u.is_empty()
                && u.len() < 64
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "NO_USER".into())
}

/// 16 random decimal digits (fwknop's random value field).
fn random_digits() -> String {
    kagi_crypto::random_array::<16>()
        .iter()
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

#[derive(clap::Args, Debug)]
pub struct KnockNativeArgs {
    /// The gateway (host name or address).
    #[arg(long)]
    server: String,
    /// UDP port.
    #[arg(long, default_value_t = 62201)]
    port: u16,
    /// File holding this client's X25519 private key, hex (`kagi spa keygen --native`).
    #[arg(long = "key-file")]
    key_file: std::path::PathBuf,
    /// The gateway's X25519 public key, hex.
    #[arg(long = "gateway-key")]
    gateway_key: String,
    /// Service to open (repeatable).
    #[arg(long = "service", required = true)]
    services: Vec<String>,
    /// Open only for the data connection from this local source port (5-tuple pinhole);
    /// 0 = any port from this address.
    #[arg(long = "source-port", default_value_t = 0)]
    source_port: u16,
    /// The address the gateway sees this client as (default: this host's address toward it).
    #[arg(long)]
    source: Option<IpAddr>,
}

/// A UDP socket of the right family for `server:port`, and that address.
fn udp_socket_to(server: &str, port: u16) -> Result<(UdpSocket, std::net::SocketAddr), Fail> {
    let dest = (server, port)
        .to_socket_addrs()
        .map_err(|e| Fail(format!("cannot resolve {server}: {e}")))?
        .next()
        .ok_or_else(|| Fail(format!("{server} has no address")))?;
    let bind: std::net::SocketAddr = if dest.is_ipv6() {
        "[::]:0".parse().unwrap_or(dest)
    } else {
        "0.0.0.0:0".parse().unwrap_or(dest)
    };
    let sock = UdpSocket::bind(bind).map_err(|e| Fail(format!("cannot open a UDP socket: {e}")))?;
    Ok((sock, dest))
}

fn knock_native(a: KnockNativeArgs) -> Result<(), Fail> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&a.key_file)
            .map_err(|e| Fail(format!("cannot read {}: {e}", a.key_file.display())))?,
    );
    let sk = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|_| Fail(format!("{} does not hold a hex key", a.key_file.display())))?,
    );
    let client =
        kagi_crypto::hpke::HpkeKeyPair::from_private(&sk).map_err(|e| Fail(e.to_string()))?;
    send_native_knock(
        &client,
        &a.gateway_key,
        &a.server,
        a.port,
        a.services,
        a.source_port,
        a.source,
    )
}

/// Sends one native SPA packet toward `server`, naming `source` as the client's address
/// (default: this host's address toward the server).
pub(crate) fn send_native_knock(
    client: &kagi_crypto::hpke::HpkeKeyPair,
    gateway_key_hex: &str,
    server: &str,
    port: u16,
    services: Vec<String>,
    source_port: u16,
    source: Option<IpAddr>,
) -> Result<(), Fail> {
    let mut gateway = [0u8; 32];
    hex::decode_to_slice(gateway_key_hex.trim(), &mut gateway)
        .map_err(|_| Fail("the gateway's SPA key must be 64 hex digits".into()))?;
    let (sock, dest) = udp_socket_to(server, port)?;
    sock.connect(dest)
        .map_err(|e| Fail(format!("no route to {dest}: {e}")))?;
    let addr = match source {
        Some(s) => s,
        None => sock.local_addr()?.ip(),
    };
    let knock = kagi_spa::native::Knock::new(unix_now(), addr, source_port, services);
    let packet =
        kagi_spa::native::seal(client, &gateway, &knock).map_err(|e| Fail(e.to_string()))?;
    sock.send(&packet)
        .map_err(|e| Fail(format!("cannot send to {dest}: {e}")))?;
    Ok(())
}

pub fn knock(a: KnockArgs) -> Result<(), Fail> {
    let enc = decode_key("--key-base64", &a.key_base64)?;
    if enc.len() > 32 {
        return Err(Fail("--key-base64 must decode to at most 32 bytes".into()));
    }
    let hmac = decode_key("--hmac-key-base64", &a.hmac_key_base64)?;
    if hmac.expose() == enc.expose() {
        return Err(Fail(
            "the encryption key and the HMAC key must differ".into(),
        ));
    }
    let allow = a.allow_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let spec = AccessSpec::parse(&format!("{allow},{}", a.access)).map_err(|_| {
        Fail(format!(
            "--access {:?} is not proto/port[,proto/port...] (e.g. tcp/22,udp/53)",
            a.access
        ))
    })?;
    let timeout = a.fw_timeout.filter(|t| *t > 0);
    let msg = SpaMessage {
        rand: random_digits(),
        username: username(),
        timestamp: unix_now(),
        version: "3.0.0".into(),
        msg_type: if timeout.is_some() {
            MessageType::ClientTimeoutAccess
        } else {
            MessageType::Access
        },
        message: spec.to_message(),
        nat_access: None,
        server_auth: None,
        client_timeout: timeout,
    };
    let keys = StanzaKeys {
        enc_key: enc,
        hmac: Some(HmacKey::new(LegacyHash::Sha256, hmac.expose())),
        legacy_iv: false,
    };
    let packet = seal(&msg, DigestType::Sha256, &keys, kagi_crypto::random_array())
        .map_err(|e| Fail(e.to_string()))?;
    if let Some(p) = &a.save_packet {
        std::fs::write(p, &packet)
            .map_err(|e| Fail(format!("cannot write {}: {e}", p.display())))?;
    }
    if a.dry_run {
        println!("{packet}");
        return Ok(());
    }
    let (sock, dest) = udp_socket_to(&a.server, a.port)?;
    sock.send_to(packet.as_bytes(), dest)
        .map_err(|e| Fail(format!("cannot send to {dest}: {e}")))?;
    Ok(())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads an access.conf, following `%include` relative to its directory.
pub fn load_access_conf(path: &std::path::Path) -> Result<Vec<Stanza>, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(format!("cannot read {}: {e}", path.display())))?;
    let dir = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut include = |p: &str| -> Result<String, String> {
        let full = if std::path::Path::new(p).is_absolute() {
            std::path::PathBuf::from(p)
        } else {
            dir.join(p)
        };
        std::fs::read_to_string(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))
    };
    kagi_spa::access_conf::parse(&text, &path.display().to_string(), &mut include)
        .map_err(|e| Fail(e.to_string()))
}

pub fn run(cmd: SpaCmd) -> Result<(), Fail> {
    match cmd {
        SpaCmd::Keygen { native: true } => {
            let k = kagi_crypto::hpke::HpkeKeyPair::generate();
            println!("PRIVATE_KEY: {}", hex::encode(k.private_bytes().expose()));
            println!("PUBLIC_KEY: {}", hex::encode(k.public()));
            Ok(())
        }
        SpaCmd::Keygen { native: false } => {
            println!(
                "KEY_BASE64: {}",
                B64.encode(kagi_crypto::random_array::<32>())
            );
            println!(
                "HMAC_KEY_BASE64: {}",
                B64.encode(kagi_crypto::random_array::<64>())
            );
            Ok(())
        }
        SpaCmd::Knock(a) => knock(a),
        SpaCmd::KnockNative(a) => knock_native(a),
        SpaCmd::Inspect {
            access_conf,
            no_packet_aging,
            expect_reject,
            source,
            packet,
            out,
        } => {
            let mut stanzas = load_access_conf(&access_conf)?;
            if source.is_none() {
                for s in &mut stanzas {
                    s.sources = vec![SourceMatch::Any];
                }
            }
            let src = source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let packets: Vec<String> = match packet.as_deref() {
                None | Some("-") => std::io::stdin()
                    .lock()
                    .lines()
                    .map_while(Result::ok)
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
                Some(p) => vec![p.trim().to_string()],
            };
            let policy = DaemonPolicy {
                max_age: if no_packet_aging { None } else { Some(120) },
            };
            let mut cache = ReplayCache::new();
            let now = unix_now() as i64;
            let mut accepted = 0;
            for (i, p) in packets.iter().enumerate() {
                let v = decide(p.as_bytes(), src, None, now, &stanzas, policy, &mut cache);
                let j = match &v {
                    Ok(g) => {
                        accepted += 1;
                        json!({"packet": i + 1, "verdict": "accept", "stanza": g.stanza, "address": g.address.to_string(),
                               "ports": g.ports.iter().map(|(pr, po)| kagi_spa::port_spec(*pr, *po)).collect::<Vec<_>>(),
                               "timeout": g.timeout, "username": g.username})
                    }
                    Err(r) => {
                        json!({"packet": i + 1, "verdict": "reject", "reason": r.to_string()})
                    }
                };
                if out.json() {
                    println!("{j}");
                } else {
                    match &v {
                        Ok(g) => println!(
                            "packet {}: accepted by {}: open {} for {} for {}s",
                            i + 1,
                            g.stanza,
                            j["ports"]
                                .as_array()
                                .map(|a| a
                                    .iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","))
                                .unwrap_or_default(),
                            g.address,
                            g.timeout
                        ),
                        Err(r) => println!("packet {}: refused: {r}", i + 1),
                    }
                }
            }
            if expect_reject && accepted > 0 {
                return Err(Fail(format!(
                    "{accepted} of {} packets would be accepted",
                    packets.len()
                )));
            }
            Ok(())
        }
    }
}
