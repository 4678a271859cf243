//! The controller's internal CA: a P-256 key and a self-signed CA certificate kept in the
//! controller's state, issuing short-lived certificates for enrolled identities (subject CN =
//! identity name) and for the controller's own TLS port.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};

/// The CA, loaded.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// SHA-256 of its DER: the pin in enrollment tokens.
    pub pin: [u8; 32],
}

/// A certificate just issued.
pub struct Issued {
    pub pem: String,
    pub not_after: i64,
}

/// What an issued certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
    Both,
}

/// An enrollee's public key: the uncompressed P-256 point it sent.
struct RawP256<'a>(&'a [u8; 65]);

impl rcgen::PublicKeyData for RawP256<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn time(unix: i64) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| e.to_string())
}

impl Ca {
    /// A new CA: (name, certificate PEM, key PEM). Valid ten years.
    pub fn generate(now: i64) -> Result<(String, String, String), String> {
        let name = format!(
            "kagi perimeter CA {}",
            hex::encode(kagi_crypto::random_array::<6>())
        );
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = ca_params(&name);
        p.not_before = time(now - 60)?;
        p.not_after = time(now + 10 * 365 * 86_400)?;
        let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
        Ok((name, cert.pem(), key.serialize_pem()))
    }

    /// Loads the CA from its stored name, certificate and key.
    pub fn load(name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key: {e}"))?;
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("the CA certificate: {e}"))?;
        Ok(Self {
            issuer: Issuer::new(ca_params(name), key),
            cert_pem: cert_pem.to_string(),
            pin: kagi_crypto::sha256(der.as_ref()),
        })
    }

    /// A fresh serial number: positive, fixed length, no leading zero byte, so its DER
    /// INTEGER bytes are exactly these (what `peer_identity` reads back).
    pub fn new_serial() -> [u8; 16] {
        let mut serial = kagi_crypto::random_array::<16>();
        serial[0] = (serial[0] & 0x7f) | 0x40;
        serial
    }

    /// Issues a certificate for `public_key` naming `cn`, valid from a minute ago for `ttl`
    /// seconds, with `sans` (IP addresses or DNS names) for server use.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        serial: [u8; 16],
        cn: &str,
        public_key: &[u8; 65],
        sans: &[String],
        usage: Usage,
        now: i64,
        ttl: i64,
    ) -> Result<Issued, String> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        for s in sans {
            p.subject_alt_names
                .push(match s.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        SanType::DnsName(s.clone().try_into().map_err(|e| format!("{s}: {e}"))?)
                    }
                });
        }
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.not_before = time(now - 60)?;
        p.not_after = time(now + ttl)?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match usage {
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&RawP256(public_key), &self.issuer)
            .map_err(|e| e.to_string())?;
        Ok(Issued {
            pem: cert.pem(),
            not_after: now + ttl,
        })
    }
}

/// The subject CN and serial number (hex) of a peer's DER certificate.
pub fn peer_identity(der: &[u8]) -> Option<(String, String)> {
    kagi_server::subject_cn_and_serial(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca_and_carry_the_serial() {
        let (name, cert, key) = Ca::generate(1_800_000_000).unwrap();
        let ca = Ca::load(&name, &cert, &key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let point: [u8; 65] = leaf_key.public_key_raw().try_into().unwrap();
        let now = jiff::Timestamp::now().as_second();
        let serial = Ca::new_serial();
        let issued = ca
            .issue(
                serial,
                "alice",
                &point,
                &["10.0.0.1".into()],
                Usage::Both,
                now,
                3600,
            )
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.pem.as_bytes()).unwrap();
        assert_eq!(
            peer_identity(der.as_ref()).unwrap(),
            ("alice".to_string(), hex::encode(serial))
        );
        // webpki accepts it as a client certificate under the CA.
        let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        v.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }
}
