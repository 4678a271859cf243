//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for requests whose whole body is in hand.
//!
//! Verification rebuilds the canonical request from the `SignedHeaders` list the request
//! carries (AWS KMS signs `host;x-amz-date`, curl's `--aws-sigv4` also `content-type`), so any
//! conforming client verifies. The steps, as AWS documents them:
//! ```text
//! CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n
//!                    SignedHeaders \n hex(SHA-256(body))
//! StringToSign     = "AWS4-HMAC-SHA256" \n X-Amz-Date \n date/region/service/aws4_request \n
//!                    hex(SHA-256(CanonicalRequest))
//! SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")
//! Signature        = hex(HMAC(SigningKey, StringToSign))
//! ```
//! The signing key depends only on the secret and the scope, so a server caches it per scope
//! and pays two SHA-256 and one HMAC per request.

use http::HeaderMap;
use zeroize::Zeroizing;

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Requests further than this from the server's clock are refused (AWS: 5 minutes).
pub const MAX_SKEW_SECS: i64 = 300;
/// Longest `Authorization` header read.
const MAX_AUTHORIZATION: usize = 4096;

/// Why a request's signature was refused. Each is one sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigV4Error {
    /// No `Authorization` header.
    #[error("the request is not signed: it has no Authorization header (AWS Signature Version 4)")]
    Missing,
    /// The header is not `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
    /// Signed for another service.
    #[error("the request is signed for service {found:?}; this endpoint is {expected:?}")]
    WrongService {
        /// The service in the credential scope.
        found: String,
        /// The service this endpoint is.
        expected: &'static str,
    },
    /// No usable `X-Amz-Date`.
    #[error("the request has no valid X-Amz-Date header (YYYYMMDDTHHMMSSZ)")]
    BadDate,
    /// Too far from the server's clock.
    #[error("the request was signed at {0}, more than 5 minutes from the server's clock")]
    Skew(String),
    /// The scope's date is not the request's date.
    #[error("the credential scope date does not match X-Amz-Date")]
    ScopeDate,
    /// A header named in `SignedHeaders` is not in the request.
    #[error("the signed header {0:?} is not in the request")]
    MissingSignedHeader(String),
    /// A signed header's value is not visible ASCII.
    #[error("the signed header {0:?} has a value that is not ASCII text")]
    BadHeaderValue(String),
    /// `x-amz-content-sha256` is not the body's hash.
    #[error("x-amz-content-sha256 is not the SHA-256 of the request body")]
    PayloadHash,
    /// Nobody holds this access key id.
    #[error("the access key id {0:?} is not known here")]
    UnknownAccessKey(String),
    /// The signature is wrong.
    #[error(
        "the request signature does not match: check the secret access key and the signing method"
    )]
    BadSignature,
}

impl SigV4Error {
    /// The AWS error name a JSON API answers with.
    pub fn aws_code(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::UnknownAccessKey(_) => "UnrecognizedClientException",
            Self::BadSignature | Self::PayloadHash | Self::Skew(_) => "InvalidSignatureException",
            _ => "IncompleteSignatureException",
        }
    }
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// Region of the credential scope.
    pub region: String,
    /// Service of the credential scope.
    pub service: String,
    /// Lower-case header names, in the order signed.
    pub signed_headers: Vec<String>,
    /// The signature.
    pub signature: [u8; 32],
}

fn is_token(s: &str, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(ok)
}

impl Authorization {
    /// Parses `AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request,
    /// SignedHeaders=a;b;c, Signature=HEX`.
    pub fn parse(value: &str) -> Result<Self, SigV4Error> {
        use SigV4Error::Malformed;
        if value.len() > MAX_AUTHORIZATION {
            return Err(Malformed("it is longer than 4096 bytes"));
        }
        let rest = value
            .strip_prefix(ALGORITHM)
            .filter(|r| r.starts_with(' '))
            .ok_or(Malformed("it does not start with AWS4-HMAC-SHA256"))?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(Malformed("a component is not NAME=VALUE"))?;
            let slot = match k {
                "Credential" => &mut cred,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut sig,
                _ => {
                    return Err(Malformed(
                        "it has a component other than Credential, SignedHeaders and Signature",
                    ))
                }
            };
            if slot.replace(v).is_some() {
                return Err(Malformed("a component appears twice"));
            }
        }
        let cred = cred.ok_or(Malformed("Credential is missing"))?;
        let signed = signed.ok_or(Malformed("SignedHeaders is missing"))?;
        let sig = sig.ok_or(Malformed("Signature is missing"))?;

        let parts: Vec<&str> = cred.split('/').collect();
        let [id, date, region, service, term] = parts[..] else {
            return Err(Malformed(
                "Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request",
            ));
        };
        if term != "aws4_request" {
            return Err(Malformed(
                "the credential scope does not end in aws4_request",
            ));
        }
        if !is_token(id, 128, |b| b.is_ascii_alphanumeric()) {
            return Err(Malformed(
                "the access key id is not 1-128 letters and digits",
            ));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Malformed("the credential scope date is not YYYYMMDD"));
        }
        let scope_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if !is_token(region, 64, scope_ok) || !is_token(service, 64, scope_ok) {
            return Err(Malformed(
                "the credential scope region or service is not a name",
            ));
        }

        let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
        let header_ok =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        if signed_headers.iter().any(|h| !is_token(h, 128, header_ok)) {
            return Err(Malformed(
                "SignedHeaders is not a list of lower-case header names",
            ));
        }
        if !signed_headers.windows(2).all(|w| w[0] < w[1]) {
            return Err(Malformed("SignedHeaders is not sorted, or repeats a name"));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(Malformed("SignedHeaders does not include host"));
        }
        let mut signature = [0u8; 32];
        if sig.len() != 64 || hex::decode_to_slice(sig, &mut signature).is_err() {
            return Err(Malformed("Signature is not 64 hex digits"));
        }
        Ok(Self {
            access_key_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature,
        })
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// The parts of an HTTP request a signature covers. Over HTTP/2 the caller puts the
/// `:authority` into `headers` as `host` first.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `POST`, `GET` ...
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?` (empty if none).
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// RFC 3986 encoding as SigV4 wants it: everything but unreserved characters (and `/` when
/// `keep_slash`) as `%XX`, upper-case hex.
fn uri_encode(s: &[u8], keep_slash: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex_pair = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex_pair.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&percent_decode(k), false, &mut ek);
            uri_encode(&percent_decode(v), false, &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    let joined: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    joined.join("&")
}

/// Appends the header's values as SigV4 canonicalizes them: trimmed, inner runs of spaces
/// collapsed, repeated headers joined with commas.
fn push_canonical_header_value(
    headers: &HeaderMap,
    name: &str,
    out: &mut String,
) -> Result<(), SigV4Error> {
    let mut any = false;
    for v in headers.get_all(name) {
        let s = v
            .to_str()
            .map_err(|_| SigV4Error::BadHeaderValue(name.to_string()))?;
        if any {
            out.push(',');
        }
        any = true;
        for (i, word) in s.split_whitespace().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    if any {
        Ok(())
    } else {
        Err(SigV4Error::MissingSignedHeader(name.to_string()))
    }
}

/// `hex(SHA-256(body))`, checked against `x-amz-content-sha256` when the client sent it.
fn payload_hash(req: &RequestParts<'_>) -> Result<String, SigV4Error> {
    let computed = hex::encode(kagi_crypto::sha256(req.body));
    match req.headers.get("x-amz-content-sha256") {
        Some(v) if v.as_bytes() != computed.as_bytes() => Err(SigV4Error::PayloadHash),
        _ => Ok(computed),
    }
}

/// The canonical request over `signed_headers`.
pub fn canonical_request(
    req: &RequestParts<'_>,
    signed_headers: &[String],
) -> Result<String, SigV4Error> {
    let mut out = String::with_capacity(256 + req.path.len());
    out.push_str(req.method);
    out.push('\n');
    if req.path.is_empty() {
        out.push('/');
    } else {
        uri_encode(req.path.as_bytes(), true, &mut out);
    }
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for h in signed_headers {
        out.push_str(h);
        out.push(':');
        push_canonical_header_value(req.headers, h, &mut out)?;
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(&payload_hash(req)?);
    Ok(out)
}

/// The string to sign.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(kagi_crypto::sha256(canonical_request.as_bytes()))
    )
}

/// A scope's signing key; it is as secret as the secret access key.
pub type SigningKey = Zeroizing<[u8; 32]>;

/// The signing key for one secret and scope.
pub fn signing_key(secret: &[u8], date: &str, region: &str, service: &str) -> SigningKey {
    let mut k0 = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k0.extend_from_slice(b"AWS4");
    k0.extend_from_slice(secret);
    let k1 = Zeroizing::new(kagi_crypto::hmac_sha256(&k0, date.as_bytes()));
    let k2 = Zeroizing::new(kagi_crypto::hmac_sha256(&*k1, region.as_bytes()));
    let k3 = Zeroizing::new(kagi_crypto::hmac_sha256(&*k2, service.as_bytes()));
    Zeroizing::new(kagi_crypto::hmac_sha256(&*k3, b"aws4_request"))
}

/// Parses `YYYYMMDDTHHMMSSZ` into unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        b[r].iter().try_fold(0i32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0'))
        })
    };
    let narrow = |v: i32| i8::try_from(v).ok();
    let dt = jiff::civil::DateTime::new(
        i16::try_from(num(0..4)?).ok()?,
        narrow(num(4..6)?)?,
        narrow(num(6..8)?)?,
        narrow(num(9..11)?)?,
        narrow(num(11..13)?)?,
        narrow(num(13..15)?)?,
        0,
    )
    .ok()?;
    Some(
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second(),
    )
}

/// Formats unix seconds as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// A request whose signature is well formed, in time and for the right service; what is left
/// is to look up the access key's secret and [`verify`](Self::verify).
#[derive(Debug, Clone)]
pub struct Pending {
    /// The parsed header.
    pub auth: Authorization,
    string_to_sign: String,
}

/// Checks form, service and time and builds the string to sign.
pub fn prepare(
    req: &RequestParts<'_>,
    service: &'static str,
    now: i64,
) -> Result<Pending, SigV4Error> {
    let value = req
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(SigV4Error::Missing)?
        .to_str()
        .map_err(|_| SigV4Error::Malformed("it is not ASCII text"))?;
    let auth = Authorization::parse(value)?;
    if auth.service != service {
        return Err(SigV4Error::WrongService {
            found: auth.service,
            expected: service,
        });
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigV4Error::BadDate)?;
    let when = parse_amz_date(amz_date).ok_or(SigV4Error::BadDate)?;
    if (when - now).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Skew(amz_date.to_string()));
    }
    if !amz_date.starts_with(&auth.date) {
        return Err(SigV4Error::ScopeDate);
    }
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let string_to_sign = string_to_sign(amz_date, &auth.scope(), &canonical);
    Ok(Pending {
        auth,
        string_to_sign,
    })
}

impl Pending {
    /// Checks the signature with the scope's signing key, in constant time.
    pub fn verify(&self, key: &[u8; 32]) -> Result<(), SigV4Error> {
        let expect = kagi_crypto::hmac_sha256(key, self.string_to_sign.as_bytes());
        if kagi_crypto::ct_eq(&expect, &self.auth.signature) {
            Ok(())
        } else {
            Err(SigV4Error::BadSignature)
        }
    }
}

/// Client side: the `Authorization` value for a request whose headers already hold `host`,
/// `x-amz-date` and every other header in `signed_headers` (sorted, lower case).
pub fn authorization(
    req: &RequestParts<'_>,
    access_key_id: &str,
    secret: &[u8],
    region: &str,
    service: &str,
    signed_headers: &[String],
) -> Result<String, SigV4Error> {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigV4Error::BadDate)?;
    let date = amz_date.get(..8).ok_or(SigV4Error::BadDate)?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let canonical = canonical_request(req, signed_headers)?;
    let sts = string_to_sign(amz_date, &scope, &canonical);
    let key = signing_key(secret, date, region, service);
    let sig = kagi_crypto::hmac_sha256(&*key, sts.as_bytes());
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        hex::encode(sig)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    // AWS's published SigV4 test suite, case "get-vanilla": secret
    // wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20150830T123600Z, us-east-1, service "service".
    #[test]
    fn aws_test_suite_get_vanilla() {
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let req = RequestParts {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let signed = vec!["host".to_string(), "x-amz-date".to_string()];
        let auth = authorization(
            &req,
            "AKIDEXAMPLE",
            b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "service",
            &signed,
        )
        .unwrap();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn signed_post(body: &[u8], now: i64) -> HeaderMap {
        let mut h = headers(&[
            ("host", "xks.example.com"),
            ("content-type", "application/json"),
            ("x-amz-date", &format_amz_date(now)),
        ]);
        let req = RequestParts {
            method: "POST",
            path: "/p/kms/xks/v1/health",
            query: "",
            headers: &h,
            body,
        };
        let signed: Vec<String> = ["content-type", "host", "x-amz-date"]
            .map(String::from)
            .to_vec();
        let a = authorization(
            &req,
            "AKIA2345",
            b"secret",
            "us-east-1",
            "kms-xks-proxy",
            &signed,
        )
        .unwrap();
        h.insert("authorization", HeaderValue::from_str(&a).unwrap());
        h
    }

    fn check(h: &HeaderMap, body: &[u8], now: i64, secret: &[u8]) -> Result<(), SigV4Error> {
        let req = RequestParts {
            method: "POST",
            path: "/p/kms/xks/v1/health",
            query: "",
            headers: h,
            body,
        };
        let p = prepare(&req, "kms-xks-proxy", now)?;
        let key = signing_key(secret, &p.auth.date, &p.auth.region, &p.auth.service);
        p.verify(&key)
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let now = 1_790_000_000;
        let h = signed_post(b"{}", now);
        check(&h, b"{}", now, b"secret").unwrap();
        check(&h, b"{}", now + 299, b"secret").unwrap();
        assert_eq!(
            check(&h, b"{}", now, b"other"),
            Err(SigV4Error::BadSignature)
        );
        assert_eq!(
            check(&h, b"{ }", now, b"secret"),
            Err(SigV4Error::BadSignature)
        );
        assert!(matches!(
            check(&h, b"{}", now + 301, b"secret"),
            Err(SigV4Error::Skew(_))
        ));
        let mut h2 = h.clone();
        h2.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(
            check(&h2, b"{}", now, b"secret"),
            Err(SigV4Error::BadSignature)
        );
        let mut h3 = h.clone();
        h3.remove("content-type");
        assert_eq!(
            check(&h3, b"{}", now, b"secret"),
            Err(SigV4Error::MissingSignedHeader("content-type".into()))
        );
        let mut h4 = h.clone();
        h4.insert("x-amz-content-sha256", HeaderValue::from_static("00"));
        assert_eq!(
            check(&h4, b"{}", now, b"secret"),
            Err(SigV4Error::PayloadHash)
        );
        let mut h5 = h;
        h5.remove("authorization");
        assert_eq!(check(&h5, b"{}", now, b"secret"), Err(SigV4Error::Missing));
    }

    #[test]
    fn malformed_headers_are_refused_with_a_reason() {
        let ok = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=".to_string() + &"ab".repeat(32);
        Authorization::parse(&ok).unwrap();
        for bad in [
            "",
            "AWS4-HMAC-SHA1 Credential=x",
            "AWS4-HMAC-SHA256 Credential=AK/2026/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
            &ok.replace("host;x-amz-date", "x-amz-date;host"),
            &ok.replace("host;x-amz-date", "x-amz-date"),
            &ok.replace("aws4_request", "aws5_request"),
            &ok.replace("Signature=ab", "Signature=zz"),
            &(ok.clone() + ", Signature=00"),
        ] {
            assert!(matches!(Authorization::parse(bad), Err(SigV4Error::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn amz_dates() {
        assert_eq!(parse_amz_date("19700101T000001Z"), Some(1));
        assert_eq!(
            parse_amz_date(&format_amz_date(1_790_000_000)),
            Some(1_790_000_000)
        );
        for bad in [
            "20260230T000000Z",
            "2026010 T000000Z",
            "20260101T000000",
            "20260101T246000Z",
            "２０260101T00000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn canonical_uri_and_query_are_encoded() {
        let h = headers(&[("host", "h")]);
        let req = RequestParts {
            method: "GET",
            path: "/a b/%41",
            query: "b=2&a=x%2Fy&c",
            headers: &h,
            body: b"",
        };
        let c = canonical_request(&req, &["host".to_string()]).unwrap();
        let mut lines = c.lines();
        assert_eq!(lines.next(), Some("GET"));
        assert_eq!(lines.next(), Some("/a%20b/%2541"));
        assert_eq!(lines.next(), Some("a=x%2Fy&b=2&c="));
    }
}
