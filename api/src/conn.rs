//! Connections as the facade serves them: JSON errors even for what hyper answers itself.
//!
//! hyper answers a request it cannot parse before any of our code runs — a request line over
//! its 64 KiB limit (414), a header section over its buffer (431), malformed HTTP (400) — with
//! an empty body. A client of this API expects every error as `{"code","message"}`. So each
//! accepted connection is wrapped in [`JsonErrors`], which recognises such an answer on its way
//! out (a status line of one of those codes with `content-length: 0`: our own error answers
//! always have a JSON body, so they never match) and writes our JSON error in its place. hyper
//! closes the connection after such an answer, so the replacement is the last thing on it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The JSON answer that replaces hyper's empty answer with `status`, if it is one we replace.
fn replacement(status: &[u8]) -> Option<Vec<u8>> {
    let (reason, code, message) = match status {
        b"414" => ("URI Too Long", "uri_too_long", "the request line is over 64 KiB: send long inputs in the body"),
        b"431" => ("Request Header Fields Too Large", "headers_too_large", "the request's header section is too large"),
        b"400" => ("Bad Request", "bad_request", "the request is not valid HTTP/1.1"),
        _ => return None,
    };
    let body = format!("{{\"code\":\"{code}\",\"message\":\"{message}\"}}");
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        String::from_utf8_lossy(status),
        body.len()
    );
    Some([head.into_bytes(), body.into_bytes()].concat())
}

/// Whether `buf` is a whole response head hyper made for a request it could not parse, and
/// the JSON answer to write instead.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = rest.get(..3)?;
    if !buf.ends_with(b"\r\n\r\n") || !contains(buf, b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    replacement(status)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A connection whose parse-error answers are rewritten as JSON (see the module docs).
pub(crate) struct JsonErrors<S> {
    inner: S,
    /// A replacement answer, and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> JsonErrors<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, pending: None }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes what is left of a replacement answer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if let Some(answer) = rewrite(buf) {
            metrics::counter!("vcos_http_unparsable_total").increment(1);
            self.pending = Some((answer, 0));
            // hyper's bytes are taken (and dropped): the replacement goes out instead.
            return match self.poll_drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        // hyper's own answers are a single head; check the first slice like a plain write.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if bufs.iter().filter(|b| !b.is_empty()).count() == 1 && rewrite(first).is_some() {
                let first: &[u8] = first;
                return self.poll_write(cx, first);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`JsonErrors`].
pub(crate) struct JsonErrorListener(pub(crate) TcpListener);

impl axum::serve::Listener for JsonErrorListener {
    type Io = JsonErrors<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (JsonErrors::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_parse_error_answers_are_rewritten() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 12:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(rewrite(hyper_414).expect("rewritten")).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n"), "{answer}");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{answer}");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["code"], "uri_too_long");
        // Our own error answers carry a JSON body: never touched.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n";
        assert!(rewrite(ours).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"{\"HTTP/1.1 414\"}").is_none());
    }
}
