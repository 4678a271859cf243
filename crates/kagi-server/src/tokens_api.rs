//! `/v1/tokenize` and `/v1/detokenize`: format-preserving tokens in batches.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ApiError, ApiJson, ApiResult, AppState, Authed, ErrorBody};
use crate::service::TokenField;

/// `POST /v1/tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// An `fpe` key.
    pub key: String,
    /// `pan`, `mynumber`, `phone`, `email`, `digits`, `alnum` or `custom`.
    pub template: String,
    /// Per-field tweak, e.g. `users.card` or a tenant (default empty).
    #[serde(default)]
    pub tweak: String,
    /// `pan`: leading digits kept (default 6).
    pub keep_first: Option<u8>,
    /// `pan`: trailing digits kept (default 4).
    pub keep_last: Option<u8>,
    /// `custom`: the alphabet's characters, in numeral order.
    pub alphabet: Option<String>,
    /// Up to 10,000 values.
    pub values: Vec<String>,
}

/// Tokens, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenizeResponse {
    /// Key name.
    pub key: String,
    /// The key version used: detokenize needs it after a rotation.
    pub key_version: u32,
    /// One token per value.
    pub tokens: Vec<String>,
}

/// `POST /v1/detokenize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// An `fpe` key.
    pub key: String,
    /// The template the tokens were made with.
    pub template: String,
    /// The tweak they were made with.
    #[serde(default)]
    pub tweak: String,
    /// `pan`: leading digits the tokens kept (default 6).
    pub keep_first: Option<u8>,
    /// `pan`: trailing digits the tokens kept (default 4).
    pub keep_last: Option<u8>,
    /// `custom`: the alphabet they were made with.
    pub alphabet: Option<String>,
    /// The key version they were made with (default: the newest).
    pub key_version: Option<u32>,
    /// Up to 10,000 tokens.
    pub tokens: Vec<String>,
}

/// Values, in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    /// Key name.
    pub key: String,
    /// One value per token.
    pub values: Vec<String>,
}

fn options(
    first: Option<u8>,
    last: Option<u8>,
    alphabet: Option<&str>,
) -> Result<kagi_token::FieldOptions, ApiError> {
    let d = kagi_token::PanKeep::default();
    Ok(kagi_token::FieldOptions {
        keep: kagi_token::PanKeep {
            first: first.map_or(d.first, usize::from),
            last: last.map_or(d.last, usize::from),
        },
        alphabet: alphabet
            .map(kagi_token::Alphabet::parse)
            .transpose()
            .map_err(|e| ApiError::bad(e.to_string()))?,
    })
}

fn template(t: &str) -> Result<kagi_token::Template, ApiError> {
    t.parse()
        .map_err(|e: kagi_token::TokenError| ApiError::bad(e.to_string()))
}

#[utoipa::path(post, path = "/v1/tokenize", tag = "tokens", security(("token" = [])), request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn tokenize(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<TokenizeRequest>,
) -> ApiResult<TokenizeResponse> {
    let t = template(&r.template)?;
    let opts = options(r.keep_first, r.keep_last, r.alphabet.as_deref())?;
    let field = TokenField {
        template: t,
        options: &opts,
        tweak: r.tweak.as_bytes(),
    };
    let (v, tokens) = svc.tokenize(&c, &r.key, field, &r.values).await?;
    Ok(Json(TokenizeResponse {
        key: r.key,
        key_version: v,
        tokens,
    }))
}

#[utoipa::path(post, path = "/v1/detokenize", tag = "tokens", security(("token" = [])), request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn detokenize(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<DetokenizeRequest>,
) -> ApiResult<DetokenizeResponse> {
    let t = template(&r.template)?;
    let opts = options(r.keep_first, r.keep_last, r.alphabet.as_deref())?;
    let field = TokenField {
        template: t,
        options: &opts,
        tweak: r.tweak.as_bytes(),
    };
    let values = svc
        .detokenize(&c, &r.key, field, r.key_version, &r.tokens)
        .await?;
    Ok(Json(DetokenizeResponse { key: r.key, values }))
}
