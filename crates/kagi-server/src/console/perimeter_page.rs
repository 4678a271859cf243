//! The Perimeter page, when kagi's controller runs beside the key service (`[console]
//! perimeter_state`): gateways and their last contact with the controller, enrolled
//! identities, pending enrollments, the latest administrative changes, and the latest SPA and
//! connection decisions from the perimeter's audit chains. Read-only.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use kagi_sdp::policy::{IdentityKind, PerimeterPolicy};
use kagi_store::perimeter::{Change, EnrolledIdentity, PerimeterStore};
use kagi_store::sqlite::SqliteAuditStore;
use kagi_store::AuditStore;
use maud::html;

use super::layout::{self, ago, utc, Nav};
use super::usage::{parse_access, Access};
use super::{now, page, Console, PerimeterSource, Ui, UiError};

/// Decisions shown.
const DECISIONS: usize = 100;
/// Administrative changes shown.
const CHANGES: usize = 20;

/// The perimeter's stores, opened on first use.
pub(crate) struct Perimeter {
    src: PerimeterSource,
    opened: tokio::sync::OnceCell<Arc<Opened>>,
}

struct Opened {
    state: PerimeterStore,
    chains: Vec<(String, Arc<dyn AuditStore>)>,
}

impl Perimeter {
    pub(crate) fn new(src: PerimeterSource) -> Self {
        Self {
            src,
            opened: tokio::sync::OnceCell::new(),
        }
    }

    async fn open(&self) -> Result<Arc<Opened>, UiError> {
        let unavailable = |m: String| UiError::new(StatusCode::SERVICE_UNAVAILABLE, m);
        self.opened
            .get_or_try_init(|| async {
                let s = &self.src.state;
                let state = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
                    PerimeterStore::connect_postgres(s).await.map_err(|e| {
                        unavailable(format!("cannot reach the perimeter state: {e}"))
                    })?
                } else {
                    // Never create an empty state where the controller's should be.
                    if !Path::new(s).is_file() {
                        return Err(unavailable(format!(
                            "the perimeter state {s} does not exist (is [console] perimeter_state the controller's state file?)"
                        )));
                    }
                    PerimeterStore::open(Path::new(s)).map_err(|e| {
                        unavailable(format!("cannot open the perimeter state {s}: {e}"))
                    })?
                };
                let mut chains = Vec::new();
                for p in &self.src.audit {
                    if !p.is_file() {
                        return Err(unavailable(format!(
                            "the perimeter audit chain {} does not exist",
                            p.display()
                        )));
                    }
                    let st = SqliteAuditStore::open(p).map_err(|e| {
                        unavailable(format!("cannot open the audit chain {}: {e}", p.display()))
                    })?;
                    let name = p
                        .file_stem()
                        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
                    chains.push((name, Arc::new(st) as Arc<dyn AuditStore>));
                }
                Ok(Arc::new(Opened { state, chains }))
            })
            .await
            .cloned()
    }
}

/// What one view shows.
struct View {
    version: u64,
    policy: Option<PerimeterPolicy>,
    identities: Vec<EnrolledIdentity>,
    pending: Vec<String>,
    contacts: Vec<(String, i64, String)>,
    changes: Vec<Change>,
    decisions: Vec<(String, Access)>,
}

fn read(o: &Opened, t: i64) -> Result<View, kagi_store::StoreError> {
    let policy = o
        .state
        .meta("policy")?
        .and_then(|p| PerimeterPolicy::parse(&p).ok());
    let mut changes = o.state.changes_since(0)?;
    let skip = changes.len().saturating_sub(CHANGES);
    changes.drain(..skip);
    changes.reverse();
    let mut decisions = Vec::new();
    for (name, st) in &o.chains {
        for (_, line) in st.tail(DECISIONS)? {
            if let Some(a) = parse_access(&line) {
                decisions.push((name.clone(), a));
            }
        }
    }
    decisions.sort_by(|a, b| b.1.time.cmp(&a.1.time));
    decisions.truncate(DECISIONS);
    Ok(View {
        version: o.state.version()?,
        policy,
        identities: o.state.identities()?,
        pending: o
            .state
            .pending_tokens(t)?
            .into_iter()
            .map(|p| p.identity)
            .collect(),
        contacts: o.state.contacts()?,
        changes,
        decisions,
    })
}

fn kind_name(k: Option<IdentityKind>) -> &'static str {
    match k {
        Some(IdentityKind::User) => "user",
        Some(IdentityKind::Device) => "device",
        Some(IdentityKind::Gateway) => "gateway",
        Some(IdentityKind::Service) => "service",
        None => "not in the policy",
    }
}

pub(crate) async fn show(State(st): State<Console>, ui: Ui) -> Result<Response, UiError> {
    let Some(p) = st.perimeter.clone() else {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            "No perimeter is configured for this console ([console] perimeter_state).",
        ));
    };
    st.svc.authorize_audit(&ui.caller, "perimeter.read").await?;
    let o = p.open().await?;
    let t = now();
    let v = tokio::task::spawn_blocking(move || read(&o, t))
        .await
        .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| UiError::from(crate::ServiceError::from(e)))?;
    let kind = |n: &str| kind_name(v.policy.as_ref().and_then(|p| p.identity_kind(n)));
    let gateways: Vec<&EnrolledIdentity> = v
        .identities
        .iter()
        .filter(|i| kind(&i.name) == "gateway")
        .collect();
    let body = html! {
        p class="help" { "Perimeter state version " (v.version) ". Read-only: change it with " code { "kagi controller" } "." }
        section aria-labelledby="gw-h" {
            h2 id="gw-h" { "Gateways" }
            @if gateways.is_empty() { p class="muted" { "No gateway has enrolled." } }
            @else {
                table class="gateways" {
                    thead { tr { th scope="col" { "Gateway" } th scope="col" { "Last contact with the controller" } th scope="col" { "From" } th scope="col" { "State" } } }
                    tbody {
                        @for g in &gateways {
                            @let c = v.contacts.iter().find(|c| c.0 == g.name);
                            tr {
                                th scope="row" { (g.name) }
                                td {
                                    @match c {
                                        Some((_, at, _)) => time datetime=(utc(*at)) title=(utc(*at)) { (ago(t, *at)) },
                                        None => span class="muted" { "never" },
                                    }
                                }
                                td { (c.map_or("", |c| c.2.as_str())) }
                                td { @if g.revoked_at.is_some() { span class="badge denied" { "revoked" } } @else { span class="badge success" { "enrolled" } } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="id-h" {
            h2 id="id-h" { "Identities" }
            table class="identities" {
                thead { tr { th scope="col" { "Identity" } th scope="col" { "Kind" } th scope="col" { "Enrolled" } th scope="col" { "Revoked" } th scope="col" { "Certificate serial" } } }
                tbody {
                    @for i in &v.identities {
                        tr {
                            th scope="row" { (i.name) }
                            td { (kind(&i.name)) }
                            td { (utc(i.enrolled_at)) }
                            td { @if let Some(r) = i.revoked_at { span class="warn" { (utc(r)) } } }
                            td { code { (i.cert_serial.get(..16).unwrap_or(&i.cert_serial)) } }
                        }
                    }
                }
            }
            @if !v.pending.is_empty() {
                p { "Enrollment tokens waiting to be redeemed for: " (v.pending.join(", ")) "." }
            }
        }
        section aria-labelledby="dec-h" {
            h2 id="dec-h" { "Latest SPA and connection decisions" }
            @if v.decisions.is_empty() { p class="muted" { "No decisions recorded yet." } }
            @else {
                table class="accesses decisions" {
                    thead {
                        tr {
                            th scope="col" { "Time" } th scope="col" { "Chain" } th scope="col" { "Node" }
                            th scope="col" { "Operation" } th scope="col" { "Identity" } th scope="col" { "Source" }
                            th scope="col" { "Details" } th scope="col" { "Outcome" } th scope="col" { "Reason" }
                        }
                    }
                    tbody {
                        @for (chain, a) in &v.decisions {
                            tr class=(format!("o-{}", a.outcome.as_str())) {
                                td { time datetime=(a.time) { (a.time.get(..19).unwrap_or(&a.time).replace('T', " ")) } }
                                td { (chain) }
                                td { (a.node) }
                                td { (a.operation) }
                                td { (a.principal) }
                                td { (a.source.as_deref().unwrap_or("")) }
                                td class="ctx" { @for (k, val) in &a.context { span { (k) "=" (val) } " " } }
                                td { (layout::outcome_badge(a.outcome)) }
                                td class="reason" { (a.reason.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="ch-h" {
            h2 id="ch-h" { "Latest changes" }
            table class="changes" {
                thead { tr { th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "By" } th scope="col" { "What" } } }
                tbody {
                    @for c in &v.changes {
                        tr { td { (c.seq) } td { (utc(c.at)) } td { (c.actor) } td { (c.what) } }
                    }
                }
            }
        }
    };
    Ok(page(layout::shell(&ui, Nav::Perimeter, "Perimeter", body)))
}
