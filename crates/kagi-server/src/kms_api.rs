//! The AWS-KMS-compatible JSON API (`POST /` with `X-Amz-Target: TrentService.*`), signed
//! with SigV4 (service `kms`) by credentials from `kagi aws create-credentials`. A thin
//! translation onto [`KeyService`]: key ids are kagi key names, ciphertext blobs are kagi
//! blobs (encryption context bound exactly as in the native API), errors are AWS's names.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use kagi_aws::kms::{self, KeyRef, KmsError, Op};
use kagi_keys::{EncryptionContext, KeyRecord, KeyState, KeyType, KeyUsage};
use serde_json::{json, Value};

use crate::api::{AppState, MAX_BODY};
use crate::aws_http::read_signed;
use crate::service::{Caller, DataKeySpec};
use crate::ServiceError;

fn respond(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kms::CONTENT_TYPE),
    );
    r
}

fn from_service(e: ServiceError) -> KmsError {
    let code = match &e {
        ServiceError::Signature(s) => s.aws_code(),
        ServiceError::Unauthenticated(_) => "UnrecognizedClientException",
        ServiceError::NotFound(_) => "NotFoundException",
        ServiceError::Denied(_) => "AccessDeniedException",
        ServiceError::KeyState {
            state: "disabled", ..
        } => "DisabledException",
        ServiceError::KeyState { .. } => "KMSInvalidStateException",
        ServiceError::Conflict(m) if m.contains("already exists") => "AlreadyExistsException",
        ServiceError::Conflict(_) => "KMSInvalidStateException",
        ServiceError::KeyUsage(_) => "InvalidKeyUsageException",
        ServiceError::InvalidCiphertext(_) => "InvalidCiphertextException",
        ServiceError::BadRequest(_) => "ValidationException",
        ServiceError::Throttled(_) => "ThrottlingException",
        ServiceError::Sealed | ServiceError::Storage(_) | ServiceError::AuditUnavailable(_) => {
            "DependencyTimeoutException"
        }
        _ => "KMSInternalException",
    };
    KmsError::new(code, e.to_string())
}

/// Handles `POST /`.
pub async fn handle(State(svc): State<AppState>, req: Request) -> Response {
    match serve(svc, req).await {
        Ok(v) => respond(200, v.to_string()),
        Err(e) => respond(e.status(), e.body()),
    }
}

/// One request's context.
struct Call<'a> {
    svc: &'a AppState,
    caller: Caller,
    region: String,
}

async fn serve(svc: AppState, req: Request) -> Result<Value, KmsError> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            KmsError::new(
                "UnknownOperationException",
                "POST / is the AWS KMS API: send X-Amz-Target: TrentService.<Operation>",
            )
        })?
        .to_string();
    let req = read_signed(req, MAX_BODY, kms::SERVICE)
        .await
        .ok_or_else(|| {
            KmsError::validation(format!("the request body is larger than {MAX_BODY} bytes"))
        })?;
    let region = req
        .pending
        .as_ref()
        .map(|p| p.auth.region.clone())
        .unwrap_or_default();
    let caller = svc
        .aws_authenticate(&req.pending, req.anonymous())
        .await
        .map_err(from_service)?;
    let op = Op::from_target(&target)?;
    let r: kms::Request = kms::parse_body(&req.body)?;
    let call = Call {
        svc: &svc,
        caller,
        region,
    };
    call.run(op, r).await
}

fn b64_arg(name: &str, v: &Option<String>, max: usize) -> Result<Vec<u8>, KmsError> {
    let s = kms::Request::need(v, name)?;
    let b = B64
        .decode(s)
        .map_err(|_| KmsError::validation(format!("{name} is not valid base64")))?;
    if b.is_empty() || b.len() > max {
        return Err(KmsError::validation(format!(
            "{name} must be 1-{max} bytes"
        )));
    }
    Ok(b)
}

fn context(c: &kms::Context) -> Result<EncryptionContext, KmsError> {
    EncryptionContext::new(c.clone().unwrap_or_default())
        .map_err(|e| KmsError::validation(e.to_string()))
}

fn check_algorithm(a: &Option<String>) -> Result<(), KmsError> {
    match a.as_deref() {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(o) => Err(KmsError::validation(format!(
            "EncryptionAlgorithm {o:?} is not SYMMETRIC_DEFAULT"
        ))),
    }
}

fn state_name(s: KeyState) -> &'static str {
    match s {
        KeyState::Enabled => "Enabled",
        KeyState::Disabled => "Disabled",
        KeyState::PendingDeletion => "PendingDeletion",
        KeyState::Destroyed => "Unavailable",
    }
}

impl Call<'_> {
    fn arn(&self, name: &str) -> String {
        kms::key_arn(&self.region, name)
    }

    fn metadata(&self, k: &KeyRecord) -> Value {
        let mut m = json!({
            "AWSAccountId": kms::ACCOUNT,
            "KeyId": k.name,
            "Arn": self.arn(&k.name),
            "CreationDate": k.created_at,
            "Enabled": k.state == KeyState::Enabled,
            "Description": k.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": state_name(k.state),
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": false,
        });
        if let Some(d) = k.deletion_date {
            m["DeletionDate"] = json!(d);
        }
        m
    }

    /// The kagi key name a `KeyId` names (aliases resolved).
    async fn resolve(&self, field: &Option<String>, name: &str) -> Result<String, KmsError> {
        match KeyRef::parse(kms::Request::need(field, name)?)? {
            KeyRef::Key(k) => Ok(k),
            KeyRef::Alias(a) => {
                let s = self.svc.cloud_state().await.map_err(from_service)?;
                s.aliases.get(&a).cloned().ok_or_else(|| {
                    KmsError::new(
                        "NotFoundException",
                        format!("Alias {} is not found.", kms::alias_arn(&self.region, &a)),
                    )
                })
            }
        }
    }

    async fn run(&self, op: Op, r: kms::Request) -> Result<Value, KmsError> {
        let svc = self.svc;
        let c = &self.caller;
        let e = from_service;
        Ok(match op {
            Op::CreateKey => {
                for (field, ok) in [
                    (&r.key_spec, "SYMMETRIC_DEFAULT"),
                    (&r.customer_master_key_spec, "SYMMETRIC_DEFAULT"),
                    (&r.key_usage, "ENCRYPT_DECRYPT"),
                    (&r.origin, "AWS_KMS"),
                ] {
                    if field.as_deref().is_some_and(|v| v != ok) {
                        return Err(KmsError::new(
                            "UnsupportedOperationException",
                            format!(
                                "kagi's KMS API makes only {ok} keys, not {:?}",
                                field.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                }
                let name = uuid_v4();
                let desc = r.description.as_deref().unwrap_or("");
                let k = svc
                    .create_key(
                        c,
                        &name,
                        desc,
                        KeyType::Aes256Gcm,
                        None,
                        KeyUsage::EncryptDecrypt,
                    )
                    .await
                    .map_err(e)?;
                json!({"KeyMetadata": self.metadata(&k)})
            }
            Op::DescribeKey => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let k = svc.describe_key(c, &name).await.map_err(e)?;
                json!({"KeyMetadata": self.metadata(&k)})
            }
            Op::ListKeys => {
                let limit = r.limit.unwrap_or(100).clamp(1, 1000) as usize;
                let keys = svc.list_keys(c).await.map_err(e)?;
                let after = r.marker.clone().unwrap_or_default();
                let page: Vec<&KeyRecord> = keys
                    .iter()
                    .filter(|k| k.state != KeyState::Destroyed && k.name > after)
                    .take(limit + 1)
                    .collect();
                let truncated = page.len() > limit;
                let list: Vec<Value> = page
                    .iter()
                    .take(limit)
                    .map(|k| json!({"KeyId": k.name, "KeyArn": self.arn(&k.name)}))
                    .collect();
                let mut v = json!({"Keys": list, "Truncated": truncated});
                if truncated {
                    v["NextMarker"] = json!(page[limit - 1].name);
                }
                v
            }
            Op::CreateAlias => {
                let alias = kms::Request::need(&r.alias_name, "AliasName")?;
                kms::validate_alias(alias)?;
                let target =
                    match KeyRef::parse(kms::Request::need(&r.target_key_id, "TargetKeyId")?)? {
                        KeyRef::Key(k) => k,
                        KeyRef::Alias(_) => {
                            return Err(KmsError::validation(
                                "TargetKeyId must name a key, not an alias",
                            ))
                        }
                    };
                svc.describe_key(c, &target).await.map_err(e)?;
                svc.aws_set_alias(c, alias, &target, true)
                    .await
                    .map_err(e)?;
                json!({})
            }
            Op::ListAliases => {
                let only = match &r.key_id {
                    Some(_) => Some(self.resolve(&r.key_id, "KeyId").await?),
                    None => None,
                };
                let visible: std::collections::BTreeSet<String> = svc
                    .list_keys(c)
                    .await
                    .map_err(e)?
                    .into_iter()
                    .map(|k| k.name)
                    .collect();
                let s = svc.cloud_state().await.map_err(e)?;
                let list: Vec<Value> = s
                    .aliases
                    .iter()
                    .filter(|(_, k)| visible.contains(*k) && only.as_ref().is_none_or(|o| o == *k))
                    .map(|(a, k)| {
                        json!({"AliasName": a, "AliasArn": kms::alias_arn(&self.region, a), "TargetKeyId": k})
                    })
                    .collect();
                json!({"Aliases": list, "Truncated": false})
            }
            Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let bytes = kms::data_key_len(&r)?;
                let ctx = context(&r.encryption_context)?;
                let with_plaintext = op == Op::GenerateDataKey;
                let spec = DataKeySpec {
                    with_plaintext,
                    bytes,
                    count: 1,
                };
                let dk = svc
                    .generate(c, &name, &ctx, None, spec)
                    .await
                    .map_err(e)?
                    .pop()
                    .ok_or_else(|| KmsError::new("KMSInternalException", "no data key was made"))?;
                let mut v = json!({"CiphertextBlob": B64.encode(&dk.ciphertext), "KeyId": self.arn(&dk.key)});
                if let Some(p) = &dk.plaintext {
                    v["Plaintext"] = json!(B64.encode(p.expose()));
                }
                v
            }
            Op::Encrypt => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                check_algorithm(&r.encryption_algorithm)?;
                let plaintext = zeroize::Zeroizing::new(b64_arg("Plaintext", &r.plaintext, 4096)?);
                let ctx = context(&r.encryption_context)?;
                let dk = svc
                    .encrypt(c, &name, &ctx, None, &plaintext)
                    .await
                    .map_err(e)?;
                json!({"CiphertextBlob": B64.encode(&dk.ciphertext), "KeyId": self.arn(&dk.key),
                       "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
            }
            Op::Decrypt => {
                check_algorithm(&r.encryption_algorithm)?;
                let blob = b64_arg("CiphertextBlob", &r.ciphertext_blob, 6144)?;
                let ctx = context(&r.encryption_context)?;
                let want = match &r.key_id {
                    Some(_) => Some(self.resolve(&r.key_id, "KeyId").await?),
                    None => None,
                };
                let u = svc.decrypt(c, &blob, &ctx, None).await.map_err(e)?;
                if want.as_ref().is_some_and(|w| *w != u.key) {
                    return Err(KmsError::new(
                        "IncorrectKeyException",
                        "the ciphertext was encrypted under another key than KeyId",
                    ));
                }
                json!({"Plaintext": B64.encode(u.plaintext.expose()), "KeyId": self.arn(&u.key),
                       "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
            }
            Op::ReEncrypt => {
                let blob = b64_arg("CiphertextBlob", &r.ciphertext_blob, 6144)?;
                let src_ctx = context(&r.source_encryption_context)?;
                let dest = self
                    .resolve(&r.destination_key_id, "DestinationKeyId")
                    .await?;
                let dest_ctx = context(&r.destination_encryption_context)?;
                let want_src = match &r.source_key_id {
                    Some(_) => Some(self.resolve(&r.source_key_id, "SourceKeyId").await?),
                    None => None,
                };
                let (src, out) = svc
                    .reencrypt(c, &blob, &src_ctx, Some(&dest), &dest_ctx, None)
                    .await
                    .map_err(e)?;
                if want_src.as_ref().is_some_and(|w| *w != src.key) {
                    return Err(KmsError::new(
                        "IncorrectKeyException",
                        "the ciphertext was encrypted under another key than SourceKeyId",
                    ));
                }
                json!({"CiphertextBlob": B64.encode(&out.ciphertext), "SourceKeyId": self.arn(&src.key),
                       "KeyId": self.arn(&out.key), "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                       "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
            }
            Op::EnableKey => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                svc.enable_key(c, &name).await.map_err(e)?;
                json!({})
            }
            Op::DisableKey => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                svc.disable_key(c, &name).await.map_err(e)?;
                json!({})
            }
            Op::ScheduleKeyDeletion => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let days = r.pending_window_in_days.unwrap_or(30);
                if !(7..=30).contains(&days) {
                    return Err(KmsError::validation("PendingWindowInDays must be 7-30"));
                }
                let k = svc
                    .schedule_deletion(c, &name, Some(days))
                    .await
                    .map_err(e)?;
                json!({"KeyId": self.arn(&k.name), "DeletionDate": k.deletion_date,
                       "KeyState": state_name(k.state), "PendingWindowInDays": days})
            }
            Op::CancelKeyDeletion => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let k = svc.cancel_deletion(c, &name).await.map_err(e)?;
                json!({"KeyId": self.arn(&k.name)})
            }
            Op::EnableKeyRotation => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let days = r.rotation_period_in_days.unwrap_or(365);
                if !(90..=2560).contains(&days) {
                    return Err(KmsError::validation("RotationPeriodInDays must be 90-2560"));
                }
                svc.set_rotation_period(c, &name, Some(u64::from(days) * 86_400))
                    .await
                    .map_err(e)?;
                json!({})
            }
            Op::RotateKeyOnDemand => {
                let name = self.resolve(&r.key_id, "KeyId").await?;
                let k = svc.rotate_key(c, &name).await.map_err(e)?;
                json!({"KeyId": self.arn(&k.name)})
            }
            Op::GenerateRandom => {
                let n = r.number_of_bytes.unwrap_or(32);
                if !(1..=1024).contains(&n) {
                    return Err(KmsError::validation("NumberOfBytes must be 1-1024"));
                }
                let p = svc.generate_random(c, n as usize).await.map_err(e)?;
                json!({"Plaintext": B64.encode(p.expose())})
            }
        })
    }
}

/// A random UUID (version 4) as KMS key ids look.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = kagi_crypto::random_array();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
