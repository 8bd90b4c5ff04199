//! The connector's dialing against real sockets: a TLS WebSocket server with certificates
//! made here (rcgen), mTLS, and a fake HTTP CONNECT proxy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::config::TlsConfig;

const T: Duration = Duration::from_secs(5);

/// A test PKI: a CA, a server certificate for localhost/127.0.0.1 and a client certificate,
/// written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_pem: String,
}

impl Pki {
    fn new() -> Self {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    fn for_names(names: &[&str]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Piko test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let server = server_params.signed_by(&server_key, &ca).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["connector".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        Self {
            ca_der: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key_pem: server_key.serialize_pem(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_config(&self, require_client_cert: bool) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        builder
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap()
    }
}

/// A TLS WebSocket echo server; returns its address and how many WebSockets it accepted.
async fn tls_ws_server(config: rustls::ServerConfig) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn direct(tls: TlsConfig) -> Connector {
    Connector::new(&TransportConfig {
        tls,
        proxy_url: None,
    })
    .unwrap()
    // Whatever the environment says, these tests dial directly unless they say otherwise.
    .with_proxy(ProxyPolicy::direct())
}

async fn echo_once(connector: &Connector, url: &str) -> Result<(), DialError> {
    let req = url.into_client_request().unwrap();
    let mut ws = connector.websocket(req, T).await?;
    ws.send(Message::binary(b"ping".to_vec())).await.unwrap();
    let m = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.into_data().as_ref(), b"ping");
    Ok(())
}

#[tokio::test]
async fn tls_with_the_test_ca() {
    let pki = Pki::new();
    let (addr, accepted) = tls_ws_server(pki.server_config(false)).await;
    let c = direct(TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        ..Default::default()
    });
    echo_once(&c, &format!("wss://localhost:{}/x", addr.port()))
        .await
        .unwrap();
    // By IP too: the certificate names 127.0.0.1.
    echo_once(&c, &format!("wss://127.0.0.1:{}/x", addr.port()))
        .await
        .unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tls_unknown_issuer_is_a_clear_fatal_error() {
    let pki = Pki::new();
    let (addr, accepted) = tls_ws_server(pki.server_config(false)).await;
    let c = direct(TlsConfig::default());
    let err = echo_once(&c, &format!("wss://localhost:{}/x", addr.port()))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tls to localhost: invalid peer certificate: UnknownIssuer; \
         pass --connect.tls.root-cas with the server's CA"
    );
    assert!(!err.is_retryable());
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tls_wrong_name_is_fatal() {
    let pki = Pki::for_names(&["piko.example.com"]);
    let (addr, _) = tls_ws_server(pki.server_config(false)).await;
    let c = direct(TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        ..Default::default()
    });
    let err = echo_once(&c, &format!("wss://127.0.0.1:{}/x", addr.port()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("tls to 127.0.0.1: invalid peer certificate: ")
            && err.to_string().ends_with("check the host in --connect.url"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn tls_insecure_skip_verify_accepts_any_certificate() {
    let pki = Pki::new();
    let (addr, accepted) = tls_ws_server(pki.server_config(false)).await;
    let c = direct(TlsConfig {
        insecure_skip_verify: true,
        ..Default::default()
    });
    echo_once(&c, &format!("wss://localhost:{}/x", addr.port()))
        .await
        .unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn mtls_presents_the_client_certificate() {
    let pki = Pki::new();
    let (addr, accepted) = tls_ws_server(pki.server_config(true)).await;
    let url = format!("wss://localhost:{}/x", addr.port());
    let with_cert = direct(TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        cert: Some(pki.path("client.pem")),
        key: Some(pki.path("client.key")),
        insecure_skip_verify: false,
    });
    echo_once(&with_cert, &url).await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Without one the server refuses, and the error says which flags fix it.
    let without = direct(TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        ..Default::default()
    });
    let err = echo_once(&without, &url).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("pass --connect.tls.cert and --connect.tls.key"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A fake HTTP proxy: checks each CONNECT (and its credentials), then relays to the target.
/// Returns its address and the CONNECT targets it saw.
async fn fake_proxy(
    want_auth: Option<&'static str>,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let mut lines = head.lines();
                let first = lines.next().unwrap_or_default().to_string();
                let mut parts = first.split(' ');
                assert_eq!(parts.next(), Some("CONNECT"), "{head}");
                let target = parts.next().unwrap().to_string();
                assert_eq!(parts.next(), Some("HTTP/1.1"), "{head}");
                let auth = lines
                    .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                    .map(str::to_string);
                log.lock().unwrap().push(target.clone());
                if let Some(want) = want_auth {
                    if auth.as_deref() != Some(want) {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                            .await;
                        return;
                    }
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// A plain WebSocket echo server.
async fn ws_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn ws_and_wss_through_a_connect_proxy() {
    let (proxy, seen) = fake_proxy(None).await;
    let connector = |tls: TlsConfig| {
        Connector::new(&TransportConfig {
            tls,
            proxy_url: Some(format!("http://{proxy}")),
        })
        .unwrap()
    };

    let plain = ws_server().await;
    echo_once(
        &connector(TlsConfig::default()),
        &format!("ws://127.0.0.1:{}/x", plain.port()),
    )
    .await
    .unwrap();

    let pki = Pki::new();
    let (secure, accepted) = tls_ws_server(pki.server_config(false)).await;
    let tls = TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        ..Default::default()
    };
    echo_once(
        &connector(tls),
        &format!("wss://localhost:{}/x", secure.port()),
    )
    .await
    .unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            format!("127.0.0.1:{}", plain.port()),
            format!("localhost:{}", secure.port())
        ]
    );
}

#[tokio::test]
async fn proxy_credentials_and_refusals() {
    let (proxy, seen) = fake_proxy(Some("Basic dXNlcjpwYXNz")).await;
    let target = ws_server().await;
    let url = format!("ws://127.0.0.1:{}/x", target.port());
    let with = |proxy_url: String| {
        Connector::new(&TransportConfig {
            tls: TlsConfig::default(),
            proxy_url: Some(proxy_url),
        })
        .unwrap()
    };
    echo_once(&with(format!("http://user:pass@{proxy}")), &url)
        .await
        .unwrap();

    let err = echo_once(&with(format!("http://user:wrong@{proxy}")), &url)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "proxy {proxy} refused CONNECT 127.0.0.1:{}: 407 Proxy Authentication Required; \
             put user:password in the proxy URL",
            target.port()
        )
    );
    assert!(!err.is_retryable());
    assert!(!format!("{err:?}").contains("wrong"));
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A proxy that is not there: a retryable error naming the proxy.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = echo_once(&with(format!("http://{dead}")), &url)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach proxy {dead}: connection refused")
    );
    assert!(err.is_retryable());
}

/// The agent stops (does not retry) when the server's certificate is not trusted, and says
/// which flag fixes it; with the CA it registers over wss.
#[tokio::test]
async fn agent_stops_on_an_untrusted_certificate() {
    use crate::config::{AgentConfig, ConnectConfig, EndpointConfig, Protocol};
    use crate::tunnel::{Agent, AgentError};
    use tokio_util::sync::CancellationToken;

    let pki = Pki::new();
    let (addr, accepted) = tls_ws_server(pki.server_config(false)).await;
    let config = AgentConfig {
        connect: ConnectConfig {
            url: format!("https://localhost:{}", addr.port()),
            token: None,
            timeout: T,
            tenant_id: None,
        },
        endpoints: vec![EndpointConfig::parse("shop", "3000", Protocol::Http, T).unwrap()],
        grace_period: Duration::from_millis(100),
    };
    let agent = Agent::new(config.clone()).with_connector(direct(TlsConfig::default()));
    let mut events = agent.subscribe();
    let err = tokio::time::timeout(T, agent.run(CancellationToken::new()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AgentError::Connection { .. }), "{err:?}");
    let want = "tls to localhost: invalid peer certificate: UnknownIssuer; \
                pass --connect.tls.root-cas with the server's CA";
    assert_eq!(err.to_string(), want);
    assert_eq!(events.recv().await.unwrap().to_string(), "connecting… shop");
    assert_eq!(
        events.recv().await.unwrap().to_string(),
        format!("stopped: shop: {want}")
    );

    // With the CA the registration's WebSocket opens over TLS.
    let agent = Agent::new(config).with_connector(direct(TlsConfig {
        root_cas: Some(pki.path("ca.pem")),
        ..Default::default()
    }));
    let mut events = agent.subscribe();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(agent.run(shutdown.clone()));
    assert_eq!(events.recv().await.unwrap().to_string(), "connecting… shop");
    let connected = tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        connected
            .to_string()
            .starts_with("connected: shop → http://localhost:3000 (server wss://localhost:"),
        "{connected}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    let _ = tokio::time::timeout(T, run).await.unwrap();
}

/// `piko forward` over wss through a CONNECT proxy: bytes go round trip.
#[tokio::test]
async fn forward_over_tls_through_a_proxy() {
    use piko_protocol::EndpointId;
    use tokio_util::sync::CancellationToken;

    let pki = Pki::new();
    let (server, accepted) = tls_ws_server(pki.server_config(false)).await;
    let (proxy, seen) = fake_proxy(None).await;
    let connector = Connector::new(&TransportConfig {
        tls: TlsConfig {
            root_cas: Some(pki.path("ca.pem")),
            ..Default::default()
        },
        proxy_url: Some(format!("http://{proxy}")),
    })
    .unwrap();
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let fwd = tokio::spawn(crate::forward::forward_tcp_via(
        local,
        format!("https://localhost:{}", server.port()),
        EndpointId::new("db").unwrap(),
        None,
        connector,
        shutdown.clone(),
    ));
    let mut c = tokio::net::TcpStream::connect(local_addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(T, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![format!("localhost:{}", server.port())]
    );
    shutdown.cancel();
    tokio::time::timeout(T, fwd)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
