//! Primitives that exist only for wire compatibility with fwknop's Single Packet
//! Authorization (Rijndael mode): MD5-based `EVP_BytesToKey`, unauthenticated AES-256-CBC,
//! and HMAC over the digest family fwknop offers (MD5 … SHA3-512). Never use these for
//! anything kagi designs itself: kagi's own formats use AES-256-GCM and SHA-256.

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256,
};
use aws_lc_rs::digest;
use aws_lc_rs::iv::FixedLength;
use md5::Digest as _;

use crate::{CryptoError, SecretBytes};

/// The digest algorithms fwknop names (`-m` / `HMAC_DIGEST_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegacyHash {
    /// MD5 (RFC 1321).
    Md5,
    /// SHA-1 (FIPS 180-4).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-256 (FIPS 202).
    Sha3_256,
    /// SHA3-512.
    Sha3_512,
}

impl LegacyHash {
    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 | Self::Sha3_256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 | Self::Sha3_512 => 64,
        }
    }

    /// Input block length in bytes (for HMAC's key padding).
    pub fn block_len(self) -> usize {
        match self {
            Self::Md5 | Self::Sha1 | Self::Sha256 => 64,
            Self::Sha384 | Self::Sha512 => 128,
            Self::Sha3_256 => 136,
            Self::Sha3_512 => 72,
        }
    }

    fn aws(self) -> Option<&'static digest::Algorithm> {
        match self {
            Self::Md5 => None,
            Self::Sha1 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
            Self::Sha256 => Some(&digest::SHA256),
            Self::Sha384 => Some(&digest::SHA384),
            Self::Sha512 => Some(&digest::SHA512),
            Self::Sha3_256 => Some(&digest::SHA3_256),
            Self::Sha3_512 => Some(&digest::SHA3_512),
        }
    }

    /// `H(part_1 || part_2 || ...)`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        match self.aws() {
            Some(alg) => {
                let mut c = digest::Context::new(alg);
                for p in parts {
                    c.update(p);
                }
                c.finish().as_ref().to_vec()
            }
            None => {
                let mut h = md5::Md5::new();
                for p in parts {
                    h.update(p);
                }
                h.finalize().to_vec()
            }
        }
    }

    /// `H(data)`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// `H(part_1 || ...)` into `out` without touching the heap; returns the length.
    pub fn digest_parts_into(self, parts: &[&[u8]], out: &mut [u8; MAX_OUTPUT]) -> usize {
        let n = self.output_len();
        match self.aws() {
            Some(alg) => {
                let mut c = digest::Context::new(alg);
                for p in parts {
                    c.update(p);
                }
                out[..n].copy_from_slice(c.finish().as_ref());
            }
            None => {
                let mut h = md5::Md5::new();
                for p in parts {
                    h.update(p);
                }
                out[..n].copy_from_slice(&h.finalize());
            }
        }
        n
    }
}

/// The longest digest any [`LegacyHash`] produces.
pub const MAX_OUTPUT: usize = 64;
const MAX_BLOCK: usize = 136;

/// `HMAC(K, m) = H((K0 ^ opad) || H((K0 ^ ipad) || m))` (RFC 2104), for every
/// [`LegacyHash`]; keys longer than the block are hashed first.
pub fn legacy_hmac(h: LegacyHash, key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut out = [0u8; MAX_OUTPUT];
    let n = HmacKey::new(h, key).sign_into(&[msg], &mut out);
    out[..n].to_vec()
}

#[derive(Clone)]
enum HashCtx {
    Aws(digest::Context),
    Md5(md5::Md5),
}

impl HashCtx {
    fn new(h: LegacyHash) -> Self {
        match h.aws() {
            Some(alg) => Self::Aws(digest::Context::new(alg)),
            None => Self::Md5(md5::Md5::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Aws(c) => c.update(data),
            Self::Md5(c) => c.update(data),
        }
    }
    fn finish_into(self, out: &mut [u8; MAX_OUTPUT]) -> usize {
        match self {
            Self::Aws(c) => {
                let d = c.finish();
                out[..d.as_ref().len()].copy_from_slice(d.as_ref());
                d.as_ref().len()
            }
            Self::Md5(c) => {
                out[..16].copy_from_slice(&c.finalize());
                16
            }
        }
    }
}

/// An HMAC key with its inner and outer pad blocks absorbed once, so each message costs only
/// its own hashing (the SPA daemon checks one per datagram, forged or not).
#[derive(Clone)]
pub struct HmacKey {
    hash: LegacyHash,
    inner: HashCtx,
    outer: HashCtx,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacKey({:?}, [redacted])", self.hash)
    }
}

impl HmacKey {
    /// RFC 2104 key preparation for `hash`.
    pub fn new(hash: LegacyHash, key: &[u8]) -> Self {
        let b = hash.block_len();
        let mut k0 = [0u8; MAX_BLOCK];
        if key.len() > b {
            let mut kd = [0u8; MAX_OUTPUT];
            let n = hash.digest_parts_into(&[key], &mut kd);
            k0[..n].copy_from_slice(&kd[..n]);
            zeroize::Zeroize::zeroize(&mut kd);
        } else {
            k0[..key.len()].copy_from_slice(key);
        }
        let mut pad = [0u8; MAX_BLOCK];
        let mut inner = HashCtx::new(hash);
        for i in 0..b {
            pad[i] = k0[i] ^ 0x36;
        }
        inner.update(&pad[..b]);
        let mut outer = HashCtx::new(hash);
        for i in 0..b {
            pad[i] = k0[i] ^ 0x5c;
        }
        outer.update(&pad[..b]);
        zeroize::Zeroize::zeroize(&mut k0);
        zeroize::Zeroize::zeroize(&mut pad);
        Self { hash, inner, outer }
    }

    /// The hash it uses.
    pub fn hash(&self) -> LegacyHash {
        self.hash
    }

    /// `HMAC(K, part_1 || ...)` into `out` without touching the Rust heap; returns the length.
    pub fn sign_into(&self, parts: &[&[u8]], out: &mut [u8; MAX_OUTPUT]) -> usize {
        let mut i = self.inner.clone();
        for p in parts {
            i.update(p);
        }
        let mut inner = [0u8; MAX_OUTPUT];
        let n = i.finish_into(&mut inner);
        let mut o = self.outer.clone();
        o.update(&inner[..n]);
        o.finish_into(out)
    }
}

/// OpenSSL `EVP_BytesToKey(AES-256-CBC, MD5, salt, pass, count = 1)`:
/// `D_1 = MD5(pass || salt)`, `D_i = MD5(D_(i-1) || pass || salt)`; key = first 32 bytes of
/// `D_1 || D_2 || ...`, IV = the next 16.
pub fn evp_bytes_to_key_md5(pass: &[u8], salt: &[u8; 8]) -> (SecretBytes, [u8; 16]) {
    let mut out = Vec::with_capacity(64);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < 48 {
        prev = LegacyHash::Md5.digest_parts(&[&prev, pass, salt]);
        out.extend_from_slice(&prev);
    }
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&out[32..48]);
    out.truncate(32);
    zeroize::Zeroize::zeroize(&mut prev);
    (SecretBytes::new(out), iv)
}

fn cbc_key(key: &[u8]) -> Result<UnboundCipherKey, CryptoError> {
    if key.len() != 32 {
        return Err(CryptoError::Length {
            what: "AES-256 key",
            expected: 32,
            got: key.len(),
        });
    }
    UnboundCipherKey::new(&AES_256, key).map_err(|_| CryptoError::KeyRejected)
}

/// AES-256-CBC encryption of `buf` in place; `buf.len()` must be a multiple of 16 (the caller
/// pads).
pub fn aes256_cbc_encrypt(key: &[u8], iv: &[u8; 16], buf: &mut [u8]) -> Result<(), CryptoError> {
    if !buf.len().is_multiple_of(16) {
        return Err(CryptoError::Length {
            what: "CBC input (multiple of 16)",
            expected: buf.len().div_ceil(16) * 16,
            got: buf.len(),
        });
    }
    let k = EncryptingKey::cbc(cbc_key(key)?).map_err(|_| CryptoError::KeyRejected)?;
    k.less_safe_encrypt(buf, EncryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| CryptoError::KeyRejected)?;
    Ok(())
}

/// AES-256-CBC decryption of `buf` in place, no padding removed (fwknop strips PKCS#7
/// leniently itself).
pub fn aes256_cbc_decrypt(key: &[u8], iv: &[u8; 16], buf: &mut [u8]) -> Result<(), CryptoError> {
    if buf.is_empty() || !buf.len().is_multiple_of(16) {
        return Err(CryptoError::Authentication);
    }
    let k = DecryptingKey::cbc(cbc_key(key)?).map_err(|_| CryptoError::KeyRejected)?;
    k.decrypt(buf, DecryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| CryptoError::Authentication)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn md5_and_sha3_known_answers() {
        assert_eq!(
            hex(&LegacyHash::Md5.digest(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            hex(&LegacyHash::Sha3_256.digest(b"abc")),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
    }

    #[test]
    fn generic_hmac_matches_rfc_vectors() {
        // RFC 2202 test case 2 (HMAC-MD5) and RFC 4231 test case 2 (HMAC-SHA-256).
        assert_eq!(
            hex(&legacy_hmac(
                LegacyHash::Md5,
                b"Jefe",
                b"what do ya want for nothing?"
            )),
            "750c783e6ab0b503eaa86e310a5db738"
        );
        assert_eq!(
            legacy_hmac(LegacyHash::Sha256, b"Jefe", b"what do ya want for nothing?"),
            crate::hmac_sha256(b"Jefe", b"what do ya want for nothing?").to_vec()
        );
        let long_key = [0xaau8; 131];
        assert_eq!(
            legacy_hmac(
                LegacyHash::Sha256,
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            crate::hmac_sha256(
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )
            .to_vec()
        );
    }

    /// RFC 2104 written out plainly, as the independent reference for the prepared key.
    fn reference_hmac(h: LegacyHash, key: &[u8], msg: &[u8]) -> Vec<u8> {
        let b = h.block_len();
        let mut k0 = if key.len() > b {
            h.digest(key)
        } else {
            key.to_vec()
        };
        k0.resize(b, 0);
        let ipad: Vec<u8> = k0.iter().map(|x| x ^ 0x36).collect();
        let opad: Vec<u8> = k0.iter().map(|x| x ^ 0x5c).collect();
        let inner = h.digest_parts(&[&ipad, msg]);
        h.digest_parts(&[&opad, &inner])
    }

    #[test]
    fn prepared_key_equals_the_plain_hmac() {
        for h in [
            LegacyHash::Md5,
            LegacyHash::Sha1,
            LegacyHash::Sha256,
            LegacyHash::Sha384,
            LegacyHash::Sha512,
            LegacyHash::Sha3_256,
            LegacyHash::Sha3_512,
        ] {
            for key in [&b"k"[..], &[7u8; 200][..]] {
                let k = HmacKey::new(h, key);
                let mut out = [0u8; MAX_OUTPUT];
                let n = k.sign_into(&[b"ab", b"cd"], &mut out);
                assert_eq!(&out[..n], &reference_hmac(h, key, b"abcd")[..], "{h:?}");
                assert!(!format!("{k:?}").contains("7, 7"));
            }
        }
    }

    #[test]
    fn cbc_round_trip_and_evp_kdf_shape() {
        let (k, iv) = evp_bytes_to_key_md5(b"fwknoptest", b"12345678");
        // D1 = MD5(pass || salt) starts the key.
        assert_eq!(
            &k.expose()[..16],
            &LegacyHash::Md5.digest(b"fwknoptest12345678")[..]
        );
        let mut buf = [7u8; 32];
        aes256_cbc_encrypt(k.expose(), &iv, &mut buf).unwrap();
        assert_ne!(buf, [7u8; 32]);
        aes256_cbc_decrypt(k.expose(), &iv, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 32]);
        assert!(aes256_cbc_decrypt(k.expose(), &iv, &mut [0u8; 15]).is_err());
    }
}
