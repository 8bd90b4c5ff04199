//! ES512 tokens: ECDSA on P-521 with SHA-512.
//!
//! The original Go Piko accepts them and `jsonwebtoken` does not implement the algorithm, so
//! the signature is checked here with RustCrypto's `p521`, and the registered claims (`exp`,
//! `nbf`, `aud`, `iss`) with the rules the verifier gives `jsonwebtoken` for every other
//! algorithm (no leeway; `exp` and `nbf` checked when present; `aud` and `iss` required when
//! configured). A test holds the two to the same verdicts.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p521::ecdsa::signature::Verifier as _;
use p521::ecdsa::{Signature, VerifyingKey};
use p521::pkcs8::DecodePublicKey;
use serde::Deserialize;

use super::AuthError;

/// The algorithm name in a token's header.
pub const ALG: &str = "ES512";

/// A P-521 public key that verifies ES512 signatures.
#[derive(Clone)]
pub struct Es512Key(VerifyingKey);

impl std::fmt::Debug for Es512Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Es512Key")
    }
}

impl Es512Key {
    /// A key from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block; `None` when the PEM holds
    /// no P-521 key (it may be a P-256 or P-384 key for `jsonwebtoken`).
    pub fn from_pem(pem: &str) -> Option<Self> {
        p521::PublicKey::from_public_key_pem(pem)
            .ok()
            .and_then(|k| VerifyingKey::from_affine(*k.as_affine()).ok())
            .map(Self)
    }

    /// A key from a JWK's base64url `x` and `y` coordinates (66 bytes each).
    pub fn from_coordinates(x: &str, y: &str) -> Result<Self, String> {
        let coord = |name, v: &str| {
            let bytes = URL_SAFE_NO_PAD
                .decode(v)
                .map_err(|e| format!("{name}: not base64url ({e})"))?;
            p521::FieldBytes::from_exact_iter(bytes)
                .ok_or_else(|| format!("{name}: not a P-521 coordinate (66 bytes)"))
        };
        let point =
            p521::EncodedPoint::from_affine_coordinates(&coord("x", x)?, &coord("y", y)?, false);
        VerifyingKey::from_encoded_point(&point)
            .map(Self)
            .map_err(|_| "the point is not on the P-521 curve".into())
    }
}

/// What the verifier needs from a token's header before it picks a key.
#[derive(Debug, Deserialize)]
pub struct Header {
    /// The signing algorithm.
    pub alg: String,
    /// The key id, to pick a JWKS key.
    #[serde(default)]
    pub kid: Option<String>,
}

/// The header of `token` when it names ES512 (which `jsonwebtoken::decode_header` refuses).
pub fn header(token: &str) -> Option<Header> {
    let encoded = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    serde_json::from_slice::<Header>(&json)
        .ok()
        .filter(|h| h.alg == ALG)
}

/// Check the signature of `token` against `key` and return its decoded claims.
pub fn verify_signature(token: &str, key: &Es512Key) -> Result<Vec<u8>, AuthError> {
    let mut parts = token.split('.');
    let (Some(head), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid);
    };
    // JWS signatures are the raw r || s pair (66 bytes each), not DER.
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|s| Signature::from_slice(&s).ok())
        .ok_or(AuthError::Invalid)?;
    let signed = &token[..head.len() + 1 + payload.len()];
    key.0
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| AuthError::Invalid)?;
    URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Invalid)
}

/// The registered claims the verifier checks.
#[derive(Debug, Default, Deserialize)]
struct Registered {
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
}

/// Check `exp`, `nbf`, `aud` and `iss` of decoded `claims` at `now` (seconds since the epoch),
/// as the verifier configures `jsonwebtoken`.
pub fn check_claims(
    claims: &[u8],
    now: f64,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<(), AuthError> {
    let r: Registered = serde_json::from_slice(claims).map_err(|_| AuthError::Invalid)?;
    let time = |v: &Option<serde_json::Value>| match v {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(AuthError::Invalid),
    };
    if let Some(exp) = time(&r.exp)? {
        if exp < now {
            return Err(AuthError::Expired);
        }
    }
    if let Some(nbf) = time(&r.nbf)? {
        if nbf > now {
            return Err(AuthError::Invalid);
        }
    }
    if let Some(want) = audience {
        let ok = match &r.aud {
            Some(serde_json::Value::String(a)) => a == want,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(AuthError::Invalid);
        }
    }
    if let Some(want) = issuer {
        if r.iss.as_ref().and_then(|i| i.as_str()) != Some(want) {
            return Err(AuthError::Invalid);
        }
    }
    Ok(())
}
