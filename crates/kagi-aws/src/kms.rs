//! The AWS KMS JSON API ("TrentService", JSON 1.1): the subset kagi answers, its messages and
//! AWS's error names. An AWS SDK talks to kagi by changing only its endpoint URL.
//!
//! Requests are `POST /` with `X-Amz-Target: TrentService.<Operation>` and
//! `Content-Type: application/x-amz-json-1.1`; errors are `{"__type": NAME, "message": ..}`
//! with HTTP 400 (500 for internal faults, 503 when a dependency is down), which the SDKs turn
//! into exceptions named after `__type`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// SigV4 service name of the KMS API.
pub const SERVICE: &str = "kms";
/// Prefix of `X-Amz-Target`.
pub const TARGET_PREFIX: &str = "TrentService.";
/// The response content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Account id shown in ARNs: kagi has no AWS account, so a fixed, obviously-not-AWS one.
pub const ACCOUNT: &str = "000000000000";

/// The operations kagi answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    CreateKey,
    DescribeKey,
    ListKeys,
    CreateAlias,
    ListAliases,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    Encrypt,
    Decrypt,
    ReEncrypt,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    EnableKeyRotation,
    RotateKeyOnDemand,
    GenerateRandom,
}

impl Op {
    const ALL: [(Op, &'static str); 17] = [
        (Op::CreateKey, "CreateKey"),
        (Op::DescribeKey, "DescribeKey"),
        (Op::ListKeys, "ListKeys"),
        (Op::CreateAlias, "CreateAlias"),
        (Op::ListAliases, "ListAliases"),
        (Op::GenerateDataKey, "GenerateDataKey"),
        (
            Op::GenerateDataKeyWithoutPlaintext,
            "GenerateDataKeyWithoutPlaintext",
        ),
        (Op::Encrypt, "Encrypt"),
        (Op::Decrypt, "Decrypt"),
        (Op::ReEncrypt, "ReEncrypt"),
        (Op::EnableKey, "EnableKey"),
        (Op::DisableKey, "DisableKey"),
        (Op::ScheduleKeyDeletion, "ScheduleKeyDeletion"),
        (Op::CancelKeyDeletion, "CancelKeyDeletion"),
        (Op::EnableKeyRotation, "EnableKeyRotation"),
        (Op::RotateKeyOnDemand, "RotateKeyOnDemand"),
        (Op::GenerateRandom, "GenerateRandom"),
    ];

    /// Parses an `X-Amz-Target` value.
    pub fn from_target(target: &str) -> Result<Self, KmsError> {
        let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
            KmsError::new(
                "UnknownOperationException",
                "X-Amz-Target is not TrentService.<Operation>",
            )
        })?;
        Self::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(o, _)| *o)
            .ok_or_else(|| {
                KmsError::new(
                    "UnknownOperationException",
                    format!("kagi does not implement the KMS operation {name:?}"),
                )
            })
    }

    /// The operation's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(o, _)| *o == self)
            .map_or("", |(_, n)| n)
    }
}

/// An error answer: `__type` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    /// AWS's exception name.
    pub code: &'static str,
    /// One sentence.
    pub message: String,
}

impl KmsError {
    /// An error.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A `ValidationException`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }

    /// HTTP status: AWS answers client faults with 400.
    pub fn status(&self) -> u16 {
        match self.code {
            "KMSInternalException" => 500,
            "DependencyTimeoutException" => 503,
            _ => 400,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"__type": self.code, "message": self.message}).to_string()
    }
}

/// Parses a request body (an empty body is `{}`), or `SerializationException`.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, KmsError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        KmsError::new(
            "SerializationException",
            format!("the request body is not the expected JSON: {e}"),
        )
    })
}

/// How a request names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key id (kagi key name) or key ARN.
    Key(String),
    /// `alias/NAME` or an alias ARN.
    Alias(String),
}

impl KeyRef {
    /// Parses `NAME`, `arn:aws:kms:R:A:key/NAME`, `alias/NAME`, `arn:aws:kms:R:A:alias/NAME`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        if s.is_empty() || s.len() > 2048 {
            return Err(KmsError::validation("KeyId must be 1-2048 characters"));
        }
        let resource = if let Some(arn) = s.strip_prefix("arn:") {
            let parts: Vec<&str> = arn.splitn(5, ':').collect();
            match parts[..] {
                [_, "kms", _, _, res] => res,
                _ => {
                    return Err(KmsError::new(
                        "NotFoundException",
                        format!("{s} is not a KMS key ARN"),
                    ))
                }
            }
        } else {
            s
        };
        if let Some(a) = resource.strip_prefix("alias/") {
            Ok(Self::Alias(format!("alias/{a}")))
        } else if let Some(k) = resource
            .strip_prefix("key/")
            .filter(|_| s.starts_with("arn:"))
        {
            Ok(Self::Key(k.to_string()))
        } else {
            Ok(Self::Key(resource.to_string()))
        }
    }
}

/// A key's ARN.
pub fn key_arn(region: &str, name: &str) -> String {
    format!("arn:aws:kms:{region}:{ACCOUNT}:key/{name}")
}

/// An alias's ARN.
pub fn alias_arn(region: &str, alias: &str) -> String {
    format!("arn:aws:kms:{region}:{ACCOUNT}:{alias}")
}

/// Checks an alias name: `alias/` then 1-250 of `[A-Za-z0-9/_-]`, not `alias/aws/`.
pub fn validate_alias(a: &str) -> Result<(), KmsError> {
    let ok = a.strip_prefix("alias/").is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 250
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    });
    if !ok {
        return Err(KmsError::validation(format!(
            "AliasName {a:?} must be alias/ followed by 1-250 of letters, digits, '/', '_' and '-'"
        )));
    }
    if a.starts_with("alias/aws/") {
        return Err(KmsError::validation(
            "alias/aws/ names are reserved for AWS managed keys",
        ));
    }
    Ok(())
}

/// `EncryptionContext` of a request.
pub type Context = Option<BTreeMap<String, String>>;

/// The fields of every request kagi answers, all optional; each operation checks the ones
/// it needs (AWS's own JSON is one flat object per operation).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct Request {
    pub key_id: Option<String>,
    pub description: Option<String>,
    pub key_usage: Option<String>,
    pub key_spec: Option<String>,
    pub customer_master_key_spec: Option<String>,
    pub origin: Option<String>,
    pub number_of_bytes: Option<u32>,
    pub encryption_context: Context,
    pub plaintext: Option<String>,
    pub ciphertext_blob: Option<String>,
    pub encryption_algorithm: Option<String>,
    pub source_encryption_context: Context,
    pub source_key_id: Option<String>,
    pub destination_key_id: Option<String>,
    pub destination_encryption_context: Context,
    pub pending_window_in_days: Option<u32>,
    pub rotation_period_in_days: Option<u32>,
    pub alias_name: Option<String>,
    pub target_key_id: Option<String>,
    pub limit: Option<u32>,
    pub marker: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub tags: Option<Vec<serde_json::Value>>,
    pub policy: Option<String>,
    pub multi_region: Option<bool>,
    pub dry_run: Option<bool>,
}

impl Request {
    /// A required string field, or `ValidationException`.
    pub fn need<'a>(field: &'a Option<String>, name: &str) -> Result<&'a str, KmsError> {
        field
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| KmsError::validation(format!("{name} is required")))
    }
}

/// Data key length from `KeySpec`/`NumberOfBytes` (exactly one, as AWS requires).
pub fn data_key_len(r: &Request) -> Result<usize, KmsError> {
    match (r.key_spec.as_deref(), r.number_of_bytes) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "give KeySpec or NumberOfBytes, not both",
        )),
        (Some("AES_256"), None) => Ok(32),
        (Some("AES_128"), None) => Ok(16),
        (Some(s), None) => Err(KmsError::validation(format!(
            "KeySpec {s:?} is not AES_256 or AES_128"
        ))),
        (None, Some(n)) if (1..=1024).contains(&n) => Ok(n as usize),
        (None, Some(_)) => Err(KmsError::validation("NumberOfBytes must be 1-1024")),
        (None, None) => Err(KmsError::validation("KeySpec or NumberOfBytes is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_refs() {
        assert_eq!(
            Op::from_target("TrentService.ReEncrypt").unwrap(),
            Op::ReEncrypt
        );
        assert_eq!(
            Op::from_target("TrentService.Sign").unwrap_err().code,
            "UnknownOperationException"
        );
        assert_eq!(Op::ReEncrypt.name(), "ReEncrypt");
        assert_eq!(KeyRef::parse("k1").unwrap(), KeyRef::Key("k1".into()));
        assert_eq!(
            KeyRef::parse(&key_arn("eu-west-1", "a/b")).unwrap(),
            KeyRef::Key("a/b".into())
        );
        assert_eq!(
            KeyRef::parse("alias/x").unwrap(),
            KeyRef::Alias("alias/x".into())
        );
        assert_eq!(
            KeyRef::parse(&alias_arn("r", "alias/x")).unwrap(),
            KeyRef::Alias("alias/x".into())
        );
        assert!(KeyRef::parse("arn:aws:s3:::bucket").is_err());
        assert!(validate_alias("alias/aws/x").is_err());
        assert!(validate_alias("x").is_err());
    }

    #[test]
    fn data_key_lengths() {
        let r = |ks: Option<&str>, n: Option<u32>| Request {
            key_spec: ks.map(String::from),
            number_of_bytes: n,
            ..Default::default()
        };
        assert_eq!(data_key_len(&r(Some("AES_256"), None)).unwrap(), 32);
        assert_eq!(data_key_len(&r(None, Some(64))).unwrap(), 64);
        assert!(data_key_len(&r(None, None)).is_err());
        assert!(data_key_len(&r(Some("AES_256"), Some(3))).is_err());
        assert_eq!(parse_body::<Request>(b"").unwrap().key_id, None);
        assert_eq!(
            parse_body::<Request>(b"[").unwrap_err().code,
            "SerializationException"
        );
    }
}
