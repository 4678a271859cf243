//! FF1 format-preserving encryption (NIST SP 800-38G) with AES-256, over numeral strings of
//! any radix 2..=65536. The only FPE mode kagi offers: FF3/FF3-1 are leaving the standard.
//! Domains smaller than 1,000,000 (radix^length) are refused, as SP 800-38G Rev. 1 requires.

use fpe::ff1::{FlexibleNumeralString, FF1};

use crate::{CryptoError, SecretKey32};

/// Smallest domain (radix^length) FF1 is used on.
pub const MIN_DOMAIN: u64 = 1_000_000;

/// An FF1 instance: AES-256 key schedule and radix.
pub struct Ff1 {
    inner: FF1<aes::Aes256>,
    radix: u32,
}

impl std::fmt::Debug for Ff1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ff1")
            .field("radix", &self.radix)
            .finish_non_exhaustive()
    }
}

fn fpe_error(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Fpe(e.to_string())
}

impl Ff1 {
    /// FF1 under `key` for numerals `0..radix`.
    pub fn new(key: &SecretKey32, radix: u32) -> Result<Self, CryptoError> {
        if !(2..=65_536).contains(&radix) {
            return Err(CryptoError::Fpe(format!("radix {radix} is not 2-65536")));
        }
        // The key is exactly 32 bytes by type, so FF1::new cannot hit its length panic.
        let inner = FF1::<aes::Aes256>::new(key.expose(), radix).map_err(fpe_error)?;
        Ok(Self { inner, radix })
    }

    /// The radix.
    pub fn radix(&self) -> u32 {
        self.radix
    }

    fn check(&self, numerals: &[u16]) -> Result<(), CryptoError> {
        if numerals.iter().any(|&n| u32::from(n) >= self.radix) {
            return Err(CryptoError::Fpe(format!(
                "a numeral is not below the radix {}",
                self.radix
            )));
        }
        let domain =
            (0..numerals.len()).try_fold(1u64, |d, _| d.checked_mul(u64::from(self.radix)));
        if domain.is_some_and(|d| d < MIN_DOMAIN) {
            return Err(CryptoError::Fpe(format!(
                "{} numerals of radix {} make fewer than 1,000,000 values: too few for FF1",
                numerals.len(),
                self.radix
            )));
        }
        Ok(())
    }

    /// Encrypts `numerals` (each below the radix) under `tweak`.
    pub fn encrypt(&self, tweak: &[u8], numerals: Vec<u16>) -> Result<Vec<u16>, CryptoError> {
        self.check(&numerals)?;
        let ns = FlexibleNumeralString::from(numerals);
        Ok(self.inner.encrypt(tweak, &ns).map_err(fpe_error)?.into())
    }

    /// Decrypts what [`encrypt`](Self::encrypt) made with the same tweak.
    pub fn decrypt(&self, tweak: &[u8], numerals: Vec<u16>) -> Result<Vec<u16>, CryptoError> {
        self.check(&numerals)?;
        let ns = FlexibleNumeralString::from(numerals);
        Ok(self.inner.decrypt(tweak, &ns).map_err(fpe_error)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u16> {
        s.chars().map(|c| c.to_digit(36).unwrap() as u16).collect()
    }

    fn text(n: &[u16]) -> String {
        n.iter()
            .map(|&d| char::from_digit(u32::from(d), 36).unwrap())
            .collect()
    }

    /// NIST FF1samples.pdf, samples 1-9 (AES-128, -192, -256).
    #[test]
    fn nist_samples() {
        const K128: &str = "2B7E151628AED2A6ABF7158809CF4F3C";
        const K192: &str = "2B7E151628AED2A6ABF7158809CF4F3CEF4359D8D580AA4F";
        const K256: &str = "2B7E151628AED2A6ABF7158809CF4F3CEF4359D8D580AA4F7F036D6F04FC6A94";
        const T10: &str = "39383736353433323130";
        const T11: &str = "3737373770717273373737";
        let samples = [
            (K128, 10, "", "0123456789", "2433477484"),
            (K128, 10, T10, "0123456789", "6124200773"),
            (K128, 36, T11, "0123456789abcdefghi", "a9tv40mll9kdu509eum"),
            (K192, 10, "", "0123456789", "2830668132"),
            (K192, 10, T10, "0123456789", "2496655549"),
            (K192, 36, T11, "0123456789abcdefghi", "xbj3kv35jrawxv32ysr"),
            (K256, 10, "", "0123456789", "6657667009"),
            (K256, 10, T10, "0123456789", "1001623463"),
            (K256, 36, T11, "0123456789abcdefghi", "xs8a0azh2avyalyzuwd"),
        ];
        for (i, (key, radix, tweak, pt, ct)) in samples.into_iter().enumerate() {
            let key = hex::decode(key).unwrap();
            let tweak = hex::decode(tweak).unwrap();
            let ns = FlexibleNumeralString::from(digits(pt));
            let got: Vec<u16> = match key.len() {
                16 => FF1::<aes::Aes128>::new(&key, radix)
                    .unwrap()
                    .encrypt(&tweak, &ns)
                    .unwrap()
                    .into(),
                24 => FF1::<aes::Aes192>::new(&key, radix)
                    .unwrap()
                    .encrypt(&tweak, &ns)
                    .unwrap()
                    .into(),
                _ => {
                    let k = SecretKey32::from_slice(&key).unwrap();
                    let ff = Ff1::new(&k, radix).unwrap();
                    let c = ff.encrypt(&tweak, digits(pt)).unwrap();
                    assert_eq!(
                        ff.decrypt(&tweak, c.clone()).unwrap(),
                        digits(pt),
                        "sample {}",
                        i + 1
                    );
                    c
                }
            };
            assert_eq!(text(&got), ct, "sample {}", i + 1);
        }
    }

    #[test]
    fn small_domains_and_bad_numerals_are_refused() {
        let k = SecretKey32::generate();
        let ff = Ff1::new(&k, 10).unwrap();
        assert!(ff.encrypt(b"", vec![1, 2, 3, 4, 5]).is_err(), "10^5 < 10^6");
        assert!(ff.encrypt(b"", vec![1, 2, 3, 4, 5, 6]).is_ok());
        assert!(
            ff.encrypt(b"", vec![1, 2, 3, 4, 5, 10]).is_err(),
            "numeral 10 in radix 10"
        );
        assert!(Ff1::new(&k, 1).is_err());
    }
}
