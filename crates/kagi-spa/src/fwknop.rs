//! fwknop's Rijndael + HMAC packet (FKO protocol 3.0.0):
//!
//! ```text
//! P    = E ":" b64nopad(H(E))                       (see message.rs)
//! salt = 8 random bytes; (key, iv) = EVP_BytesToKey(MD5, pass, salt, 1)
//! C    = "Salted__" || salt || AES-256-CBC(key, iv, PKCS#7(P))
//! T    = b64nopad(C)                                (starts "U2FsdGVkX1")
//! wire = T[10..] || b64nopad(HMAC(hmac_key, T))     (HMAC over T *with* the prefix)
//! ```
//! The receiver checks the HMAC before it decrypts anything.

use kagi_crypto::legacy::{
    aes256_cbc_decrypt, aes256_cbc_encrypt, evp_bytes_to_key_md5, HmacKey, MAX_OUTPUT,
};
use kagi_crypto::SecretBytes;

use crate::message::{DigestType, SpaMessage};
use crate::{b64, SpaError};

/// The base64 text of `"Salted__"`'s first 60 bits, which clients strip from the wire.
pub const SALTED_PREFIX: &str = "U2FsdGVkX1";
/// fwknopd drops shorter datagrams.
pub const MIN_PACKET: usize = 140;
/// fwknopd treats this length and above as GnuPG.
pub const MAX_RIJNDAEL_PACKET: usize = 400;

/// The keys of one access.conf stanza.
#[derive(Debug, Clone)]
pub struct StanzaKeys {
    /// `KEY` text or decoded `KEY_BASE64` bytes (at most 32).
    pub enc_key: SecretBytes,
    /// `HMAC_KEY`/`HMAC_KEY_BASE64` with `HMAC_DIGEST_TYPE`; None = no HMAC (legacy stanzas).
    pub hmac: Option<HmacKey>,
    /// `ENCRYPTION_MODE legacy`: the password is padded with '0' (or cut) to 16 bytes.
    pub legacy_iv: bool,
}

impl StanzaKeys {
    fn password(&self) -> Result<SecretBytes, SpaError> {
        let k = self.enc_key.expose();
        if k.len() > 32 {
            return Err(SpaError::KeyTooLong);
        }
        if self.legacy_iv {
            let mut p = k[..k.len().min(16)].to_vec();
            p.resize(16, b'0');
            Ok(SecretBytes::new(p))
        } else {
            Ok(self.enc_key.clone())
        }
    }
}

/// `b64nopad(HMAC(key, "U2FsdGVkX1" || body))` into `out` without allocating; returns its length.
fn hmac_b64_into(key: &HmacKey, body: &str, out: &mut [u8; 96]) -> usize {
    let mut mac = [0u8; MAX_OUTPUT];
    let n = key.sign_into(&[SALTED_PREFIX.as_bytes(), body.as_bytes()], &mut mac);
    b64::encode_into(&mac[..n], out)
}

/// Builds the wire packet for `msg` with inner digest `digest`; `salt` is the caller's
/// randomness (8 bytes from a CSPRNG in production, fixed in known-answer tests).
pub fn seal(
    msg: &SpaMessage,
    digest: DigestType,
    keys: &StanzaKeys,
    salt: [u8; 8],
) -> Result<String, SpaError> {
    let plaintext = msg.encode(digest);
    let pass = keys.password()?;
    let (key, iv) = evp_bytes_to_key_md5(pass.expose(), &salt);
    let mut buf = plaintext.into_bytes();
    let pad = 16 - buf.len() % 16;
    buf.extend(std::iter::repeat_n(pad as u8, pad));
    aes256_cbc_encrypt(key.expose(), &iv, &mut buf).map_err(|_| SpaError::BadCiphertext)?;
    let mut c = Vec::with_capacity(16 + buf.len());
    c.extend_from_slice(b"Salted__");
    c.extend_from_slice(&salt);
    c.extend_from_slice(&buf);
    let t = b64::encode(&c);
    let body = &t[SALTED_PREFIX.len()..];
    let mut wire = body.to_string();
    if let Some(hk) = &keys.hmac {
        let mut tag = [0u8; 96];
        let n = hmac_b64_into(hk, body, &mut tag);
        wire.push_str(std::str::from_utf8(&tag[..n]).unwrap_or_default());
    }
    Ok(wire)
}

/// Checks what fwknopd checks before any stanza is tried: length, alphabet, prefix trick.
pub fn precheck(packet: &[u8]) -> Result<(), SpaError> {
    if packet.len() < MIN_PACKET {
        return Err(SpaError::TooShort);
    }
    if packet.len() >= MAX_RIJNDAEL_PACKET {
        return Err(SpaError::TooLong);
    }
    if !packet
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(SpaError::NotBase64);
    }
    if packet.starts_with(SALTED_PREFIX.as_bytes()) {
        return Err(SpaError::SaltedPrefix);
    }
    Ok(())
}

/// A packet that opened: the message and its exact encoded fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The decoded message.
    pub message: SpaMessage,
    /// The inner digest type found.
    pub digest: DigestType,
    /// The encoded fields `E` as received (without the digest).
    pub encoded: String,
}

/// Verifies (HMAC first), decrypts and decodes one packet with one stanza's keys.
pub fn open(packet: &str, keys: &StanzaKeys) -> Result<Opened, SpaError> {
    precheck(packet.as_bytes())?;
    let body = match &keys.hmac {
        Some(hk) => {
            let tag_len = b64::encoded_len(hk.hash().output_len());
            if packet.len() <= tag_len {
                return Err(SpaError::BadHmac);
            }
            let (body, tag) = packet.split_at(packet.len() - tag_len);
            // Heap-free: a forged packet costs its own hashing and a compare, nothing more.
            let mut want = [0u8; 96];
            let w = hmac_b64_into(hk, body, &mut want);
            if !kagi_crypto::ct_eq(&want[..w], tag.as_bytes()) {
                return Err(SpaError::BadHmac);
            }
            body
        }
        None => packet,
    };
    let mut t = String::with_capacity(SALTED_PREFIX.len() + body.len());
    t.push_str(SALTED_PREFIX);
    t.push_str(body);
    let c = b64::decode(&t).ok_or(SpaError::BadCiphertext)?;
    if c.len() < 32 || &c[..8] != b"Salted__" || !(c.len() - 16).is_multiple_of(16) {
        return Err(SpaError::BadCiphertext);
    }
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&c[8..16]);
    let pass = keys.password()?;
    let (key, iv) = evp_bytes_to_key_md5(pass.expose(), &salt);
    let mut pt = c[16..].to_vec();
    let ct_len = pt.len();
    aes256_cbc_decrypt(key.expose(), &iv, &mut pt).map_err(|_| SpaError::DecryptFailed)?;
    // Lenient PKCS#7, as fwknop: strip only a padding that is entirely consistent.
    if let Some(&p) = pt.last() {
        let p = p as usize;
        if (1..=16).contains(&p)
            && pt.len() >= p
            && pt[pt.len() - p..].iter().all(|&b| b as usize == p)
        {
            pt.truncate(pt.len() - p);
        }
    }
    if pt.len() + 32 < ct_len
        || pt.len() < 17
        || !pt[..16].iter().all(u8::is_ascii_digit)
        || pt[16] != b':'
    {
        return Err(SpaError::DecryptFailed);
    }
    let text = String::from_utf8(pt).map_err(|_| SpaError::DecryptFailed)?;
    let (message, digest) = SpaMessage::decode(&text)?;
    let encoded = text
        .rsplit_once(':')
        .map(|(e, _)| e.to_string())
        .unwrap_or_default();
    Ok(Opened {
        message,
        digest,
        encoded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64std(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    /// The reference's verified packet from the real client (§1.8).
    #[test]
    fn opens_the_reference_packet() {
        let keys = StanzaKeys {
            enc_key: SecretBytes::new(b64std("xDWzdLe/30u5ikFu0pXsNUnZFeB7to/lp3TsXxVtXbQ=")),
            hmac: Some(HmacKey::new(kagi_crypto::legacy::LegacyHash::Sha256, &b64std("GuELZ8vj7xq1uHCZ6ULI2tLy2S6GkQaGLiE9kscYfDmQDLWBHtDS/TBt+z1mzRbko9Xvkc694b3MITxrAYtPiQ=="))),
            legacy_iv: false,
        };
        let pkt = "+NXXf1VXRuuNGUPMVmMB/n9xFxctDXigDj+5+rxAqiNfvGPfd8VdkBaOlXHBOcMzoaSWe8n3MECOJJ23MDUi80W/wWOna03BTIorQa/abxFd0hACWWy3utdyqS06lYbT6bs5BaP01lp1bD9hqrvrm78EbJzMDEs5cYLbtiTx/NRzzL/jcSlNQ0twpHwTJPsKaKkFqfunFrtQ";
        let o = open(pkt, &keys).unwrap();
        assert_eq!(
            o.encoded,
            "9048659081339271:cm9vdA:1795878118:3.0.0:1:MTI3LjAuMC4xLHRjcC8yMg"
        );
        assert_eq!(o.message.message, "127.0.0.1,tcp/22");
        // Sealing the same message with any salt opens again; a changed byte never does.
        let again = seal(
            &o.message,
            DigestType::Sha256,
            &keys,
            [1, 2, 3, 4, 5, 6, 7, 8],
        )
        .unwrap();
        assert_eq!(again.len(), pkt.len());
        assert_eq!(open(&again, &keys).unwrap().message, o.message);
        for i in [0, 50, 150, again.len() - 1] {
            let mut b = again.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(
                open(std::str::from_utf8(&b).unwrap(), &keys).is_err(),
                "flip at {i}"
            );
        }
        assert_eq!(
            open(&format!("{SALTED_PREFIX}{pkt}"), &keys).unwrap_err(),
            SpaError::SaltedPrefix
        );
        assert_eq!(open(&pkt[..100], &keys).unwrap_err(), SpaError::TooShort);
        assert_eq!(
            open(&format!("{pkt}\n"), &keys).unwrap_err(),
            SpaError::NotBase64
        );
    }
}
