//! The AWS KMS external key store (XKS) proxy API v1: paths, messages, errors, and the
//! AAD/ciphertext-metadata binding. No I/O and no keys: the server supplies the AES-GCM.
//!
//! What kagi puts into AES-GCM for an XKS encryption (the spec's binding rule, with a domain
//! prefix so an XKS ciphertext can never be taken for a native kagi blob, whose AAD starts
//! with its format byte 0x01):
//! ```text
//! "kagi-xks-v1" 0x00 || u16be(len(AAD)) || AAD || u8(len(md)) || md
//! ```
//! where `md` is the `ciphertextMetadata` kagi returns: `0x01 || u32be(key version)`, so a
//! rotated key still decrypts what its older versions encrypted.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// SigV4 service name of the XKS API.
pub const SERVICE: &str = "kms-xks-proxy";
/// The path every XKS URI has after its prefix.
pub const API_PATH: &str = "/kms/xks/v1";
/// Largest plaintext accepted (the spec asks for at least 4,300 bytes).
pub const MAX_PLAINTEXT: usize = 8192;
/// Largest AAD accepted (the spec asks for at least 8,192 bytes).
pub const MAX_AAD: usize = 16384;
/// Longest ARN or other metadata string accepted (the spec: ARNs up to 2,048; policy context values hold as much).
pub const MAX_METADATA_FIELD: usize = 2048;
const DOMAIN: &[u8] = b"kagi-xks-v1\0";
/// Format byte of kagi's ciphertext metadata.
const METADATA_V1: u8 = 1;

/// The error names of the spec's table, each with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum ErrorName {
    ValidationException,
    InvalidStateException,
    InvalidCiphertextException,
    InvalidKeyUsageException,
    AuthenticationFailedException,
    AccessDeniedException,
    KeyNotFoundException,
    InvalidUriPathException,
    ThrottlingException,
    UnsupportedOperationException,
    DependencyTimeoutException,
    InternalException,
}

impl ErrorName {
    /// The name as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationException => "ValidationException",
            Self::InvalidStateException => "InvalidStateException",
            Self::InvalidCiphertextException => "InvalidCiphertextException",
            Self::InvalidKeyUsageException => "InvalidKeyUsageException",
            Self::AuthenticationFailedException => "AuthenticationFailedException",
            Self::AccessDeniedException => "AccessDeniedException",
            Self::KeyNotFoundException => "KeyNotFoundException",
            Self::InvalidUriPathException => "InvalidUriPathException",
            Self::ThrottlingException => "ThrottlingException",
            Self::UnsupportedOperationException => "UnsupportedOperationException",
            Self::DependencyTimeoutException => "DependencyTimeoutException",
            Self::InternalException => "InternalException",
        }
    }

    /// The HTTP status the spec gives it.
    pub fn status(self) -> u16 {
        match self {
            Self::ValidationException
            | Self::InvalidStateException
            | Self::InvalidCiphertextException
            | Self::InvalidKeyUsageException => 400,
            Self::AuthenticationFailedException => 401,
            Self::AccessDeniedException => 403,
            Self::KeyNotFoundException | Self::InvalidUriPathException => 404,
            Self::ThrottlingException => 429,
            Self::UnsupportedOperationException => 501,
            Self::DependencyTimeoutException => 503,
            Self::InternalException => 500,
        }
    }
}

/// An XKS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksError {
    /// Which error.
    pub name: ErrorName,
    /// One sentence.
    pub message: String,
}

impl XksError {
    /// An error with a message.
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }

    /// `{"errorName":..,"errorMessage":..}`; the message cut to printable ASCII under 512
    /// characters, as the spec requires.
    pub fn body(&self) -> String {
        let msg: String = self
            .message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(500)
            .collect();
        serde_json::json!({"errorName": self.name.as_str(), "errorMessage": msg}).to_string()
    }
}

fn invalid_path(why: &str) -> XksError {
    XksError::new(
        ErrorName::InvalidUriPathException,
        format!("the URI path is not an XKS API path: {why}"),
    )
}

/// What an XKS path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `.../health`
    Health,
    /// `.../keys/{id}/metadata`
    Metadata(String),
    /// `.../keys/{id}/encrypt`
    Encrypt(String),
    /// `.../keys/{id}/decrypt`
    Decrypt(String),
}

/// Normalizes a logical key store prefix: `acme`, `/acme` and `/acme/` all become `/acme`;
/// the empty prefix is `""`. 0-128 characters of `[a-zA-Z0-9/_-]`.
pub fn normalize_prefix(p: &str) -> Result<String, String> {
    let t = p.trim_matches('/');
    if t.len() > 120
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        return Err(format!(
            "the XKS path prefix {p:?} is not at most 120 characters of letters, digits, '/', '_' and '-'"
        ));
    }
    if t.contains("//") {
        return Err(format!("the XKS path prefix {p:?} has an empty segment"));
    }
    // The key service serves its console under /ui.
    if t == "ui" || t.starts_with("ui/") {
        return Err(format!(
            "the XKS path prefix {p:?} is taken: /ui is the console's"
        ));
    }
    Ok(if t.is_empty() {
        String::new()
    } else {
        format!("/{t}")
    })
}

/// The `XksProxyUriPath` the KMS console wants for a prefix.
pub fn uri_path(prefix: &str) -> String {
    format!("{prefix}{API_PATH}")
}

/// Splits a request path into its prefix and route, or `InvalidUriPathException`.
pub fn parse_path(path: &str) -> Result<(String, Route), XksError> {
    if path.len() > 256 {
        return Err(invalid_path("it is longer than 256 characters"));
    }
    let at = path
        .find(API_PATH)
        .ok_or_else(|| invalid_path("it has no /kms/xks/v1"))?;
    let prefix = normalize_prefix(&path[..at]).map_err(|e| invalid_path(&e))?;
    if path[..at] != prefix {
        return Err(invalid_path("the prefix is not in its normal form"));
    }
    let rest = &path[at + API_PATH.len()..];
    let route = match rest
        .strip_prefix('/')
        .map(|r| r.split('/').collect::<Vec<_>>())
        .as_deref()
    {
        Some(["health"]) => Route::Health,
        Some(["keys", id, op]) => {
            let ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(invalid_path(
                    "the external key id is not 1-128 of [A-Za-z0-9._-]",
                ));
            }
            match *op {
                "metadata" => Route::Metadata(id.to_string()),
                "encrypt" => Route::Encrypt(id.to_string()),
                "decrypt" => Route::Decrypt(id.to_string()),
                _ => {
                    return Err(invalid_path(
                        "the key operation is not metadata, encrypt or decrypt",
                    ))
                }
            }
        }
        _ => {
            return Err(invalid_path(
                "it is not .../health or .../keys/{id}/{metadata|encrypt|decrypt}",
            ))
        }
    };
    Ok((prefix, route))
}

/// `requestMetadata`, as KMS sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata {
    /// The IAM principal that called KMS.
    #[serde(default)]
    pub aws_principal_arn: Option<String>,
    /// The KMS operation (unknown values are accepted).
    #[serde(default)]
    pub kms_operation: Option<String>,
    /// KMS's request id, for CloudTrail correlation.
    #[serde(default)]
    pub kms_request_id: Option<String>,
    /// The KMS key's ARN.
    #[serde(default)]
    pub kms_key_arn: Option<String>,
    /// The AWS service that called KMS for the principal.
    #[serde(default)]
    pub kms_via_service: Option<String>,
    /// The VPC the call came from.
    #[serde(default)]
    pub aws_source_vpc: Option<String>,
    /// The VPC endpoint the call came through.
    #[serde(default)]
    pub aws_source_vpce: Option<String>,
}

impl RequestMetadata {
    /// Checks the fields the spec requires; `key_op` adds `awsPrincipalArn`.
    pub fn validate(&self, key_op: bool) -> Result<(), XksError> {
        let v = |m: &str| XksError::new(ErrorName::ValidationException, m);
        let present = |f: &Option<String>| f.as_deref().is_some_and(|s| !s.is_empty());
        if !present(&self.kms_operation) {
            return Err(v("requestMetadata.kmsOperation is missing"));
        }
        if !present(&self.kms_request_id) {
            return Err(v("requestMetadata.kmsRequestId is missing"));
        }
        if key_op && !present(&self.aws_principal_arn) {
            return Err(v("requestMetadata.awsPrincipalArn is missing"));
        }
        for f in self.fields() {
            if f.1.len() > MAX_METADATA_FIELD || f.1.chars().any(char::is_control) {
                return Err(v(&format!(
                    "requestMetadata.{} is longer than {MAX_METADATA_FIELD} characters or holds control characters",
                    f.0
                )));
            }
        }
        Ok(())
    }

    /// `(name, value)` of every field present, for policy and audit.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("awsPrincipalArn", &self.aws_principal_arn),
            ("kmsOperation", &self.kms_operation),
            ("kmsRequestId", &self.kms_request_id),
            ("kmsKeyArn", &self.kms_key_arn),
            ("kmsViaService", &self.kms_via_service),
            ("awsSourceVpc", &self.aws_source_vpc),
            ("awsSourceVpce", &self.aws_source_vpce),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)))
        .collect()
    }
}

/// A request whose body is only `requestMetadata` (health, metadata).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOnlyRequest {
    /// Required.
    pub request_metadata: Option<RequestMetadata>,
}

/// Encrypt.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptRequest {
    /// Required.
    pub request_metadata: Option<RequestMetadata>,
    /// Base64.
    pub plaintext: Option<String>,
    /// Must be `AES_GCM`.
    pub encryption_algorithm: Option<String>,
    /// Base64, optional.
    pub additional_authenticated_data: Option<String>,
    /// `SHA_256`, optional.
    pub ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// Decrypt.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptRequest {
    /// Required.
    pub request_metadata: Option<RequestMetadata>,
    /// Must be `AES_GCM`.
    pub encryption_algorithm: Option<String>,
    /// Base64.
    pub ciphertext: Option<String>,
    /// Base64, 12 or 16 bytes.
    pub initialization_vector: Option<String>,
    /// Base64, 16 bytes.
    pub authentication_tag: Option<String>,
    /// Base64, optional.
    pub additional_authenticated_data: Option<String>,
    /// Base64, optional.
    pub ciphertext_metadata: Option<String>,
}

fn validation(m: impl Into<String>) -> XksError {
    XksError::new(ErrorName::ValidationException, m)
}

/// Parses a JSON body into `T`, or `ValidationException` naming what is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, XksError> {
    serde_json::from_slice(body)
        .map_err(|e| validation(format!("the request body is not the expected JSON: {e}")))
}

/// `requestMetadata`, checked.
pub fn require_metadata(
    m: Option<RequestMetadata>,
    key_op: bool,
) -> Result<RequestMetadata, XksError> {
    let m = m.ok_or_else(|| validation("requestMetadata is missing"))?;
    m.validate(key_op)?;
    Ok(m)
}

fn b64_field(name: &str, v: Option<&str>, max: usize) -> Result<Option<Vec<u8>>, XksError> {
    let Some(s) = v else { return Ok(None) };
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return Err(validation(format!("{name} is longer than {max} bytes")));
    }
    let b = B64
        .decode(s)
        .map_err(|_| validation(format!("{name} is not valid base64")))?;
    if b.len() > max {
        return Err(validation(format!("{name} is longer than {max} bytes")));
    }
    Ok(Some(b))
}

fn require_aes_gcm(alg: Option<&str>) -> Result<(), XksError> {
    match alg {
        Some("AES_GCM") => Ok(()),
        None => Err(validation("encryptionAlgorithm is missing")),
        Some(_) => Err(validation("encryptionAlgorithm must be AES_GCM")),
    }
}

/// An encrypt request, decoded and checked.
#[derive(Debug)]
pub struct EncryptInput {
    /// Metadata.
    pub metadata: RequestMetadata,
    /// The plaintext (never logged).
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    /// The AAD (empty when absent).
    pub aad: Vec<u8>,
    /// Whether the caller asked for `ciphertextDataIntegrityValue`.
    pub want_cdiv: bool,
}

impl EncryptRequest {
    /// Decodes and checks every field.
    pub fn decode(self) -> Result<EncryptInput, XksError> {
        let metadata = require_metadata(self.request_metadata, true)?;
        require_aes_gcm(self.encryption_algorithm.as_deref())?;
        let plaintext = b64_field("plaintext", self.plaintext.as_deref(), MAX_PLAINTEXT)?
            .ok_or_else(|| validation("plaintext is missing"))?;
        let aad = b64_field(
            "additionalAuthenticatedData",
            self.additional_authenticated_data.as_deref(),
            MAX_AAD,
        )?
        .unwrap_or_default();
        let want_cdiv = match self.ciphertext_data_integrity_value_algorithm.as_deref() {
            None => false,
            Some("SHA_256") => true,
            Some(_) => {
                return Err(validation(
                    "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
                ))
            }
        };
        Ok(EncryptInput {
            metadata,
            plaintext: zeroize::Zeroizing::new(plaintext),
            aad,
            want_cdiv,
        })
    }
}

/// A decrypt request, decoded and checked.
#[derive(Debug)]
pub struct DecryptInput {
    /// Metadata.
    pub metadata: RequestMetadata,
    /// Ciphertext without tag.
    pub ciphertext: Vec<u8>,
    /// 12 bytes (kagi only makes 12-byte IVs).
    pub iv: [u8; 12],
    /// 16 bytes.
    pub tag: [u8; 16],
    /// The AAD (empty when absent).
    pub aad: Vec<u8>,
    /// The ciphertext metadata (empty when absent).
    pub ciphertext_metadata: Vec<u8>,
}

impl DecryptRequest {
    /// Decodes and checks every field.
    pub fn decode(self) -> Result<DecryptInput, XksError> {
        let metadata = require_metadata(self.request_metadata, true)?;
        require_aes_gcm(self.encryption_algorithm.as_deref())?;
        let ciphertext = b64_field("ciphertext", self.ciphertext.as_deref(), MAX_PLAINTEXT)?
            .ok_or_else(|| validation("ciphertext is missing"))?;
        let iv = b64_field(
            "initializationVector",
            self.initialization_vector.as_deref(),
            16,
        )?
        .ok_or_else(|| validation("initializationVector is missing"))?;
        let tag = b64_field("authenticationTag", self.authentication_tag.as_deref(), 16)?
            .ok_or_else(|| validation("authenticationTag is missing"))?;
        let aad = b64_field(
            "additionalAuthenticatedData",
            self.additional_authenticated_data.as_deref(),
            MAX_AAD,
        )?
        .unwrap_or_default();
        let ciphertext_metadata = b64_field(
            "ciphertextMetadata",
            self.ciphertext_metadata.as_deref(),
            20,
        )?
        .unwrap_or_default();
        let invalid = |m: &str| XksError::new(ErrorName::InvalidCiphertextException, m);
        let iv: [u8; 12] = iv
            .try_into()
            .map_err(|_| invalid("initializationVector is not the 12 bytes kagi makes"))?;
        let tag: [u8; 16] = tag
            .try_into()
            .map_err(|_| validation("authenticationTag is not 16 bytes"))?;
        Ok(DecryptInput {
            metadata,
            ciphertext,
            iv,
            tag,
            aad,
            ciphertext_metadata,
        })
    }
}

/// kagi's ciphertext metadata for a key version.
pub fn ciphertext_metadata(version: u32) -> [u8; 5] {
    let mut md = [METADATA_V1, 0, 0, 0, 0];
    md[1..].copy_from_slice(&version.to_be_bytes());
    md
}

/// The key version in kagi's ciphertext metadata, or `InvalidCiphertextException`.
pub fn metadata_version(md: &[u8]) -> Result<u32, XksError> {
    match md {
        [METADATA_V1, a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(XksError::new(
            ErrorName::InvalidCiphertextException,
            "ciphertextMetadata is not one kagi made",
        )),
    }
}

/// The AES-GCM associated data binding the caller's AAD and the ciphertext metadata.
pub fn gcm_aad(aad: &[u8], md: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 3 + aad.len() + md.len());
    out.extend_from_slice(DOMAIN);
    // Both lengths fit: the decoders cap AAD at MAX_AAD and metadata at 20 bytes.
    out.extend_from_slice(&(aad.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(aad);
    out.push(md.len().min(255) as u8);
    out.extend_from_slice(md);
    out
}

/// `ciphertextDataIntegrityValue` (spec appendix C):
/// `SHA-256(AAD || ciphertextMetadata || IV || ciphertext || tag)`.
pub fn cdiv(aad: &[u8], md: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = kagi_crypto::Sha256::default();
    for p in [aad, md, iv, ciphertext, tag] {
        h.update(p);
    }
    h.finish()
}

/// GetKeyMetadata's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataResponse {
    /// Always `AES_256`.
    pub key_spec: &'static str,
    /// `ENCRYPT`, `DECRYPT`.
    pub key_usage: Vec<&'static str>,
    /// `ENABLED` or `DISABLED`.
    pub key_status: &'static str,
}

/// Encrypt's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptResponse {
    /// Base64, as long as the plaintext.
    pub ciphertext: String,
    /// Base64 of kagi's metadata.
    pub ciphertext_metadata: String,
    /// Base64, 12 bytes.
    pub initialization_vector: String,
    /// Base64, 16 bytes.
    pub authentication_tag: String,
    /// Base64 SHA-256, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
}

/// Decrypt's answer.
#[derive(Debug, Serialize)]
pub struct DecryptResponse {
    /// Base64.
    pub plaintext: String,
}

/// One EKM entry of the health answer.
#[derive(Debug, Clone, Serialize)]
pub struct EkmFleetDetail {
    /// Node id.
    pub id: String,
    /// What holds the master key.
    pub model: String,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE`.
    #[serde(rename = "healthStatus")]
    pub health_status: &'static str,
}

/// GetHealthStatus's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// Nodes answering this endpoint.
    pub xks_proxy_fleet_size: u32,
    /// `kagi`.
    pub xks_proxy_vendor: String,
    /// `kagi VERSION`.
    pub xks_proxy_model: String,
    /// Who makes the key manager.
    pub ekm_vendor: String,
    /// 1-10 entries.
    pub ekm_fleet_details: Vec<EkmFleetDetail>,
}

/// Encodes bytes as base64 for a response.
pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/kms/xks/v1/health").unwrap(),
            (String::new(), Route::Health)
        );
        assert_eq!(
            parse_path("/acme/eu/kms/xks/v1/keys/k-1.a_b/encrypt").unwrap(),
            ("/acme/eu".into(), Route::Encrypt("k-1.a_b".into()))
        );
        for bad in [
            "/acme/kms/xks/v1/keys//encrypt",
            "/acme/kms/xks/v1/keys/a/sign",
            "/acme/kms/xks/v1/keys/a%20b/encrypt",
            "/ac me/kms/xks/v1/health",
            "/acme/kms/xks/v1/health/x",
            "/acme//x/kms/xks/v1/health",
            "/kms/xks/v2/health",
        ] {
            let e = parse_path(bad).unwrap_err();
            assert_eq!(e.name, ErrorName::InvalidUriPathException, "{bad}");
            assert_eq!(e.name.status(), 404);
        }
        assert_eq!(normalize_prefix("acme/").unwrap(), "/acme");
        assert!(normalize_prefix("ui").unwrap_err().contains("console"));
        assert!(normalize_prefix("/ui/x").is_err());
        assert_eq!(normalize_prefix("uix").unwrap(), "/uix");
        assert_eq!(uri_path("/acme"), "/acme/kms/xks/v1");
    }

    #[test]
    fn metadata_requirements() {
        let body = br#"{"requestMetadata":{"kmsOperation":"Encrypt","kmsRequestId":"r"},"plaintext":"AA==","encryptionAlgorithm":"AES_GCM"}"#;
        let e = parse_body::<EncryptRequest>(body)
            .unwrap()
            .decode()
            .unwrap_err();
        assert_eq!(e.message, "requestMetadata.awsPrincipalArn is missing");
        let e = parse_body::<EncryptRequest>(br#"{"plaintext":"AA=="}"#)
            .unwrap()
            .decode()
            .unwrap_err();
        assert_eq!(e.message, "requestMetadata is missing");
        let e = parse_body::<EncryptRequest>(br#"{"requestMetadata":{}}"#)
            .unwrap()
            .decode()
            .unwrap_err();
        assert_eq!(e.name, ErrorName::ValidationException);
        assert!(parse_body::<EncryptRequest>(b"{").is_err());
    }

    #[test]
    fn binding_and_cdiv() {
        assert_ne!(gcm_aad(b"a", b""), gcm_aad(b"", b"a"));
        assert_ne!(
            gcm_aad(b"", &ciphertext_metadata(1)),
            gcm_aad(b"", &ciphertext_metadata(2))
        );
        assert_eq!(metadata_version(&ciphertext_metadata(7)).unwrap(), 7);
        assert!(metadata_version(b"\x02abcd").is_err());
        assert_eq!(
            cdiv(b"a", b"b", b"c", b"d", b"e"),
            kagi_crypto::sha256(b"abcde")
        );
    }

    #[test]
    fn error_body_is_printable_and_short() {
        let e = XksError::new(ErrorName::ThrottlingException, "x\u{7}".repeat(600));
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errorName"], "ThrottlingException");
        let m = v["errorMessage"].as_str().unwrap();
        assert!(m.len() < 512 && m.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }
}
