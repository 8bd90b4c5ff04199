//! TLS for the server's ports (rustls): PEM certificate and key, optional client CAs for
//! mTLS, reloaded without a restart when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often certificate files are checked for changes.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The files of one port's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CAs that client certificates must chain to (mTLS); `None`: no client certificates.
    pub client_cas: Option<PathBuf>,
}

/// A TLS file could not be used; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// Install the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            TlsError(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError(format!(
                "invalid PEM certificate in {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "no certificate found in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Build a rustls server configuration from `files`, offering `alpn` protocols.
pub fn load(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    install_crypto_provider();
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        ))
    })?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_cas {
        Some(path) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(ca_store(path)?))
                .build()
                .map_err(|e| TlsError(format!("client CAs {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError(format!(
            "certificate {} and key {} do not match: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A port's TLS configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
}

fn mtimes(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_cas.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

impl ReloadingTls {
    /// Load `files` now (an error here stops the server before it serves).
    pub fn new(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let config = load(&files, alpn)?;
        let stamp = mtimes(&files);
        Ok(Arc::new(Self {
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: RwLock::new((TlsAcceptor::from(Arc::new(config)), stamp)),
            files,
        }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Reload if any file changed; returns whether a new configuration is in use.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = mtimes(&self.files);
        if stamp == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return false;
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        match load(&self.files, &alpn) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (TlsAcceptor::from(Arc::new(config)), stamp);
                info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Keep serving with the previous certificate; try again when the files change.
                warn!(error = %e, "TLS reload failed; keeping the current certificate");
                self.current.write().unwrap_or_else(|e| e.into_inner()).1 = stamp;
                false
            }
        }
    }

    /// Check the files every [`RELOAD_CHECK_INTERVAL`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_CHECK_INTERVAL) => {}
            }
            self.reload_if_changed();
        }
    }
}

/// A client configuration trusting the OS's roots, for fetching a JWKS over https.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_with(None, None)
}

/// The CA certificates in the PEM file `path`.
fn ca_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in read_certs(path)? {
        store
            .add(c)
            .map_err(|e| TlsError(format!("invalid CA certificate in {}: {e}", path.display())))?;
    }
    Ok(store)
}

/// The OS's trusted roots; none at all is an error (every handshake would fail).
fn native_store() -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = store.add(c);
    }
    if store.is_empty() {
        return Err(TlsError(
            "no trusted root certificates found on this system".into(),
        ));
    }
    Ok(store)
}

/// A client configuration trusting the CAs in `roots` (or the OS's when `None`), presenting
/// the certificate and key in `identity` when given (for mTLS).
pub fn client_config_with(
    roots: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let store = match roots {
        Some(path) => ca_store(path)?,
        None => native_store()?,
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(store);
    let config = match identity {
        Some((cert, key)) => {
            builder.with_client_cert_resolver(ReloadingClientCert::new(cert, key)?)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client certificate that follows its files: checked at each handshake (rare: connections
/// between nodes are pooled), so a rotated certificate is used without a restart.
#[derive(Debug)]
pub struct ReloadingClientCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<rustls::sign::CertifiedKey>, Vec<Option<SystemTime>>)>,
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs = read_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!(
            "cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError(format!("unusable private key in {}: {e}", key.display())))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        TlsError(format!(
            "certificate {} and key {} do not match: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

fn stamps(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl ReloadingClientCert {
    /// Load `cert` and `key` now (an error stops the server before it starts).
    pub fn new(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let loaded = certified_key(cert, key)?;
        Ok(Arc::new(Self {
            current: RwLock::new((loaded, stamps(&[cert, key]))),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }))
    }

    /// The certificate to present, reloaded first if its files changed (a failed reload
    /// keeps the previous one, with a warning).
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let stamp = stamps(&[&self.cert, &self.key]);
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.1 == stamp {
                return cur.0.clone();
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        match certified_key(&self.cert, &self.key) {
            Ok(k) => {
                info!(cert = %self.cert.display(), "client certificate reloaded");
                *cur = (k, stamp);
            }
            Err(e) => {
                warn!(error = %e, "client certificate reload failed; keeping the current one");
                cur.1 = stamp;
            }
        }
        cur.0.clone()
    }
}

impl rustls::client::ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client side of calls to another node's port (a `*.tls.client` section): whom to
/// trust, the certificate to present, and the name the peer's certificate must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CAs the peer's certificate must chain to (`None`: the OS's roots).
    pub root_cas: Option<PathBuf>,
    /// PEM certificate and key presented to a peer that asks for one (mTLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate the peer presents, for any name.
    pub insecure_skip_verify: bool,
    /// The name the peer's certificate is checked against (and sent as SNI) instead of the
    /// host of the address dialled.
    pub server_name: Option<String>,
}

/// A client configuration for calls to other nodes, with the name to verify them by.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The rustls configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The name every peer's certificate is checked against (`None`: each peer's host).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl PeerTls {
    /// Load `files` (an error names the file and the problem). Without `root_cas` the OS's
    /// roots are trusted; a system with none still loads (a handshake then fails, saying
    /// the certificate's issuer is unknown), since a node must not refuse to start for a
    /// call it may never make.
    pub fn load(files: &ClientTlsFiles) -> Result<Self, TlsError> {
        install_crypto_provider();
        let server_name = files
            .server_name
            .as_deref()
            .map(|n| {
                rustls::pki_types::ServerName::try_from(n.to_string()).map_err(|_| {
                    TlsError(format!(
                        "invalid server name {n:?}; use a DNS name or an IP address"
                    ))
                })
            })
            .transpose()?;
        let store = match &files.root_cas {
            Some(path) => ca_store(path)?,
            None => native_store().unwrap_or_else(|_| RootCertStore::empty()),
        };
        let builder = rustls::ClientConfig::builder().with_root_certificates(store);
        let mut config = match &files.identity {
            Some((cert, key)) => {
                builder.with_client_cert_resolver(ReloadingClientCert::new(cert, key)?)
            }
            None => builder.with_no_client_auth(),
        };
        if files.insecure_skip_verify {
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AnyServerCert::new()));
        }
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The name to verify the peer at `addr` (`host:port`) by.
    pub fn name_for(&self, addr: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| TlsError(format!("{host:?} is not a name a certificate can carry")))
    }
}

/// `insecure_skip_verify`: any certificate, any name. The handshake's signatures are still
/// checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl AnyServerCert {
    fn new() -> Self {
        Self(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsFiles {
            cert: c,
            key: k,
            client_cas: None,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("piko-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn client_certificate_follows_its_files() {
        let dir = tempdir("client-cert");
        let first = write_cert(&dir, "node-1");
        let resolver = ReloadingClientCert::new(&first.cert, &first.key).unwrap();
        let before = resolver.current().cert[0].clone();
        std::thread::sleep(Duration::from_millis(20));
        let second = write_cert(&dir, "node-1");
        assert_eq!(second.cert, first.cert, "same files, new contents");
        let after = resolver.current().cert[0].clone();
        assert_ne!(before, after, "the rotated certificate is presented");
        // A broken rotation keeps the last good certificate.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&first.key, "garbage").unwrap();
        assert_eq!(resolver.current().cert[0], after);
        let e = ReloadingClientCert::new(&first.cert, &first.key).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
    }

    #[test]
    fn loads_and_reports_bad_files() {
        let dir = tempdir("load");
        let files = write_cert(&dir, "localhost");
        let config = load(&files, &[b"h2"]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let e = load(
            &TlsFiles {
                cert: dir.join("empty.pem"),
                ..files.clone()
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no certificate found"), "{e}");
        let other = write_cert(&tempdir("other"), "other");
        let e = load(
            &TlsFiles {
                key: other.key,
                ..files.clone()
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
        let e = load(
            &TlsFiles {
                client_cas: Some(dir.join("missing.pem")),
                ..files
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn reloads_when_files_change_and_keeps_serving_on_bad_files() {
        let dir = tempdir("reload");
        let files = write_cert(&dir, "one");
        let tls = ReloadingTls::new(files.clone(), &[]).unwrap();
        assert!(!tls.reload_if_changed(), "nothing changed");
        std::thread::sleep(Duration::from_millis(20));
        write_cert(&dir, "two");
        // Some filesystems keep coarse mtimes: make the change visible.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&files.cert)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(tls.reload_if_changed(), "new certificate picked up");
        std::fs::write(&files.cert, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&files.cert)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        assert!(!tls.reload_if_changed(), "a broken file is not used");
        let _still = tls.acceptor();
    }
}
