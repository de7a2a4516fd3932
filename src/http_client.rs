//! A minimal HTTP/1.1 JSON client for the CLI (`vcos canon …`, `vcos up --join`): one request
//! per connection, bounded by a timeout.

use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// `host:port` of a base URL such as `http://127.0.0.1:8080` (a trailing `/` is fine).
pub(crate) fn authority(base: &str) -> anyhow::Result<String> {
    let rest = base
        .strip_prefix("http://")
        .with_context(|| format!("{base:?} is not an http:// URL (https is not supported here)"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("{base:?} must be http://host:port with no path");
    }
    Ok(authority.to_owned())
}

/// Sends `method path` with an optional JSON body to `base`; returns the status and the body.
pub(crate) async fn request(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<(u16, String)> {
    let authority = authority(base)?;
    let run = async {
        let stream = tokio::net::TcpStream::connect(&authority).await.with_context(|| format!("connect to {authority}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .context("build the request")?;
        let response = sender.send_request(request).await.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.context("read the response")?.to_bytes();
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, run).await.with_context(|| format!("{method} {base}{path}: no answer within {REQUEST_TIMEOUT:?}"))?
}

/// Like [`request`], failing on a non-2xx status with the server's message.
pub(crate) async fn request_ok(base: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<String> {
    let (status, text) = request(base, method, path, body).await?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("{method} {path} on {base}: HTTP {status}: {message}");
    }
    Ok(text)
}
