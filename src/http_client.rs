//! A minimal HTTP/1.1 JSON client for the CLI (`vcos canon …`, `vcos up --join`): one request
//! per connection, bounded by a timeout, sending the CLI's API key.
//!
//! The key comes from `--api-key-file`, else `$VCOS_API_KEY`, else [`DEFAULT_KEY_FILE`] if it
//! exists (what a default `vcos up` wrote in the current directory).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// The admin key file of a default `vcos up`, relative to the current directory.
pub(crate) const DEFAULT_KEY_FILE: &str = "vcos-data/admin.key";
/// The environment variable holding a key.
pub(crate) const KEY_ENV: &str = "VCOS_API_KEY";

/// Where the key comes from.
#[derive(Debug)]
enum KeySource {
    File(PathBuf),
    Env(String),
    DefaultFile,
}

static KEY_SOURCE: OnceLock<KeySource> = OnceLock::new();

/// Sets where [`request`] finds its key (once, from `main`).
pub(crate) fn set_key_source(file: Option<PathBuf>) {
    let source = match (file, std::env::var(KEY_ENV)) {
        (Some(file), _) => KeySource::File(file),
        (None, Ok(key)) if !key.trim().is_empty() => KeySource::Env(key.trim().to_owned()),
        _ => KeySource::DefaultFile,
    };
    let _ = KEY_SOURCE.set(source);
}

/// The key to send, if one is configured; an unreadable `--api-key-file` is an error naming it.
pub(crate) fn api_key() -> anyhow::Result<Option<String>> {
    match KEY_SOURCE.get().unwrap_or(&KeySource::DefaultFile) {
        KeySource::File(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--api-key-file {}", path.display()))?;
            Ok(Some(text.trim().to_owned()))
        }
        KeySource::Env(key) => Ok(Some(key.clone())),
        KeySource::DefaultFile => Ok(std::fs::read_to_string(DEFAULT_KEY_FILE).ok().map(|t| t.trim().to_owned())),
    }
}

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
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &authority)
            .header("content-type", "application/json");
        if let Some(key) = api_key()? {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(Bytes::from(bytes))).context("build the request")?;
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
        if status == 401 {
            bail!("{method} {path} on {base}: HTTP 401: {message} (the CLI sends the key of --api-key-file, ${KEY_ENV}, or {DEFAULT_KEY_FILE})");
        }
        bail!("{method} {path} on {base}: HTTP {status}: {message}");
    }
    Ok(text)
}
