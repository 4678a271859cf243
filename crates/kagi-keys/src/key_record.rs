//! A customer key (KEK): its identity, versions and lifecycle state machine.
//!
//! ```text
//!            disable              schedule-deletion             pending window over
//! Enabled ───────────▶ Disabled ─────────────────▶ PendingDeletion ─────────────────▶ Destroyed
//!    ▲  ◀───────────      │     ◀───────────────────     │ cancel-deletion (→ Disabled, as AWS KMS)
//!    │      enable        └────────── schedule-deletion from Enabled too ──────────────
//! ```
//! Only `Enabled` keys encrypt, generate or decrypt; `Destroyed` is final and its material
//! is gone (crypto-shredding).

use serde::{Deserialize, Serialize};

use crate::KeyModelError;

/// A key's immutable 128-bit id, carried in every blob it seals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// Lowercase hex, as shown to users and stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Self(v.try_into().ok()?))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}
impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("key id must be 32 hex digits"))
    }
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// AES-256-GCM key-encryption key (the default).
    #[default]
    Aes256Gcm,
    /// AES-256 key for FF1 format-preserving encryption.
    Fpe,
}

impl KeyType {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes256-gcm",
            Self::Fpe => "fpe",
        }
    }
}

/// Which directions a key works in (AWS KMS and XKS `keyUsage`). Encrypt-only keys suit a
/// writer that must never read back; decrypt-only keys retire a key for new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyUsage {
    /// Both (the default).
    #[default]
    EncryptDecrypt,
    /// Encrypt and generate data keys only.
    Encrypt,
    /// Decrypt only.
    Decrypt,
}

impl KeyUsage {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EncryptDecrypt => "encrypt-decrypt",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
        }
    }
    /// Whether the key may encrypt (and generate data keys).
    pub fn can_encrypt(self) -> bool {
        self != Self::Decrypt
    }
    /// Whether the key may decrypt.
    pub fn can_decrypt(self) -> bool {
        self != Self::Encrypt
    }
}

impl std::str::FromStr for KeyUsage {
    type Err = KeyModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::EncryptDecrypt, Self::Encrypt, Self::Decrypt]
            .into_iter()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| KeyModelError::InvalidUsage(s.to_string()))
    }
}

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Usable for everything.
    Enabled,
    /// The kill switch: refused for every cryptographic operation until enabled.
    Disabled,
    /// Waiting out the deletion window; unusable, cancellable.
    PendingDeletion,
    /// Material erased; final.
    Destroyed,
}

impl KeyState {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::PendingDeletion => "pending_deletion",
            Self::Destroyed => "destroyed",
        }
    }
}

/// One version of a key's material (the material itself is stored apart, wrapped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// 1, 2, 3 ...
    pub version: u32,
    /// Unix seconds.
    pub created_at: i64,
}

/// Everything about a key except its material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Immutable id.
    pub id: KeyId,
    /// Unique name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Key type.
    #[serde(default)]
    pub key_type: KeyType,
    /// Which directions it works in.
    #[serde(default)]
    pub usage: KeyUsage,
    /// Lifecycle state.
    pub state: KeyState,
    /// Unix seconds.
    pub created_at: i64,
    /// All versions ever made, oldest first. Never empty.
    pub versions: Vec<VersionInfo>,
    /// Rotate automatically this often.
    #[serde(default)]
    pub rotation_period_secs: Option<u64>,
    /// When pending deletion ends (unix seconds).
    #[serde(default)]
    pub deletion_date: Option<i64>,
    /// When the material was erased (unix seconds).
    #[serde(default)]
    pub destroyed_at: Option<i64>,
    /// Bumped by the store on every update. An update names the revision it was made from,
    /// so two nodes changing one key at once cannot overwrite each other.
    #[serde(default)]
    pub revision: u64,
}

/// Validates a key name: 1-128 of `A-Z a-z 0-9 . _ - /`.
pub fn validate_name(name: &str) -> Result<(), KeyModelError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(KeyModelError::InvalidKeyName(name.to_string()))
    }
}

impl KeyRecord {
    /// A new enabled key with version 1.
    pub fn new(
        id: KeyId,
        name: &str,
        description: &str,
        key_type: KeyType,
        rotation_period_secs: Option<u64>,
        now: i64,
    ) -> Result<Self, KeyModelError> {
        validate_name(name)?;
        Ok(Self {
            id,
            name: name.to_string(),
            description: description.to_string(),
            key_type,
            usage: KeyUsage::default(),
            state: KeyState::Enabled,
            created_at: now,
            versions: vec![VersionInfo {
                version: 1,
                created_at: now,
            }],
            rotation_period_secs,
            deletion_date: None,
            destroyed_at: None,
            revision: 0,
        })
    }

    /// The newest version, used for every new encryption.
    pub fn current_version(&self) -> u32 {
        self.versions.last().map_or(1, |v| v.version)
    }

    /// When the newest version was made.
    pub fn current_version_created(&self) -> i64 {
        self.versions
            .last()
            .map_or(self.created_at, |v| v.created_at)
    }

    fn refuse(&self, action: &'static str) -> KeyModelError {
        KeyModelError::BadTransition {
            name: self.name.clone(),
            state: self.state.as_str(),
            action,
        }
    }

    /// Ok when the key may be used for any cryptographic operation.
    pub fn check_usable(&self, action: &'static str) -> Result<(), KeyModelError> {
        match self.state {
            KeyState::Enabled => Ok(()),
            _ => Err(self.refuse(action)),
        }
    }

    /// True when `version` exists (destroyed keys have no usable versions).
    pub fn has_version(&self, version: u32) -> bool {
        self.versions.iter().any(|v| v.version == version)
    }

    /// Adds a version; the caller stores its wrapped material in the same transaction.
    pub fn rotate(&mut self, now: i64) -> Result<u32, KeyModelError> {
        self.check_usable("rotate")?;
        let next = self.current_version() + 1;
        self.versions.push(VersionInfo {
            version: next,
            created_at: now,
        });
        Ok(next)
    }

    /// True when automatic rotation is due at `now`.
    pub fn rotation_due(&self, now: i64) -> bool {
        match (self.state, self.rotation_period_secs) {
            (KeyState::Enabled, Some(p)) => {
                now.saturating_sub(self.current_version_created()) >= p as i64
            }
            _ => false,
        }
    }

    /// The kill switch.
    pub fn disable(&mut self) -> Result<(), KeyModelError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Disabled;
                Ok(())
            }
            _ => Err(self.refuse("disable")),
        }
    }

    /// Undoes [`disable`](Self::disable).
    pub fn enable(&mut self) -> Result<(), KeyModelError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = KeyState::Enabled;
                Ok(())
            }
            _ => Err(self.refuse("enable")),
        }
    }

    /// Starts the deletion window, ending at `now + pending_secs`.
    pub fn schedule_deletion(&mut self, now: i64, pending_secs: i64) -> Result<i64, KeyModelError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                let date = now.saturating_add(pending_secs);
                self.state = KeyState::PendingDeletion;
                self.deletion_date = Some(date);
                Ok(date)
            }
            _ => Err(self.refuse("schedule deletion")),
        }
    }

    /// Stops the deletion window; the key comes back disabled (as in AWS KMS) so that
    /// nothing uses it again without a deliberate `enable`.
    pub fn cancel_deletion(&mut self) -> Result<(), KeyModelError> {
        match self.state {
            KeyState::PendingDeletion => {
                self.state = KeyState::Disabled;
                self.deletion_date = None;
                Ok(())
            }
            _ => Err(self.refuse("cancel deletion")),
        }
    }

    /// True when the deletion window is over at `now`.
    pub fn destruction_due(&self, now: i64) -> bool {
        self.state == KeyState::PendingDeletion && self.deletion_date.is_some_and(|d| d <= now)
    }

    /// Marks the key destroyed; the caller erases every version's material in the same
    /// transaction.
    pub fn destroy(&mut self, now: i64) -> Result<(), KeyModelError> {
        if !self.destruction_due(now) {
            return Err(self.refuse("destroy before its deletion date"));
        }
        self.state = KeyState::Destroyed;
        self.destroyed_at = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyRecord {
        KeyRecord::new(KeyId([1; 16]), "k1", "", KeyType::Aes256Gcm, None, 100).unwrap()
    }

    #[test]
    fn rotate_adds_versions_only_when_enabled() {
        let mut k = key();
        assert_eq!(k.rotate(200).unwrap(), 2);
        assert_eq!(k.current_version(), 2);
        assert!(k.has_version(1) && k.has_version(2) && !k.has_version(3));
        k.disable().unwrap();
        assert!(k.rotate(300).is_err());
    }

    #[test]
    fn kill_switch_and_deletion() {
        let mut k = key();
        k.disable().unwrap();
        assert!(k.check_usable("decrypt").is_err());
        k.enable().unwrap();
        assert!(k.check_usable("decrypt").is_ok());
        let date = k.schedule_deletion(1000, 30 * 86400).unwrap();
        assert!(k.check_usable("decrypt").is_err());
        assert!(k.enable().is_err());
        assert!(k.destroy(date - 1).is_err());
        k.cancel_deletion().unwrap();
        assert_eq!(k.state, KeyState::Disabled);
        k.schedule_deletion(1000, 0).unwrap();
        k.destroy(1000).unwrap();
        assert_eq!(k.state, KeyState::Destroyed);
        assert!(k.cancel_deletion().is_err());
        assert!(k.enable().is_err());
        assert!(k.schedule_deletion(2000, 0).is_err());
    }

    #[test]
    fn rotation_due() {
        let mut k = key();
        assert!(!k.rotation_due(1_000_000));
        k.rotation_period_secs = Some(60);
        assert!(!k.rotation_due(159));
        assert!(k.rotation_due(160));
    }

    #[test]
    fn names() {
        for ok in ["k1", "app/db-key_2.v1"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
