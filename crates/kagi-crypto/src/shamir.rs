//! Shamir secret sharing over GF(2^8), byte by byte (as HashiCorp Vault's unseal shares).
//!
//! A share is `x || y_1 .. y_n`: the participant identifier followed by one field element
//! per secret byte. Any `threshold` distinct shares reconstruct the secret; fewer reveal
//! nothing about it.

use crate::{CryptoError, SecretBytes};
use vsss_rs::Gf256;

/// Splits `secret` into `shares` shares, any `threshold` of which reconstruct it.
pub fn split(
    secret: &[u8],
    threshold: usize,
    shares: usize,
) -> Result<Vec<SecretBytes>, CryptoError> {
    if threshold < 1 || shares < threshold || shares > 255 {
        return Err(CryptoError::Shares("need 1 <= threshold <= shares <= 255"));
    }
    if threshold == 1 {
        // vsss-rs requires threshold >= 2; a 1-of-N split is N copies of the secret.
        return Ok((1..=shares as u8)
            .map(|x| {
                let mut s = vec![x];
                s.extend_from_slice(secret);
                SecretBytes::new(s)
            })
            .collect());
    }
    let out = Gf256::split_bytes(threshold, shares, secret, rand::rng())
        .map_err(|_| CryptoError::Shares("the share library refused the parameters"))?;
    Ok(out.into_iter().map(SecretBytes::new).collect())
}

/// Reconstructs the secret from shares made by [`split`]. With fewer than the threshold
/// (or shares from another split) the result is a wrong secret, not an error: callers
/// check it against a stored verifier.
pub fn combine(shares: &[SecretBytes]) -> Result<SecretBytes, CryptoError> {
    let first = shares.first().ok_or(CryptoError::Shares("no shares"))?;
    if shares.iter().any(|s| s.len() != first.len() || s.len() < 2) {
        return Err(CryptoError::Shares("shares have different lengths"));
    }
    let mut ids: Vec<u8> = shares.iter().map(|s| s.expose()[0]).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != shares.len() || ids.contains(&0) {
        return Err(CryptoError::Shares(
            "duplicate or invalid share identifiers",
        ));
    }
    if shares.len() == 1 {
        return Ok(SecretBytes::new(first.expose()[1..].to_vec()));
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.expose().to_vec()).collect();
    let secret =
        Gf256::combine_bytes(&raw).map_err(|_| CryptoError::Shares("the shares do not combine"))?;
    for mut r in raw {
        zeroize::Zeroize::zeroize(&mut r);
    }
    Ok(SecretBytes::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers() {
        let secret = crate::random_vec(32);
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for (a, b, c) in [(0, 1, 2), (0, 2, 4), (1, 3, 4), (4, 3, 0)] {
            let got = combine(&[shares[a].clone(), shares[b].clone(), shares[c].clone()]).unwrap();
            assert_eq!(got.expose(), &secret[..]);
        }
        let two = combine(&[shares[0].clone(), shares[1].clone()]).unwrap();
        assert_ne!(two.expose(), &secret[..]);
    }

    #[test]
    fn one_of_n() {
        let shares = split(b"k", 1, 3).unwrap();
        assert_eq!(combine(&[shares[2].clone()]).unwrap().expose(), b"k");
    }

    #[test]
    fn refuses_bad_parameters() {
        assert!(split(b"k", 3, 2).is_err());
        assert!(split(b"k", 0, 2).is_err());
        let s = split(b"kk", 2, 2).unwrap();
        assert!(combine(&[s[0].clone(), s[0].clone()]).is_err());
    }
}
