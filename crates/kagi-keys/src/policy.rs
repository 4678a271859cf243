//! Policies: TOML documents of `[[rule]]`s that allow or deny operations on keys.
//!
//! ```toml
//! description = "billing service"
//! [[rule]]
//! effect = "allow"                    # or "deny"; deny wins over allow
//! keys = ["billing/*"]                # globs over key names
//! operations = ["generate", "decrypt"] # or ["*"]
//! [rule.when]                         # every condition given must hold
//! context = { tenant = "acme" }       # pairs the request's context must carry (glob values)
//! justifications = ["CUSTOMER_INITIATED_ACCESS"]  # the request must carry one of these
//! source_cidrs = ["10.0.0.0/8"]       # the caller's address must be in one of these
//! time = [{ days = ["tue"], start = "02:00", end = "04:00", tz = "Asia/Tokyo" }]
//! ```
//! A request is allowed when some rule allows it and no rule denies it; everything else is
//! denied. A rule with `effect = "notify"` decides nothing: each use it matches (allowed or
//! not) is sent to the customer's notification webhook ([`notifications`]), e.g. every use
//! with justification `THIRD_PARTY_DATA_REQUEST`, or every XKS call by one IAM principal
//! (`context = { "xks:awsPrincipalArn" = "arn:aws:iam::*:role/support-*" }`). Operations without a key (audit, policy and token management) match only rules
//! whose `keys` contain the bare `"*"`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::time_window::{TimeWindow, TimeWindowSpec};
use crate::{glob, EncryptionContext, Justification, KeyModelError, Operation};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    effect: Effect,
    keys: Vec<String>,
    operations: Vec<String>,
    #[serde(default)]
    when: Option<WhenFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhenFile {
    #[serde(default)]
    context: BTreeMap<String, String>,
    #[serde(default)]
    justifications: Vec<String>,
    #[serde(default)]
    source_cidrs: Vec<IpNet>,
    #[serde(default)]
    time: Vec<TimeWindowSpec>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grants the operation.
    Allow,
    /// Refuses the operation, whatever else allows it.
    Deny,
    /// Decides nothing; each matching use notifies the customer.
    Notify,
}

#[derive(Debug, Clone)]
struct Rule {
    effect: Effect,
    keys: Vec<String>,
    /// None = every operation.
    operations: Option<Vec<Operation>>,
    context: BTreeMap<String, String>,
    justifications: Vec<Justification>,
    source_cidrs: Vec<IpNet>,
    time: Vec<TimeWindow>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Free text from the document.
    pub description: String,
    rules: Vec<Rule>,
}

/// What is being asked, by whom, from where, when.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    /// The operation.
    pub operation: Operation,
    /// The key name, when the operation is on a key.
    pub key: Option<&'a str>,
    /// The request's encryption context.
    pub context: &'a EncryptionContext,
    /// The justification the caller gave.
    pub justification: Option<Justification>,
    /// The caller's address.
    pub source: Option<IpAddr>,
    /// Now.
    pub now: jiff::Timestamp,
}

/// The outcome of evaluating policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// `policy#rule` that decided, when one did.
    pub matched: Option<String>,
}

impl Decision {
    /// A one-sentence reason, for errors and the audit log.
    pub fn reason(&self) -> String {
        match (&self.matched, self.allowed) {
            (Some(m), true) => format!("allowed by {m}"),
            (Some(m), false) => format!("denied by {m}"),
            (None, _) => "denied: no policy rule allows this request".to_string(),
        }
    }
}

impl Policy {
    /// Parses and validates a policy document; the error names the rule and field.
    pub fn parse(text: &str) -> Result<Self, KeyModelError> {
        let bad = |m: String| KeyModelError::InvalidPolicy(m);
        let file: PolicyFile = toml::from_str(text)
            .map_err(|e| bad(e.message().to_string() + &span_line(text, e.span())))?;
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, r) in file.rule.into_iter().enumerate() {
            let n = i + 1;
            if r.keys.is_empty() {
                return Err(bad(format!("rule {n}: keys is empty")));
            }
            if r.operations.is_empty() {
                return Err(bad(format!("rule {n}: operations is empty")));
            }
            let operations = if r.operations.iter().any(|o| o == "*") {
                None
            } else {
                let mut ops = Vec::new();
                for o in &r.operations {
                    ops.push(
                        o.parse::<Operation>()
                            .map_err(|e| bad(format!("rule {n}: {e}")))?,
                    );
                }
                Some(ops)
            };
            let w = r.when.unwrap_or_default();
            let mut justifications = Vec::new();
            for j in &w.justifications {
                justifications.push(j.parse().map_err(|e| bad(format!("rule {n}: {e}")))?);
            }
            let mut time = Vec::new();
            for t in &w.time {
                time.push(t.parse().map_err(|e| bad(format!("rule {n}: {e}")))?);
            }
            rules.push(Rule {
                effect: r.effect,
                keys: r.keys,
                operations,
                context: w.context,
                justifications,
                source_cidrs: w.source_cidrs,
                time,
            });
        }
        Ok(Self {
            description: file.description,
            rules,
        })
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

fn span_line(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

impl Rule {
    fn matches(&self, req: &AccessRequest<'_>) -> bool {
        let key_ok = match req.key {
            Some(k) => self.keys.iter().any(|p| glob::matches(p, k)),
            None => self.keys.iter().any(|p| p == "*"),
        };
        let op_ok = self
            .operations
            .as_ref()
            .is_none_or(|ops| ops.contains(&req.operation));
        if !(key_ok && op_ok) {
            return false;
        }
        let ctx_ok = self
            .context
            .iter()
            .all(|(k, pat)| req.context.get(k).is_some_and(|v| glob::matches(pat, v)));
        let just_ok = self.justifications.is_empty()
            || req
                .justification
                .is_some_and(|j| self.justifications.contains(&j));
        let src_ok = self.source_cidrs.is_empty()
            || req
                .source
                .is_some_and(|ip| self.source_cidrs.iter().any(|n| n.contains(&ip)));
        let time_ok = self.time.is_empty() || self.time.iter().any(|t| t.contains(req.now));
        ctx_ok && just_ok && src_ok && time_ok
    }
}

/// Evaluates `policies` (name, policy) against `req`: deny wins, then allow, else deny.
pub fn decide<'p>(
    policies: impl IntoIterator<Item = (&'p str, &'p Policy)>,
    req: &AccessRequest<'_>,
) -> Decision {
    let mut allow: Option<String> = None;
    for (name, p) in policies {
        for (i, r) in p.rules.iter().enumerate() {
            if r.matches(req) {
                let label = format!("policy {name} rule {}", i + 1);
                match r.effect {
                    Effect::Deny => {
                        return Decision {
                            allowed: false,
                            matched: Some(label),
                        }
                    }
                    Effect::Allow => {
                        allow.get_or_insert(label);
                    }
                    Effect::Notify => {}
                }
            }
        }
    }
    Decision {
        allowed: allow.is_some(),
        matched: allow,
    }
}

/// The notify rules of `policies` that match `req`, as `policy NAME rule N`.
pub fn notifications<'p>(
    policies: impl IntoIterator<Item = (&'p str, &'p Policy)>,
    req: &AccessRequest<'_>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, p) in policies {
        for (i, r) in p.rules.iter().enumerate() {
            if r.effect == Effect::Notify && r.matches(req) {
                out.push(format!("policy {name} rule {}", i + 1));
            }
        }
    }
    out
}

impl Policy {
    /// Whether some rule refuses (`deny`) or notifies (`notify`) uses that carry justification
    /// `j` — for reports on how third-party requests are treated.
    pub fn treats_justification(&self, j: Justification) -> (bool, bool) {
        let has = |e: Effect| {
            self.rules
                .iter()
                .any(|r| r.effect == e && r.justifications.contains(&j))
        };
        (has(Effect::Deny), has(Effect::Notify))
    }

    /// Whether any rule is a notify rule (so callers can skip the work otherwise).
    pub fn has_notify(&self) -> bool {
        self.rules.iter().any(|r| r.effect == Effect::Notify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules_decide_nothing_and_name_themselves() {
        let p = Policy::parse(
            r#"
[[rule]]
effect = "notify"
keys = ["*"]
operations = ["*"]
[rule.when]
justifications = ["THIRD_PARTY_DATA_REQUEST"]
"#,
        )
        .unwrap();
        assert!(p.has_notify());
        let ctx = EncryptionContext::empty();
        let mut r = req(Operation::Decrypt, Some("k1"), &ctx);
        assert!(!decide([("n", &p)], &r).allowed, "notify must not allow");
        assert!(notifications([("n", &p)], &r).is_empty());
        r.justification = Some(Justification::ThirdPartyDataRequest);
        assert_eq!(
            notifications([("n", &p)], &r),
            vec!["policy n rule 1".to_string()]
        );
    }

    fn req<'a>(
        op: Operation,
        key: Option<&'a str>,
        ctx: &'a EncryptionContext,
    ) -> AccessRequest<'a> {
        AccessRequest {
            operation: op,
            key,
            context: ctx,
            justification: None,
            source: None,
            now: "2026-11-24T17:30:00Z".parse().unwrap(), // Wed 02:30 in Tokyo
        }
    }

    #[test]
    fn generate_only_policy() {
        let p = Policy::parse(
            "[[rule]]\neffect = \"allow\"\nkeys = [\"k1\"]\noperations = [\"generate\"]\n",
        )
        .unwrap();
        let ctx = EncryptionContext::empty();
        let set = [("gen", &p)];
        assert!(decide(set, &req(Operation::Generate, Some("k1"), &ctx)).allowed);
        assert!(!decide(set, &req(Operation::Decrypt, Some("k1"), &ctx)).allowed);
        assert!(!decide(set, &req(Operation::Generate, Some("k2"), &ctx)).allowed);
        assert!(!decide(set, &req(Operation::Audit, None, &ctx)).allowed);
    }

    #[test]
    fn deny_wins_and_justifications() {
        let p = Policy::parse(
            r#"
[[rule]]
effect = "allow"
keys = ["*"]
operations = ["*"]
[[rule]]
effect = "deny"
keys = ["*"]
operations = ["*"]
[rule.when]
justifications = ["THIRD_PARTY_DATA_REQUEST"]
"#,
        )
        .unwrap();
        let ctx = EncryptionContext::empty();
        let set = [("p", &p)];
        let mut r = req(Operation::Decrypt, Some("k"), &ctx);
        assert!(decide(set, &r).allowed);
        r.justification = Some(Justification::CustomerInitiatedAccess);
        assert!(decide(set, &r).allowed);
        r.justification = Some(Justification::ThirdPartyDataRequest);
        let d = decide(set, &r);
        assert!(!d.allowed);
        assert_eq!(d.matched.as_deref(), Some("policy p rule 2"));
        // Keyless operations match the bare "*".
        assert!(decide(set, &req(Operation::Audit, None, &ctx)).allowed);
    }

    #[test]
    fn conditions() {
        let p = Policy::parse(
            r#"
[[rule]]
effect = "allow"
keys = ["app/*"]
operations = ["decrypt"]
[rule.when]
context = { tenant = "acme*" }
source_cidrs = ["10.0.0.0/8"]
time = [{ days = ["wed"], start = "02:00", end = "04:00", tz = "Asia/Tokyo" }]
"#,
        )
        .unwrap();
        let acme = EncryptionContext::from_kv_args(&["tenant=acme-1"]).unwrap();
        let other = EncryptionContext::from_kv_args(&["tenant=other"]).unwrap();
        let set = [("p", &p)];
        let mut r = req(Operation::Decrypt, Some("app/db"), &acme);
        r.source = Some("10.1.2.3".parse().unwrap());
        assert!(decide(set, &r).allowed);
        r.now = "2026-11-24T20:30:00Z".parse().unwrap(); // 05:30 Tokyo
        assert!(!decide(set, &r).allowed);
        r.now = "2026-11-24T17:30:00Z".parse().unwrap();
        r.source = Some("192.168.1.1".parse().unwrap());
        assert!(!decide(set, &r).allowed);
        r.source = Some("10.1.2.3".parse().unwrap());
        r.context = &other;
        assert!(!decide(set, &r).allowed);
    }

    #[test]
    fn refuses_bad_documents() {
        for (doc, needle) in [
            ("[[rule]]\neffect=\"maybe\"\nkeys=[\"*\"]\noperations=[\"*\"]", "maybe"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[\"*\"]\noperations=[\"fly\"]", "fly"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[]\noperations=[\"*\"]", "keys"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[\"*\"]\noperations=[\"*\"]\nextra=1", "extra"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[\"*\"]\noperations=[\"*\"]\n[rule.when]\njustifications=[\"X\"]", "X"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[\"*\"]\noperations=[\"*\"]\n[rule.when]\ntime=[{start=\"25:00\",end=\"01:00\"}]", "25:00"),
            ("[[rule]]\neffect=\"allow\"\nkeys=[\"*\"]\noperations=[\"*\"]\n[rule.when]\ntime=[{start=\"01:00\",end=\"02:00\",tz=\"Mars/Olympus\"}]", "Mars"),
        ] {
            let e = Policy::parse(doc).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }
}
