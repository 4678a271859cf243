//! The AWS protocols kagi speaks, without I/O or keys: SigV4 ([`sigv4`]), the KMS external
//! key store proxy API ([`xks`]) and the KMS JSON API ([`kms`]). The key service's HTTP
//! front-ends (`kagi-server`) put these over its one core.
#![forbid(unsafe_code)]

pub mod kms;
pub mod sigv4;
pub mod xks;

/// A fresh credential pair as AWS formats them: an access key id of 20 characters from
/// `A-Z2-7` (the XKS spec's alphabet) starting with `prefix`, and a 43-character base64
/// secret carrying 256 random bits.
pub fn new_credential(prefix: &str) -> (String, zeroize::Zeroizing<String>) {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let rnd: [u8; 20] = kagi_crypto::random_array();
    let mut id = prefix.to_string();
    for b in rnd.iter().take(20usize.saturating_sub(prefix.len())) {
        id.push(ALPHABET[(*b & 31) as usize] as char);
    }
    use base64::Engine;
    let secret =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(kagi_crypto::random_array::<32>());
    (id, zeroize::Zeroizing::new(secret))
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_have_the_spec_shape() {
        let (id, secret) = super::new_credential("KAGI");
        assert_eq!(id.len(), 20);
        assert!(
            id.starts_with("KAGI")
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(secret.len(), 43);
        assert_ne!(super::new_credential("KAGI").0, id);
    }
}
