//! HTTP proxies: which proxy a server URL goes through (`--connect.proxy-url`, else
//! `HTTPS_PROXY`/`HTTP_PROXY` minus `NO_PROXY`), and the `CONNECT` handshake that opens a
//! tunnel through it.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ConfigError;
use crate::credentials::Secret;

/// Largest proxy response head accepted (status line and headers).
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// An HTTP proxy: where it listens and the Basic credentials to send, if any. `Debug` and
/// `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    /// `Basic base64(user:pass)`, ready for `Proxy-Authorization`.
    auth: Option<Secret>,
}

impl ProxyUrl {
    /// Parse `http://[user:pass@]host[:port]` (a missing scheme means `http://`, a missing
    /// port 80). `key` names the setting in errors.
    pub fn parse(key: &str, value: &str) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        let value = value.trim();
        let with_scheme = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        // The URL is not echoed back: it may hold a password.
        let url = url::Url::parse(&with_scheme).map_err(|e| {
            bad(format!(
                "not a valid proxy URL ({e}); expected http://host:port"
            ))
        })?;
        if url.scheme() != "http" {
            return Err(bad(format!(
                "unsupported proxy scheme {:?}; only http:// proxies (CONNECT) are supported",
                url.scheme()
            )));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            Some(h) => h.to_string(),
            None => return Err(bad("the proxy URL has no host".into())),
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let auth = if url.username().is_empty() {
            None
        } else {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    bad("the proxy user or password is not valid percent-encoded UTF-8".into())
                })
            };
            let user = decode(url.username())?;
            let pass = decode(url.password().unwrap_or(""))?;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            Some(Secret::new(format!("Basic {encoded}")))
        };
        Ok(Self { host, port, auth })
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = if self.auth.is_some() { "***@" } else { "" };
        write!(f, "http://{user}{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// Which proxy, if any, each server connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyPolicy {
    /// Every connection goes through this proxy (`--connect.proxy-url`).
    Always(ProxyUrl),
    /// The environment's proxies, read once. A variable this connector cannot use (a
    /// `socks5://` proxy set for other programs) is an error only for the connections it
    /// would apply to, so it never stops a connection that does not need it.
    Env {
        /// `HTTPS_PROXY`/`https_proxy`, for `https://`/`wss://` servers.
        https: Option<Result<ProxyUrl, String>>,
        /// `HTTP_PROXY`/`http_proxy`, for `http://`/`ws://` servers.
        http: Option<Result<ProxyUrl, String>>,
        /// `NO_PROXY`/`no_proxy`: hosts reached directly.
        no_proxy: NoProxy,
    },
}

impl ProxyPolicy {
    /// The policy for an explicit proxy URL (`connect.proxy_url`), else the environment.
    pub fn new(proxy_url: Option<&str>) -> Result<Self, ConfigError> {
        match proxy_url {
            Some(u) => Ok(Self::Always(ProxyUrl::parse("connect.proxy_url", u)?)),
            None => Ok(Self::from_lookup(|k| std::env::var(k).ok())),
        }
    }

    /// The environment policy, reading variables through `var` (the upper-case name wins).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |upper: &'static str, lower: &'static str| {
            [upper, lower]
                .into_iter()
                .find_map(|k| var(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
        };
        let proxy = |upper, lower| {
            get(upper, lower).map(|(k, v)| {
                ProxyUrl::parse(k, &v).map_err(|e| {
                    format!("{e}; fix it, add the server to NO_PROXY or pass --connect.proxy-url")
                })
            })
        };
        Self::Env {
            https: proxy("HTTPS_PROXY", "https_proxy"),
            http: proxy("HTTP_PROXY", "http_proxy"),
            no_proxy: NoProxy::parse(
                &get("NO_PROXY", "no_proxy")
                    .map(|(_, v)| v)
                    .unwrap_or_default(),
            ),
        }
    }

    /// No proxy at all, whatever the environment says.
    pub fn direct() -> Self {
        Self::from_lookup(|_| None)
    }

    /// The proxy for a connection to `host:port` (`tls` for `https`/`wss`), if any; `Err`
    /// when the environment names one this connector cannot use.
    pub fn proxy_for(&self, tls: bool, host: &str, port: u16) -> Result<Option<&ProxyUrl>, String> {
        match self {
            Self::Always(p) => Ok(Some(p)),
            Self::Env {
                https,
                http,
                no_proxy,
            } => {
                let Some(proxy) = (if tls { https.as_ref() } else { http.as_ref() }) else {
                    return Ok(None);
                };
                if no_proxy.bypasses(host, port) {
                    return Ok(None);
                }
                proxy.as_ref().map(Some).map_err(Clone::clone)
            }
        }
    }
}

/// A `NO_PROXY` list, with the rules of Go's `httpproxy` (which the original Piko agent
/// follows): `*` bypasses everything; `example.com` matches it and its subdomains;
/// `.example.com` only subdomains; an entry with `:port` only that port; IPs and CIDR ranges
/// match addresses. As in Go, `localhost` and loopback addresses are always reached directly:
/// a proxy cannot reach this machine's loopback anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    /// A domain (lower case, no leading dot) and whether the domain itself matches.
    Domain {
        name: String,
        exact_too: bool,
        port: Option<u16>,
    },
    Ip(IpAddr, Option<u16>),
    Cidr(IpAddr, u8),
}

impl NoProxy {
    /// Parse a comma (or space) separated `NO_PROXY` value; unparsable entries are ignored.
    pub fn parse(s: &str) -> Self {
        let mut out = Self::default();
        for raw in s.split([',', ' ']).map(str::trim).filter(|e| !e.is_empty()) {
            let e = raw.to_ascii_lowercase();
            if e == "*" {
                out.all = true;
                continue;
            }
            if let Some((ip, bits)) = e.split_once('/') {
                if let (Ok(ip), Ok(bits)) = (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                    out.entries.push(NoProxyEntry::Cidr(ip, bits));
                }
                continue;
            }
            if let Ok(ip) = e
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                out.entries.push(NoProxyEntry::Ip(ip, None));
                continue;
            }
            let (host, port) = match e.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
                _ => (e.as_str(), None),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                out.entries.push(NoProxyEntry::Ip(ip, port));
                continue;
            }
            let (name, exact_too) = match host.strip_prefix("*.") {
                Some(rest) => (rest, false),
                None => match host.strip_prefix('.') {
                    Some(rest) => (rest, false),
                    None => (host, true),
                },
            };
            if !name.is_empty() {
                out.entries.push(NoProxyEntry::Domain {
                    name: name.trim_end_matches('.').to_string(),
                    exact_too,
                    port,
                });
            }
        }
        out
    }

    /// Whether `host:port` is reached without the proxy.
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        if host == "localhost"
            || host.ends_with(".localhost")
            || ip.is_some_and(|i| i.is_loopback())
        {
            return true;
        }
        if self.all {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.entries.iter().any(|e| match e {
            NoProxyEntry::Ip(want, p) => ip == Some(*want) && port_ok(p),
            NoProxyEntry::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            NoProxyEntry::Domain {
                name,
                exact_too,
                port: p,
            } => {
                let matches = (*exact_too && host == *name)
                    || host
                        .strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.ends_with('.'));
                matches && port_ok(p)
            }
        })
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Why the proxy did not open a tunnel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Reading from or writing to the proxy failed.
    #[error("proxy {proxy}: {source}")]
    Io {
        /// The proxy (without credentials).
        proxy: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy answered something that is not HTTP, or too much of it.
    #[error("proxy {proxy}: {reason}")]
    BadResponse {
        /// The proxy (without credentials).
        proxy: String,
        /// What was wrong.
        reason: String,
    },
    /// The proxy refused the `CONNECT`.
    #[error("proxy {proxy} refused CONNECT {target}: {status} {reason}{hint}", hint = if *status == 407 { "; put user:password in the proxy URL" } else { "" })]
    Refused {
        /// The proxy (without credentials).
        proxy: String,
        /// The `host:port` asked for.
        target: String,
        /// The HTTP status it answered.
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The proxy did not answer in time.
    #[error("proxy {proxy} did not answer the CONNECT within {}", crate::status::DisplayDuration(*timeout))]
    Timeout {
        /// The proxy (without credentials).
        proxy: String,
        /// How long we waited.
        timeout: Duration,
    },
}

impl ProxyError {
    /// Whether a later attempt may succeed: not after a 407 or another 4xx refusal (except
    /// 408/429), which say the proxy's policy forbids it.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProxyError::Refused { status, .. } => {
                !(400..500).contains(status) || *status == 408 || *status == 429
            }
            _ => true,
        }
    }
}

/// Ask `proxy` (already connected on `stream`) to open a tunnel to `target` (`host:port`),
/// within `timeout`. On success the stream carries the tunnel; nothing past the proxy's
/// response head has been read from it.
pub async fn connect_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &ProxyUrl,
    target: &str,
    timeout: Duration,
) -> Result<(), ProxyError> {
    match tokio::time::timeout(timeout, handshake(stream, proxy, target)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::Timeout {
            proxy: proxy.addr(),
            timeout,
        }),
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    proxy: &ProxyUrl,
    target: &str,
) -> Result<(), ProxyError> {
    let io = |source| ProxyError::Io {
        proxy: proxy.addr(),
        source,
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        req.push_str("Proxy-Authorization: ");
        req.push_str(auth.expose());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    drop(req);

    // One byte at a time: whatever follows the head (the server's first TLS or HTTP bytes)
    // belongs to the caller. A head is a few dozen bytes and is read once per connection.
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(ProxyError::BadResponse {
                proxy: proxy.addr(),
                reason: format!("response head larger than {MAX_RESPONSE_HEAD} bytes"),
            });
        }
        match stream.read(&mut byte).await.map_err(io)? {
            0 => {
                return Err(ProxyError::BadResponse {
                    proxy: proxy.addr(),
                    reason: "closed the connection before answering the CONNECT".into(),
                })
            }
            _ => head.push(byte[0]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, status, reason) = (parts.next(), parts.next(), parts.next());
    let status = match (version, status.and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(s)) if v.starts_with("HTTP/1.") && (100..600).contains(&s) => s,
        _ => {
            let shown: String = status_line.chars().take(80).collect();
            return Err(ProxyError::BadResponse {
                proxy: proxy.addr(),
                reason: format!("not an HTTP answer to CONNECT: {shown:?}"),
            });
        }
    };
    if !(200..300).contains(&status) {
        return Err(ProxyError::Refused {
            proxy: proxy.addr(),
            target: target.to_string(),
            status,
            reason: reason.unwrap_or_default().trim().chars().take(80).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_without_showing_passwords() {
        let p =
            ProxyUrl::parse("connect.proxy_url", "http://bob:s%3Acret@proxy.corp:3128").unwrap();
        assert_eq!(p.addr(), "proxy.corp:3128");
        assert_eq!(p.to_string(), "http://***@proxy.corp:3128");
        assert_eq!(format!("{p:?}"), "ProxyUrl(http://***@proxy.corp:3128)");
        // base64("bob:s:cret")
        assert_eq!(p.auth.as_ref().unwrap().expose(), "Basic Ym9iOnM6Y3JldA==");

        let p = ProxyUrl::parse("HTTPS_PROXY", "proxy.corp").unwrap();
        assert_eq!(p.addr(), "proxy.corp:80");
        assert!(p.auth.is_none());
        assert_eq!(
            ProxyUrl::parse("k", "http://[::1]:8080").unwrap().addr(),
            "[::1]:8080"
        );

        let cases = [
            ("https://proxy:443", "k: unsupported proxy scheme \"https\""),
            (
                "socks5://proxy:1080",
                "k: unsupported proxy scheme \"socks5\"",
            ),
            ("http://user:pw@", "k: not a valid proxy URL"),
        ];
        for (value, want) in cases {
            let err = ProxyUrl::parse("k", value).unwrap_err().to_string();
            assert!(err.starts_with(want), "{value}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn environment_policy() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            ProxyPolicy::from_lookup(move |k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        let p = env(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("http_proxy", "http://plain:2"),
            (
                "no_proxy",
                "internal.corp, .svc,10.0.0.0/8, 192.168.1.5, db:5432",
            ),
        ]);
        let via = |tls, host, port| p.proxy_for(tls, host, port).unwrap().map(|p| p.addr());
        let cases: &[(bool, &str, u16, Option<&str>)] = &[
            (true, "piko.example.com", 443, Some("secure:1")),
            (false, "piko.example.com", 80, Some("plain:2")),
            (true, "internal.corp", 443, None),
            (true, "a.internal.corp", 443, None),
            (true, "xinternal.corp", 443, Some("secure:1")),
            (true, "svc", 443, Some("secure:1")),
            (true, "a.svc", 443, None),
            (true, "10.1.2.3", 443, None),
            (true, "11.1.2.3", 443, Some("secure:1")),
            (true, "192.168.1.5", 8001, None),
            (true, "db", 5432, None),
            (true, "db", 8001, Some("secure:1")),
            // Loopback is never proxied (as in Go): a proxy cannot reach it.
            (true, "127.0.0.1", 8001, None),
            (true, "localhost", 8001, None),
            (false, "[::1]", 8001, None),
        ];
        for (tls, host, port, want) in cases {
            assert_eq!(
                via(*tls, host, *port).as_deref(),
                *want,
                "{host}:{port} tls={tls}"
            );
        }

        let all = env(&[("HTTPS_PROXY", "http://secure:1"), ("NO_PROXY", "*")]);
        assert_eq!(all.proxy_for(true, "piko.example.com", 443), Ok(None));
        let none = env(&[]);
        assert_eq!(none.proxy_for(true, "piko.example.com", 443), Ok(None));

        // A proxy variable for other programs (socks5) matters only where it applies.
        let socks = env(&[("https_proxy", "socks5://x:1080"), ("NO_PROXY", "internal")]);
        let err = socks.proxy_for(true, "piko.example.com", 443).unwrap_err();
        assert!(
            err.starts_with("https_proxy: unsupported proxy scheme \"socks5\""),
            "{err}"
        );
        assert!(err.ends_with("pass --connect.proxy-url"), "{err}");
        assert_eq!(socks.proxy_for(false, "piko.example.com", 80), Ok(None));
        assert_eq!(socks.proxy_for(true, "internal", 443), Ok(None));
        assert_eq!(socks.proxy_for(true, "127.0.0.1", 8001), Ok(None));

        // An explicit proxy applies to everything, loopback included.
        let always = ProxyPolicy::new(Some("http://p:3128")).unwrap();
        assert_eq!(
            always
                .proxy_for(false, "127.0.0.1", 8001)
                .unwrap()
                .map(|p| p.addr()),
            Some("p:3128".into())
        );
    }

    /// Runs `answer` as the proxy's reply to one CONNECT; returns the request the proxy saw
    /// and the handshake's result.
    async fn against(answer: &'static [u8], proxy: &str) -> (String, Result<(), ProxyError>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let fake = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                server.read_exact(&mut b).await.unwrap();
                req.push(b[0]);
            }
            server.write_all(answer).await.unwrap();
            // Keep the stream open so that a short answer is not mistaken for EOF.
            let mut rest = Vec::new();
            let _ = server.read_to_end(&mut rest).await;
            String::from_utf8(req).unwrap()
        });
        let proxy = ProxyUrl::parse("k", proxy).unwrap();
        let r = connect_tunnel(
            &mut client,
            &proxy,
            "piko.example.com:443",
            Duration::from_secs(2),
        )
        .await;
        drop(client);
        (fake.await.unwrap(), r)
    }

    #[tokio::test]
    async fn connect_handshake() {
        let (req, r) = against(b"HTTP/1.1 200 Connection established\r\n\r\n", "http://p:1").await;
        r.unwrap();
        assert_eq!(
            req,
            "CONNECT piko.example.com:443 HTTP/1.1\r\nHost: piko.example.com:443\r\n\r\n"
        );

        let (req, r) = against(b"HTTP/1.0 200 OK\r\nVia: x\r\n\r\n", "http://u:p@p:1").await;
        r.unwrap();
        assert!(
            req.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
            "{req}"
        );

        let cases: &[(&[u8], &str, bool)] = &[
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                "proxy p:1 refused CONNECT piko.example.com:443: 407 Proxy Authentication Required; put user:password in the proxy URL",
                false,
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\n\r\n",
                "proxy p:1 refused CONNECT piko.example.com:443: 403 Forbidden",
                false,
            ),
            (
                b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
                "proxy p:1 refused CONNECT piko.example.com:443: 502 Bad Gateway",
                true,
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "proxy p:1: not an HTTP answer to CONNECT", true),
        ];
        for (answer, want, retry) in cases {
            let (_, r) = against(answer, "http://p:1").await;
            let e = r.unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
            assert_eq!(e.is_retryable(), *retry, "{e}");
        }
    }

    #[tokio::test]
    async fn bounded_and_timed() {
        // A proxy that never ends its head is cut off at the limit.
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut b = [0u8; 256];
            let _ = server.read(&mut b).await;
            let line =
                b"X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\n").await;
            loop {
                if server.write_all(line).await.is_err() {
                    break;
                }
            }
        });
        let proxy = ProxyUrl::parse("k", "p:1").unwrap();
        let e = connect_tunnel(&mut client, &proxy, "t:1", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy p:1: response head larger than 16384 bytes"
        );

        // A proxy that says nothing times out.
        let (mut client, _server) = tokio::io::duplex(1024);
        let e = connect_tunnel(&mut client, &proxy, "t:1", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy p:1 did not answer the CONNECT within 50ms"
        );
    }
}
