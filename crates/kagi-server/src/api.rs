//! The native HTTP API under `/v1`: JSON in, JSON out, one handler per operation, each a
//! thin translation onto [`KeyService`]. Every error is `{"error": sentence, "code": code}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kagi_keys::{EncryptionContext, Justification, KeyRecord, KeyType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::{Caller, DataKeySpec, KeyService, SealStatus};
use crate::ServiceError;

/// Largest request body accepted (a batch of 1000 blobs fits easily).
pub const MAX_BODY: usize = 1 << 20;
/// Largest backup `POST /v1/sys/restore` accepts.
pub const MAX_BACKUP: usize = 512 << 20;

/// Per-connection facts the listener attaches to every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The verified client certificate's subject CN, if the client sent one.
    pub cert_cn: Option<String>,
    /// Whether the connection is TLS (the console marks its cookie `Secure` then).
    pub tls: bool,
}

/// Shared state of the HTTP front-end.
pub type AppState = Arc<KeyService>;

// ------------------------------------------------------------------ errors and extractors

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// One sentence saying what was wrong.
    pub error: String,
    /// Machine-readable code.
    pub code: String,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: self.code.to_string(),
            }),
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// `Json<T>` whose rejections are JSON errors with one clear sentence.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(match rej {
                JsonRejection::MissingJsonContentType(_) => ApiError {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    code: "unsupported_media_type",
                    message: "the request body must be JSON with `Content-Type: application/json`"
                        .into(),
                },
                JsonRejection::JsonSyntaxError(e) => ApiError::bad(format!(
                    "the request body is not valid JSON: {}",
                    e.body_text()
                )),
                JsonRejection::JsonDataError(e) => ApiError::bad(format!(
                    "the request body does not have the expected fields: {}",
                    e.body_text()
                )),
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        code: "too_large",
                        message: format!("the request body is larger than {MAX_BODY} bytes"),
                    }
                }
                other => ApiError {
                    status: other.status(),
                    code: "bad_request",
                    message: other.body_text(),
                },
            }),
        }
    }
}

/// `Path<T>` with JSON rejections.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad(format!("bad path: {}", e.body_text())))
    }
}

/// `Query<T>` with JSON rejections.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiQuery(p.0))
            .map_err(|e| ApiError::bad(format!("bad query string: {}", e.body_text())))
    }
}

/// The caller behind a request: authenticated by bearer token or client certificate.
#[derive(Debug)]
pub struct Authed(pub Caller);

fn request_meta(parts: &Parts) -> (Option<std::net::IpAddr>, String) {
    let source = parts.extensions.get::<ConnInfo>().map(|c| c.peer.ip());
    let rid = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(crate::service::new_request_id);
    (source, rid)
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        svc: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (source, rid) = request_meta(parts);
        let token = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let s = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(str::trim);
                match s {
                    Some(t) if !t.is_empty() => Some(t.to_string()),
                    _ => {
                        return Err(ApiError {
                            status: StatusCode::UNAUTHORIZED,
                            code: "unauthenticated",
                            message: "the Authorization header must be `Bearer TOKEN`".into(),
                        })
                    }
                }
            }
        };
        let cn = parts
            .extensions
            .get::<ConnInfo>()
            .and_then(|c| c.cert_cn.clone());
        Ok(Authed(
            svc.authenticate(token.as_deref(), cn.as_deref(), source, rid)
                .await?,
        ))
    }
}

/// A caller that need not authenticate (init, unseal).
#[derive(Debug)]
pub struct Anonymous(pub Caller);

impl FromRequestParts<AppState> for Anonymous {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let (source, rid) = request_meta(parts);
        Ok(Anonymous(Caller::anonymous(source, rid)))
    }
}

fn parse_context(ctx: Option<BTreeMap<String, String>>) -> Result<EncryptionContext, ApiError> {
    EncryptionContext::new(ctx.unwrap_or_default()).map_err(|e| ApiError::bad(e.to_string()))
}

fn parse_justification(j: Option<String>) -> Result<Option<Justification>, ApiError> {
    j.map(|s| s.parse::<Justification>())
        .transpose()
        .map_err(|e| ApiError::bad(format!("{e}: use one of the Key Access Justifications codes (e.g. CUSTOMER_INITIATED_ACCESS)")))
}

fn decode_b64(what: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(s.trim())
        .map_err(|_| ApiError::bad(format!("{what} is not valid base64")))
}

fn ts(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ types

/// Health.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Initialized.
    pub initialized: bool,
    /// Sealed.
    pub sealed: bool,
    /// False while the audit log cannot write (key operations are refused then).
    pub audit_writable: bool,
    /// The key store answers (a PostgreSQL outage shows here).
    pub storage_reachable: bool,
    /// Liveness: the process serves requests (always true when it answers).
    pub live: bool,
    /// Readiness: initialized, unsealed, storage reachable and audit writable — route key
    /// traffic here. `GET /v1/health/ready` answers 503 when this is false.
    pub ready: bool,
}

/// `POST /v1/sys/init`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Shares to make (1-255); required for Shamir sealing, ignored with an HSM.
    #[serde(default)]
    pub shares: Option<u8>,
    /// Shares needed to unseal (1-shares); required for Shamir sealing, ignored with an HSM.
    #[serde(default)]
    pub threshold: Option<u8>,
}

/// Init result: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct InitResponse {
    /// Unseal shares, base64.
    pub shares: Vec<String>,
    /// Shares needed (0 with an HSM: it unseals by itself).
    pub threshold: u8,
    /// The root token.
    pub root_token: String,
}

/// `POST /v1/sys/unseal`.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One share, base64.
    pub share: Option<String>,
    /// Discard shares given so far.
    #[serde(default)]
    pub reset: bool,
}

/// One version of a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    /// Version number.
    pub version: u32,
    /// RFC 3339.
    pub created_at: String,
}

/// Key metadata (never material).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Name.
    pub name: String,
    /// Immutable id (hex), carried in every blob.
    pub id: String,
    /// `aes256-gcm` or `fpe`.
    pub key_type: String,
    /// `encrypt-decrypt`, `encrypt` or `decrypt`.
    pub usage: String,
    /// `enabled`, `disabled`, `pending_deletion`, `destroyed`.
    pub state: String,
    /// Description.
    pub description: String,
    /// Newest version.
    pub current_version: u32,
    /// All versions.
    pub versions: Vec<VersionView>,
    /// RFC 3339.
    pub created_at: String,
    /// e.g. `30d`.
    pub rotation_period: Option<String>,
    /// When automatic rotation is next due.
    pub next_rotation: Option<String>,
    /// When a pending deletion completes.
    pub deletion_date: Option<String>,
    /// When the material was erased.
    pub destroyed_at: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        Self {
            name: k.name.clone(),
            id: k.id.to_hex(),
            key_type: k.key_type.as_str().into(),
            usage: k.usage.as_str().into(),
            state: k.state.as_str().into(),
            description: k.description.clone(),
            current_version: k.current_version(),
            versions: k
                .versions
                .iter()
                .map(|v| VersionView {
                    version: v.version,
                    created_at: ts(v.created_at),
                })
                .collect(),
            created_at: ts(k.created_at),
            rotation_period: k
                .rotation_period_secs
                .map(kagi_keys::duration::format_seconds),
            next_rotation: k
                .rotation_period_secs
                .filter(|_| k.state == kagi_keys::KeyState::Enabled)
                .map(|p| ts(k.current_version_created().saturating_add(p as i64))),
            deletion_date: k.deletion_date.map(ts),
            destroyed_at: k.destroyed_at.map(ts),
        }
    }
}

/// Key list.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Keys the caller may describe, by name.
    pub keys: Vec<KeyView>,
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// 1-128 of `A-Z a-z 0-9 . _ - /`.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Automatic rotation, e.g. `90d`.
    pub rotation_period: Option<String>,
    /// `aes256-gcm` (default) or `fpe`.
    pub key_type: Option<String>,
    /// `encrypt-decrypt` (default), `encrypt` or `decrypt`.
    pub usage: Option<String>,
}

/// `POST /v1/keys/{name}/schedule-deletion`.
#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletionRequest {
    /// Days until destruction (default 30; 0 only on dev or with `allow_immediate_deletion`).
    pub pending_days: Option<u32>,
}

/// `POST /v1/datakey/generate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// KEK name.
    pub key: String,
    /// Encryption context, required again to decrypt.
    pub context: Option<BTreeMap<String, String>>,
    /// Key Access Justification code.
    pub justification: Option<String>,
    /// Return the plaintext too (default true).
    pub plaintext: Option<bool>,
    /// DEK length, 16-64 (default 32).
    pub bytes: Option<u32>,
}

/// A new data key.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateResponse {
    /// KEK name.
    pub key: String,
    /// KEK version.
    pub key_version: u32,
    /// The DEK, base64; absent with `plaintext: false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<String>,
    /// The wrapped DEK, base64. Store it beside the data.
    pub ciphertext: String,
}

/// `POST /v1/datakey/generate-batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBatchRequest {
    /// KEK name.
    pub key: String,
    /// How many (1-1000).
    pub count: u32,
    /// Encryption context.
    pub context: Option<BTreeMap<String, String>>,
    /// Justification.
    pub justification: Option<String>,
    /// Return plaintexts (default true).
    pub plaintext: Option<bool>,
    /// DEK length, 16-64 (default 32).
    pub bytes: Option<u32>,
}

/// Batch of data keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateBatchResponse {
    /// The keys, in order.
    pub data_keys: Vec<GenerateResponse>,
}

/// `POST /v1/datakey/decrypt` and `/v1/decrypt`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptRequest {
    /// The blob, base64.
    pub ciphertext: String,
    /// The context it was made with.
    pub context: Option<BTreeMap<String, String>>,
    /// Justification.
    pub justification: Option<String>,
}

/// Decrypted.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecryptResponse {
    /// KEK name (from the blob).
    pub key: String,
    /// KEK version.
    pub key_version: u32,
    /// Base64.
    pub plaintext: String,
}

/// One item of a decrypt batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptItem {
    /// The blob, base64.
    pub ciphertext: String,
    /// Its context.
    pub context: Option<BTreeMap<String, String>>,
}

/// `POST /v1/datakey/decrypt-batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptBatchRequest {
    /// 1-1000 items.
    pub items: Vec<DecryptItem>,
    /// Justification for all.
    pub justification: Option<String>,
}

/// One result of a decrypt batch: either plaintext or error.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecryptResult {
    /// KEK name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// KEK version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    /// Base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<String>,
    /// Why this item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Batch results, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecryptBatchResponse {
    /// One per item.
    pub results: Vec<DecryptResult>,
}

/// `POST /v1/datakey/reencrypt`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReencryptRequest {
    /// The blob, base64.
    pub ciphertext: String,
    /// Its context.
    pub context: Option<BTreeMap<String, String>>,
    /// Destination key (default: the blob's own key, newest version).
    pub to_key: Option<String>,
    /// Destination context (default: the same context).
    pub to_context: Option<BTreeMap<String, String>>,
    /// Justification.
    pub justification: Option<String>,
}

/// Re-encrypted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReencryptResponse {
    /// Destination key.
    pub key: String,
    /// Destination version.
    pub key_version: u32,
    /// New blob, base64.
    pub ciphertext: String,
    /// Source key.
    pub source_key: String,
    /// Source version.
    pub source_key_version: u32,
}

/// `POST /v1/encrypt`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EncryptRequest {
    /// KEK name.
    pub key: String,
    /// Base64, at most 4096 bytes decoded.
    pub plaintext: String,
    /// Context.
    pub context: Option<BTreeMap<String, String>>,
    /// Justification.
    pub justification: Option<String>,
}

/// Encrypted.
#[derive(Debug, Serialize, ToSchema)]
pub struct EncryptResponse {
    /// KEK name.
    pub key: String,
    /// KEK version.
    pub key_version: u32,
    /// Blob, base64.
    pub ciphertext: String,
}

/// `PUT /v1/policies/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyWrite {
    /// The TOML policy document.
    pub policy: String,
}

/// A policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// Name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Number of rules.
    pub rules: usize,
    /// The TOML document.
    pub policy: String,
}

/// Policies.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyList {
    /// By name.
    pub policies: Vec<PolicyView>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// Policies (at least one).
    pub policies: Vec<String>,
    /// Lifetime, e.g. `24h`.
    pub ttl: Option<String>,
}

/// A new token: shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    /// The token.
    pub token: String,
    /// Its public accessor.
    pub accessor: String,
    /// Policies.
    pub policies: Vec<String>,
    /// RFC 3339, or null for no expiry.
    pub expires_at: Option<String>,
}

/// `POST /v1/tokens/revoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoke {
    /// The token to revoke.
    pub token: String,
}

/// Done.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// True.
    pub ok: bool,
}

/// The caller's own token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenSelf {
    /// Principal as audited.
    pub principal: String,
    /// Root?
    pub root: bool,
    /// Policies.
    pub policies: Vec<String>,
}

/// `GET /v1/audit/records` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// First sequence number (default 1).
    pub from: Option<u64>,
    /// At most this many (default 1000, max 10000).
    pub limit: Option<u32>,
}

/// `GET /v1/audit/tail` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TailQuery {
    /// Newest N records (default 20, max 10000).
    pub n: Option<u32>,
}

/// Audit records, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecords {
    /// Records exactly as stored (see docs/audit.md).
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
    /// The `from` of the next page, if there may be more.
    pub next: Option<u64>,
}

/// Result of verifying the stored chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    /// True when the whole chain and every checkpoint verified.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Last good sequence number.
    pub last_seq: u64,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// Public key of the checkpoint signatures (hex).
    pub checkpoint_key: Option<String>,
    /// The first bad record.
    pub bad_seq: Option<u64>,
    /// What is wrong with it.
    pub reason: Option<String>,
}

// ------------------------------------------------------------------ handlers

async fn health_now(svc: &AppState) -> Result<Health, ApiError> {
    let s = svc.status()?;
    let audit_writable = !svc
        .audit()
        .stats()
        .failing
        .load(std::sync::atomic::Ordering::Relaxed);
    let storage_reachable = svc.storage_reachable().await;
    Ok(Health {
        status: "ok".into(),
        initialized: s.initialized,
        sealed: s.sealed,
        audit_writable,
        storage_reachable,
        live: true,
        ready: s.initialized && !s.sealed && audit_writable && storage_reachable,
    })
}

#[utoipa::path(get, path = "/v1/health", tag = "sys", responses((status = 200, body = Health)))]
async fn health(State(svc): State<AppState>) -> ApiResult<Health> {
    Ok(Json(health_now(&svc).await?))
}

/// Liveness for orchestrators: 200 whenever the process serves requests.
#[utoipa::path(get, path = "/v1/health/live", tag = "sys", responses((status = 200, body = Health)))]
async fn health_live(State(svc): State<AppState>) -> ApiResult<Health> {
    Ok(Json(health_now(&svc).await?))
}

/// Readiness for load balancers: 200 when this node can serve key operations, else 503 with
/// the same body.
#[utoipa::path(get, path = "/v1/health/ready", tag = "sys",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health_ready(
    State(svc): State<AppState>,
) -> Result<(axum::http::StatusCode, Json<Health>), ApiError> {
    let h = health_now(&svc).await?;
    let code = if h.ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(h)))
}

/// `POST /v1/sys/migrate-seal`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateSealRequest {
    /// `pkcs11` (the configured HSM key) or `shamir` (a new split key).
    pub to: String,
    /// Shares to make (to = shamir).
    #[serde(default)]
    pub shares: Option<u8>,
    /// Shares needed to unseal (to = shamir).
    #[serde(default)]
    pub threshold: Option<u8>,
}

/// Migration result: the new shares (Shamir) are shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrateSealResponse {
    /// New unseal shares, base64 (empty for pkcs11).
    pub shares: Vec<String>,
    /// The seal status after the switch.
    pub status: SealStatus,
}

/// Re-wraps every key under a new master key and switches to it.
#[utoipa::path(post, path = "/v1/sys/migrate-seal", tag = "sys", security(("token" = [])), request_body = MigrateSealRequest,
    responses((status = 200, body = MigrateSealResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_migrate_seal(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<MigrateSealRequest>,
) -> ApiResult<MigrateSealResponse> {
    let (shares, status) = svc.migrate_seal(&c, &r.to, r.shares, r.threshold).await?;
    Ok(Json(MigrateSealResponse {
        shares: shares.iter().map(|s| B64.encode(s.expose())).collect(),
        status,
    }))
}

/// A consistent, integrity-protected snapshot of the key store (key material stays wrapped).
#[utoipa::path(get, path = "/v1/sys/backup", tag = "sys", security(("token" = [])),
    responses((status = 200, body = crate::backup::Backup), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_backup(
    State(svc): State<AppState>,
    Authed(c): Authed,
) -> ApiResult<crate::backup::Backup> {
    Ok(Json(svc.backup(&c).await?))
}

/// Loads a backup into an empty, uninitialized store (Shamir: then unseal with its shares).
#[utoipa::path(post, path = "/v1/sys/restore", tag = "sys", request_body = crate::backup::Backup,
    responses((status = 200, body = SealStatus), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_restore(
    State(svc): State<AppState>,
    Anonymous(c): Anonymous,
    ApiJson(b): ApiJson<crate::backup::Backup>,
) -> ApiResult<SealStatus> {
    Ok(Json(svc.restore(&c, b).await?))
}

#[utoipa::path(get, path = "/v1/sys/status", tag = "sys", responses((status = 200, body = SealStatus)))]
async fn sys_status(State(svc): State<AppState>) -> ApiResult<SealStatus> {
    Ok(Json(svc.status()?))
}

#[utoipa::path(post, path = "/v1/sys/init", tag = "sys", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_init(
    State(svc): State<AppState>,
    Anonymous(c): Anonymous,
    ApiJson(r): ApiJson<InitRequest>,
) -> ApiResult<InitResponse> {
    let (shares, root) = svc.init(&c, r.shares, r.threshold).await?;
    Ok(Json(InitResponse {
        threshold: if shares.is_empty() {
            0
        } else {
            r.threshold.unwrap_or(0)
        },
        shares: shares.iter().map(|s| B64.encode(s.expose())).collect(),
        root_token: root,
    }))
}

#[utoipa::path(post, path = "/v1/sys/unseal", tag = "sys", request_body = UnsealRequest,
    responses((status = 200, body = SealStatus), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_unseal(
    State(svc): State<AppState>,
    Anonymous(c): Anonymous,
    ApiJson(r): ApiJson<UnsealRequest>,
) -> ApiResult<SealStatus> {
    let share = r
        .share
        .as_deref()
        .map(|s| decode_b64("share", s))
        .transpose()?;
    Ok(Json(svc.unseal(&c, share.as_deref(), r.reset).await?))
}

#[utoipa::path(post, path = "/v1/sys/seal", tag = "sys", security(("token" = [])),
    responses((status = 200, body = SealStatus), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn sys_seal(State(svc): State<AppState>, Authed(c): Authed) -> ApiResult<SealStatus> {
    Ok(Json(svc.seal(&c).await?))
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", security(("token" = [])),
    responses((status = 200, body = KeyList), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_keys(State(svc): State<AppState>, Authed(c): Authed) -> ApiResult<KeyList> {
    let keys = svc.list_keys(&c).await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(KeyView::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/keys", tag = "keys", security(("token" = [])), request_body = CreateKeyRequest,
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_key(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<CreateKeyRequest>,
) -> ApiResult<KeyView> {
    let period = r
        .rotation_period
        .as_deref()
        .map(kagi_keys::duration::parse_seconds)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let kt = match r.key_type.as_deref() {
        None | Some("aes256-gcm") => KeyType::Aes256Gcm,
        Some("fpe") => KeyType::Fpe,
        Some(o) => {
            return Err(ApiError::bad(format!(
                "unknown key type {o:?}: use aes256-gcm or fpe"
            )))
        }
    };
    let usage = r
        .usage
        .as_deref()
        .map(str::parse::<kagi_keys::KeyUsage>)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?
        .unwrap_or_default();
    let k = svc
        .create_key(
            &c,
            &r.name,
            r.description.as_deref().unwrap_or(""),
            kt,
            period,
            usage,
        )
        .await?;
    Ok(Json(KeyView::from(&k)))
}

#[utoipa::path(get, path = "/v1/keys/{name}", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn show_key(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(&svc.describe_key(&c, &name).await?)))
}

#[utoipa::path(post, path = "/v1/keys/{name}/rotate", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rotate_key(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(&svc.rotate_key(&c, &name).await?)))
}

#[utoipa::path(post, path = "/v1/keys/{name}/disable", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn disable_key(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(&svc.disable_key(&c, &name).await?)))
}

#[utoipa::path(post, path = "/v1/keys/{name}/enable", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn enable_key(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(&svc.enable_key(&c, &name).await?)))
}

#[utoipa::path(post, path = "/v1/keys/{name}/schedule-deletion", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    request_body = ScheduleDeletionRequest,
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn schedule_deletion(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(r): ApiJson<ScheduleDeletionRequest>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(
        &svc.schedule_deletion(&c, &name, r.pending_days).await?,
    )))
}

#[utoipa::path(post, path = "/v1/keys/{name}/cancel-deletion", tag = "keys", security(("token" = [])), params(("name" = String, Path, description = "Key name")),
    responses((status = 200, body = KeyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cancel_deletion(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<KeyView> {
    Ok(Json(KeyView::from(&svc.cancel_deletion(&c, &name).await?)))
}

fn dek_len(bytes: Option<u32>) -> Result<usize, ApiError> {
    match bytes.unwrap_or(32) {
        b @ 16..=64 => Ok(b as usize),
        b => Err(ApiError::bad(format!("bytes must be 16-64, got {b}"))),
    }
}

fn spec(plaintext: Option<bool>, bytes: usize, count: usize) -> DataKeySpec {
    DataKeySpec {
        with_plaintext: plaintext.unwrap_or(true),
        bytes,
        count,
    }
}

fn data_key_view(d: crate::service::DataKey) -> GenerateResponse {
    GenerateResponse {
        key: d.key,
        key_version: d.key_version,
        plaintext: d.plaintext.map(|p| B64.encode(p.expose())),
        ciphertext: B64.encode(&d.ciphertext),
    }
}

#[utoipa::path(post, path = "/v1/datakey/generate", tag = "data keys", security(("token" = [])), request_body = GenerateRequest,
    responses((status = 200, body = GenerateResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn generate(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<GenerateRequest>,
) -> ApiResult<GenerateResponse> {
    let ctx = parse_context(r.context)?;
    let just = parse_justification(r.justification)?;
    let n = dek_len(r.bytes)?;
    let mut v = svc
        .generate(&c, &r.key, &ctx, just, spec(r.plaintext, n, 1))
        .await?;
    let d = v
        .pop()
        .ok_or_else(|| ApiError::from(ServiceError::Internal("no key generated".into())))?;
    Ok(Json(data_key_view(d)))
}

#[utoipa::path(post, path = "/v1/datakey/generate-batch", tag = "data keys", security(("token" = [])), request_body = GenerateBatchRequest,
    responses((status = 200, body = GenerateBatchResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn generate_batch(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<GenerateBatchRequest>,
) -> ApiResult<GenerateBatchResponse> {
    if !(1..=1000).contains(&r.count) {
        return Err(ApiError::bad(format!(
            "count must be 1-1000, got {}",
            r.count
        )));
    }
    let ctx = parse_context(r.context)?;
    let just = parse_justification(r.justification)?;
    let n = dek_len(r.bytes)?;
    let v = svc
        .generate(
            &c,
            &r.key,
            &ctx,
            just,
            spec(r.plaintext, n, r.count as usize),
        )
        .await?;
    Ok(Json(GenerateBatchResponse {
        data_keys: v.into_iter().map(data_key_view).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/datakey/decrypt", tag = "data keys", security(("token" = [])), request_body = DecryptRequest,
    responses((status = 200, body = DecryptResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn decrypt(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<DecryptRequest>,
) -> ApiResult<DecryptResponse> {
    let blob = decode_b64("ciphertext", &r.ciphertext)?;
    let ctx = parse_context(r.context)?;
    let just = parse_justification(r.justification)?;
    let u = svc.decrypt(&c, &blob, &ctx, just).await?;
    Ok(Json(DecryptResponse {
        key: u.key,
        key_version: u.key_version,
        plaintext: B64.encode(u.plaintext.expose()),
    }))
}

#[utoipa::path(post, path = "/v1/decrypt", tag = "data keys", security(("token" = [])), request_body = DecryptRequest,
    responses((status = 200, body = DecryptResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn decrypt_payload(
    state: State<AppState>,
    c: Authed,
    r: ApiJson<DecryptRequest>,
) -> ApiResult<DecryptResponse> {
    decrypt(state, c, r).await
}

#[utoipa::path(post, path = "/v1/datakey/decrypt-batch", tag = "data keys", security(("token" = [])), request_body = DecryptBatchRequest,
    responses((status = 200, body = DecryptBatchResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn decrypt_batch(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<DecryptBatchRequest>,
) -> ApiResult<DecryptBatchResponse> {
    if r.items.is_empty() || r.items.len() > 1000 {
        return Err(ApiError::bad(format!(
            "items must hold 1-1000 entries, got {}",
            r.items.len()
        )));
    }
    let just = parse_justification(r.justification)?;
    let mut results = Vec::with_capacity(r.items.len());
    for item in r.items {
        let one = async {
            let blob = decode_b64("ciphertext", &item.ciphertext)?;
            let ctx = parse_context(item.context)?;
            Ok::<_, ApiError>(svc.decrypt(&c, &blob, &ctx, just).await?)
        }
        .await;
        results.push(match one {
            Ok(u) => DecryptResult {
                key: Some(u.key),
                key_version: Some(u.key_version),
                plaintext: Some(B64.encode(u.plaintext.expose())),
                error: None,
            },
            // Fail closed for the whole batch when the audit log cannot record.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            Err(e) => DecryptResult {
                key: None,
                key_version: None,
                plaintext: None,
                error: Some(e.message),
            },
        });
    }
    Ok(Json(DecryptBatchResponse { results }))
}

#[utoipa::path(post, path = "/v1/datakey/reencrypt", tag = "data keys", security(("token" = [])), request_body = ReencryptRequest,
    responses((status = 200, body = ReencryptResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reencrypt(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<ReencryptRequest>,
) -> ApiResult<ReencryptResponse> {
    let blob = decode_b64("ciphertext", &r.ciphertext)?;
    let ctx = parse_context(r.context)?;
    let to_ctx = match r.to_context {
        Some(t) => parse_context(Some(t))?,
        None => ctx.clone(),
    };
    let just = parse_justification(r.justification)?;
    let (src, dst) = svc
        .reencrypt(&c, &blob, &ctx, r.to_key.as_deref(), &to_ctx, just)
        .await?;
    Ok(Json(ReencryptResponse {
        key: dst.key,
        key_version: dst.key_version,
        ciphertext: B64.encode(&dst.ciphertext),
        source_key: src.key,
        source_key_version: src.key_version,
    }))
}

#[utoipa::path(post, path = "/v1/encrypt", tag = "data keys", security(("token" = [])), request_body = EncryptRequest,
    responses((status = 200, body = EncryptResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn encrypt(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<EncryptRequest>,
) -> ApiResult<EncryptResponse> {
    let pt = decode_b64("plaintext", &r.plaintext)?;
    let ctx = parse_context(r.context)?;
    let just = parse_justification(r.justification)?;
    let d = svc.encrypt(&c, &r.key, &ctx, just, &pt).await?;
    Ok(Json(EncryptResponse {
        key: d.key,
        key_version: d.key_version,
        ciphertext: B64.encode(&d.ciphertext),
    }))
}

fn policy_view(name: String, text: String) -> PolicyView {
    let (description, rules) = kagi_keys::Policy::parse(&text)
        .map(|p| (p.description.clone(), p.rule_count()))
        .unwrap_or_default();
    PolicyView {
        name,
        description,
        rules,
        policy: text,
    }
}

#[utoipa::path(get, path = "/v1/policies", tag = "policies", security(("token" = [])),
    responses((status = 200, body = PolicyList), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn list_policies(State(svc): State<AppState>, Authed(c): Authed) -> ApiResult<PolicyList> {
    let all = svc.list_policies(&c).await?;
    Ok(Json(PolicyList {
        policies: all.into_iter().map(|(n, t)| policy_view(n, t)).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/policies/{name}", tag = "policies", security(("token" = [])), params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = PolicyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn show_policy(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<PolicyView> {
    let text = svc.read_policy(&c, &name).await?;
    Ok(Json(policy_view(name, text)))
}

#[utoipa::path(put, path = "/v1/policies/{name}", tag = "policies", security(("token" = [])), params(("name" = String, Path, description = "Policy name")),
    request_body = PolicyWrite,
    responses((status = 200, body = PolicyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn write_policy(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
    ApiJson(r): ApiJson<PolicyWrite>,
) -> ApiResult<PolicyView> {
    svc.write_policy(&c, &name, &r.policy).await?;
    Ok(Json(policy_view(name, r.policy)))
}

#[utoipa::path(delete, path = "/v1/policies/{name}", tag = "policies", security(("token" = [])), params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = Done), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_policy(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Done> {
    svc.delete_policy(&c, &name).await?;
    Ok(Json(Done { ok: true }))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("token" = [])), request_body = TokenCreate,
    responses((status = 200, body = TokenCreated), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_token(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<TokenCreate>,
) -> ApiResult<TokenCreated> {
    let ttl = r
        .ttl
        .as_deref()
        .map(kagi_keys::duration::parse_seconds)
        .transpose()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let (token, rec) = svc.create_token(&c, &r.policies, ttl).await?;
    Ok(Json(TokenCreated {
        token,
        accessor: rec.accessor,
        policies: rec.policies,
        expires_at: rec.expires_at.map(ts),
    }))
}

#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "tokens", security(("token" = [])), request_body = TokenRevoke,
    responses((status = 200, body = Done), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn revoke_token(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<TokenRevoke>,
) -> ApiResult<Done> {
    svc.revoke_token(&c, &r.token).await?;
    Ok(Json(Done { ok: true }))
}

#[utoipa::path(get, path = "/v1/tokens/self", tag = "tokens", security(("token" = [])),
    responses((status = 200, body = TokenSelf), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn token_self(Authed(c): Authed) -> ApiResult<TokenSelf> {
    Ok(Json(TokenSelf {
        principal: c.principal,
        root: c.root,
        policies: c.policies,
    }))
}

fn parse_lines(rows: Vec<(u64, String)>) -> Vec<serde_json::Value> {
    rows.into_iter()
        .map(|(_, l)| match serde_json::from_str(&l) {
            Ok(v) => v,
            // A damaged record is still shown, as text: `audit verify` names it.
            Err(_) => serde_json::Value::String(l),
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, kagi_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(ServiceError::Internal(e.to_string())))?
        .map_err(|e| ApiError::from(ServiceError::from(e)))
}

#[utoipa::path(get, path = "/v1/audit/records", tag = "audit", security(("token" = [])), params(RecordsQuery),
    responses((status = 200, body = AuditRecords), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn audit_records(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiQuery(q): ApiQuery<RecordsQuery>,
) -> ApiResult<AuditRecords> {
    svc.authorize_audit(&c, "audit.read").await?;
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000) as usize;
    let store = svc.audit().store().clone();
    let rows = blocking(move || store.read(from, limit)).await?;
    let next = (rows.len() == limit).then(|| rows.last().map_or(from, |r| r.0 + 1));
    Ok(Json(AuditRecords {
        records: parse_lines(rows),
        next,
    }))
}

#[utoipa::path(get, path = "/v1/audit/tail", tag = "audit", security(("token" = [])), params(TailQuery),
    responses((status = 200, body = AuditRecords), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn audit_tail(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiQuery(q): ApiQuery<TailQuery>,
) -> ApiResult<AuditRecords> {
    svc.authorize_audit(&c, "audit.read").await?;
    let n = q.n.unwrap_or(20).clamp(1, 10_000) as usize;
    let store = svc.audit().store().clone();
    let rows = blocking(move || store.tail(n)).await?;
    Ok(Json(AuditRecords {
        records: parse_lines(rows),
        next: None,
    }))
}

#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("token" = [])),
    responses((status = 200, body = VerifyView), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn audit_verify(State(svc): State<AppState>, Authed(c): Authed) -> ApiResult<VerifyView> {
    svc.authorize_audit(&c, "audit.verify").await?;
    Ok(Json(verify_chain(&svc).await?))
}

/// Verifies the whole audit chain and its checkpoints, and that it reaches what this server
/// wrote.
pub(crate) async fn verify_chain(svc: &AppState) -> Result<VerifyView, ApiError> {
    let store = svc.audit().store().clone();
    let head = svc
        .audit()
        .stats()
        .head
        .load(std::sync::atomic::Ordering::Relaxed);
    let view = blocking(move || {
        let cps = store.checkpoints()?;
        let mut rows = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read(from, 10_000)?;
            let n = page.len();
            if let Some(l) = page.last() {
                from = l.0 + 1;
            }
            rows.extend(page.into_iter().map(|(s, l)| (Some(s), l)));
            if n < 10_000 {
                break;
            }
        }
        Ok(match kagi_audit::verify(rows, &cps) {
            Ok(r) if r.last_seq < head => VerifyView {
                ok: false,
                records: r.records,
                last_seq: r.last_seq,
                checkpoints: r.checkpoints,
                checkpoint_key: r.checkpoint_key,
                bad_seq: Some(r.last_seq + 1),
                reason: Some(format!(
                    "missing: the log ends at record {} but this server wrote up to {head}",
                    r.last_seq
                )),
            },
            Ok(r) => VerifyView {
                ok: true,
                records: r.records,
                last_seq: r.last_seq,
                checkpoints: r.checkpoints,
                checkpoint_key: r.checkpoint_key,
                bad_seq: None,
                reason: None,
            },
            Err(f) => VerifyView {
                ok: false,
                records: f.seq.saturating_sub(1),
                last_seq: f.seq.saturating_sub(1),
                checkpoints: 0,
                checkpoint_key: None,
                bad_seq: Some(f.seq),
                reason: Some(f.reason),
            },
        })
    })
    .await?;
    Ok(view)
}

async fn metrics(State(svc): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        svc.metrics_text(),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// XKS paths live under any prefix, so the router cannot name them: everything unrouted
/// that has `/kms/xks/v1` in it goes to the XKS front-end.
async fn fallback(state: State<AppState>, req: Request) -> Response {
    if crate::xks_api::is_xks_path(req.uri().path()) {
        crate::xks_api::handle(state, req).await
    } else {
        not_found().await.into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint: see /v1/openapi.json".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this endpoint does not take that method: see /v1/openapi.json".into(),
    }
}

/// The router for the native API (and the console, with default options).
pub fn router(svc: AppState) -> Router {
    router_with(svc, crate::console::ConsoleOptions::default())
}

/// The router, with the console's options.
pub fn router_with(svc: AppState, console: crate::console::ConsoleOptions) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/health/live", get(health_live))
        .route("/v1/health/ready", get(health_ready))
        .route("/v1/sys/status", get(sys_status))
        .route("/v1/sys/init", post(sys_init))
        .route("/v1/sys/unseal", post(sys_unseal))
        .route("/v1/sys/seal", post(sys_seal))
        .route("/v1/sys/backup", get(sys_backup))
        .route("/v1/sys/migrate-seal", post(sys_migrate_seal))
        .route(
            "/v1/sys/restore",
            post(sys_restore).layer(DefaultBodyLimit::max(MAX_BACKUP)),
        )
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{name}", get(show_key))
        .route("/v1/keys/{name}/rotate", post(rotate_key))
        .route("/v1/keys/{name}/disable", post(disable_key))
        .route("/v1/keys/{name}/enable", post(enable_key))
        .route("/v1/keys/{name}/schedule-deletion", post(schedule_deletion))
        .route("/v1/keys/{name}/cancel-deletion", post(cancel_deletion))
        .route("/v1/datakey/generate", post(generate))
        .route("/v1/datakey/generate-batch", post(generate_batch))
        .route("/v1/datakey/decrypt", post(decrypt))
        .route("/v1/datakey/decrypt-batch", post(decrypt_batch))
        .route("/v1/datakey/reencrypt", post(reencrypt))
        .route("/v1/encrypt", post(encrypt))
        .route("/v1/decrypt", post(decrypt_payload))
        .route("/v1/policies", get(list_policies))
        .route(
            "/v1/policies/{name}",
            get(show_policy).put(write_policy).delete(delete_policy),
        )
        .route("/v1/tokens", post(create_token))
        .route("/v1/tokens/revoke", post(revoke_token))
        .route("/v1/tokens/self", get(token_self))
        .route("/v1/audit/records", get(audit_records))
        .route("/v1/audit/tail", get(audit_tail))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/v1/compliance/report", get(crate::compliance::report))
        .route("/v1/tokenize", post(crate::tokens_api::tokenize))
        .route("/v1/detokenize", post(crate::tokens_api::detokenize))
        .route("/v1/xks/stores", post(crate::cloud_api::add_xks_store))
        .route(
            "/v1/xks/rotate-credential",
            post(crate::cloud_api::rotate_xks_credential),
        )
        .route("/v1/xks/config", post(crate::cloud_api::xks_config))
        .route(
            "/v1/aws/credentials",
            post(crate::cloud_api::create_aws_credentials),
        )
        .route("/", post(crate::kms_api::handle))
        .nest_service("/ui", crate::console::router(svc.clone(), console))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(svc)
}
