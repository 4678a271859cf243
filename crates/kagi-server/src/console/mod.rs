//! The custodian console at `/ui`: server-rendered HTML pages over the same
//! [`KeyService`](crate::service::KeyService) the API uses, so every action is checked by the
//! signed-in token's policies and recorded in the audit log exactly like the CLI's.
//!
//! Security: sessions in HttpOnly, SameSite=Strict cookies ([`session`]); a per-session CSRF
//! token in every form, checked on every POST; a strict Content-Security-Policy (scripts and
//! styles only from `/ui/assets`, no inline script or style) and `frame-ancestors 'none'` on
//! every response; nothing secret is rendered. Usage charts come from [`usage`], which the
//! [`indexer`] keeps up to date from the audit store, so no page reads the whole log.

mod audit_page;
pub mod charts;
mod indexer;
mod key_page;
mod keys_page;
mod layout;
mod perimeter_page;
mod policies_page;
pub mod session;
pub mod usage;

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;

use crate::api::{AppState, ConnInfo};
use crate::service::Caller;
use crate::ServiceError;
use session::{Session, Sessions};

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console shows besides the key service (`[console]` in the server config).
#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    /// The perimeter, when kagi's controller runs beside the key service.
    pub perimeter: Option<PerimeterSource>,
}

/// Where the Perimeter page reads from.
#[derive(Debug, Clone)]
pub struct PerimeterSource {
    /// The controller's state: a SQLite file or a `postgres://` URL.
    pub state: String,
    /// Perimeter audit chains (SQLite files).
    pub audit: Vec<std::path::PathBuf>,
}

/// What the console's handlers share.
#[derive(Clone)]
pub(crate) struct Console {
    svc: AppState,
    sessions: Arc<Sessions>,
    index: Arc<indexer::Index>,
    perimeter: Option<Arc<perimeter_page::Perimeter>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// The console's routes, to be nested at `/ui`.
pub fn router(svc: AppState, opts: ConsoleOptions) -> Router {
    let index = Arc::new(indexer::Index::new(svc.audit().store().clone()));
    let state = Console {
        svc,
        sessions: Arc::new(Sessions::default()),
        index,
        perimeter: opts
            .perimeter
            .map(|p| Arc::new(perimeter_page::Perimeter::new(p))),
    };
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .route("/keys", get(keys_page::list).post(keys_page::create))
        .route("/keys/{name}", get(key_page::show))
        .route("/keys/{name}/activity", get(key_page::activity))
        .route("/keys/{name}/{action}", post(key_page::act))
        .route("/audit", get(audit_page::show))
        .route("/audit/rows", get(audit_page::rows))
        .route(
            "/policies",
            get(policies_page::list).post(policies_page::create),
        )
        .route(
            "/policies/{name}",
            get(policies_page::show).post(policies_page::save),
        )
        .route("/policies/{name}/dry-run", post(policies_page::dry_run))
        .route("/policies/{name}/delete", post(policies_page::delete))
        .route("/perimeter", get(perimeter_page::show))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state)
}

/// `Server-Timing: app;dur=MS`: how long the server took for a page (what
/// `scripts/bench-console` measures).
async fn server_timing(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let t = std::time::Instant::now();
    let mut r = next.run(req).await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// An error page (or, for a live fragment, a bare status).
#[derive(Debug)]
pub(crate) struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        )
    }
}

impl From<ServiceError> for UiError {
    fn from(e: ServiceError) -> Self {
        let api = crate::api::ApiError::from(e);
        Self::new(api.status, api.message)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = layout::message_page(self.status, &self.message);
        (self.status, page(body)).into_response()
    }
}

/// A signed-in request: the caller established from the session's token, as the API does
/// for a bearer token.
pub(crate) struct Ui {
    caller: Caller,
    session: Arc<Session>,
    cookie: String,
    /// Whether the Perimeter page exists (for the navigation).
    has_perimeter: bool,
    /// Whether the token may read the audit log (the navigation offers only what works).
    may_audit: bool,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("principal", &self.caller.principal)
            .finish_non_exhaustive()
    }
}

/// What a request without a usable session gets: pages go to the login form, live
/// fragments get 401 (the script then reloads into the login form).
#[derive(Debug)]
pub(crate) enum NoSession {
    Login(&'static str),
    Unauthorized,
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login(why) => Redirect::to(&format!("/ui/login?why={why}")).into_response(),
            NoSession::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "the console session ended: sign in again",
            )
                .into_response(),
        }
    }
}

fn source_of(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ConnInfo>().map(|c| c.peer.ip())
}

fn is_tls(parts: &Parts) -> bool {
    parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls)
}

fn request_id() -> String {
    format!("ui-{}", crate::service::new_request_id())
}

impl FromRequestParts<Console> for Ui {
    type Rejection = NoSession;
    async fn from_request_parts(parts: &mut Parts, st: &Console) -> Result<Self, NoSession> {
        // Live fragments are fetched by console.js, which marks them.
        let live = parts.headers.contains_key("x-kagi-live");
        let none = |why| {
            if live {
                NoSession::Unauthorized
            } else {
                NoSession::Login(why)
            }
        };
        let cookie = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(session::cookie_value)
            .ok_or_else(|| none("signin"))?;
        let session = st
            .sessions
            .get(cookie, now())
            .ok_or_else(|| none("expired"))?;
        match st
            .svc
            .authenticate(Some(session.token()), None, source_of(parts), request_id())
            .await
        {
            Ok(caller) => Ok(Ui {
                session,
                cookie: cookie.to_string(),
                has_perimeter: st.perimeter.is_some(),
                may_audit: st.svc.may(&caller, kagi_keys::Operation::Audit, None),
                caller,
            }),
            Err(_) => {
                st.sessions.remove(cookie);
                Err(none("revoked"))
            }
        }
    }
}

impl Ui {
    /// Refuses a state-changing request whose form does not carry this session's token.
    fn check_csrf(&self, presented: &str) -> Result<(), UiError> {
        if self.session.csrf_ok(presented) {
            Ok(())
        } else {
            Err(UiError::csrf())
        }
    }
}

/// A rendered page with its status.
fn page(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

async fn home(ui: Result<Ui, NoSession>) -> Response {
    match ui {
        Ok(_) => Redirect::to("/ui/keys").into_response(),
        Err(_) => Redirect::to("/ui/login").into_response(),
    }
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
struct LoginQuery {
    why: String,
}

async fn login_page(axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    let note = match q.why.as_str() {
        "expired" => Some("Your session ended. Sign in again."),
        "revoked" => Some("Your token is no longer valid (revoked or expired). Sign in again."),
        "signin" => Some("Sign in to use the console."),
        "out" => Some("Signed out."),
        _ => None,
    };
    page(layout::login_page(note, None))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    token: zeroize::Zeroizing<String>,
}

/// Whether a sign-in comes from the console's own page: a browser says where a POST comes
/// from in `Sec-Fetch-Site` (modern browsers) or `Origin`. The login form has no session yet,
/// so it cannot carry a CSRF token; a request with neither header is not from a browser and
/// is allowed (the pinned contract: `POST /ui/login` with the field `token`).
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = get(header::ORIGIN.as_str()) else {
        return true;
    };
    let host = get(header::HOST.as_str()).unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, h)| !host.is_empty() && h == host)
}

/// The connection's address and whether it is TLS (never fails).
pub(crate) struct Conn {
    source: Option<std::net::IpAddr>,
    tls: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Conn {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Conn {
            source: source_of(parts),
            tls: is_tls(parts),
        })
    }
}

async fn login(
    State(st): State<Console>,
    conn: Conn,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let refuse = |status: StatusCode, msg: &str| {
        (status, page(layout::login_page(None, Some(msg)))).into_response()
    };
    if !same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Sign-in refused: the form was sent from another site.",
        );
    }
    let token = f.token.trim();
    if token.is_empty() {
        return refuse(StatusCode::UNAUTHORIZED, "Enter a kagi token to sign in.");
    }
    let caller = match st
        .svc
        .authenticate(Some(token), None, conn.source, request_id())
        .await
    {
        Ok(c) => c,
        Err(ServiceError::Unauthenticated(m)) => {
            return refuse(StatusCode::UNAUTHORIZED, &format!("Sign-in refused: {m}."))
        }
        Err(e) => return UiError::from(e).into_response(),
    };
    let t = now();
    let expires = session::session_expiry(t, caller.expires_at);
    let (id, _) = st.sessions.create(token, expires, t);
    // No record, no session: the audit rule holds for the console too.
    if let Err(e) = st
        .svc
        .record_action(&caller, "console.login", "signed in to the console".into())
        .await
    {
        st.sessions.remove(&id);
        return UiError::from(e).into_response();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                session::set_cookie(&id, expires - t, conn.tls),
            ),
            (header::LOCATION, "/ui/keys".to_string()),
        ],
    )
        .into_response()
}

/// A form that carries only the CSRF token.
#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(st): State<Console>,
    conn: Conn,
    ui: Ui,
    Form(f): Form<CsrfForm>,
) -> Result<Response, UiError> {
    ui.check_csrf(&f.csrf)?;
    st.svc
        .record_action(
            &ui.caller,
            "console.logout",
            "signed out of the console".into(),
        )
        .await?;
    st.sessions.remove(&ui.cookie);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::clear_cookie(conn.tls)),
            (header::LOCATION, "/ui/login?why=out".to_string()),
        ],
    )
        .into_response())
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/console.js"),
    )
        .into_response()
}

async fn not_found() -> UiError {
    UiError::new(StatusCode::NOT_FOUND, "There is no such console page.")
}
