//! fwknop's `access.conf`, read as fwknopd 2.6.10 reads it, so an fwknop user can switch
//! daemons without rewriting anything.
//!
//! Lines are `KEYWORD value` (a trailing `:` on the keyword is allowed; the value ends at
//! `;` or the end of the line); `#` starts a comment line; each stanza starts with `SOURCE`;
//! the first stanza that matches and opens a packet wins. `%include FILE` splices another
//! file in. A keyword kagi does not implement stops the start with its name and line.

use std::net::IpAddr;

use ipnet::IpNet;
use kagi_crypto::legacy::{HmacKey, LegacyHash};
use kagi_crypto::SecretBytes;

use crate::fwknop::StanzaKeys;
use crate::message::{AccessSpec, Proto};

/// Why an access.conf was refused: file, line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfError {
    /// File name as given.
    pub file: String,
    /// 1-based line (0 for a whole-stanza problem found at its end).
    pub line: usize,
    /// One sentence.
    pub message: String,
}

/// Where a stanza's SOURCE matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMatch {
    /// `ANY`.
    Any,
    /// An address or network.
    Net(IpNet),
}

/// One stanza.
#[derive(Debug, Clone)]
pub struct Stanza {
    /// `file:line` of its SOURCE line, for logs.
    pub origin: String,
    /// SOURCE.
    pub sources: Vec<SourceMatch>,
    /// DESTINATION (None = any).
    pub destinations: Option<Vec<SourceMatch>>,
    /// OPEN_PORTS (empty = anything not restricted).
    pub open_ports: Vec<(Proto, u16)>,
    /// RESTRICT_PORTS.
    pub restrict_ports: Vec<(Proto, u16)>,
    /// Keys and mode.
    pub keys: StanzaKeys,
    /// FW_ACCESS_TIMEOUT (default 30).
    pub fw_access_timeout: u32,
    /// MAX_FW_TIMEOUT (default 300).
    pub max_fw_timeout: u32,
    /// REQUIRE_USERNAME.
    pub require_username: Option<String>,
    /// REQUIRE_SOURCE_ADDRESS: refuse `0.0.0.0` ("use my source") requests.
    pub require_source_address: bool,
    /// ACCESS_EXPIRE / ACCESS_EXPIRE_EPOCH (unix seconds).
    pub access_expire: Option<i64>,
}

fn matches_any(list: &[SourceMatch], ip: IpAddr) -> bool {
    list.iter().any(|s| match s {
        SourceMatch::Any => true,
        SourceMatch::Net(n) => n.contains(&ip),
    })
}

impl Stanza {
    /// True when a packet from `src` (to `dst`) may be tried against this stanza.
    pub fn matches(&self, src: IpAddr, dst: Option<IpAddr>) -> bool {
        matches_any(&self.sources, src)
            && match (&self.destinations, dst) {
                (Some(d), Some(ip)) => matches_any(d, ip),
                _ => true,
            }
    }

    /// The ports this stanza protects (its OPEN_PORTS): the daemon drops them by default.
    pub fn protected_ports(&self) -> &[(Proto, u16)] {
        &self.open_ports
    }
}

#[derive(Default)]
struct Draft {
    origin: String,
    line: usize,
    sources: Vec<SourceMatch>,
    destinations: Option<Vec<SourceMatch>>,
    open_ports: Vec<(Proto, u16)>,
    restrict_ports: Vec<(Proto, u16)>,
    key: Option<Vec<u8>>,
    hmac_key: Option<Vec<u8>>,
    hmac_digest: Option<LegacyHash>,
    legacy: bool,
    fw_access_timeout: Option<u32>,
    max_fw_timeout: Option<u32>,
    require_username: Option<String>,
    require_source_address: bool,
    access_expire: Option<i64>,
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_sources(v: &str) -> Result<Vec<SourceMatch>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.eq_ignore_ascii_case("ANY") {
            out.push(SourceMatch::Any);
        } else if let Ok(n) = part.parse::<IpNet>() {
            out.push(SourceMatch::Net(n));
        } else if let Ok(ip) = part.parse::<IpAddr>() {
            out.push(SourceMatch::Net(IpNet::from(ip)));
        } else {
            return Err(format!("{part:?} is not ANY, an address or a network"));
        }
    }
    if out.is_empty() {
        return Err("needs ANY or at least one address or network".into());
    }
    Ok(out)
}

fn parse_ports(v: &str) -> Result<Vec<(Proto, u16)>, String> {
    AccessSpec::parse(&format!("0.0.0.0,{}", v.replace(' ', "")))
        .map(|a| a.ports)
        .map_err(|_| format!("{v:?} is not a list of proto/port (e.g. tcp/22, udp/53)"))
}

/// An `HMAC_DIGEST_TYPE` value (`md5` .. `sha3_512`, any case).
pub fn parse_digest(v: &str) -> Result<LegacyHash, String> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "md5" => LegacyHash::Md5,
        "sha1" => LegacyHash::Sha1,
        "sha256" => LegacyHash::Sha256,
        "sha384" => LegacyHash::Sha384,
        "sha512" => LegacyHash::Sha512,
        "sha3_256" => LegacyHash::Sha3_256,
        "sha3_512" => LegacyHash::Sha3_512,
        _ => {
            return Err(format!(
                "unknown digest {v:?} (md5, sha1, sha256, sha384, sha512, sha3_256, sha3_512)"
            ))
        }
    })
}

fn b64(v: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| format!("{v:?} is not valid base64"))
}

fn finish(d: Draft, file: &str) -> Result<Stanza, ConfError> {
    let err = |m: &str| ConfError {
        file: file.to_string(),
        line: d.line,
        message: format!("stanza starting here: {m}"),
    };
    let key = d
        .key
        .clone()
        .ok_or_else(|| err("has no KEY or KEY_BASE64"))?;
    if key.len() > 32 && !d.legacy {
        return Err(err("KEY is longer than 32 bytes"));
    }
    if d.hmac_key.as_deref() == Some(&key[..]) {
        return Err(err("KEY and HMAC_KEY must not be identical"));
    }
    let hmac = d
        .hmac_key
        .as_deref()
        .map(|k| HmacKey::new(d.hmac_digest.unwrap_or(LegacyHash::Sha256), k));
    Ok(Stanza {
        origin: d.origin,
        sources: d.sources,
        destinations: d.destinations,
        open_ports: d.open_ports,
        restrict_ports: d.restrict_ports,
        keys: StanzaKeys {
            enc_key: SecretBytes::new(key),
            hmac,
            legacy_iv: d.legacy,
        },
        fw_access_timeout: d.fw_access_timeout.unwrap_or(30),
        max_fw_timeout: d.max_fw_timeout.unwrap_or(300),
        require_username: d.require_username,
        require_source_address: d.require_source_address,
        access_expire: d.access_expire,
    })
}

/// Parses `text` (named `file`); `include` loads a `%include`d file's text by path.
pub fn parse(
    text: &str,
    file: &str,
    include: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Vec<Stanza>, ConfError> {
    let mut out = Vec::new();
    let mut cur: Option<Draft> = None;
    parse_into(text, file, include, &mut out, &mut cur, 0)?;
    if let Some(d) = cur.take() {
        out.push(finish(d, file)?);
    }
    if out.is_empty() {
        return Err(ConfError {
            file: file.into(),
            line: 0,
            message: "no SOURCE stanza: nothing would ever be accepted".into(),
        });
    }
    Ok(out)
}

fn parse_into(
    text: &str,
    file: &str,
    include: &mut dyn FnMut(&str) -> Result<String, String>,
    out: &mut Vec<Stanza>,
    cur: &mut Option<Draft>,
    depth: usize,
) -> Result<(), ConfError> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |m: String| ConfError {
            file: file.to_string(),
            line,
            message: m,
        };
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (kw, rest) = l
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((l, ""));
        let kw = kw.trim_end_matches(':');
        let value = rest.split(';').next().unwrap_or("").trim();
        if kw == "%include" {
            if depth >= 8 {
                return Err(err("%include nested more than 8 deep".into()));
            }
            let inc = include(value).map_err(|e| err(format!("%include {value}: {e}")))?;
            parse_into(&inc, value, include, out, cur, depth + 1)?;
            continue;
        }
        if value.is_empty() {
            return Err(err(format!("{kw} has no value")));
        }
        if kw == "SOURCE" {
            if let Some(d) = cur.take() {
                out.push(finish(d, file)?);
            }
            *cur = Some(Draft {
                origin: format!("{file}:{line}"),
                line,
                sources: parse_sources(value).map_err(|m| err(format!("SOURCE {m}")))?,
                ..Draft::default()
            });
            continue;
        }
        let d = cur
            .as_mut()
            .ok_or_else(|| err(format!("{kw} before the first SOURCE line")))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| err(format!("{kw} {v:?} is not a whole number")))
        };
        match kw {
            "DESTINATION" => {
                d.destinations =
                    Some(parse_sources(value).map_err(|m| err(format!("DESTINATION {m}")))?)
            }
            "OPEN_PORTS" => {
                d.open_ports = parse_ports(value).map_err(|m| err(format!("OPEN_PORTS {m}")))?
            }
            "RESTRICT_PORTS" => {
                d.restrict_ports =
                    parse_ports(value).map_err(|m| err(format!("RESTRICT_PORTS {m}")))?
            }
            "KEY" => d.key = Some(value.as_bytes().to_vec()),
            "KEY_BASE64" => d.key = Some(b64(value).map_err(|m| err(format!("KEY_BASE64 {m}")))?),
            "HMAC_KEY" => d.hmac_key = Some(value.as_bytes().to_vec()),
            "HMAC_KEY_BASE64" => {
                d.hmac_key = Some(b64(value).map_err(|m| err(format!("HMAC_KEY_BASE64 {m}")))?)
            }
            "HMAC_DIGEST_TYPE" => {
                d.hmac_digest =
                    Some(parse_digest(value).map_err(|m| err(format!("HMAC_DIGEST_TYPE {m}")))?)
            }
            "ENCRYPTION_MODE" => match value.to_ascii_lowercase().as_str() {
                "cbc" => d.legacy = false,
                "legacy" => d.legacy = true,
                other => {
                    return Err(err(format!(
                        "ENCRYPTION_MODE {other:?} is not supported (CBC or legacy)"
                    )))
                }
            },
            "FW_ACCESS_TIMEOUT" => d.fw_access_timeout = Some(num(value)?),
            "MAX_FW_TIMEOUT" => d.max_fw_timeout = Some(num(value)?),
            "REQUIRE_USERNAME" => d.require_username = Some(value.to_string()),
            "REQUIRE_SOURCE_ADDRESS" | "REQUIRE_SOURCE" => {
                d.require_source_address =
                    matches!(value.to_ascii_uppercase().as_str(), "Y" | "YES")
            }
            "ACCESS_EXPIRE" => {
                let p: Vec<&str> = value.split('/').collect();
                let parsed = (p.len() == 3)
                    .then(|| {
                        Some((
                            p[0].parse::<u32>().ok()?,
                            p[1].parse::<u32>().ok()?,
                            p[2].parse::<i64>().ok()?,
                        ))
                    })
                    .flatten()
                    .filter(|(m, dd, _)| (1..=12).contains(m) && (1..=31).contains(dd));
                let (m, dd, y) = parsed
                    .ok_or_else(|| err(format!("ACCESS_EXPIRE {value:?} is not MM/DD/YYYY")))?;
                d.access_expire = Some(days_from_civil(y, m, dd) * 86_400);
            }
            "ACCESS_EXPIRE_EPOCH" => {
                d.access_expire =
                    Some(value.parse().map_err(|_| {
                        err(format!("ACCESS_EXPIRE_EPOCH {value:?} is not a number"))
                    })?)
            }
            other => {
                return Err(err(format!(
                    "keyword {other} is not supported by kagi spad"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_include(_: &str) -> Result<String, String> {
        Err("no includes here".into())
    }

    #[test]
    fn parses_the_reference_stanza() {
        let conf = "# comment\nSOURCE            ANY\nOPEN_PORTS        tcp/22, udp/53\nKEY_BASE64        xDWzdLe/30u5ikFu0pXsNUnZFeB7to/lp3TsXxVtXbQ=\nHMAC_KEY_BASE64   GuELZ8vj7xq1uHCZ6ULI2tLy2S6GkQaGLiE9kscYfDmQDLWBHtDS/TBt+z1mzRbko9Xvkc694b3MITxrAYtPiQ==\nFW_ACCESS_TIMEOUT 30\n";
        let s = parse(conf, "access.conf", &mut no_include).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].open_ports, vec![(Proto::Tcp, 22), (Proto::Udp, 53)]);
        assert_eq!(s[0].keys.enc_key.len(), 32);
        assert_eq!(s[0].keys.hmac.as_ref().unwrap().hash(), LegacyHash::Sha256);
        assert!(s[0].matches("10.1.1.1".parse().unwrap(), None));
    }

    #[test]
    fn includes_several_stanzas_and_expiry() {
        let mut inc = |p: &str| -> Result<String, String> {
            assert_eq!(p, "more.conf");
            Ok("SOURCE 10.0.0.0/8, fd00::/8\nKEY other\nACCESS_EXPIRE 01/02/2030\n".into())
        };
        let s = parse(
            "SOURCE 192.0.2.1\nKEY: k1;\nENCRYPTION_MODE legacy\n%include more.conf\n",
            "a.conf",
            &mut inc,
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].keys.legacy_iv);
        assert_eq!(s[0].keys.enc_key.expose(), b"k1");
        assert!(!s[0].matches("192.0.2.2".parse().unwrap(), None));
        assert!(s[1].matches("fd00::5".parse().unwrap(), None));
        assert_eq!(s[1].access_expire, Some(1_893_542_400));
    }

    #[test]
    fn refuses_with_file_and_line() {
        for (conf, needle) in [
            (
                "SOURCE ANY\nKEY k\nGPG_HOME_DIR /x\n",
                "a.conf:3: keyword GPG_HOME_DIR is not supported",
            ),
            ("KEY k\n", "a.conf:1: KEY before the first SOURCE"),
            (
                "SOURCE ANY\nOPEN_PORTS tcp/99999\nKEY k\n",
                "a.conf:2: OPEN_PORTS",
            ),
            (
                "SOURCE ANY\nOPEN_PORTS tcp/22\n",
                "a.conf:1: stanza starting here: has no KEY",
            ),
            (
                "SOURCE ANY\nKEY same\nHMAC_KEY same\n",
                "must not be identical",
            ),
            ("SOURCE nowhere\nKEY k\n", "a.conf:1: SOURCE"),
            (
                "SOURCE ANY\nKEY k\nENCRYPTION_MODE CTR\n",
                "ENCRYPTION_MODE",
            ),
            ("", "no SOURCE stanza"),
        ] {
            let e = parse(conf, "a.conf", &mut no_include)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }
}
