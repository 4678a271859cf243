//! What the two AWS front-ends (XKS and the KMS JSON API) share: reading a whole request and
//! checking its SigV4 signature up to the point where the secret is needed.

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use kagi_aws::sigv4::{self, Pending, RequestParts, SigV4Error};

use crate::api::ConnInfo;
use crate::service::Caller;

/// A request read whole, with its signature checked for form, service and time.
pub(crate) struct SignedRequest {
    pub parts: Parts,
    pub body: Bytes,
    pub pending: Result<Pending, SigV4Error>,
}

/// Reads the body (at most `limit` bytes; `None` beyond) and prepares the SigV4 check.
pub(crate) async fn read_signed(
    req: Request,
    limit: usize,
    service: &'static str,
) -> Option<SignedRequest> {
    let (mut parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, limit).await.ok()?;
    // Over HTTP/2 the host is the :authority, which SigV4 signs as `host`.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, a);
        }
    }
    let signed = RequestParts {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
    };
    let pending = sigv4::prepare(&signed, service, jiff::Timestamp::now().as_second());
    Some(SignedRequest {
        parts,
        body,
        pending,
    })
}

impl SignedRequest {
    /// The caller before authentication: its address and a fresh request id.
    pub fn anonymous(&self) -> Caller {
        Caller::anonymous(
            self.conn().map(|c| c.peer.ip()),
            crate::service::new_request_id(),
        )
    }

    /// What the listener knows of the connection.
    pub fn conn(&self) -> Option<&ConnInfo> {
        self.parts.extensions.get::<ConnInfo>()
    }
}
