//! Proxy errors: whose fault, and the status and JSON body the client gets.

use http::{Response, StatusCode};

use crate::auth::AuthError;
use crate::http::{json_error, Body};

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
    /// No upstream is registered for the endpoint.
    #[error("no available upstreams")]
    NoUpstream,
    /// The upstream failed during the request.
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    /// The upstream did not start its response in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
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
            | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoUpstream | ProxyError::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Auth(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The response the client gets.
    pub fn response(&self) -> Response<Body> {
        json_error(self.status(), &self.to_string())
    }
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
        }
    }
}
