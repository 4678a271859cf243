//! The Policies page: every policy, an editor that validates before saving, and a dry run
//! ("would this request be allowed, and by which rule") against the text being edited.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use kagi_keys::policy::decide;
use kagi_keys::{AccessRequest, EncryptionContext, Justification, Operation, Policy};
use maud::{html, Markup};

use super::layout::{self, csrf_field, urlencode, Nav};
use super::{page, Console, Ui, UiError};
use crate::ServiceError;

/// A new policy's starting text.
const TEMPLATE: &str = r#"description = "What this policy is for"

[[rule]]
effect = "allow"
keys = ["app-*"]
operations = ["generate", "decrypt"]
"#;

pub(crate) async fn list(State(st): State<Console>, ui: Ui) -> Result<Response, UiError> {
    let pols = st.svc.list_policies(&ui.caller).await?;
    let body = html! {
        table class="policies" {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Rules" } th scope="col" { "Description" } } }
            tbody {
                @for (name, text) in &pols {
                    @let p = Policy::parse(text).ok();
                    tr {
                        th scope="row" { a href=(format!("/ui/policies/{}", urlencode(name))) { (name) } }
                        td { (p.as_ref().map_or(0, Policy::rule_count)) }
                        td { (p.as_ref().map_or("", |p| p.description.as_str())) }
                    }
                }
            }
        }
        @if pols.is_empty() { p class="muted" { "No policies yet." } }
        form method="post" action="/ui/policies" class="inline" {
            (csrf_field(&ui))
            label for="new-policy" { "New policy named" }
            input id="new-policy" name="name" required pattern="[A-Za-z0-9_.\\-]{1,128}";
            button type="submit" { "Write it" }
        }
    };
    Ok(page(layout::shell(&ui, Nav::Policies, "Policies", body)))
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct NewForm {
    csrf: String,
    name: String,
}

pub(crate) async fn create(ui: Ui, Form(f): Form<NewForm>) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    Ok(Redirect::to(&format!("/ui/policies/{}?new=1", urlencode(f.name.trim()))).into_response())
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct ShowQuery {
    new: String,
    msg: String,
}

pub(crate) async fn show(
    State(st): State<Console>,
    ui: Ui,
    Path(name): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    let text = match st.svc.read_policy(&ui.caller, &name).await {
        Ok(t) => t,
        Err(ServiceError::NotFound(_)) if !q.new.is_empty() => TEMPLATE.to_string(),
        Err(e) => return Err(e.into()),
    };
    let note = match q.msg.as_str() {
        "saved" => Some("Saved."),
        _ => None,
    };
    Ok(editor(&ui, &name, &text, note, None, &DryRun::default()))
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct EditForm {
    csrf: String,
    text: String,
    #[serde(flatten)]
    dry: DryRun,
}

/// The dry-run request's fields.
#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct DryRun {
    operation: String,
    key: String,
    context: String,
    justification: String,
    source: String,
}

/// The result box: (allowed, sentence).
type Outcome = (bool, String);

fn editor(
    ui: &Ui,
    name: &str,
    text: &str,
    note: Option<&str>,
    result: Option<(StatusCode, Outcome)>,
    dry: &DryRun,
) -> Response {
    let status = result.as_ref().map_or(StatusCode::OK, |r| r.0);
    let enc = urlencode(name);
    let body: Markup = html! {
        @if let Some(n) = note { p class="note" role="status" { (n) } }
        @if let Some((_, (ok, msg))) = &result {
            p class=(if *ok { "ok" } else { "error" }) role="alert" id="policy-result" { (msg) }
        }
        form method="post" action=(format!("/ui/policies/{enc}")) class="editor" {
            (csrf_field(ui))
            label for="policy-text" { "Policy (TOML; see docs/policy.md)" }
            textarea id="policy-text" name="text" rows="18" spellcheck="false" { (text) }
            div class="buttons" { button type="submit" id="save-policy" { "Validate and save" } }
            fieldset class="dry-run" {
                legend { "Dry run: would this request be allowed by the text above?" }
                label for="dr-op" { "Operation" }
                select id="dr-op" name="operation" {
                    @for o in Operation::ALL {
                        option value=(o.as_str()) selected[dry.operation == o.as_str()] { (o.as_str()) }
                    }
                }
                label for="dr-key" { "Key" }
                input id="dr-key" name="key" value=(dry.key);
                label for="dr-ctx" { "Context (one key=value per line)" }
                textarea id="dr-ctx" name="context" rows="2" { (dry.context) }
                label for="dr-just" { "Justification" }
                select id="dr-just" name="justification" {
                    option value="" selected[dry.justification.is_empty()] { "none" }
                    @for j in Justification::ALL {
                        option value=(j.as_str()) selected[dry.justification == j.as_str()] { (j.as_str()) }
                    }
                }
                label for="dr-src" { "Source address" }
                input id="dr-src" name="source" value=(dry.source) placeholder="10.0.0.5";
                button type="submit" formaction=(format!("/ui/policies/{enc}/dry-run")) id="dry-run" { "Dry run (does not save)" }
            }
        }
        details class="confirm danger" {
            summary { "Delete policy…" }
            form method="post" action=(format!("/ui/policies/{enc}/delete")) {
                (csrf_field(ui))
                p { "Tokens that carry " strong { (name) } " lose what it allowed." }
                button type="submit" class="danger" { "Delete " (name) }
            }
        }
    };
    (
        status,
        page(layout::shell(
            ui,
            Nav::Policies,
            &format!("Policy {name}"),
            body,
        )),
    )
        .into_response()
}

pub(crate) async fn save(
    State(st): State<Console>,
    ui: Ui,
    Path(name): Path<String>,
    Form(f): Form<EditForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    match st.svc.write_policy(&ui.caller, &name, &f.text).await {
        Ok(_) => Ok(
            Redirect::to(&format!("/ui/policies/{}?msg=saved", urlencode(&name))).into_response(),
        ),
        // Invalid text stays in the editor with the reason.
        Err(ServiceError::BadRequest(m)) => Ok(editor(
            &ui,
            &name,
            &f.text,
            None,
            Some((StatusCode::BAD_REQUEST, (false, format!("Not saved: {m}")))),
            &f.dry,
        )),
        Err(e) => Err(e.into()),
    }
}

/// Evaluates the dry-run request against `text` alone.
fn evaluate(text: &str, d: &DryRun) -> Result<Outcome, String> {
    let policy = Policy::parse(text).map_err(|e| format!("The policy is not valid: {e}"))?;
    let op: Operation = d
        .operation
        .parse()
        .map_err(|_| format!("unknown operation {:?}", d.operation))?;
    let lines: Vec<&str> = d
        .context
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let ctx = EncryptionContext::from_kv_args(&lines).map_err(|e| e.to_string())?;
    let just = match d.justification.as_str() {
        "" => None,
        j => Some(
            j.parse::<Justification>()
                .map_err(|_| format!("unknown justification {j:?}"))?,
        ),
    };
    let source = match d.source.trim() {
        "" => None,
        s => Some(
            s.parse()
                .map_err(|_| format!("{s:?} is not an IP address"))?,
        ),
    };
    let key = d.key.trim();
    let req = AccessRequest {
        operation: op,
        key: (!key.is_empty()).then_some(key),
        context: &ctx,
        justification: just,
        source,
        now: jiff::Timestamp::now(),
    };
    let dec = decide([("this", &policy)], &req);
    let what = if key.is_empty() {
        op.as_str().to_string()
    } else {
        format!("{} on key {key}", op.as_str())
    };
    Ok(if dec.allowed {
        (true, format!("Allowed: {what} ({}).", dec.reason()))
    } else {
        (false, format!("Denied: {what} ({}).", dec.reason()))
    })
}

pub(crate) async fn dry_run(
    ui: Ui,
    Path(name): Path<String>,
    Form(f): Form<EditForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    let r = match evaluate(&f.text, &f.dry) {
        Ok(o) => (StatusCode::OK, o),
        Err(m) => (StatusCode::BAD_REQUEST, (false, m)),
    };
    Ok(editor(&ui, &name, &f.text, None, Some(r), &f.dry))
}

pub(crate) async fn delete(
    State(st): State<Console>,
    ui: Ui,
    Path(name): Path<String>,
    Form(f): Form<super::CsrfForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    st.svc.delete_policy(&ui.caller, &name).await?;
    Ok(Redirect::to("/ui/policies").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dry(op: &str, key: &str, just: &str) -> DryRun {
        DryRun {
            operation: op.into(),
            key: key.into(),
            justification: just.into(),
            ..DryRun::default()
        }
    }

    #[test]
    fn the_template_is_a_valid_policy() {
        assert!(Policy::parse(TEMPLATE).is_ok());
    }

    #[test]
    fn dry_run_names_the_deciding_rule() {
        let text = r#"
[[rule]]
effect = "allow"
operations = ["decrypt"]
keys = ["app-*"]

[[rule]]
effect = "deny"
operations = ["decrypt"]
keys = ["app-*"]
[rule.when]
justifications = ["THIRD_PARTY_DATA_REQUEST"]
"#;
        let (ok, m) = evaluate(text, &dry("decrypt", "app-1", "")).expect("valid");
        assert!(ok, "{m}");
        assert!(m.contains("rule 1"), "{m}");
        let (ok, m) =
            evaluate(text, &dry("decrypt", "app-1", "THIRD_PARTY_DATA_REQUEST")).expect("valid");
        assert!(!ok && m.contains("rule 2"), "{m}");
        let (ok, _) = evaluate(text, &dry("generate", "app-1", "")).expect("valid");
        assert!(!ok);
        assert!(evaluate("rules = 3", &dry("decrypt", "k", "")).is_err());
    }
}
