//! The rustls client configuration: OS trust store plus extra CAs, an optional client
//! certificate, and the explicit insecure mode. Always the `ring` provider, named explicitly,
//! so a binary that also links another provider never has to guess.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::{debug, warn};

use crate::config::{ConfigError, TlsConfig};

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM certificates of `path`; at least one.
fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                key,
                format!(
                    "{} is not a valid PEM certificate file: {e}",
                    path.display()
                ),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!(
                "{} holds no certificate; expected PEM blocks `-----BEGIN CERTIFICATE-----`",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        invalid(
            key,
            format!(
                "{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                path.display()
            ),
        )
    })
}

/// The trust store: the OS's certificates plus those of `{prefix}.root_cas`.
fn root_store(prefix: &str, tls: &TlsConfig) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        // Some unreadable file in the OS store; the rest still counts.
        debug!(errors = ?native.errors, "some OS trust store certificates could not be loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    debug!(added, ignored, "loaded the OS trust store");
    if let Some(path) = &tls.root_cas {
        let key = format!("{prefix}.root_cas");
        for cert in read_certs(&key, path)? {
            roots.add(cert).map_err(|e| {
                invalid(
                    &key,
                    format!("{} holds an unusable CA certificate: {e}", path.display()),
                )
            })?;
        }
    }
    Ok(roots)
}

/// Build the client configuration from `tls`: a config error names the key at fault.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<ClientConfig, ConfigError> {
    client_config_for("connect.tls", tls)
}

/// [`client_config`] for the settings at `prefix` (`connect.tls`, `listeners[0].tls`).
pub(crate) fn client_config_for(
    prefix: &str,
    tls: &TlsConfig,
) -> Result<ClientConfig, ConfigError> {
    let flag = |key: &str| {
        if prefix == "connect.tls" {
            format!("; set --connect.tls.{key}")
        } else {
            String::new()
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(prefix, format!("cannot set up TLS: {e}")))?;
    let builder = if tls.insecure_skip_verify {
        warn!(
            "{prefix}.insecure_skip_verify is set: the server's certificate is NOT verified, \
             so anyone on the network path can impersonate the server; use it only for testing"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        builder.with_root_certificates(root_store(prefix, tls)?)
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(&format!("{prefix}.cert"), cert)?;
            let key = read_key(&format!("{prefix}.key"), key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid(
                    &format!("{prefix}.key"),
                    format!("the key does not fit {prefix}.cert: {e}"),
                )
            })?
        }
        (Some(_), None) => {
            return Err(invalid(
                &format!("{prefix}.key"),
                format!(
                    "missing: {prefix}.cert needs its private key{}",
                    flag("key")
                ),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                &format!("{prefix}.cert"),
                format!(
                    "missing: {prefix}.key needs its certificate{}",
                    flag("cert")
                ),
            ))
        }
        (None, None) => builder.with_no_client_auth(),
    };
    // The WebSocket upgrade is HTTP/1.1; say so to servers that would otherwise pick h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server name to verify, from the URL's host (a DNS name or an IP address).
pub(crate) fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// If `e` (from a TLS handshake, or an I/O error on a TLS stream) is a TLS failure that
/// retrying cannot fix, the one line to tell the user.
pub(crate) fn fatal_tls_error(e: &std::io::Error, host: &str) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match tls {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension) => {
            "pass --connect.tls.root-cas with the server's CA"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the certificate is not for this host; check the host in --connect.url"
        }
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "the certificate is outside its validity period; renew it or check this machine's clock",
        E::InvalidCertificate(_) => "check the server's certificate",
        E::AlertReceived(A::CertificateRequired) => {
            "the server wants a client certificate; pass --connect.tls.cert and --connect.tls.key"
        }
        E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied) => {
            "the server refused the client certificate; check --connect.tls.cert and --connect.tls.key"
        }
        E::NoApplicationProtocol
        | E::PeerIncompatible(_)
        | E::AlertReceived(A::ProtocolVersion | A::HandshakeFailure | A::NoApplicationProtocol) => {
            "the server's TLS settings do not match this client's"
        }
        _ => return None,
    };
    Some(format!("tls to {host}: {tls}; {hint}"))
}

/// Accepts any certificate (`insecure_skip_verify`) but still checks the handshake signatures,
/// so the session is at least bound to the key the server presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn bad_files_are_config_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = write(&dir, "junk.pem", "not a pem file\n");
        let ca = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &ca.cert.pem());
        let key = write(&dir, "key.pem", &ca.signing_key.serialize_pem());
        let other = rcgen::generate_simple_self_signed(vec!["y".into()]).unwrap();
        let other_key = write(&dir, "other.pem", &other.signing_key.serialize_pem());
        let missing = dir.path().join("missing.pem");
        let cases: Vec<(TlsConfig, &str)> = vec![
            (
                TlsConfig {
                    root_cas: Some(missing.clone()),
                    ..Default::default()
                },
                "connect.tls.root_cas: cannot read",
            ),
            (
                TlsConfig {
                    root_cas: Some(junk.clone()),
                    ..Default::default()
                },
                "connect.tls.root_cas: ",
            ),
            (
                TlsConfig {
                    cert: Some(cert.clone()),
                    key: Some(junk.clone()),
                    ..Default::default()
                },
                "connect.tls.key: ",
            ),
            (
                TlsConfig {
                    cert: Some(junk.clone()),
                    key: Some(key.clone()),
                    ..Default::default()
                },
                "connect.tls.cert: ",
            ),
            (
                TlsConfig {
                    cert: Some(cert.clone()),
                    ..Default::default()
                },
                "connect.tls.key: missing",
            ),
            (
                TlsConfig {
                    key: Some(key.clone()),
                    ..Default::default()
                },
                "connect.tls.cert: missing",
            ),
            (
                TlsConfig {
                    cert: Some(cert.clone()),
                    key: Some(other_key),
                    ..Default::default()
                },
                "connect.tls.key: the key does not fit",
            ),
        ];
        for (tls, want) in cases {
            let err = client_config(&tls).expect_err(want).to_string();
            assert!(err.starts_with(want), "{tls:?}\n got: {err}\nwant: {want}");
        }
        // And the good ones load.
        let ok = TlsConfig {
            root_cas: Some(cert.clone()),
            cert: Some(cert),
            key: Some(key),
            insecure_skip_verify: false,
        };
        let c = client_config(&ok).unwrap();
        assert!(c.client_auth_cert_resolver.has_certs());
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn names_the_fix_for_certificate_failures() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            fatal_tls_error(&unknown, "piko.example.com").unwrap(),
            "tls to piko.example.com: invalid peer certificate: UnknownIssuer; \
             pass --connect.tls.root-cas with the server's CA"
        );
        let name = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName,
        ));
        assert!(fatal_tls_error(&name, "h")
            .unwrap()
            .ends_with("check the host in --connect.url"));
        let required = io(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert!(fatal_tls_error(&required, "h")
            .unwrap()
            .contains("pass --connect.tls.cert and --connect.tls.key"));
        // Network trouble is not a TLS verdict: retry it.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(fatal_tls_error(&reset, "h"), None);
    }

    #[test]
    fn server_names_from_hosts() {
        assert!(matches!(
            server_name("piko.example.com"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
    }
}
