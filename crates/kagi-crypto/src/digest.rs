use aws_lc_rs::{constant_time, digest, hkdf, hmac};

/// `SHA-256(data)` (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Incremental SHA-256 for inputs assembled from parts.
pub struct Sha256(digest::Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }
}

impl Sha256 {
    /// Absorbs `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest of everything absorbed.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// `HMAC-SHA-256(key, data)` (RFC 2104, FIPS 198-1).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// HKDF-SHA-256 (RFC 5869) of `ikm` with `salt` and `info`, 32 bytes of output: a per-use key
/// derived from a long-lived one.
pub fn hkdf_sha256_32(ikm: &[u8], salt: &[u8], info: &[u8]) -> crate::SecretKey32 {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    #[allow(clippy::expect_used)]
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is far below HKDF-SHA-256's 8160-byte limit");
    let key = crate::SecretKey32::from_bytes(out);
    zeroize::Zeroize::zeroize(&mut out);
    key
}

/// Constant-time equality for MACs, token hashes and other secrets-derived values.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 test case 1 (first 32 of its 42 output bytes).
    #[test]
    fn hkdf_known_answer() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0cu8).collect();
        let info: Vec<u8> = (0xf0..=0xf9u8).collect();
        let okm = hkdf_sha256_32(&ikm, &salt, &info);
        assert_eq!(
            hex(okm.expose()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha256_known_answer() {
        // FIPS 180-4 example "abc".
        let d = sha256(b"abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
        let mut s = Sha256::default();
        s.update(b"a");
        s.update(b"bc");
        assert_eq!(s.finish(), d);
    }

    #[test]
    fn hmac_rfc4231_case2() {
        let t = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(t[..4], [0x5b, 0xdc, 0xc1, 0x46]);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
