//! The master key inside an HSM, through PKCS#11 (`[seal] type = "pkcs11"`).
//!
//! The key is a non-extractable AES-256 secret key found by label on a token found by label
//! (or slot number). Wrapping uses the HSM's own AES-GCM (`CKM_AES_GCM`, 96-bit random IV, 128-bit
//! tag) and produces exactly the software protector's bytes — `nonce || ciphertext || tag` — so
//! blobs do not care which protector made them. The key never leaves the HSM; kagi holds only a
//! logged-in session.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use kagi_crypto::{SecretBytes, NONCE_LEN};

use crate::seal::MasterKey;
use crate::ServiceError;

/// Where the HSM key is.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    pub library: PathBuf,
    /// Token label (or `slot`).
    pub token_label: Option<String>,
    /// Slot id (or `token_label`).
    pub slot: Option<u64>,
    /// The user PIN.
    pub pin: String,
    /// Label of the AES-256 master key object.
    pub key_label: String,
}

/// A master key held by an HSM.
pub struct Pkcs11MasterKey {
    // Field order: the session must close before the library is finalized.
    session: Mutex<Session>,
    key: ObjectHandle,
    _ctx: Pkcs11,
    what: String,
}

impl std::fmt::Debug for Pkcs11MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11MasterKey({})", self.what)
    }
}

fn hsm(what: &str) -> impl Fn(cryptoki::error::Error) -> ServiceError + '_ {
    move |e| ServiceError::Storage(format!("HSM: {what}: {e}"))
}

impl Pkcs11MasterKey {
    /// Loads the module, logs in to the token and finds the key; every failure says which
    /// of those steps failed.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, ServiceError> {
        let ctx = Pkcs11::new(&cfg.library).map_err(|e| {
            ServiceError::Storage(format!(
                "HSM: cannot load the PKCS#11 module {}: {e}",
                cfg.library.display()
            ))
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(hsm("cannot initialize the PKCS#11 module"))?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(hsm("cannot list slots"))?;
        let mut found = None;
        for s in slots {
            let info = ctx
                .get_token_info(s)
                .map_err(hsm("cannot read token info"))?;
            let by_label = cfg
                .token_label
                .as_deref()
                .is_some_and(|l| info.label().trim() == l);
            let by_slot = cfg.slot.is_some_and(|n| s.id() == n);
            if by_label || by_slot {
                found = Some(s);
                break;
            }
        }
        let token = cfg
            .token_label
            .clone()
            .or(cfg.slot.map(|s| format!("slot {s}")))
            .unwrap_or_default();
        let slot = found.ok_or_else(|| {
            ServiceError::Storage(format!(
                "HSM: no token {token:?} in {}",
                cfg.library.display()
            ))
        })?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(hsm("cannot open a session"))?;
        session
            .login(UserType::User, Some(&AuthPin::from(cfg.pin.clone())))
            .map_err(hsm(&format!(
                "cannot log in to token {token:?} (wrong PIN?)"
            )))?;
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(cfg.key_label.as_bytes().to_vec()),
            ])
            .map_err(hsm("cannot search for the master key"))?;
        let key = match keys.as_slice() {
            [k] => *k,
            [] => {
                return Err(ServiceError::Storage(format!(
                    "HSM: no AES key labelled {:?} on token {token:?}",
                    cfg.key_label
                )))
            }
            _ => {
                return Err(ServiceError::Storage(format!(
                "HSM: {} AES keys are labelled {:?} on token {token:?}; the label must name one",
                keys.len(),
                cfg.key_label
            )))
            }
        };
        let attrs = session
            .get_attributes(key, &[AttributeType::Extractable, AttributeType::ValueLen])
            .map_err(hsm("cannot read the master key's attributes"))?;
        for a in attrs {
            match a {
                Attribute::Extractable(true) => {
                    return Err(ServiceError::Storage(format!(
                        "HSM: the key {:?} is extractable; the master key must never leave the HSM (make it with --sensitive, not extractable)",
                        cfg.key_label
                    )))
                }
                Attribute::ValueLen(n) if u64::from(n) != 32 => {
                    return Err(ServiceError::Storage(format!(
                        "HSM: the key {:?} is {} bytes; the master key must be AES-256",
                        cfg.key_label,
                        u64::from(n)
                    )))
                }
                _ => {}
            }
        }
        Ok(Self {
            session: Mutex::new(session),
            key,
            _ctx: ctx,
            what: format!("{token}/{}", cfg.key_label),
        })
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>, ServiceError> {
        self.session
            .lock()
            .map_err(|_| ServiceError::Internal("HSM session lock poisoned".into()))
    }
}

impl MasterKey for Pkcs11MasterKey {
    fn wrap(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, ServiceError> {
        let mut iv: [u8; NONCE_LEN] = kagi_crypto::random_array();
        let nonce = iv;
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| ServiceError::Internal(format!("GCM parameters: {e}")))?;
        let ct = self
            .session()?
            .encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
            .map_err(hsm("wrap failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretBytes, ServiceError> {
        if wrapped.len() < NONCE_LEN + 16 {
            return Err(ServiceError::Storage(
                "wrapped key material is truncated".into(),
            ));
        }
        let (n, ct) = wrapped.split_at(NONCE_LEN);
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(n);
        let params = GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| ServiceError::Internal(format!("GCM parameters: {e}")))?;
        let pt = self
            .session()?
            .decrypt(&Mechanism::AesGcm(params), self.key, ct)
            .map_err(|_| {
                ServiceError::Storage(
                    "the HSM cannot unwrap this material: it was wrapped by another master key, or altered"
                        .into(),
                )
            })?;
        Ok(SecretBytes::new(pt))
    }
}
