//! Export formats for SIEMs: JSON lines (the stored records as they are), syslog
//! (RFC 5424 with a structured-data element) and ArcSight CEF.

use crate::{AuditRecord, Outcome};

/// How `kagi audit export` writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line, exactly as stored (verifiable with `audit verify --file`).
    Jsonl,
    /// RFC 5424 syslog lines.
    Syslog,
    /// CEF:0 lines.
    Cef,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Self::Jsonl),
            "syslog" => Ok(Self::Syslog),
            "cef" => Ok(Self::Cef),
            _ => Err(format!(
                "unknown export format {s:?}: use jsonl, syslog or cef"
            )),
        }
    }
}

fn sd_escape(s: &str) -> String {
    // RFC 5424 §6.3.3: escape '"', '\' and ']' in PARAM-VALUE.
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// One RFC 5424 line: facility authpriv (10), severity info (6) or warning (4) for denials
/// and errors; structured data `kagi@32473` carries the fields.
pub fn to_syslog(r: &AuditRecord, hostname: &str) -> String {
    let sev = if r.event.outcome == Outcome::Success {
        6
    } else {
        4
    };
    let pri = 10 * 8 + sev;
    let mut sd = format!(
        "[kagi@32473 seq=\"{}\" op=\"{}\" outcome=\"{}\" principal=\"{}\" request_id=\"{}\" hash=\"{}\"",
        r.seq,
        sd_escape(&r.event.operation),
        r.event.outcome.as_str(),
        sd_escape(&r.event.principal),
        sd_escape(&r.event.request_id),
        r.hash
    );
    for (name, val) in [
        ("key", r.event.key.clone()),
        ("key_version", r.event.key_version.map(|v| v.to_string())),
        ("source", r.event.source.clone()),
        ("justification", r.event.justification.clone()),
    ] {
        if let Some(v) = val {
            sd.push_str(&format!(" {name}=\"{}\"", sd_escape(&v)));
        }
    }
    sd.push(']');
    let msg = r
        .event
        .reason
        .clone()
        .unwrap_or_else(|| r.event.operation.clone());
    format!(
        "<{pri}>1 {} {} kagi - AUDIT {sd} {}",
        r.event.time,
        if hostname.is_empty() { "-" } else { hostname },
        msg.replace('\n', " ")
    )
}

fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}
fn cef_ext(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// One CEF:0 line.
pub fn to_cef(r: &AuditRecord) -> String {
    let sev = match r.event.outcome {
        Outcome::Success => 3,
        Outcome::Error => 5,
        Outcome::Denied => 7,
    };
    let mut ext = format!(
        "rt={} suser={} outcome={} externalId={} cn1Label=seq cn1={}",
        cef_ext(&r.event.time),
        cef_ext(&r.event.principal),
        r.event.outcome.as_str(),
        cef_ext(&r.event.request_id),
        r.seq
    );
    if let Some(s) = &r.event.source {
        ext.push_str(&format!(" src={}", cef_ext(s)));
    }
    if let Some(k) = &r.event.key {
        ext.push_str(&format!(" cs1Label=key cs1={}", cef_ext(k)));
    }
    if let Some(j) = &r.event.justification {
        ext.push_str(&format!(" cs2Label=justification cs2={}", cef_ext(j)));
    }
    if let Some(v) = r.event.key_version {
        ext.push_str(&format!(" cn2Label=keyVersion cn2={v}"));
    }
    if let Some(m) = &r.event.reason {
        ext.push_str(&format!(" msg={}", cef_ext(m)));
    }
    format!(
        "CEF:0|kagi|kagi|{}|{}|{}|{}|{}",
        env!("CARGO_PKG_VERSION"),
        cef_header(&r.event.operation),
        cef_header(&r.event.operation),
        sev,
        ext
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests_support::event;

    #[test]
    fn formats_escape_their_special_characters() {
        let mut e = event(1);
        e.principal = "a\"b]c".into();
        e.reason = Some("x=y|z".into());
        let r = AuditRecord {
            seq: 1,
            event: e,
            prev_hash: "0".into(),
            hash: "h".into(),
        };
        let s = to_syslog(&r, "host");
        assert!(
            s.starts_with(
                "<86>1 2026-11-28T00:00:00.000000Z host kagi - AUDIT [kagi@32473 seq=\"1\""
            ),
            "{s}"
        );
        assert!(s.contains("principal=\"a\\\"b\\]c\""), "{s}");
        let c = to_cef(&r);
        assert!(c.starts_with("CEF:0|kagi|kagi|"), "{c}");
        assert!(c.contains("msg=x\\=y|z"), "{c}");
    }
}
