//! A JSON Web Key Set loaded from a file or URL, cached and refreshed.
//!
//! Keys are refreshed every `cache_ttl`, and sooner (at most every 5 s) when a token names a
//! key id the set does not have, so a rotated signing key is picked up without a restart. A
//! failed refresh keeps the keys already loaded.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::es512::{self, Es512Key};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Shortest time between refreshes asked for by unknown key ids.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Where a JWKS comes from and how often it is reloaded.
#[derive(Debug, Clone)]
pub struct JwksSource {
    /// `file:///path`, `http://…` or `https://…`.
    pub location: JwksLocation,
    /// Reload interval.
    pub cache_ttl: Duration,
    /// Time a remote fetch may take.
    pub timeout: Duration,
}

/// The place a JWKS is read from.
#[derive(Debug, Clone)]
pub enum JwksLocation {
    /// A local file.
    File(PathBuf),
    /// An `http(s)://` URL.
    Url(http::Uri),
}

impl JwksLocation {
    /// Parse `file:///path`, a bare path, or an `http(s)://` URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return s
                .parse::<http::Uri>()
                .map(Self::Url)
                .map_err(|e| format!("invalid URL {s:?}: {e}"));
        }
        if s.starts_with('/') {
            return Ok(Self::File(PathBuf::from(s)));
        }
        Err(format!(
            "unsupported JWKS endpoint {s:?}; use file:///path or https://host/path"
        ))
    }
}

struct Key {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: Verifying,
}

/// A key of the set, by the library that verifies with it.
enum Verifying {
    /// Every algorithm `jsonwebtoken` implements.
    Jwt(DecodingKey),
    /// ES512 (P-521), verified by [`es512`].
    Es512(Es512Key),
}

/// Whether a key's `kid` matches the one a token names (a token without one takes any key).
fn kid_matches(want: Option<&str>, have: &Option<String>) -> bool {
    match (want, have) {
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// A cached key set.
pub struct Jwks {
    source: JwksSource,
    keys: RwLock<Arc<Vec<Key>>>,
    last_refresh: std::sync::Mutex<Option<Instant>>,
    wanted: Notify,
}

impl Jwks {
    /// An empty set that [`Jwks::refresh`] fills.
    pub fn new(source: JwksSource) -> Self {
        Self {
            source,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_refresh: std::sync::Mutex::new(None),
            wanted: Notify::new(),
        }
    }

    /// The key for a token's `kid` and `alg`; asks for a refresh when none matches.
    pub fn key(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let found = keys.iter().find_map(|k| match &k.key {
            Verifying::Jwt(key) if k.algs.contains(&alg) && kid_matches(kid, &k.kid) => {
                Some(key.clone())
            }
            _ => None,
        });
        if found.is_none() {
            self.wanted.notify_one();
        }
        found
    }

    /// The P-521 key for an ES512 token's `kid`; asks for a refresh when none matches.
    pub fn es512_key(&self, kid: Option<&str>) -> Option<Es512Key> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let found = keys.iter().find_map(|k| match &k.key {
            Verifying::Es512(key) if kid_matches(kid, &k.kid) => Some(key.clone()),
            _ => None,
        });
        if found.is_none() {
            self.wanted.notify_one();
        }
        found
    }

    /// Load the set now.
    pub async fn refresh(&self) -> Result<(), String> {
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let body = match &self.source.location {
            JwksLocation::File(p) => tokio::fs::read(p)
                .await
                .map_err(|e| format!("read JWKS {}: {e}", p.display()))?
                .into(),
            JwksLocation::Url(u) => tokio::time::timeout(self.source.timeout, fetch(u))
                .await
                .map_err(|_| {
                    format!("fetch JWKS {u}: timed out after {:?}", self.source.timeout)
                })??,
        };
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("parse JWKS: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm {
                if p.curve == EllipticCurve::P521 {
                    match Es512Key::from_coordinates(&p.x, &p.y) {
                        Ok(key) => keys.push(Key {
                            kid: jwk.common.key_id.clone(),
                            algs: Vec::new(),
                            key: Verifying::Es512(key),
                        }),
                        Err(e) => warn!(kid = ?jwk.common.key_id, error = %e,
                            "skipping a JWKS key that cannot verify {}", es512::ALG),
                    }
                    continue;
                }
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                warn!(kid = ?jwk.common.key_id, "skipping a JWKS key that cannot verify signatures");
                continue;
            };
            let algs = match jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok())
            {
                Some(a) => vec![a],
                None => match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => {
                        use Algorithm::*;
                        vec![RS256, RS384, RS512, PS256, PS384, PS512]
                    }
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                        vec![Algorithm::ES256]
                    }
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                        vec![Algorithm::ES384]
                    }
                    AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                    AlgorithmParameters::OctetKey(_) => {
                        vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
                    }
                    _ => continue,
                },
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algs,
                key: Verifying::Jwt(key),
            });
        }
        if keys.is_empty() {
            return Err("JWKS holds no usable key".into());
        }
        info!(keys = keys.len(), "JWKS loaded");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// Refresh every `cache_ttl`, and when an unknown key id is seen, until `shutdown`.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.source.cache_ttl) => {}
                _ = self.wanted.notified() => {
                    let last = *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(wait) = last.map(|l| MIN_REFRESH_INTERVAL.saturating_sub(l.elapsed())) {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            if let Err(e) = self.refresh().await {
                warn!(error = %e, "JWKS refresh failed; keeping the keys already loaded");
            }
        }
    }
}

async fn fetch(uri: &http::Uri) -> Result<Bytes, String> {
    let fail = |e: &dyn std::fmt::Display| format!("fetch JWKS {uri}: {e}");
    let host = uri.host().ok_or_else(|| fail(&"missing host"))?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(&e))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map(|a| a.as_str()).unwrap_or(&host),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail(&e))?;
    let resp = if https {
        let tls = crate::tls::client_config().map_err(|e| fail(&e))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(&e))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(&e))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
    .map_err(|e| fail(&e))?;
    if !resp.status().is_success() {
        return Err(fail(&format!("status {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| fail(&e))?;
    Ok(body.to_bytes())
}

async fn send<T>(
    io: TokioIo<T>,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // Not tracked: the connection of one fetch ends when its response does (or the fetch's
    // timeout drops it).
    tokio::spawn(conn);
    sender.send_request(req).await
}
