use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::{CryptoError, SecretKey32};

/// AES-GCM nonce length (96 bits, NIST SP 800-38D §8.2).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length (128 bits).
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key with its schedule expanded once, for keys used many times (KEKs).
///
/// The expanded schedule lives inside AWS-LC, which cleanses it when the key is freed.
pub struct AeadKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([redacted])")
    }
}

impl AeadKey {
    /// Prepares `key` for AES-256-GCM.
    pub fn new(key: &SecretKey32) -> Self {
        #[allow(clippy::expect_used)]
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.expose()).expect("AES-256 accepts every 32-byte key");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// `C || T = AES-256-GCM-Encrypt(K, N, A, P)` (SP 800-38D) with a fresh random 96-bit
    /// nonce, returned beside the ciphertext. Random nonces are safe here because every
    /// key seals far fewer than 2^32 messages between rotations.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = crate::random_array();
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        self.seal_in_place(&nonce, aad, &mut out);
        (nonce, out)
    }

    /// Encrypts `buf` in place and appends the tag. The caller guarantees `nonce` is
    /// never reused under this key.
    pub fn seal_in_place(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
        #[allow(clippy::expect_used)]
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
    }

    /// Encrypts `in_out` in place and returns the tag, for callers that lay out many
    /// segments in one buffer. The caller guarantees `nonce` is never reused under this key.
    pub fn seal_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        #[allow(clippy::expect_used)]
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                in_out,
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Decrypts `ciphertext` (tag separate) into `out` (same length), leaving the ciphertext
    /// intact so a caller can try another nonce. `out` holds nothing usable on failure.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
        tag: &[u8],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        if tag.len() != TAG_LEN || out.len() != ciphertext.len() {
            return Err(CryptoError::Authentication);
        }
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                ciphertext,
                tag,
                out,
            )
            .map_err(|_| {
                out.fill(0);
                CryptoError::Authentication
            })
    }

    /// `P = AES-256-GCM-Decrypt(K, N, A, C || T)`, or `Authentication` if anything differs.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<crate::SecretBytes, CryptoError> {
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let mut buf = ciphertext_and_tag.to_vec();
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(crate::SecretBytes::new(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aad_binding() {
        let k = AeadKey::new(&SecretKey32::generate());
        let (n, c) = k.seal(b"aad", b"hello");
        assert_eq!(k.open(&n, b"aad", &c).unwrap().expose(), b"hello");
        assert_eq!(k.open(&n, b"aaX", &c), Err(CryptoError::Authentication));
        let mut bad = c.clone();
        bad[0] ^= 1;
        assert_eq!(k.open(&n, b"aad", &bad), Err(CryptoError::Authentication));
        assert_eq!(
            k.open(&n, b"aad", &c[..3]),
            Err(CryptoError::Authentication)
        );
    }

    /// NIST GCM test vector (gcmEncryptExtIV256, Count 0 with 128-bit PT): pins that this
    /// is really AES-256-GCM, not just a self-consistent cipher.
    #[test]
    fn nist_known_answer() {
        let key = hex32("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22");
        let nonce: [u8; 12] = [
            0x0d, 0x18, 0xe0, 0x6c, 0x7c, 0x72, 0x5a, 0xc9, 0xe3, 0x62, 0xe1, 0xce,
        ];
        let pt = unhex("2db5168e932556f8089a0622981d017d");
        let mut buf = pt.clone();
        let k = AeadKey::new(&key);
        k.seal_in_place(&nonce, b"", &mut buf);
        assert_eq!(
            buf,
            unhex("fa4362189661d163fcd6a56d8bf0405ad636ac1bbedd5cc3ee727dc2ab4a9489")
        );
        assert_eq!(k.open(&nonce, b"", &buf).unwrap().expose(), &pt[..]);
        let mut d = pt.clone();
        assert_eq!(k.seal_detached(&nonce, b"", &mut d)[..], buf[16..]);
        assert_eq!(d, buf[..16]);
        let mut back = vec![0u8; 16];
        k.open_detached(&nonce, b"", &d, &buf[16..], &mut back)
            .unwrap();
        assert_eq!(back, pt);
        assert!(k
            .open_detached(&nonce, b"x", &d, &buf[16..], &mut back)
            .is_err());
        assert_eq!(back, [0u8; 16]);
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn hex32(s: &str) -> SecretKey32 {
        SecretKey32::from_slice(&unhex(s)).unwrap()
    }
}
