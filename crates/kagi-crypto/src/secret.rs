use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes that are secret: wiped on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when this value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The secret bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True for zero-length secrets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([redacted; {}])", self.0.len())
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

/// A 256-bit secret key: wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey32([u8; 32]);

impl SecretKey32 {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// From a slice, checking the length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, crate::CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| crate::CryptoError::Length {
            what: "key",
            expected: 32,
            got: bytes.len(),
        })?;
        Ok(Self(arr))
    }
    /// A fresh random key from the system CSPRNG.
    pub fn generate() -> Self {
        Self(crate::random_array())
    }
    /// The key bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey32([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret() {
        let s = SecretBytes::new(b"topsecret".to_vec());
        assert!(!format!("{s:?}").contains("topsecret"));
        let k = SecretKey32::from_bytes([0x41; 32]);
        assert!(!format!("{k:?}").contains("65"));
        assert!(!format!("{k:?}").contains("AAAA"));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(SecretKey32::from_slice(&[0; 31]).is_err());
        assert!(SecretKey32::from_slice(&[0; 32]).is_ok());
    }
}
