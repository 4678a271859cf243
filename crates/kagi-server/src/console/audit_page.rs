//! The Audit page: a live tail of the log with filters, the chain's verification status and
//! the last verified record; older records page backwards through the store.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use kagi_keys::{Justification, Operation};
use maud::{html, Markup};

use super::key_page::access_table;
use super::layout::{self, urlencode, Nav};
use super::usage::{parse_access, Access};
use super::{page, Console, Ui, UiError};

/// Records shown per page.
const SHOWN: usize = 100;
/// Records looked at per page when reading older records from the store.
const SCAN: u64 = 20_000;

#[derive(Debug, serde::Deserialize, Default, Clone)]
#[serde(default)]
pub(crate) struct Filters {
    key: String,
    principal: String,
    justification: String,
    outcome: String,
    operation: String,
    /// Show records older than this one (paging back).
    before: Option<u64>,
}

impl Filters {
    fn keep(&self, a: &Access) -> bool {
        (self.key.is_empty() || a.key.as_deref() == Some(self.key.as_str()))
            && (self.principal.is_empty() || a.principal.contains(self.principal.as_str()))
            && (self.justification.is_empty()
                || a.justification.as_deref() == Some(self.justification.as_str()))
            && (self.outcome.is_empty() || a.outcome.as_str() == self.outcome)
            && (self.operation.is_empty() || a.operation == self.operation)
    }

    fn query(&self) -> String {
        format!(
            "key={}&principal={}&justification={}&outcome={}&operation={}",
            urlencode(&self.key),
            urlencode(&self.principal),
            urlencode(&self.justification),
            urlencode(&self.outcome),
            urlencode(&self.operation)
        )
    }
}

/// Matching records newest first, and where to continue for older ones.
async fn matching(st: &Console, f: &Filters) -> Result<(Vec<Access>, Option<u64>), UiError> {
    if f.before.is_none() {
        let ix = st.index.read();
        let rows: Vec<Access> = ix
            .latest(SHOWN, |a| f.keep(a))
            .into_iter()
            .map(|a| (*a).clone())
            .collect();
        let older = match (rows.len() == SHOWN, ix.oldest_recent()) {
            (true, _) => rows.last().map(|a| a.seq),
            (false, Some(o)) if o > 1 => Some(o),
            _ => None,
        };
        return Ok((rows, older.filter(|s| *s > 1)));
    }
    // Paging back: read the store downwards from `before`, at most SCAN records.
    let before = f.before.unwrap_or(1);
    let store = st.svc.audit().store().clone();
    let f2 = f.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut end = before; // exclusive
        let stop = before.saturating_sub(SCAN).max(1);
        while end > stop && out.len() < SHOWN {
            let from = end.saturating_sub(2_000).max(stop);
            let rows = store.read(from, (end - from) as usize)?;
            for (_, l) in rows.iter().rev() {
                if let Some(a) = parse_access(l) {
                    if f2.keep(&a) && out.len() < SHOWN {
                        out.push(a);
                    }
                }
            }
            end = from;
        }
        let next = match out.len() == SHOWN {
            true => out.last().map(|a| a.seq),
            false => Some(end),
        };
        Ok::<_, kagi_store::StoreError>((out, next.filter(|s| *s > 1)))
    })
    .await
    .map_err(|e| UiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| UiError::from(crate::ServiceError::from(e)))
}

fn rows_markup(rows: &[Access], f: &Filters, older: Option<u64>) -> Markup {
    html! {
        @if rows.is_empty() {
            p class="muted" { "No records match." }
        } @else {
            (access_table(rows.iter(), false))
        }
        @if let Some(o) = older {
            nav class="pages" aria-label="Pages" {
                a href=(format!("/ui/audit?{}&before={o}", f.query())) rel="next" { "Older records →" }
            }
        }
    }
}

fn chain_markup(st: &Console) -> Markup {
    let ix = st.index.read();
    let c = ix.chain();
    let head = ix.log_head;
    let behind = head.saturating_sub(ix.next_seq().saturating_sub(1));
    html! {
        @match &c.broken {
            Some(b) => p class="error chain" role="alert" id="chain-status" {
                "Chain BROKEN at record " (b.seq) ": " (b.reason) ". Verified through record " (c.verified_seq) "."
            },
            None => p class="ok chain" id="chain-status" {
                "Chain verified through record " span id="verified-seq" { (c.verified_seq) }
                " (" (c.checkpoints) " signed checkpoints)"
                @if behind > 0 { "; " (behind) " newer records still being read" }
                "."
            },
        }
    }
}

pub(crate) async fn show(
    State(st): State<Console>,
    ui: Ui,
    Query(f): Query<Filters>,
) -> Result<Response, UiError> {
    st.svc.authorize_audit(&ui.caller, "audit.read").await?;
    let (rows, older) = matching(&st, &f).await?;
    let live = f.before.is_none();
    let body = html! {
        div id="chain" data-live=[live.then_some("/ui/audit/rows?part=chain")] { (chain_markup(&st)) }
        form class="filters" method="get" action="/ui/audit" role="search" {
            div class="field" {
                label for="f-key" { "Key" }
                input id="f-key" name="key" value=(f.key);
            }
            div class="field" {
                label for="f-principal" { "Principal contains" }
                input id="f-principal" name="principal" value=(f.principal);
            }
            div class="field" {
                label for="f-op" { "Operation" }
                input id="f-op" name="operation" value=(f.operation) list="ops";
                datalist id="ops" { @for o in Operation::ALL { option value=(o.as_str()) {} } }
            }
            div class="field" {
                label for="f-just" { "Justification" }
                select id="f-just" name="justification" {
                    option value="" selected[f.justification.is_empty()] { "any" }
                    @for j in Justification::ALL {
                        option value=(j.as_str()) selected[f.justification == j.as_str()] { (j.as_str()) }
                    }
                }
            }
            div class="field" {
                label for="f-outcome" { "Outcome" }
                select id="f-outcome" name="outcome" {
                    option value="" selected[f.outcome.is_empty()] { "any" }
                    @for o in ["success", "denied", "error"] {
                        option value=(o) selected[f.outcome == o] { (o) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if live {
            p class="help" { "Newest first; updates by itself." }
        } @else {
            p class="help" { "Records before #" (f.before.unwrap_or(0)) ". " a href=(format!("/ui/audit?{}", f.query())) { "Back to the live tail" } }
        }
        div id="records" data-live=[live.then(|| format!("/ui/audit/rows?{}", f.query()))] {
            (rows_markup(&rows, &f, older))
        }
    };
    Ok(page(layout::shell(&ui, Nav::Audit, "Audit", body)))
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct Part {
    part: String,
}

/// The live parts of the Audit page (authorized on every refresh; recorded by the page view).
pub(crate) async fn rows(
    State(st): State<Console>,
    ui: Ui,
    Query(f): Query<Filters>,
    Query(p): Query<Part>,
) -> Result<Response, UiError> {
    if !st.svc.may(&ui.caller, Operation::Audit, None) {
        return Err(UiError::new(
            StatusCode::FORBIDDEN,
            "permission denied: audit",
        ));
    }
    if p.part == "chain" {
        return Ok(page(chain_markup(&st)));
    }
    let f = Filters { before: None, ..f };
    let (rows, older) = matching(&st, &f).await?;
    Ok(page(rows_markup(&rows, &f, older)))
}
