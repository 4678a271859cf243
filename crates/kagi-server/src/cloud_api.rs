//! Native `/v1` endpoints that manage the cloud front-ends' credentials: XKS logical key
//! stores and KMS API access keys. Each answer carries a secret once; kagi keeps it wrapped
//! by the master key.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ApiJson, ApiResult, AppState, Authed, ErrorBody};
use crate::service::Credential;

/// `POST /v1/xks/stores`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddXksStore {
    /// Path prefix (`acme`, `/acme/eu`; 0-120 of `[a-zA-Z0-9/_-]`).
    pub prefix: String,
    /// Policies its requests are checked against (default: a new `xks/PREFIX` policy).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Require mutual TLS with this client-certificate CN.
    pub mtls_subject: Option<String>,
    /// Requests per second before ThrottlingException.
    pub max_rps: Option<u32>,
}

/// A store's prefix.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct XksPrefix {
    /// Path prefix.
    pub prefix: String,
}

/// A store's credential, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct XksStoreCredential {
    /// Normalized prefix.
    pub prefix: String,
    /// What the KMS console calls `XksProxyUriPath`.
    pub uri_path: String,
    /// SigV4 access key id.
    pub access_key_id: String,
    /// SigV4 secret.
    pub secret_access_key: String,
}

impl XksStoreCredential {
    fn new(prefix: String, c: &Credential) -> Self {
        Self {
            uri_path: kagi_aws::xks::uri_path(&prefix),
            prefix,
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret.to_string(),
        }
    }
}

/// The file the AWS KMS console imports for an external key store.
#[derive(Debug, Serialize, ToSchema)]
pub struct XksConsoleConfig {
    /// `PREFIX/kms/xks/v1`.
    #[serde(rename = "XksProxyUriPath")]
    pub uri_path: String,
    /// The newest credential.
    #[serde(rename = "XksProxyAuthenticationCredential")]
    pub credential: XksConsoleCredential,
}

/// Credential part of [`XksConsoleConfig`].
#[derive(Debug, Serialize, ToSchema)]
pub struct XksConsoleCredential {
    /// Access key id.
    #[serde(rename = "AccessKeyId")]
    pub access_key_id: String,
    /// Secret.
    #[serde(rename = "RawSecretAccessKey")]
    pub raw_secret_access_key: String,
}

/// `POST /v1/aws/credentials`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentialsCreate {
    /// Policies the credentials carry.
    pub policies: Vec<String>,
}

/// New KMS API credentials, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct AwsCredentialsCreated {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Policies carried.
    pub policies: Vec<String>,
}

#[utoipa::path(post, path = "/v1/xks/stores", tag = "cloud", security(("token" = [])), request_body = AddXksStore,
    responses((status = 200, body = XksStoreCredential), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn add_xks_store(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<AddXksStore>,
) -> ApiResult<XksStoreCredential> {
    let (prefix, cred) = svc
        .xks_add_store(&c, &r.prefix, r.policies, r.mtls_subject, r.max_rps)
        .await?;
    Ok(Json(XksStoreCredential::new(prefix, &cred)))
}

#[utoipa::path(post, path = "/v1/xks/rotate-credential", tag = "cloud", security(("token" = [])), request_body = XksPrefix,
    responses((status = 200, body = XksStoreCredential), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn rotate_xks_credential(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<XksPrefix>,
) -> ApiResult<XksStoreCredential> {
    let (prefix, cred) = svc.xks_rotate_credential(&c, &r.prefix).await?;
    Ok(Json(XksStoreCredential::new(prefix, &cred)))
}

#[utoipa::path(post, path = "/v1/xks/config", tag = "cloud", security(("token" = [])), request_body = XksPrefix,
    responses((status = 200, body = XksConsoleConfig), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn xks_config(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<XksPrefix>,
) -> ApiResult<XksConsoleConfig> {
    let (prefix, store) = svc.xks_store(&c, &r.prefix).await?;
    let newest = store.credentials.last().ok_or_else(|| {
        crate::ServiceError::Storage(format!("XKS key store {prefix:?} has no credential"))
    })?;
    Ok(Json(XksConsoleConfig {
        uri_path: kagi_aws::xks::uri_path(&prefix),
        credential: XksConsoleCredential {
            access_key_id: newest.access_key_id.clone(),
            raw_secret_access_key: newest.secret.to_string(),
        },
    }))
}

#[utoipa::path(post, path = "/v1/aws/credentials", tag = "cloud", security(("token" = [])), request_body = AwsCredentialsCreate,
    responses((status = 200, body = AwsCredentialsCreated), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create_aws_credentials(
    State(svc): State<AppState>,
    Authed(c): Authed,
    ApiJson(r): ApiJson<AwsCredentialsCreate>,
) -> ApiResult<AwsCredentialsCreated> {
    let (id, secret) = svc.aws_create_credentials(&c, r.policies.clone()).await?;
    Ok(Json(AwsCredentialsCreated {
        access_key_id: id,
        secret_access_key: secret.to_string(),
        policies: r.policies,
    }))
}
