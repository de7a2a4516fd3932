//! The client the workloads use over turmoil's simulated TCP (nodes serve through
//! `sockets::OrderedListener`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Port every simulated node serves HTTP on.
pub const HTTP_PORT: u16 = 8080;

/// What a request came back with, as the trace records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// An HTTP answer.
    Http {
        /// Status code.
        status: u16,
        /// Body as JSON (Null when not JSON).
        body: serde_json::Value,
    },
    /// No answer: connection refused or broken, or the deadline passed. The outcome is unknown.
    NoAnswer(String),
}

impl Response {
    /// The body, if the status is 2xx.
    pub fn ok(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Http { status, body } if (200..300).contains(status) => Some(body),
            _ => None,
        }
    }

    /// The status, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::NoAnswer(_) => None,
        }
    }
}

/// One request on a fresh connection, with a deadline in simulated time.
pub async fn request(host: &str, method: &str, path: &str, body: Option<&serde_json::Value>, deadline: Duration) -> Response {
    match tokio::time::timeout(deadline, request_inner(host, method, path, body)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => Response::NoAnswer(e),
        Err(_) => Response::NoAnswer("deadline".into()),
    }
}

async fn request_inner(host: &str, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<Response, String> {
    let stream = turmoil::net::TcpStream::connect((host, HTTP_PORT)).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let bytes = body.map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default())).unwrap_or_default();
    let mut builder = Request::builder().method(method).uri(path).header("host", host);
    if let Some(key) = crate::keys::admin_for(host) {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder.body(Full::new(bytes)).map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok(Response::Http { status, body })
}
