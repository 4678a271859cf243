//! The Keys page: every key the token may describe, with use at a glance, and the form that
//! creates one.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use kagi_keys::{KeyRecord, KeyState, KeyType, KeyUsage};
use maud::{html, Markup};

use super::charts;
use super::layout::{self, ago, csrf_field, span, urlencode, utc, Nav};
use super::{now, page, Console, Ui, UiError};

/// Keys per page.
const PER_PAGE: usize = 50;

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct ListQuery {
    q: String,
    state: String,
    page: usize,
    msg: String,
}

pub(crate) fn state_badge(s: KeyState) -> Markup {
    html! { span class=(format!("badge state-{}", s.as_str())) { (s.as_str()) } }
}

pub(crate) fn rotation_cell(k: &KeyRecord, now: i64) -> Markup {
    let age = now - k.current_version_created();
    html! {
        @match k.rotation_period_secs {
            Some(p) if age > p as i64 => span class="warn" title="rotation overdue" { (span(age)) " of " (span(p as i64)) " (overdue)" },
            Some(p) => { (span(age)) " of " (span(p as i64)) },
            None => { (span(age)) " (no rotation)" },
        }
    }
}

pub(crate) async fn list(
    State(st): State<Console>,
    ui: Ui,
    Query(q): Query<ListQuery>,
) -> Result<Response, UiError> {
    let keys = st.svc.list_keys(&ui.caller).await?;
    let needle = q.q.trim().to_lowercase();
    let shown: Vec<&KeyRecord> = keys
        .iter()
        .filter(|k| needle.is_empty() || k.name.to_lowercase().contains(&needle))
        .filter(|k| q.state.is_empty() || k.state.as_str() == q.state)
        .collect();
    let pages = shown.len().div_ceil(PER_PAGE).max(1);
    let pg = q.page.clamp(1, pages);
    let slice = &shown[(pg - 1) * PER_PAGE..(pg * PER_PAGE).min(shown.len())];
    let t = now();
    let ix = st.index.read();
    let link = |p: usize| {
        format!(
            "/ui/keys?q={}&state={}&page={p}",
            urlencode(&q.q),
            urlencode(&q.state)
        )
    };
    let flash = match q.msg.as_str() {
        "created" => Some("Key created."),
        _ => None,
    };
    let body = html! {
        @if let Some(f) = flash { p class="note" role="status" { (f) } }
        (layout::catching_up(&ix))
        form class="filters" method="get" action="/ui/keys" role="search" {
            div class="field" {
                label for="q" { "Name contains" }
                input id="q" name="q" type="search" value=(q.q);
            }
            div class="field" {
                label for="state" { "State" }
                select id="state" name="state" {
                    option value="" selected[q.state.is_empty()] { "any" }
                    @for s in ["enabled", "disabled", "pending_deletion", "destroyed"] {
                        option value=(s) selected[q.state == s] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p class="count" { (shown.len()) " of " (keys.len()) " keys" }
        table class="keys" {
            caption class="sr-only" { "Keys" }
            thead {
                tr {
                    th scope="col" { "Name" }
                    th scope="col" { "State" }
                    th scope="col" { "Versions" }
                    th scope="col" { "Current version age" }
                    th scope="col" { "Last use" }
                    th scope="col" { "Last 24 hours" }
                }
            }
            tbody {
                @for k in slice {
                    @let act = ix.key(&k.name);
                    tr {
                        th scope="row" { a href=(format!("/ui/keys/{}", urlencode(&k.name))) { (k.name) } }
                        td { (state_badge(k.state)) }
                        td { (k.current_version()) }
                        td { (rotation_cell(k, t)) }
                        td {
                            @match act.and_then(|a| a.last_use) {
                                Some(l) => time datetime=(utc(l)) title=(utc(l)) { (ago(t, l)) },
                                None => span class="muted" { "never" },
                            }
                        }
                        td { (charts::sparkline(&act.map(|a| a.hourly(t, 24)).unwrap_or_else(|| vec![0; 24]), &format!("{} in the last 24 hours", k.name))) }
                    }
                }
            }
        }
        @if pages > 1 {
            nav class="pages" aria-label="Pages" {
                @if pg > 1 { a href=(link(pg - 1)) rel="prev" { "← Previous" } }
                span { "Page " (pg) " of " (pages) }
                @if pg < pages { a href=(link(pg + 1)) rel="next" { "Next →" } }
            }
        }
        details class="create" {
            summary { "Create a key" }
            form method="post" action="/ui/keys" {
                (csrf_field(&ui))
                label for="new-name" { "Name" }
                input id="new-name" name="name" required pattern="[A-Za-z0-9_.\\/\\-]{1,128}"
                    aria-describedby="new-name-help";
                p id="new-name-help" class="help" { "Letters, digits and . _ - / (up to 128)." }
                label for="new-desc" { "Description" }
                input id="new-desc" name="description";
                label for="new-type" { "Type" }
                select id="new-type" name="key_type" {
                    option value="aes256-gcm" selected { "aes256-gcm (envelope encryption)" }
                    option value="fpe" { "fpe (tokenization)" }
                }
                label for="new-rot" { "Rotate every (e.g. 90d; empty for never)" }
                input id="new-rot" name="rotation_period";
                button type="submit" { "Create key" }
            }
        }
    };
    drop(ix);
    Ok(page(layout::shell(&ui, Nav::Keys, "Keys", body)))
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct CreateForm {
    csrf: String,
    name: String,
    description: String,
    key_type: String,
    rotation_period: String,
}

pub(crate) async fn create(
    State(st): State<Console>,
    ui: Ui,
    Form(f): Form<CreateForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    let bad = |m: String| UiError::new(StatusCode::BAD_REQUEST, m);
    let key_type = match f.key_type.as_str() {
        "" | "aes256-gcm" => KeyType::Aes256Gcm,
        "fpe" => KeyType::Fpe,
        t => {
            return Err(bad(format!(
                "unknown key type {t:?}: use aes256-gcm or fpe"
            )))
        }
    };
    let rotation = match f.rotation_period.trim() {
        "" => None,
        p => Some(kagi_keys::duration::parse_seconds(p).map_err(|e| bad(e.to_string()))?),
    };
    let name = f.name.trim();
    st.svc
        .create_key(
            &ui.caller,
            name,
            f.description.trim(),
            key_type,
            rotation,
            KeyUsage::EncryptDecrypt,
        )
        .await?;
    Ok(Redirect::to(&format!("/ui/keys/{}?msg=created", urlencode(name))).into_response())
}
