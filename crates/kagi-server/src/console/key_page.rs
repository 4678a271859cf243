//! The Key page: facts, versions, use over time by operation and by justification, the
//! latest accesses, and the lifecycle buttons (the kill switch among them).

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use kagi_keys::{KeyState, Operation};
use maud::{html, Markup};

use super::charts::{self, Bar};
use super::keys_page::{rotation_cell, state_badge};
use super::layout::{self, csrf_field, urlencode, utc, Nav};
use super::usage::{Access, KeyActivity};
use super::{now, page, Console, Ui, UiError};

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct ShowQuery {
    range: String,
    msg: String,
}

/// The chart ranges: (query value, label, buckets, hours per bucket).
const RANGES: [(&str, &str, usize, i64); 3] = [
    ("24h", "24 hours", 24, 1),
    ("7d", "7 days", 28, 6),
    ("30d", "30 days", 30, 24),
];

fn range(q: &str) -> (&'static str, &'static str, usize, i64) {
    RANGES
        .iter()
        .copied()
        .find(|r| r.0 == q)
        .unwrap_or(RANGES[0])
}

pub(crate) async fn show(
    State(st): State<Console>,
    ui: Ui,
    Path(name): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    let k = st.svc.describe_key(&ui.caller, &name).await?;
    let t = now();
    let can_manage = st.svc.may(&ui.caller, Operation::Manage, Some(&k.name));
    let (rq, _, _, _) = range(&q.range);
    let flash = match q.msg.as_str() {
        "created" => Some("Key created."),
        "rotated" => Some("Key rotated: new data keys use the new version."),
        "disabled" => Some("Key disabled: every operation with it is refused until it is enabled."),
        "enabled" => Some("Key enabled."),
        "deletion" => Some("Deletion scheduled."),
        "destroyed" => Some("Key destroyed: every version's material is erased."),
        "cancelled" => Some("Deletion cancelled; the key is disabled until enabled."),
        _ => None,
    };
    let (activity, indexing) = {
        let ix = st.index.read();
        (
            activity_markup(ix.key(&k.name), t, &q.range),
            layout::catching_up(&ix),
        )
    };
    let enc = urlencode(&k.name);
    let action = |a: &str| format!("/ui/keys/{enc}/{a}");
    let no_manage = html! {
        p class="help" id="no-manage" { "Your token's policies do not allow " code { "manage" } " on this key." }
    };
    let body = html! {
        @if let Some(f) = flash { p class="note" role="status" { (f) } }
        dl class="facts" {
            dt { "State" } dd { (state_badge(k.state)) }
            dt { "Type" } dd { (k.key_type.as_str()) " · " (k.usage.as_str()) }
            dt { "Id" } dd { code { (k.id.to_hex()) } }
            @if !k.description.is_empty() { dt { "Description" } dd { (k.description) } }
            dt { "Created" } dd { (utc(k.created_at)) }
            dt { "Current version" } dd { (k.current_version()) ", " (rotation_cell(&k, t)) }
            @if let Some(d) = k.deletion_date { dt { "Deletion date" } dd { (utc(d)) } }
        }
        section aria-labelledby="actions-h" class="actions" {
            h2 id="actions-h" { "Actions" }
            @if !can_manage { (no_manage) }
            @if k.state != KeyState::Destroyed {
                div class="buttons" {
                    @if k.state == KeyState::Enabled {
                        details class="confirm danger" {
                            summary { "Disable (kill switch)…" }
                            form method="post" action=(action("disable")) {
                                (csrf_field(&ui))
                                p { "Every operation with " strong { (k.name) } " will be refused at once, on every node, until it is enabled again." }
                                button type="submit" class="danger" id="confirm-disable" disabled[!can_manage] aria-describedby=[(!can_manage).then_some("no-manage")] { "Disable " (k.name) " now" }
                            }
                        }
                    }
                    @if k.state == KeyState::Disabled {
                        details class="confirm" {
                            summary { "Enable…" }
                            form method="post" action=(action("enable")) {
                                (csrf_field(&ui))
                                p { "Operations with " strong { (k.name) } " will be allowed again as policies say." }
                                button type="submit" id="confirm-enable" disabled[!can_manage] { "Enable " (k.name) }
                            }
                        }
                    }
                    @if k.state != KeyState::PendingDeletion {
                        details class="confirm" {
                            summary { "Rotate…" }
                            form method="post" action=(action("rotate")) {
                                (csrf_field(&ui))
                                p { "Adds version " (k.current_version() + 1) "; older versions keep decrypting." }
                                button type="submit" id="confirm-rotate" disabled[!can_manage] { "Rotate " (k.name) }
                            }
                        }
                        details class="confirm danger" {
                            summary { "Schedule deletion…" }
                            form method="post" action=(action("schedule-deletion")) {
                                (csrf_field(&ui))
                                p { "After the waiting period every version is erased and everything encrypted under this key becomes unreadable for good." }
                                label for="pending-days" { "Days to wait (7–30 is usual)" }
                                input id="pending-days" name="pending_days" type="number" min="0" max="365" value="30";
                                label for="confirm-name" { "Type the key name, " strong { (k.name) } ", to confirm" }
                                input id="confirm-name" name="confirm" autocomplete="off" required;
                                button type="submit" class="danger" id="confirm-delete" disabled[!can_manage] { "Schedule deletion" }
                            }
                        }
                    } @else {
                        form method="post" action=(action("cancel-deletion")) {
                            (csrf_field(&ui))
                            button type="submit" id="cancel-deletion" disabled[!can_manage] { "Cancel deletion" }
                        }
                    }
                }
            }
        }
        section aria-labelledby="versions-h" {
            h2 id="versions-h" { "Versions" }
            table class="versions" {
                thead { tr { th scope="col" { "Version" } th scope="col" { "Created" } } }
                tbody {
                    @for v in k.versions.iter().rev() {
                        tr { td { (v.version) } td { (utc(v.created_at)) } }
                    }
                }
            }
        }
        section aria-labelledby="use-h" {
            h2 id="use-h" { "Use" }
            (indexing)
            nav class="ranges" aria-label="Chart range" {
                @for (v, label, _, _) in RANGES {
                    @if v == rq {
                        a aria-current="true" href=(format!("?range={v}")) { (label) }
                    } @else {
                        a href=(format!("?range={v}")) { (label) }
                    }
                }
            }
            div id="activity" data-live=(format!("/ui/keys/{enc}/activity?range={rq}")) {
                (activity)
            }
        }
    };
    Ok(page(layout::shell(&ui, Nav::Keys, &k.name, body)))
}

/// The live part of the Key page: charts and the latest accesses. Refreshed every few
/// seconds by console.js; authorized on every refresh (recorded once, by the page view).
pub(crate) async fn activity(
    State(st): State<Console>,
    ui: Ui,
    Path(name): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    if !st.svc.may(&ui.caller, Operation::Describe, Some(&name)) {
        return Err(UiError::new(
            StatusCode::FORBIDDEN,
            format!("permission denied: describe on key {name}"),
        ));
    }
    let m = {
        let ix = st.index.read();
        activity_markup(ix.key(&name), now(), &q.range)
    };
    Ok(page(m))
}

fn activity_markup(act: Option<&KeyActivity>, t: i64, range_q: &str) -> Markup {
    let (_, label, n, per) = range(range_q);
    let empty = KeyActivity::default();
    let act = act.unwrap_or(&empty);
    let buckets = act.buckets(t, n, per);
    let mut ops = BTreeSet::new();
    let mut justs = BTreeSet::new();
    for b in &buckets {
        ops.extend(b.counts.by_operation.keys().cloned());
        justs.extend(b.counts.by_justification.keys().cloned());
    }
    let fmt_label = |s: i64| {
        jiff::Timestamp::from_second(s)
            .map(|ts| {
                if per >= 24 {
                    ts.strftime("%m-%d").to_string()
                } else {
                    ts.strftime("%m-%d %H:00").to_string()
                }
            })
            .unwrap_or_default()
    };
    let bars = |by_op: bool| -> Vec<Bar> {
        buckets
            .iter()
            .map(|b| Bar {
                label: fmt_label(b.start),
                parts: if by_op {
                    b.counts.by_operation.clone().into_iter().collect()
                } else {
                    b.counts.by_justification.clone().into_iter().collect()
                },
            })
            .collect()
    };
    let ops: Vec<String> = ops.into_iter().collect();
    let justs: Vec<String> = justs.into_iter().collect();
    let total: u64 = buckets.iter().map(|b| b.counts.total()).sum();
    let refused: u64 = buckets.iter().map(|b| b.counts.not_success).sum();
    html! {
        p class="summary" { (total) " uses in the last " (label) @if refused > 0 { ", " span class="warn" { (refused) " refused or failed" } } "." }
        div class="charts" {
            (charts::stacked_bars(&format!("Uses by operation, last {label}"), &bars(true), &ops))
            (charts::stacked_bars(&format!("Uses by justification, last {label}"), &bars(false), &justs))
        }
        h3 { "Latest accesses" }
        (access_table(act.recent.iter().rev().map(|a| &**a), true))
    }
}

/// A table of audit records (newest first).
pub(crate) fn access_table<'a>(rows: impl Iterator<Item = &'a Access>, hide_key: bool) -> Markup {
    html! {
        table class="accesses" {
            thead {
                tr {
                    th scope="col" { "#" }
                    th scope="col" { "Time" }
                    th scope="col" { "Operation" }
                    @if !hide_key { th scope="col" { "Key" } }
                    th scope="col" { "Principal" }
                    th scope="col" { "Source" }
                    th scope="col" { "Context" }
                    th scope="col" { "Justification" }
                    th scope="col" { "Outcome" }
                    th scope="col" { "Reason" }
                }
            }
            tbody {
                @for a in rows {
                    tr class=(format!("o-{}", a.outcome.as_str())) {
                        td { (a.seq) }
                        td { time datetime=(a.time) { (a.time.get(..19).unwrap_or(&a.time).replace('T', " ")) } }
                        td { (a.operation) }
                        @if !hide_key {
                            td { @if let Some(k) = &a.key { a href=(format!("/ui/keys/{}", urlencode(k))) { (k) } @if let Some(v) = a.key_version { " v" (v) } } }
                        }
                        td { (a.principal) }
                        td { (a.source.as_deref().unwrap_or("")) }
                        td class="ctx" { @for (k, v) in &a.context { span { (k) "=" (v) } " " } }
                        td { (a.justification.as_deref().unwrap_or("")) }
                        td { (layout::outcome_badge(a.outcome)) }
                        td class="reason" { (a.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct ActForm {
    csrf: String,
    confirm: String,
    pending_days: String,
}

/// A lifecycle button: rotate, disable, enable, schedule-deletion, cancel-deletion.
pub(crate) async fn act(
    State(st): State<Console>,
    ui: Ui,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    let c = &ui.caller;
    let msg = match action.as_str() {
        "rotate" => st.svc.rotate_key(c, &name).await.map(|_| "rotated")?,
        "disable" => st.svc.disable_key(c, &name).await.map(|_| "disabled")?,
        "enable" => st.svc.enable_key(c, &name).await.map(|_| "enabled")?,
        "cancel-deletion" => st
            .svc
            .cancel_deletion(c, &name)
            .await
            .map(|_| "cancelled")?,
        "schedule-deletion" => {
            if f.confirm != name {
                return Err(UiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Deletion not scheduled: type the key name {name:?} exactly to confirm."
                    ),
                ));
            }
            let days = match f.pending_days.trim() {
                "" => None,
                d => Some(d.parse::<u32>().map_err(|_| {
                    UiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("Deletion not scheduled: {d:?} is not a number of days."),
                    )
                })?),
            };
            let rec = st.svc.schedule_deletion(c, &name, days).await?;
            if rec.state == KeyState::Destroyed {
                "destroyed"
            } else {
                "deletion"
            }
        }
        _ => {
            return Err(UiError::new(
                StatusCode::NOT_FOUND,
                format!("There is no key action {action:?}."),
            ))
        }
    };
    Ok(Redirect::to(&format!("/ui/keys/{}?msg={msg}", urlencode(&name))).into_response())
}
