//! A kept-alive HTTP/1.1 client connection (hyper 1) that reconnects after a failure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How much of a stream is searched for a marker before giving up.
const MAX_SCAN: usize = 1 << 20;

/// One client connection to a server on 127.0.0.1.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// Opens a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string()).context("host header")?;
        let mut conn = Conn {
            addr,
            host,
            sender: None,
        };
        conn.sender().await?;
        Ok(conn)
    }

    async fn open(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            // Ends when the server or the client closes the connection.
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(Self::open(self.addr).await?);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("no connection to {}", self.addr))
    }

    /// Drops the connection; the next request opens a new one.
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sends a request; the response body is left to the caller.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Bytes>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(token) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if json.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(json.unwrap_or_default()))
            .context("build request")?;
        let sender = self.sender().await?;
        let sent = async {
            sender.ready().await?;
            sender.send_request(req).await
        }
        .await;
        sent.map_err(|e| {
            self.sender = None;
            anyhow!(e).context(format!("{path}: request failed"))
        })
    }

    /// Sends a request and reads the whole response body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.send(method, path, bearer, json).await?;
        let status = resp.status();
        match resp.into_body().collect().await {
            Ok(body) => Ok((status, body.to_bytes())),
            Err(e) => {
                self.sender = None;
                Err(anyhow!(e).context(format!("{path}: reading the body")))
            }
        }
    }

    /// Sends a request and fails unless the status is `expected`; returns the body.
    pub async fn expect(
        &mut self,
        expected: StatusCode,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Bytes>,
    ) -> anyhow::Result<Bytes> {
        let (status, body) = self.call(method, path, bearer, json).await?;
        if status != expected {
            bail!(
                "{path}: expected {expected}, got {status}: {}",
                snippet(&body)
            );
        }
        Ok(body)
    }
}

/// The start of a body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

/// Whether SSE text contains a line starting with `prefix`.
pub fn has_line(seen: &[u8], prefix: &[u8]) -> bool {
    seen.starts_with(prefix)
        || seen
            .windows(prefix.len() + 1)
            .any(|w| w[0] == b'\n' && &w[1..] == prefix)
}

/// Reads an SSE body to its end; returns when the first `id:` line arrived (since `start`).
pub async fn drain_sse(body: &mut Incoming, start: Instant) -> anyhow::Result<Option<Duration>> {
    let mut seen = Vec::new();
    let mut first_event = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if first_event.is_none() && seen.len() < MAX_SCAN {
            seen.extend_from_slice(&data);
            if has_line(&seen, b"id:") {
                first_event = Some(start.elapsed());
                seen = Vec::new();
            }
        }
    }
    Ok(first_event)
}

/// Reads an SSE body until a line starting with `prefix` arrived; the stream stays open.
pub async fn read_until_line(body: &mut Incoming, prefix: &[u8]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen.extend_from_slice(&data);
        if has_line(&seen, prefix) {
            return Ok(());
        }
        if seen.len() > MAX_SCAN {
            break;
        }
    }
    bail!(
        "the stream ended without `{}`: {}",
        String::from_utf8_lossy(prefix),
        snippet(&seen)
    )
}

#[cfg(test)]
mod tests {
    use super::has_line;

    #[test]
    fn finds_line_prefixes() {
        assert!(has_line(b"id: 1\nevent: x", b"id:"));
        assert!(has_line(b": keepalive\n\nid: 1\n", b"id:"));
        assert!(!has_line(b"data: {\"id:\"}", b"id:"));
        assert!(has_line(
            b"id: 3\nevent: input_required\n",
            b"event: input_required"
        ));
    }
}
