//! Proxy errors: whose fault, and the status and JSON body the client gets.

use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::http::{json_error, Body, DeadlineExceeded};

/// Why a proxied request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Client: the request names no endpoint.
    #[error("missing endpoint id")]
    MissingEndpoint,
    /// Client: the endpoint id is malformed.
    #[error("{0}")]
    BadEndpoint(String),
    /// Client: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Client: the request body broke off or is not valid chunked framing. Told apart from an
    /// upstream failure so the client, not the upstream, gets the blame.
    #[error("malformed or incomplete request body")]
    ClientBody,
    /// Client: `Transfer-Encoding` names a coding other than `chunked`, which would reach the
    /// service without its coding (RFC 9112 §6.1: 501).
    #[error("unsupported transfer encoding; only chunked is accepted")]
    UnsupportedTransferEncoding,
    /// Client: `CONNECT` (a forward-proxy tunnel), which a reverse proxy does not offer.
    #[error("CONNECT is not supported")]
    Connect,
    /// No upstream is registered for the endpoint.
    #[error("no available upstreams")]
    NoUpstream,
    /// The upstream failed during the request.
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    /// The upstream did not start its response in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// Client: the request body had not all arrived by `proxy.http.read_timeout`.
    #[error("request timeout")]
    RequestTimeout,
    /// No response could be started by `proxy.http.write_timeout` (the upstream was slower).
    #[error("response timeout")]
    ResponseTimeout,
    /// Client: authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ProxyError {
    /// The status this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingEndpoint
            | ProxyError::BadEndpoint(_)
            | ProxyError::BadRequest(_)
            | ProxyError::ClientBody => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoUpstream | ProxyError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::ResponseTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Auth(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The response the client gets.
    pub fn response(&self) -> Response<Body> {
        let mut resp = json_error(self.status(), &self.to_string());
        if let ProxyError::Connect = self {
            // A 405 must say what is allowed (RFC 9110 §15.5.6): every method but CONNECT is
            // passed on to the service.
            resp.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(ALLOWED));
        }
        resp
    }
}

/// The methods the proxy passes on, for the `Allow` header of its 405.
const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

/// The client's part in a failed request to the next hop, if its request body is to blame:
/// it missed its deadline (408) or broke off (400).
pub(super) fn client_body_error(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    if DeadlineExceeded::find(e).is_some() {
        return Some(ProxyError::RequestTimeout);
    }
    client_body_failed(e).then_some(ProxyError::ClientBody)
}

/// Whether a request to the next hop failed because the client's request body did. hyper
/// reports an error of the body it was sending as a user error whose source is that body's
/// own error (a `hyper::Error` of the client's connection); `e` may wrap it (the cluster
/// client's errors do).
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_user()
                && std::error::Error::source(h)
                    .is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some());
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let cases = [
            (ProxyError::MissingEndpoint, 400, "missing endpoint id"),
            (
                ProxyError::BadEndpoint("endpoint id is empty".into()),
                400,
                "endpoint id is empty",
            ),
            (ProxyError::NoUpstream, 502, "no available upstreams"),
            (ProxyError::UpstreamUnreachable, 502, "upstream unreachable"),
            (ProxyError::UpstreamTimeout, 504, "upstream timeout"),
            (ProxyError::RequestTimeout, 408, "request timeout"),
            (ProxyError::ResponseTimeout, 504, "response timeout"),
            (
                ProxyError::ClientBody,
                400,
                "malformed or incomplete request body",
            ),
            (
                ProxyError::UnsupportedTransferEncoding,
                501,
                "unsupported transfer encoding; only chunked is accepted",
            ),
            (ProxyError::Connect, 405, "CONNECT is not supported"),
            (
                ProxyError::Auth(AuthError::Missing),
                401,
                "missing authorization",
            ),
            (
                ProxyError::Auth(AuthError::NotPermitted),
                401,
                "endpoint not permitted",
            ),
        ];
        for (e, status, msg) in cases {
            let r = e.response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(e.to_string(), msg);
            assert_eq!(
                r.headers().contains_key("allow"),
                status == 405,
                "a 405 and only a 405 says what is allowed"
            );
        }
    }
}
