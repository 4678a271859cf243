/// Why a packet was refused. Every variant is a fixed sentence: building the reason for a
/// refused packet allocates nothing, so garbage costs the daemon as little as possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpaError {
    /// Shorter than fwknopd's minimum (140 bytes).
    #[error("packet is shorter than 140 bytes")]
    TooShort,
    /// Longer than a Rijndael packet can be (fwknopd treats 400+ bytes as GnuPG).
    #[error(
        "packet is 400 bytes or longer (fwknop treats that as GnuPG, which kagi does not accept)"
    )]
    TooLong,
    /// A byte outside the base64 alphabet.
    #[error("packet holds a byte outside the base64 alphabet")]
    NotBase64,
    /// Still carries the `U2FsdGVkX1` prefix a real client strips (a replay-evasion trick).
    #[error("packet carries the 'Salted__' prefix that clients strip (replay evasion)")]
    SaltedPrefix,
    /// The HMAC does not match: wrong HMAC key or digest type, or altered packet.
    #[error("HMAC does not match (wrong HMAC key or digest type, or the packet was altered)")]
    BadHmac,
    /// The ciphertext is not whole AES blocks behind a salt header.
    #[error("ciphertext is malformed (not 'Salted__' + salt + whole AES blocks)")]
    BadCiphertext,
    /// The encryption key is longer than 32 bytes.
    #[error("encryption key is longer than 32 bytes")]
    KeyTooLong,
    /// Decryption produced no SPA plaintext: wrong encryption key or mode.
    #[error("decryption failed (wrong encryption key or encryption mode)")]
    DecryptFailed,
    /// Fewer than 6 or more than 9 ':' separators, or the wrong count for the message type.
    #[error("wrong number of fields for an SPA message")]
    FieldCount,
    /// The inner digest has a length no digest type has.
    #[error("inner digest has an unknown length")]
    DigestLength,
    /// The inner digest does not match the fields.
    #[error("inner digest does not match the message")]
    DigestMismatch,
    /// The random value is not 16 decimal digits.
    #[error("random value is not 16 digits")]
    RandomValue,
    /// The user name is not valid base64 or holds forbidden characters.
    #[error("user name is invalid")]
    Username,
    /// The timestamp is not a decimal number.
    #[error("timestamp is invalid")]
    Timestamp,
    /// The version string is longer than 8 characters.
    #[error("version string is too long")]
    Version,
    /// The message type is not 0..6.
    #[error("message type is unknown")]
    MessageType,
    /// The message field is not base64, too long, or not `ip,proto/port[,...]` / `ip,command`.
    #[error("access message is invalid (expected IPv4,proto/port[,proto/port...])")]
    Message,
    /// The NAT field is not `host,port`.
    #[error("NAT access field is invalid")]
    NatAccess,
    /// The client timeout is not 0..65536.
    #[error("client timeout is invalid")]
    ClientTimeout,
}
