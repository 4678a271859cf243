use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Fills `buf` from the system CSPRNG (AWS-LC's DRBG seeded by the OS).
///
/// # Panics
/// Only if the operating system cannot provide randomness, in which case no key may be made.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed; refusing to continue without entropy");
}

/// `N` random bytes.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// `n` random bytes.
pub fn random_vec(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    fill_random(&mut out);
    out
}
