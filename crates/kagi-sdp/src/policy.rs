//! The perimeter policy (`docs/perimeter-policy.md`).

use std::collections::{BTreeMap, BTreeSet};

use kagi_keys::glob;
use kagi_keys::time_window::{TimeWindow, TimeWindowSpec};
use serde::{Deserialize, Serialize};

/// Why a policy document was refused: one sentence naming the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("perimeter policy: {0}")]
pub struct PolicyError(pub String);

fn bad(s: String) -> PolicyError {
    PolicyError(s)
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// What kind of identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A person.
    User,
    /// A machine acting for itself.
    Device,
    /// A gateway (enforcement point).
    Gateway,
    /// A workload.
    Service,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Lets the connection through.
    Allow,
    /// Refuses it, whatever else allows it.
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityDoc {
    name: String,
    kind: IdentityKind,
    #[serde(default)]
    groups: Vec<String>,
    /// Gateways only: `host:port` where clients reach its TLS port (the controller hands it out).
    address: Option<String>,
    /// Gateways only: its SPA UDP port (default 62201).
    spa_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDoc {
    name: String,
    /// `host:port` the gateway may connect to for this service (its egress allow-list).
    address: String,
    /// The gateway identity that fronts this service (with a controller).
    gateway: Option<String>,
}

/// A gateway as the policy describes it: where clients find it and what it fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEntry {
    /// Identity name (its certificate's subject).
    pub name: String,
    /// `host:port` of its TLS port.
    pub address: String,
    /// Its SPA UDP port.
    pub spa_port: u16,
    /// Services it fronts.
    pub services: Vec<String>,
}

/// Device-posture requirements of a rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostureRequirement {
    /// Allowed operating systems (lowercase), empty = any.
    #[serde(default)]
    pub os: Vec<String>,
    /// Lowest OS version (dotted numbers).
    pub min_os_version: Option<String>,
    /// Full-disk encryption must be on.
    #[serde(default)]
    pub disk_encryption: bool,
    /// Lowest kagi agent version.
    pub min_agent_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhenDoc {
    #[serde(default)]
    time: Vec<TimeWindowSpec>,
    posture: Option<PostureRequirement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    effect: Effect,
    from: Vec<String>,
    to: Vec<String>,
    #[serde(default)]
    when: WhenDoc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantDoc {
    identity: String,
    service: String,
    /// RFC 3339.
    start: String,
    /// RFC 3339.
    end: String,
    #[serde(default)]
    reason: String,
}

/// A just-in-time grant: one identity, one service, an interval.
#[derive(Debug, Clone)]
struct Grant {
    identity: String,
    service: String,
    start: jiff::Timestamp,
    end: jiff::Timestamp,
    reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    #[serde(default, rename = "identity")]
    identities: Vec<IdentityDoc>,
    #[serde(default, rename = "service")]
    services: Vec<ServiceDoc>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDoc>,
    #[serde(default, rename = "grant")]
    grants: Vec<GrantDoc>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    effect: Effect,
    from: Vec<String>,
    to: Vec<String>,
    time: Vec<TimeWindow>,
    posture: Option<PostureRequirement>,
}

/// Claims a client reports about its device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Posture {
    /// Operating system, lowercase (`linux`, `macos`, `windows` ...).
    pub os: Option<String>,
    /// OS version, dotted numbers.
    pub os_version: Option<String>,
    /// Full-disk encryption on.
    pub disk_encryption: Option<bool>,
    /// kagi agent version.
    pub agent_version: Option<String>,
}

impl Posture {
    /// From `key=value` claims (`os`, `os_version`, `disk_encryption`, `agent_version`).
    pub fn from_claims<S: AsRef<str>>(claims: &[S]) -> Result<Self, PolicyError> {
        let mut p = Posture::default();
        for c in claims {
            let (k, v) = c
                .as_ref()
                .split_once('=')
                .ok_or_else(|| bad(format!("posture claim {:?} is not key=value", c.as_ref())))?;
            match k {
                "os" => p.os = Some(v.to_ascii_lowercase()),
                "os_version" => p.os_version = Some(v.to_string()),
                "disk_encryption" => {
                    p.disk_encryption = Some(v.parse().map_err(|_| {
                        bad(format!("posture disk_encryption={v:?} is not true or false"))
                    })?)
                }
                "agent_version" => p.agent_version = Some(v.to_string()),
                other => {
                    return Err(bad(format!(
                        "unknown posture claim {other:?} (os, os_version, disk_encryption, agent_version)"
                    )))
                }
            }
        }
        Ok(p)
    }
}

/// Dotted-number comparison: `a >= b`; non-numeric parts compare as 0.
fn version_at_least(a: &str, b: &str) -> bool {
    let parts = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (x, y) = (parts(a), parts(b));
    for i in 0..x.len().max(y.len()) {
        let (p, q) = (
            x.get(i).copied().unwrap_or(0),
            y.get(i).copied().unwrap_or(0),
        );
        if p != q {
            return p > q;
        }
    }
    true
}

impl PostureRequirement {
    /// The first unmet requirement, if any.
    pub fn unmet(&self, p: &Posture) -> Option<String> {
        if !self.os.is_empty() {
            match &p.os {
                Some(os) if self.os.iter().any(|o| o.eq_ignore_ascii_case(os)) => {}
                Some(os) => {
                    return Some(format!(
                        "operating system {os} is not one of {}",
                        self.os.join(", ")
                    ))
                }
                None => return Some("the device did not report its operating system".into()),
            }
        }
        if let Some(min) = &self.min_os_version {
            match &p.os_version {
                Some(v) if version_at_least(v, min) => {}
                Some(v) => return Some(format!("OS version {v} is older than {min}")),
                None => return Some("the device did not report its OS version".into()),
            }
        }
        if self.disk_encryption && p.disk_encryption != Some(true) {
            return Some("disk encryption is required".into());
        }
        if let Some(min) = &self.min_agent_version {
            match &p.agent_version {
                Some(v) if version_at_least(v, min) => {}
                Some(v) => return Some(format!("agent version {v} is older than {min}")),
                None => return Some("the device did not report its agent version".into()),
            }
        }
        None
    }
}

/// A parsed, validated perimeter policy.
#[derive(Debug, Clone)]
pub struct PerimeterPolicy {
    identities: BTreeMap<String, (IdentityKind, BTreeSet<String>)>,
    services: BTreeMap<String, String>,
    gateways: BTreeMap<String, GatewayEntry>,
    rules: Vec<Rule>,
    grants: Vec<Grant>,
}

/// A question for [`PerimeterPolicy::decide`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who (identity name, from its certificate).
    pub identity: &'a str,
    /// Which service.
    pub service: &'a str,
    /// When.
    pub now: jiff::Timestamp,
    /// What the device reports.
    pub posture: &'a Posture,
}

/// The answer, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Let through?
    pub allowed: bool,
    /// The deciding rule (`rule:NAME`, `grant:N`), or None for the default deny.
    pub rule: Option<String>,
    /// One sentence.
    pub reason: String,
}

impl PerimeterPolicy {
    /// Parses and validates a policy document (TOML).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let doc: PolicyDoc = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let mut identities = BTreeMap::new();
        let mut gateways = BTreeMap::new();
        for i in doc.identities {
            if i.kind == IdentityKind::Gateway {
                if let Some(address) = &i.address {
                    if !is_host_port(address) {
                        return Err(bad(format!(
                            "identity {}: address {address:?} is not host:port",
                            i.name
                        )));
                    }
                    gateways.insert(
                        i.name.clone(),
                        GatewayEntry {
                            name: i.name.clone(),
                            address: address.clone(),
                            spa_port: i.spa_port.unwrap_or(62201),
                            services: Vec::new(),
                        },
                    );
                }
            } else if i.address.is_some() || i.spa_port.is_some() {
                return Err(bad(format!(
                    "identity {}: address and spa_port are for gateways only",
                    i.name
                )));
            }
            if i.name.is_empty() || i.name.starts_with("group:") || i.name == "*" {
                return Err(bad(format!(
                    "identity name {:?} is reserved or empty",
                    i.name
                )));
            }
            if identities
                .insert(i.name.clone(), (i.kind, i.groups.into_iter().collect()))
                .is_some()
            {
                return Err(bad(format!("identity {} is defined twice", i.name)));
            }
        }
        let mut services = BTreeMap::new();
        for s in doc.services {
            if !is_host_port(&s.address) {
                return Err(bad(format!(
                    "service {}: address {:?} is not host:port",
                    s.name, s.address
                )));
            }
            if let Some(g) = &s.gateway {
                let Some(entry) = gateways.get_mut(g) else {
                    return Err(bad(format!(
                        "service {}: gateway {g} is not a gateway identity with an address",
                        s.name
                    )));
                };
                entry.services.push(s.name.clone());
            }
            if services.insert(s.name.clone(), s.address).is_some() {
                return Err(bad(format!("service {} is defined twice", s.name)));
            }
        }
        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for r in doc.rules {
            if !names.insert(r.name.clone()) {
                return Err(bad(format!("rule {} is defined twice", r.name)));
            }
            if r.from.is_empty() || r.to.is_empty() {
                return Err(bad(format!(
                    "rule {}: from and to must not be empty",
                    r.name
                )));
            }
            for f in &r.from {
                let known = f == "*"
                    || f.strip_prefix("group:").is_some_and(|g| !g.is_empty())
                    || identities.contains_key(f);
                if !known {
                    return Err(bad(format!(
                        "rule {}: from {f:?} is not a defined identity, group:NAME or *",
                        r.name
                    )));
                }
            }
            let mut time = Vec::new();
            for t in &r.when.time {
                time.push(
                    t.parse()
                        .map_err(|e| bad(format!("rule {}: {e}", r.name)))?,
                );
            }
            rules.push(Rule {
                name: r.name,
                effect: r.effect,
                from: r.from,
                to: r.to,
                time,
                posture: r.when.posture,
            });
        }
        let mut grants = Vec::new();
        for (n, g) in doc.grants.into_iter().enumerate() {
            if !identities.contains_key(&g.identity) || !services.contains_key(&g.service) {
                return Err(bad(format!(
                    "grant {}: identity {} or service {} is not defined",
                    n + 1,
                    g.identity,
                    g.service
                )));
            }
            let time = |t: &str| {
                t.parse::<jiff::Timestamp>()
                    .map_err(|_| bad(format!("grant {}: {t:?} is not an RFC 3339 time", n + 1)))
            };
            let (start, end) = (time(&g.start)?, time(&g.end)?);
            if end <= start {
                return Err(bad(format!("grant {}: end is not after start", n + 1)));
            }
            grants.push(Grant {
                identity: g.identity,
                service: g.service,
                start,
                end,
                reason: g.reason,
            });
        }
        Ok(Self {
            identities,
            services,
            gateways,
            rules,
            grants,
        })
    }

    /// The address a gateway may connect to for `service` (egress allow-list).
    pub fn service_address(&self, service: &str) -> Option<&str> {
        self.services.get(service).map(String::as_str)
    }

    /// Every service and its address (`host:port`).
    pub fn service_addresses(&self) -> impl Iterator<Item = (&str, &str)> {
        self.services.iter().map(|(n, a)| (n.as_str(), a.as_str()))
    }

    /// The kind of a defined identity.
    pub fn identity_kind(&self, name: &str) -> Option<IdentityKind> {
        self.identities.get(name).map(|(k, _)| *k)
    }

    /// Gateways with an address, and the services each fronts.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewayEntry> {
        self.gateways.values()
    }

    /// Would `req.identity` reach `req.service` now, and by which rule? Deny rules win over
    /// allow rules and grants; with nothing matching, the answer is no, naming the nearest miss.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let deny = |rule: Option<String>, reason: String| Decision {
            allowed: false,
            rule,
            reason,
        };
        let Some((_, groups)) = self.identities.get(req.identity) else {
            return deny(
                None,
                format!("{} is not an enrolled identity", req.identity),
            );
        };
        if !self.services.contains_key(req.service) {
            return deny(None, format!("there is no service {}", req.service));
        }
        let from_ok = |r: &Rule| {
            r.from.iter().any(|f| {
                f == "*"
                    || f == req.identity
                    || f.strip_prefix("group:").is_some_and(|g| groups.contains(g))
            })
        };
        let mut allow: Option<&Rule> = None;
        let mut near_miss: Option<String> = None;
        for r in &self.rules {
            if !from_ok(r) || !r.to.iter().any(|t| glob::matches(t, req.service)) {
                continue;
            }
            if !r.time.is_empty() && !r.time.iter().any(|w| w.contains(req.now)) {
                near_miss.get_or_insert(format!("rule {} applies only in its time window", r.name));
                continue;
            }
            if let Some(unmet) = r.posture.as_ref().and_then(|p| p.unmet(req.posture)) {
                near_miss.get_or_insert(format!(
                    "rule {} requires a compliant device: {unmet}",
                    r.name
                ));
                continue;
            }
            match r.effect {
                Effect::Deny => {
                    return deny(
                        Some(format!("rule:{}", r.name)),
                        format!("denied by rule {}", r.name),
                    )
                }
                Effect::Allow => {
                    allow.get_or_insert(r);
                }
            }
        }
        if let Some(r) = allow {
            return Decision {
                allowed: true,
                rule: Some(format!("rule:{}", r.name)),
                reason: format!("allowed by rule {}", r.name),
            };
        }
        if let Some((n, g)) = self.grants.iter().enumerate().find(|(_, g)| {
            g.identity == req.identity
                && g.service == req.service
                && g.start <= req.now
                && req.now < g.end
        }) {
            return Decision {
                allowed: true,
                rule: Some(format!("grant:{}", n + 1)),
                reason: format!(
                    "allowed by just-in-time grant {} until {}{}",
                    n + 1,
                    g.end,
                    if g.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", g.reason)
                    }
                ),
            };
        }
        deny(
            None,
            near_miss.map_or_else(
                || "denied: no rule allows this (default deny)".to_string(),
                |m| format!("denied: {m}"),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
[[identity]]
name = "alice"
kind = "user"
groups = ["admins"]

[[identity]]
name = "bob"
kind = "user"

[[identity]]
name = "mallory"
kind = "user"
groups = ["admins", "contractors"]

[[service]]
name = "kms"
address = "10.201.0.1:7300"

[[service]]
name = "kms-admin"
address = "10.201.0.1:7301"

[[rule]]
name = "apps-use-kms"
effect = "allow"
from = ["group:admins", "bob"]
to = ["kms"]
[rule.when.posture]
os = ["linux"]
min_os_version = "6.1"
disk_encryption = true

[[rule]]
name = "admin-window"
effect = "allow"
from = ["group:admins"]
to = ["kms-admin"]
[[rule.when.time]]
days = ["tue"]
start = "02:00"
end = "04:00"
tz = "Asia/Tokyo"

[[rule]]
name = "no-contractors"
effect = "deny"
from = ["group:contractors"]
to = ["*"]

[[grant]]
identity = "bob"
service = "kms-admin"
start = "2026-11-28T10:00:00Z"
end = "2026-11-28T12:00:00Z"
reason = "INC-42"
"#;

    fn ask(p: &PerimeterPolicy, who: &str, what: &str, at: &str, posture: &Posture) -> Decision {
        p.decide(&Request {
            identity: who,
            service: what,
            now: at.parse().unwrap(),
            posture,
        })
    }

    #[test]
    fn rules_windows_grants_posture_and_deny_wins() {
        let p = PerimeterPolicy::parse(DOC).unwrap();
        let good = Posture::from_claims(&["os=linux", "os_version=6.6.1", "disk_encryption=true"])
            .unwrap();
        let weak =
            Posture::from_claims(&["os=linux", "os_version=6.6", "disk_encryption=false"]).unwrap();
        let d = ask(&p, "alice", "kms", "2026-11-28T11:00:00Z", &good);
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (true, Some("rule:apps-use-kms"))
        );
        let d = ask(&p, "alice", "kms", "2026-11-28T11:00:00Z", &weak);
        assert!(!d.allowed && d.reason.contains("disk encryption"), "{d:?}");
        let old =
            Posture::from_claims(&["os=linux", "os_version=5.15", "disk_encryption=true"]).unwrap();
        assert!(ask(&p, "bob", "kms", "2026-11-28T11:00:00Z", &old)
            .reason
            .contains("older than 6.1"));
        // Tuesday 03:00 in Tokyo = Monday 18:00 UTC.
        let d = ask(&p, "alice", "kms-admin", "2026-11-23T18:00:00Z", &good);
        assert_eq!(d.rule.as_deref(), Some("rule:admin-window"));
        let d = ask(&p, "alice", "kms-admin", "2026-11-24T18:00:00Z", &good);
        assert!(!d.allowed && d.reason.contains("time window"), "{d:?}");
        // Just-in-time grant: inside and outside its interval.
        let d = ask(&p, "bob", "kms-admin", "2026-11-28T11:00:00Z", &good);
        assert_eq!((d.allowed, d.rule.as_deref()), (true, Some("grant:1")));
        assert!(d.reason.contains("INC-42"));
        assert!(!ask(&p, "bob", "kms-admin", "2026-11-28T12:00:00Z", &good).allowed);
        // Deny wins over an allow that also matches.
        let d = ask(&p, "mallory", "kms", "2026-11-28T11:00:00Z", &good);
        assert_eq!(
            (d.allowed, d.rule.as_deref()),
            (false, Some("rule:no-contractors"))
        );
        // Default deny and unknowns.
        let d = ask(&p, "bob", "kms-admin", "2026-11-29T11:00:00Z", &good);
        assert_eq!((d.allowed, d.rule.as_deref()), (false, None));
        assert!(ask(&p, "eve", "kms", "2026-11-28T11:00:00Z", &good)
            .reason
            .contains("not an enrolled"));
        assert!(ask(&p, "bob", "ssh", "2026-11-28T11:00:00Z", &good)
            .reason
            .contains("no service"));
        assert_eq!(p.service_address("kms"), Some("10.201.0.1:7300"));
    }

    #[test]
    fn bad_documents_name_the_problem() {
        for (doc, needle) in [
            ("[[identity]]\nname=\"a\"\nkind=\"robot\"", "robot"),
            ("[[service]]\nname=\"s\"\naddress=\"nohost\"", "host:port"),
            ("[[rule]]\nname=\"r\"\neffect=\"allow\"\nfrom=[\"ghost\"]\nto=[\"*\"]", "ghost"),
            ("[[rule]]\nname=\"r\"\neffect=\"allow\"\nfrom=[\"*\"]\nto=[\"*\"]\n[[rule.when.time]]\nstart=\"9\"\nend=\"10:00\"", "HH:MM"),
            ("[[rule]]\nname=\"r\"\neffect=\"allow\"\nfrom=[\"*\"]\nto=[\"*\"]\nextra=1", "extra"),
            ("[[identity]]\nname=\"a\"\nkind=\"user\"\n[[identity]]\nname=\"a\"\nkind=\"user\"", "twice"),
        ] {
            let e = PerimeterPolicy::parse(doc).unwrap_err().to_string();
            assert!(e.contains(needle), "{doc}: {e}");
        }
        assert!(Posture::from_claims(&["gpu=yes"]).is_err());
        assert!(version_at_least("6.10", "6.9") && !version_at_least("6.1", "6.1.1"));
    }
}
