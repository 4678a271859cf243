//! Format-preserving tokenization on the core: FF1 (`kagi_token`) under an `fpe` key's
//! version, `tokenize` and `detokenize` as separate policy operations, one audit record per
//! batch (never a value or a token).
//!
//! Tokens carry no key version (they keep the value's format), so a tokenize answer names the
//! version it used and a detokenize takes it (default: the newest). After a rotation, tokens
//! made under an older version detokenize with that version named.

use kagi_keys::{KeyType, Operation};
use kagi_token::{FieldOptions, Template, TokenError};

use super::{Caller, KeyService, Trail, EMPTY_CTX};
use crate::ServiceError;

/// Most values in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Which field tokens are for: the template, its options (card digits kept, custom alphabet)
/// and the tweak. A token only detokenizes with the same field (and key version).
#[derive(Debug, Clone, Copy)]
pub struct TokenField<'a> {
    /// The template.
    pub template: Template,
    /// Card digits kept, custom alphabet.
    pub options: &'a FieldOptions,
    /// The FF1 tweak (e.g. `users.card`).
    pub tweak: &'a [u8],
}

fn token_error(i: usize, e: TokenError) -> ServiceError {
    ServiceError::BadRequest(format!("value {}: {e}", i + 1))
}

impl KeyService {
    async fn fpe_key(
        &self,
        c: &Caller,
        op: Operation,
        key: &str,
    ) -> Result<std::sync::Arc<super::LoadedKey>, ServiceError> {
        self.master()?;
        self.check(c, op, Some(key), &EMPTY_CTX, None)?;
        let k = self.key(key).await?;
        if k.record.key_type != KeyType::Fpe {
            return Err(ServiceError::BadRequest(format!(
                "key {key} is a {} key: tokenization needs a key made with --type fpe",
                k.record.key_type.as_str()
            )));
        }
        k.record.check_usable(if op == Operation::Tokenize {
            "tokenize"
        } else {
            "detokenize"
        })?;
        Ok(k)
    }

    /// Tokens for `values` under the key's newest version; returns that version.
    pub async fn tokenize(
        &self,
        c: &Caller,
        key: &str,
        field: TokenField<'_>,
        values: &[String],
    ) -> Result<(u32, Vec<String>), ServiceError> {
        let TokenField {
            template,
            options,
            tweak,
        } = field;
        let mut t = Trail::new("tokenize", Some(key), &EMPTY_CTX, None);
        t.note = Some(format!(
            "{} values, template {}",
            values.len(),
            template.as_str()
        ));
        let r = async {
            if values.len() > MAX_BATCH {
                return Err(ServiceError::BadRequest(format!(
                    "at most {MAX_BATCH} values per request"
                )));
            }
            let k = self.fpe_key(c, Operation::Tokenize, key).await?;
            let v = k.record.current_version();
            t.version = Some(v);
            let tk = k.tokenizers.get(&v).ok_or_else(|| {
                ServiceError::Internal(format!("key {key} version {v} material is missing"))
            })?;
            let out = values
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    tk.tokenize_with(template, options, tweak, x)
                        .map_err(|e| token_error(i, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((v, out))
        }
        .await;
        self.finish(c, t, r).await
    }

    /// The values behind `tokens`, made under `version` (default: the newest).
    pub async fn detokenize(
        &self,
        c: &Caller,
        key: &str,
        field: TokenField<'_>,
        version: Option<u32>,
        tokens: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        let TokenField {
            template,
            options,
            tweak,
        } = field;
        let mut t = Trail::new("detokenize", Some(key), &EMPTY_CTX, None);
        t.note = Some(format!(
            "{} tokens, template {}",
            tokens.len(),
            template.as_str()
        ));
        let r = async {
            if tokens.len() > MAX_BATCH {
                return Err(ServiceError::BadRequest(format!(
                    "at most {MAX_BATCH} tokens per request"
                )));
            }
            let k = self.fpe_key(c, Operation::Detokenize, key).await?;
            let v = version.unwrap_or_else(|| k.record.current_version());
            t.version = Some(v);
            let k = self.with_version(k, v).await?;
            let tk = k
                .tokenizers
                .get(&v)
                .ok_or_else(|| ServiceError::BadRequest(format!("key {key} has no version {v}")))?;
            tokens
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    tk.detokenize_with(template, options, tweak, x)
                        .map_err(|e| token_error(i, e))
                })
                .collect()
        }
        .await;
        self.finish(c, t, r).await
    }
}
