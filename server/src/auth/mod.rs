//! Token verification for the proxy, upstream and admin ports.
//!
//! Each port verifies JWT bearer tokens independently (`proxy.auth.*`, `upstream.auth.*`,
//! `admin.auth.*`): HMAC secrets, RSA, ECDSA (P-256, P-384, P-521) or Ed25519 PEM public keys,
//! or a JWKS (file or URL, cached and refreshed). `exp` and `nbf` are always checked when
//! present, `aud`/`iss` when configured. The claim `{"piko": {"endpoints": [...]}}` limits which
//! endpoints a token may register or reach. Verification uses the maintained `jsonwebtoken`
//! crate, and RustCrypto's `p521` for ES512, which `jsonwebtoken` lacks (`es512.rs`).

mod es512;
mod jwks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use piko_protocol::paths::{AUTHORIZATION_HEADER, TENANT_HEADER};
use serde::Deserialize;

pub use es512::Es512Key;
pub use jwks::{Jwks, JwksLocation, JwksSource};

/// Why a request was not authenticated. Every variant is a 401 with its message as `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the request.
    #[error("missing authorization")]
    Missing,
    /// The token is malformed, badly signed or fails a claim check.
    #[error("invalid token")]
    Invalid,
    /// The token's `exp` has passed.
    #[error("expired token")]
    Expired,
    /// The `x-piko-tenant-id` names no configured tenant.
    #[error("unknown tenant")]
    UnknownTenant,
    /// The token does not permit this endpoint.
    #[error("endpoint not permitted")]
    NotPermitted,
}

/// A verified token.
#[derive(Debug, Clone, Default)]
pub struct Token {
    /// When the token expires (`None`: never, or disconnect on expiry disabled).
    pub expiry: Option<SystemTime>,
    /// Endpoints the token is limited to (`None`: any; an empty claim counts as none, as in
    /// the original Go Piko, whose tokens say `"endpoints": []` for "all").
    pub endpoints: Option<Vec<String>>,
    /// The tenant whose keys verified it.
    pub tenant: Option<String>,
}

impl Token {
    /// Whether the token may register or reach `endpoint`.
    pub fn permits(&self, endpoint: &str) -> bool {
        match &self.endpoints {
            None => true,
            Some(list) => list.iter().any(|e| e == endpoint),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    /// A NumericDate: RFC 7519 allows fractions of a second (`1700000000.5`).
    exp: Option<serde_json::Number>,
    #[serde(default)]
    piko: PikoClaims,
}

#[derive(Deserialize, Default)]
struct PikoClaims {
    endpoints: Option<Vec<String>>,
}

/// The instant a NumericDate names; `None` past what the clock can hold (which for a token
/// means it never expires within this process's life: `jsonwebtoken` already refused one
/// that has passed or is not a number).
fn expiry_time(exp: &serde_json::Number) -> Option<SystemTime> {
    let since_epoch = match exp.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(since_epoch)
}

/// What a verifier checks, from configuration.
#[derive(Clone, Default)]
pub struct VerifierSettings {
    /// HMAC secret for HS256/384/512.
    pub hmac_secret: Option<Vec<u8>>,
    /// PEM public key for RS256/384/512 and PS256/384/512.
    pub rsa_public_key: Option<String>,
    /// PEM public key for ES256/ES384 (P-256/P-384) or ES512 (P-521).
    pub ecdsa_public_key: Option<String>,
    /// PEM public key for EdDSA (Ed25519).
    pub ed25519_public_key: Option<String>,
    /// JWKS to verify with (exclusive with the keys above).
    pub jwks: Option<JwksSource>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Keep connections open after their token expires.
    pub disable_disconnect_on_expiry: bool,
    /// Reject tokens without the `piko.endpoints` claim.
    pub require_endpoints: bool,
}

/// Verifies tokens against configured keys or a JWKS.
pub struct Verifier {
    keys: Vec<(Vec<Algorithm>, DecodingKey)>,
    /// The P-521 key for ES512, which `jsonwebtoken` cannot verify.
    es512: Option<Es512Key>,
    jwks: Option<Arc<Jwks>>,
    audience: Option<String>,
    issuer: Option<String>,
    disconnect_on_expiry: bool,
    require_endpoints: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// A verification key could not be used; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeyError {
    /// The settings field (e.g. `rsa_public_key`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Verifier {
    /// Build a verifier; fails when a key does not parse or no key is given.
    pub fn new(s: VerifierSettings) -> Result<Self, KeyError> {
        use Algorithm::*;
        let err = |field, e: &dyn std::fmt::Display| KeyError {
            field,
            message: format!("invalid key ({e})"),
        };
        let mut keys = Vec::new();
        if let Some(secret) = &s.hmac_secret {
            keys.push((vec![HS256, HS384, HS512], DecodingKey::from_secret(secret)));
        }
        if let Some(pem) = &s.rsa_public_key {
            let k =
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| err("rsa_public_key", &e))?;
            keys.push((vec![RS256, RS384, RS512, PS256, PS384, PS512], k));
        }
        let mut es512 = None;
        if let Some(pem) = &s.ecdsa_public_key {
            match Es512Key::from_pem(pem) {
                Some(k) => es512 = Some(k),
                None => {
                    let k = DecodingKey::from_ec_pem(pem.as_bytes())
                        .map_err(|e| err("ecdsa_public_key", &e))?;
                    keys.push((vec![ES256, ES384], k));
                }
            }
        }
        if let Some(pem) = &s.ed25519_public_key {
            let k = DecodingKey::from_ed_pem(pem.as_bytes())
                .map_err(|e| err("ed25519_public_key", &e))?;
            keys.push((vec![EdDSA], k));
        }
        if s.jwks.is_some() && (!keys.is_empty() || es512.is_some()) {
            return Err(KeyError {
                field: "jwks.endpoint",
                message: "no other verification key may be set with a JWKS".into(),
            });
        }
        let jwks = s.jwks.map(|src| Arc::new(Jwks::new(src)));
        if keys.is_empty() && es512.is_none() && jwks.is_none() {
            return Err(KeyError {
                field: "hmac_secret_key",
                message: "no verification key configured".into(),
            });
        }
        Ok(Self {
            keys,
            es512,
            jwks,
            audience: s.audience,
            issuer: s.issuer,
            disconnect_on_expiry: !s.disable_disconnect_on_expiry,
            require_endpoints: s.require_endpoints,
        })
    }

    /// The JWKS this verifier uses, to load and refresh.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verify `token`.
    pub fn verify(&self, token: &str) -> Result<Token, AuthError> {
        if let Some(header) = es512::header(token) {
            return self.verify_es512(token, header);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let alg = header.alg;
        let key = match &self.jwks {
            Some(jwks) => jwks
                .key(header.kid.as_deref(), alg)
                .ok_or(AuthError::Invalid)?,
            None => self
                .keys
                .iter()
                .find(|(algs, _)| algs.contains(&alg))
                .map(|(_, k)| k.clone())
                .ok_or(AuthError::Invalid)?,
        };
        let mut v = Validation::new(alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.validate_exp = true;
        v.required_spec_claims.clear();
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        self.token(data.claims)
    }

    /// Verify an ES512 token, which `jsonwebtoken` does not implement.
    fn verify_es512(&self, token: &str, header: es512::Header) -> Result<Token, AuthError> {
        let key = match &self.jwks {
            Some(jwks) => jwks.es512_key(header.kid.as_deref()),
            None => self.es512.clone(),
        }
        .ok_or(AuthError::Invalid)?;
        let claims = es512::verify_signature(token, &key)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        es512::check_claims(
            &claims,
            now,
            self.audience.as_deref(),
            self.issuer.as_deref(),
        )?;
        self.token(serde_json::from_slice(&claims).map_err(|_| AuthError::Invalid)?)
    }

    /// The verified token that `claims` (already checked) describe.
    fn token(&self, claims: Claims) -> Result<Token, AuthError> {
        // `"endpoints": []` permits every endpoint, as in the original Go Piko; a server that
        // requires scoped tokens refuses it like a token without the claim.
        let endpoints = claims.piko.endpoints.filter(|list| !list.is_empty());
        if self.require_endpoints && endpoints.is_none() {
            return Err(AuthError::NotPermitted);
        }
        let expiry = match &claims.exp {
            Some(exp) if self.disconnect_on_expiry => expiry_time(exp),
            _ => None,
        };
        Ok(Token {
            expiry,
            endpoints,
            tenant: None,
        })
    }
}

/// The authentication of one port: a default verifier and per-tenant verifiers.
#[derive(Debug, Clone, Default)]
pub struct PortAuth {
    /// Verifies tokens without a tenant header.
    pub default: Option<Arc<Verifier>>,
    /// Verifiers selected by `x-piko-tenant-id`.
    pub tenants: BTreeMap<String, Arc<Verifier>>,
}

impl PortAuth {
    /// Whether the port requires a token.
    pub fn enabled(&self) -> bool {
        self.default.is_some() || !self.tenants.is_empty()
    }

    /// Every verifier of the port.
    pub fn verifiers(&self) -> impl Iterator<Item = &Arc<Verifier>> {
        self.default.iter().chain(self.tenants.values())
    }

    /// Authenticate a request from its headers: `Ok(None)` when the port has no auth.
    /// `x-piko-authorization` wins over `Authorization`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Token>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let value = headers
            .get(AUTHORIZATION_HEADER)
            .or_else(|| headers.get(header::AUTHORIZATION))
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Invalid)?.trim();
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Invalid);
        }
        let tenant = headers
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty());
        let verifier = match tenant {
            Some(t) => self.tenants.get(t).ok_or(AuthError::UnknownTenant)?,
            // With tenants configured, a request must name one (as the original Piko).
            None if !self.tenants.is_empty() => return Err(AuthError::UnknownTenant),
            None => self.default.as_ref().ok_or(AuthError::UnknownTenant)?,
        };
        let mut token = verifier.verify(token.trim())?;
        token.tenant = tenant.map(str::to_string);
        Ok(Some(token))
    }

    /// Authenticate and check the token permits `endpoint`.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        endpoint: &str,
    ) -> Result<Option<Token>, AuthError> {
        let token = self.authenticate(headers)?;
        if let Some(t) = &token {
            if !t.permits(endpoint) {
                return Err(AuthError::NotPermitted);
            }
        }
        Ok(token)
    }

    /// Load every JWKS once (startup fails if one cannot be loaded) and keep them refreshed,
    /// on `tasks`, until `shutdown`.
    pub async fn start(
        &self,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        for v in self.verifiers() {
            if let Some(jwks) = v.jwks() {
                jwks.refresh().await?;
                tasks.spawn(jwks.clone().keep_fresh(shutdown.clone()));
            }
        }
        Ok(())
    }
}

/// Seconds since the epoch, for tokens and tests.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
