//! The page shell (navigation, sign-out, skip link) and the small pieces every page uses.

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};

use super::Ui;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Keys,
    Audit,
    Policies,
    Perimeter,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · kagi console" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// A signed-in page.
pub(crate) fn shell(ui: &Ui, nav: Nav, title: &str, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! {
            li {
                @if n == nav {
                    a href=(href) aria-current="page" { (label) }
                } @else {
                    a href=(href) { (label) }
                }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    span class="brand" title="鍵 (kagi): key" { "kagi" }
                    nav aria-label="Console" {
                        ul {
                            (item(Nav::Keys, "/ui/keys", "Keys"))
                            @if ui.may_audit { (item(Nav::Audit, "/ui/audit", "Audit")) }
                            (item(Nav::Policies, "/ui/policies", "Policies"))
                            @if ui.has_perimeter && ui.may_audit { (item(Nav::Perimeter, "/ui/perimeter", "Perimeter")) }
                        }
                    }
                    form class="signout" method="post" action="/ui/logout" {
                        (csrf_field(ui))
                        span class="who" title="Signed in as" { (ui.caller.principal) }
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field of every form.
pub(crate) fn csrf_field(ui: &Ui) -> Markup {
    html! { input type="hidden" name="csrf" value=(ui.session.csrf); }
}

/// The sign-in form, with a note (info) or an error.
pub(crate) fn login_page(note: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body class="login" {
                main id="main" {
                    h1 { "kagi console" }
                    @if let Some(n) = note { p class="note" role="status" { (n) } }
                    @if let Some(e) = error { p class="error" role="alert" id="login-error" { (e) } }
                    form method="post" action="/ui/login" {
                        label for="token" { "Token" }
                        input id="token" name="token" type="password" autocomplete="off" required
                            autofocus aria-describedby="token-help";
                        p id="token-help" class="help" {
                            "A kagi token (" code { "KAGI_TOKEN" } "). The console acts with exactly its policies."
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A page that only says something (errors).
pub(crate) fn message_page(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error"))
            body {
                main id="main" {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p class="error" role="alert" { (message) }
                    p { a href="/ui/keys" { "Back to the console" } }
                }
            }
        }
    }
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// How long ago, in words.
pub(crate) fn ago(now: i64, t: i64) -> String {
    let d = (now - t).max(0);
    match d {
        0..=59 => format!("{d} s ago"),
        60..=3599 => format!("{} min ago", d / 60),
        3600..=86_399 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// A duration in the largest fitting unit.
pub(crate) fn span(secs: i64) -> String {
    let d = secs.max(0);
    match d {
        0..=3599 => format!("{} min", d / 60),
        3600..=86_399 => format!("{} h", d / 3600),
        _ => format!("{} d", d / 86_400),
    }
}

/// An outcome badge.
pub(crate) fn outcome_badge(o: kagi_audit::Outcome) -> Markup {
    html! { span class=(format!("badge {}", o.as_str())) { (o.as_str()) } }
}

/// A note while the usage index is still reading the log (counts are partial until then).
pub(crate) fn catching_up(ix: &super::usage::UsageIndex) -> maud::Markup {
    html! {
        @if let Some((read, head)) = ix.catching_up() {
            p class="note" role="status" id="indexing" {
                @if head == 0 {
                    "Reading the audit log for the usage figures…"
                } @else {
                    "Reading the audit log for the usage figures: " (read) " of " (head) " records so far."
                }
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
