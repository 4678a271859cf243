//! HPKE (RFC 9180) in auth mode with one suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003). The sender's static X25519 key
//! authenticates the message, so a receiver that knows the sender's public key learns both who
//! sent it and that nobody changed it. Used by kagi's native SPA packets.

use ::hpke::aead::ChaCha20Poly1305;
use ::hpke::kdf::HkdfSha256;
use ::hpke::kem::X25519HkdfSha256;
use ::hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use crate::{CryptoError, SecretBytes};

/// X25519 public key length.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Encapsulated key length (the ephemeral X25519 public key).
pub const ENC_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;

type Suite = X25519HkdfSha256;
type PrivateKey = <Suite as Kem>::PrivateKey;
type PublicKey = <Suite as Kem>::PublicKey;

/// A static X25519 key pair for HPKE. The private half is zeroized on drop by its library type.
pub struct HpkeKeyPair {
    sk: PrivateKey,
    pk: [u8; PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for HpkeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HpkeKeyPair(public {:02x?}, private [redacted])",
            &self.pk[..4]
        )
    }
}

fn public_bytes(pk: &PublicKey) -> [u8; PUBLIC_KEY_LEN] {
    let mut out = [0u8; PUBLIC_KEY_LEN];
    out.copy_from_slice(&pk.to_bytes());
    out
}

impl HpkeKeyPair {
    /// A fresh key pair from the system's random source.
    pub fn generate() -> Self {
        let seed: [u8; 32] = crate::random_array();
        let (sk, pk) = Suite::derive_keypair(&seed);
        Self {
            pk: public_bytes(&pk),
            sk,
        }
    }

    /// The key pair whose private key is `private` (32 bytes, as [`private_bytes`] gives).
    ///
    /// [`private_bytes`]: Self::private_bytes
    pub fn from_private(private: &[u8]) -> Result<Self, CryptoError> {
        let sk = PrivateKey::from_bytes(private).map_err(|_| CryptoError::Length {
            what: "an X25519 private key",
            expected: 32,
            got: private.len(),
        })?;
        let pk = public_bytes(&Suite::sk_to_pk(&sk));
        Ok(Self { sk, pk })
    }

    /// The private key's bytes, for storing (in a zeroizing buffer).
    pub fn private_bytes(&self) -> SecretBytes {
        SecretBytes::new(self.sk.to_bytes().to_vec())
    }

    /// The public key.
    pub fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.pk
    }
}

fn public_key(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<PublicKey, CryptoError> {
    PublicKey::from_bytes(bytes).map_err(|_| CryptoError::KeyRejected)
}

/// Seals `plaintext` to `recipient`, authenticated as `sender`: returns (enc, ciphertext || tag).
pub fn seal_auth(
    sender: &HpkeKeyPair,
    recipient: &[u8; PUBLIC_KEY_LEN],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; ENC_LEN], Vec<u8>), CryptoError> {
    let mode = OpModeS::Auth((sender.sk.clone(), public_key(&sender.pk)?));
    let (enc, ct) = ::hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Suite>(
        &mode,
        &public_key(recipient)?,
        info,
        plaintext,
        aad,
    )
    .map_err(|_| CryptoError::KeyRejected)?;
    let mut e = [0u8; ENC_LEN];
    e.copy_from_slice(&enc.to_bytes());
    Ok((e, ct))
}

/// Opens what [`seal_auth`] made, checking that `sender` made it for `recipient`.
pub fn open_auth(
    recipient: &HpkeKeyPair,
    sender: &[u8; PUBLIC_KEY_LEN],
    enc: &[u8; ENC_LEN],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, CryptoError> {
    let enc =
        <Suite as Kem>::EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Authentication)?;
    let mode = OpModeR::Auth(public_key(sender).map_err(|_| CryptoError::Authentication)?);
    ::hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Suite>(
        &mode,
        &recipient.sk,
        &enc,
        info,
        ciphertext,
        aad,
    )
    .map(SecretBytes::new)
    .map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_mode_binds_sender_recipient_info_and_aad() {
        let (client, gateway, other) = (
            HpkeKeyPair::generate(),
            HpkeKeyPair::generate(),
            HpkeKeyPair::generate(),
        );
        let (enc, ct) = seal_auth(&client, &gateway.public(), b"info", b"aad", b"knock").unwrap();
        assert_eq!(ct.len(), 5 + TAG_LEN);
        let pt = open_auth(&gateway, &client.public(), &enc, b"info", b"aad", &ct).unwrap();
        assert_eq!(pt.expose(), b"knock");
        // Another sender, recipient, info, aad or a flipped bit: refused.
        assert!(open_auth(&gateway, &other.public(), &enc, b"info", b"aad", &ct).is_err());
        assert!(open_auth(&other, &client.public(), &enc, b"info", b"aad", &ct).is_err());
        assert!(open_auth(&gateway, &client.public(), &enc, b"infX", b"aad", &ct).is_err());
        assert!(open_auth(&gateway, &client.public(), &enc, b"info", b"aaX", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(open_auth(&gateway, &client.public(), &enc, b"info", b"aad", &bad).is_err());
        // Keys survive a round trip through their bytes.
        let again = HpkeKeyPair::from_private(client.private_bytes().expose()).unwrap();
        assert_eq!(again.public(), client.public());
        assert!(HpkeKeyPair::from_private(&[1; 5]).is_err());
        assert!(!format!("{client:?}").contains(&format!("{:?}", client.private_bytes().expose())));
    }
}
