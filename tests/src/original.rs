//! A test double of the original Go Piko server's upstream port, written from its source
//! (andydunstall/piko v0.9) and the yamux spec alone, with no project protocol code.
//!
//! What it copies from the original, so the connector meets the same stream usage:
//! - `server/upstream/server.go`: the upstream WebSocket at `/piko/v1/upstream/{endpoint}`,
//!   then a yamux *server* session with `yamux.DefaultConfig()` (256 KiB stream window, so
//!   the SYN's window update carries a delta of 0; stream ids start at 2).
//! - `server/upstream/upstream.go` `Dial` = `sess.OpenStream()`; `server/proxy/httpproxy.go`
//!   runs `httputil.ReverseProxy` with `http.Transport{DisableKeepAlives: true}`: one stream
//!   per request, the request written with `Connection: close` and `X-Piko-Forward: true`,
//!   the response read, then the stream closed (`Stream.Close` sends FIN).
//! - andydunstall/yamux `stream.go`: a stream that receives RST fails every later `Read` with
//!   `connection reset` even when response bytes are still buffered, so any RST before the
//!   server has finished reading loses the response (the Go server then answers 502). The
//!   double reports every RST it sees on the stream.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::rawmux::{frame, Frame, RawMux, ACK, DATA, FIN, PING, RST, SYN, WINDOW_UPDATE};

/// yamux's default stream window, which the original server keeps.
const WINDOW: u32 = 256 * 1024;

/// The original server's upstream port, listening on loopback port 0.
pub struct OriginalServer {
    listener: TcpListener,
}

impl OriginalServer {
    /// Bind the upstream port.
    pub async fn start() -> Self {
        Self {
            listener: crate::loopback_listener().await,
        }
    }

    /// The URL a connector registers at (`--connect.url`).
    pub fn upstream_url(&self) -> String {
        format!("http://{}", self.listener.local_addr().expect("addr"))
    }

    /// Accept the next upstream registration; returns the session and the endpoint it named.
    pub async fn accept(&self) -> (OriginalSession, String) {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(15), self.listener.accept())
            .await
            .expect("the connector registers in time")
            .expect("accept");
        let mut path = String::new();
        #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
        let capture =
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
             resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                path = req.uri().path().to_string();
                Ok(resp)
            };
        let ws = tokio_tungstenite::accept_hdr_async(tcp, capture)
            .await
            .expect("websocket handshake");
        let endpoint = path
            .strip_prefix("/piko/v1/upstream/")
            .unwrap_or_else(|| panic!("registration path {path:?}"))
            .to_string();
        let mut mux = RawMux::new(ws);
        mux.answer_pings = true;
        let session = OriginalSession {
            mux,
            next_id: 2,
            ping_id: 0,
        };
        (session, endpoint)
    }
}

/// One registered upstream, seen as the original server's yamux session.
pub struct OriginalSession {
    mux: RawMux<TcpStream>,
    next_id: u32,
    ping_id: u32,
}

/// What one request stream brought back.
#[derive(Debug, Default)]
pub struct StreamOutcome {
    /// The bytes of the response, in order.
    pub response: Vec<u8>,
    /// The connector ended its side with FIN.
    pub fin: bool,
    /// The connector reset the stream before the server closed it: the original server
    /// would have failed the request with `connection reset`.
    pub reset_before_close: bool,
    /// The connector reset the stream after both sides had closed it.
    pub reset_after_close: bool,
}

impl OriginalSession {
    async fn send(&mut self, bytes: Vec<u8>) {
        self.mux.send(bytes).await;
    }

    /// The next yamux frame (type, flags, stream id, length, body); pings are answered.
    async fn next_frame(&mut self) -> (u8, u16, u32, u32, Vec<u8>) {
        let Frame {
            ty,
            flags,
            id,
            len,
            body,
        } = self.mux.next_frame().await;
        (ty, flags, id, len, body)
    }

    /// Send a Ping and read frames until its ACK, noting frames for stream `id` on the way:
    /// everything the connector queued before the Ping arrived is seen.
    async fn ping_round_trip(&mut self, id: u32, out: &mut StreamOutcome, closed: bool) {
        self.ping_id += 1;
        let ping = self.ping_id;
        self.send(frame(PING, SYN, 0, ping, &[])).await;
        loop {
            let (ty, flags, sid, len, body) = self.next_frame().await;
            if ty == PING && flags & ACK != 0 && len == ping {
                return;
            }
            if sid != id {
                continue;
            }
            if flags & RST != 0 {
                if closed {
                    out.reset_after_close = true;
                } else {
                    out.reset_before_close = true;
                }
            }
            assert!(
                body.is_empty(),
                "data on stream {id} after its FIN: {} bytes",
                body.len()
            );
        }
    }

    /// Serve one proxied request the way the original server does: open a stream, write
    /// `request`, read the response until the connector's FIN (granting window as it is read,
    /// as yamux does), then close the stream with FIN. Between each step a Ping round trip
    /// catches an RST the connector sends right behind its FIN.
    pub async fn round_trip(&mut self, request: &[u8]) -> StreamOutcome {
        let id = self.next_id;
        self.next_id += 2;
        let mut out = StreamOutcome::default();
        // OpenStream: a window update with SYN and the default window (delta 0).
        self.send(frame(WINDOW_UPDATE, SYN, id, 0, &[])).await;
        let mut send_window = WINDOW;
        for chunk in request.chunks(16 * 1024) {
            while send_window < chunk.len() as u32 {
                let (ty, flags, sid, len, _) = self.next_frame().await;
                if sid == id && ty == WINDOW_UPDATE {
                    send_window += len;
                }
                assert!(
                    sid != id || flags & RST == 0,
                    "stream {id} reset mid-request"
                );
            }
            self.send(frame(DATA, 0, id, chunk.len() as u32, chunk))
                .await;
            send_window -= chunk.len() as u32;
        }
        let mut consumed = 0u32;
        loop {
            let (_, flags, sid, _, body) = self.next_frame().await;
            if sid != id {
                continue;
            }
            if !body.is_empty() {
                out.response.extend_from_slice(&body);
                consumed += body.len() as u32;
                // yamux grants window back once half of it is read.
                if consumed >= WINDOW / 2 {
                    self.send(frame(WINDOW_UPDATE, 0, id, consumed, &[])).await;
                    consumed = 0;
                }
            }
            if flags & RST != 0 {
                out.reset_before_close = true;
                return out;
            }
            if flags & FIN != 0 {
                out.fin = true;
                break;
            }
        }
        self.ping_round_trip(id, &mut out, false).await;
        // The transport has read the response: `Close` sends FIN.
        self.send(frame(WINDOW_UPDATE, FIN, id, 0, &[])).await;
        self.ping_round_trip(id, &mut out, true).await;
        out
    }
}

/// A request head as the original server writes it upstream (Go's `http.Transport` with
/// keep-alives off, behind `httputil.ReverseProxy`).
pub fn original_request(method: &str, path: &str, host: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\n\
         Connection: close\r\nX-Forwarded-For: 127.0.0.1\r\nX-Piko-Forward: true\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    )
}
