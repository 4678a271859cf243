//! The XKS proxy front-end: `PREFIX/kms/xks/v1/...` on the key service's own listener, a
//! thin translation of the spec's messages onto [`KeyService`]. Every answer is the spec's
//! JSON; every refusal is `{"errorName", "errorMessage"}` with the spec's HTTP status.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use kagi_aws::xks::{self, ErrorName, Route, XksError};

use crate::api::AppState;
use crate::aws_http::read_signed;
use crate::service::metadata_context;
use crate::ServiceError;

/// Largest XKS request body read (plaintext and AAD limits with base64 and JSON around them).
const MAX_XKS_BODY: usize = 128 << 10;

/// Whether a path is an XKS API path (so the router sends it here).
pub fn is_xks_path(path: &str) -> bool {
    path.contains(xks::API_PATH)
}

fn json(status: u16, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: XksError) -> Response {
    json(e.name.status(), e.body().into_bytes())
}

/// The spec's error for a core refusal. `authenticating`: the request has not reached a
/// key yet, so a missing thing is the path prefix, not a key.
fn from_service(e: ServiceError, authenticating: bool) -> XksError {
    let name = match &e {
        ServiceError::Signature(_) | ServiceError::Unauthenticated(_) => {
            ErrorName::AuthenticationFailedException
        }
        ServiceError::NotFound(_) if authenticating => ErrorName::InvalidUriPathException,
        ServiceError::NotFound(_) => ErrorName::KeyNotFoundException,
        ServiceError::Denied(_) => ErrorName::AccessDeniedException,
        ServiceError::KeyState { .. } | ServiceError::Conflict(_) => {
            ErrorName::InvalidStateException
        }
        ServiceError::KeyUsage(_) => ErrorName::InvalidKeyUsageException,
        ServiceError::InvalidCiphertext(_) => ErrorName::InvalidCiphertextException,
        ServiceError::BadRequest(_) => ErrorName::ValidationException,
        ServiceError::Throttled(_) => ErrorName::ThrottlingException,
        ServiceError::Sealed | ServiceError::Storage(_) | ServiceError::AuditUnavailable(_) => {
            ErrorName::DependencyTimeoutException
        }
        _ => ErrorName::InternalException,
    };
    XksError::new(name, e.to_string())
}

/// Handles one XKS request.
pub async fn handle(State(svc): State<AppState>, req: Request) -> Response {
    match serve(svc, req).await {
        Ok(r) => r,
        Err(e) => error(e),
    }
}

async fn serve(svc: AppState, req: Request) -> Result<Response, XksError> {
    let (prefix, route) = xks::parse_path(req.uri().path())?;
    if req.method() != Method::POST {
        let mut r = error(XksError::new(
            ErrorName::ValidationException,
            "XKS API calls are POST; for a load balancer's health check use GET /v1/health/ready",
        ));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(r);
    }
    let req = read_signed(req, MAX_XKS_BODY, xks::SERVICE)
        .await
        .ok_or_else(|| {
            XksError::new(
                ErrorName::ValidationException,
                format!("the request body is larger than {MAX_XKS_BODY} bytes"),
            )
        })?;
    let cert_cn = req.conn().and_then(|c| c.cert_cn.as_deref());
    let mut caller = svc
        .xks_authenticate(&prefix, &req.pending, cert_cn, req.anonymous())
        .await
        .map_err(|e| from_service(e, true))?;
    let body = &req.body;
    let op = |e| from_service(e, false);

    match route {
        Route::Health => {
            let r: xks::MetadataOnlyRequest = xks::parse_body(body)?;
            let m = xks::require_metadata(r.request_metadata, false)?;
            caller.request_id = m.kms_request_id.clone().unwrap_or_default();
            let h = svc.xks_health().await.map_err(op)?;
            let resp = xks::HealthResponse {
                xks_proxy_fleet_size: 1,
                xks_proxy_vendor: "kagi".into(),
                xks_proxy_model: format!("kagi {}", env!("CARGO_PKG_VERSION")),
                ekm_vendor: format!("kagi ({} seal)", h.model),
                ekm_fleet_details: vec![xks::EkmFleetDetail {
                    id: h.node,
                    model: h.model,
                    health_status: h.status,
                }],
            };
            Ok(ok_json(&resp))
        }
        Route::Metadata(key) => {
            let r: xks::MetadataOnlyRequest = xks::parse_body(body)?;
            let m = xks::require_metadata(r.request_metadata, true)?;
            let ctx = metadata_context(&m).map_err(op)?;
            caller.request_id = m.kms_request_id.unwrap_or_default();
            let rec = svc.xks_metadata(&caller, &key, &ctx).await.map_err(op)?;
            let mut usage = Vec::new();
            if rec.usage.can_encrypt() {
                usage.push("ENCRYPT");
            }
            if rec.usage.can_decrypt() {
                usage.push("DECRYPT");
            }
            let status = if rec.state == kagi_keys::KeyState::Enabled {
                "ENABLED"
            } else {
                "DISABLED"
            };
            Ok(ok_json(&xks::MetadataResponse {
                key_spec: "AES_256",
                key_usage: usage,
                key_status: status,
            }))
        }
        Route::Encrypt(key) => {
            let input = xks::parse_body::<xks::EncryptRequest>(body)?.decode()?;
            let ctx = metadata_context(&input.metadata).map_err(op)?;
            caller.request_id = input.metadata.kms_request_id.clone().unwrap_or_default();
            let s = svc
                .xks_encrypt(&caller, &key, &ctx, &input.plaintext, &input.aad)
                .await
                .map_err(op)?;
            let cdiv = input.want_cdiv.then(|| {
                xks::b64(&xks::cdiv(
                    &input.aad,
                    &s.metadata,
                    &s.iv,
                    &s.ciphertext,
                    &s.tag,
                ))
            });
            Ok(ok_json(&xks::EncryptResponse {
                ciphertext: xks::b64(&s.ciphertext),
                ciphertext_metadata: xks::b64(&s.metadata),
                initialization_vector: xks::b64(&s.iv),
                authentication_tag: xks::b64(&s.tag),
                ciphertext_data_integrity_value: cdiv,
            }))
        }
        Route::Decrypt(key) => {
            let input = xks::parse_body::<xks::DecryptRequest>(body)?.decode()?;
            let ctx = metadata_context(&input.metadata).map_err(op)?;
            caller.request_id = input.metadata.kms_request_id.clone().unwrap_or_default();
            let p = svc
                .xks_decrypt(&caller, &key, &ctx, &input)
                .await
                .map_err(op)?;
            Ok(ok_json(&xks::DecryptResponse {
                plaintext: xks::b64(p.expose()),
            }))
        }
    }
}

fn ok_json<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => json(200, b),
        Err(e) => error(XksError::new(ErrorName::InternalException, e.to_string())),
    }
}
