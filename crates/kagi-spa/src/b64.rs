//! fwknop's base64: standard alphabet, no `=` padding on output; lenient padding and
//! trailing bits on input (as its decoder is).

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

const NOPAD: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// `b64nopad(data)`.
pub fn encode(data: &[u8]) -> String {
    NOPAD.encode(data)
}

/// Decodes, ignoring anything from the first `=`.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let s = s.split('=').next().unwrap_or("");
    NOPAD.decode(s).ok()
}

/// Length of `b64nopad` of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// `b64nopad(data)` into `out` without allocating; returns the length (0 if `out` is short).
pub fn encode_into(data: &[u8], out: &mut [u8]) -> usize {
    NOPAD.encode_slice(data, out).unwrap_or(0)
}
