//! Application messages over the canon's connections.
//!
//! The cluster's remote IMVU messages travel the same connections, framing and validation as
//! Raft (one network stack, not two): a [`crate::wire::Rpc::App`] request carries opaque bytes
//! to the [`AppHandler`] the node was given, and its [`crate::wire::Reply::App`] carries the
//! handler's answer back. What the bytes mean is the layer above's business (and its
//! validation); this module only moves them, with the same per-connection bounds and deadlines
//! as every other request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::node::CanonNode;
use crate::transport::CallError;
use crate::wire::{Refusal, Reply, Rpc};

/// Why an app call got no answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppCallError {
    /// The message was certainly not delivered (the node could not be reached, or refused it
    /// unread): safe to send elsewhere.
    #[error("not delivered to node {to}: {reason}")]
    NotDelivered {
        /// The node.
        to: u64,
        /// Why.
        reason: String,
    },
    /// The message may or may not have been handled (timeout, connection lost after sending).
    #[error("no answer from node {to}: {reason}")]
    Unknown {
        /// The node.
        to: u64,
        /// Why.
        reason: String,
    },
}

/// The future an [`AppHandler`] answers with.
pub type AppFuture = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// Receives the app messages sent to this node.
pub trait AppHandler: Send + Sync + 'static {
    /// Answers `payload`, sent by node `from`. Runs concurrently with other messages of the
    /// same connection (up to the connection's in-flight bound).
    fn handle(&self, from: u64, payload: Vec<u8>) -> AppFuture;
}

impl CanonNode {
    /// Sets the handler of app messages; only the first call takes effect (returns whether it
    /// did).
    pub fn set_app_handler(&self, handler: Arc<dyn AppHandler>) -> bool {
        self.inner.app.set(handler).is_ok()
    }

    pub(crate) fn app_handler(&self) -> Option<Arc<dyn AppHandler>> {
        self.inner.app.get().cloned()
    }

    /// Sends `payload` to node `to` at its canon address `addr` and waits for its handler's
    /// answer, at most `timeout`.
    pub async fn call_app(&self, to: u64, addr: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, AppCallError> {
        let region = self.region().to_owned();
        let not_delivered = |reason: String| AppCallError::NotDelivered { to, reason };
        match self.call(addr, &region, to, Rpc::App(payload), timeout).await {
            Ok(Reply::App(bytes)) => Ok(bytes),
            // Refusals are answered before the handler sees the message.
            Ok(Reply::Refused(Refusal::WrongNode { actual })) => Err(not_delivered(format!("{addr} is node {actual}"))),
            Ok(Reply::Refused(refusal)) => Err(not_delivered(format!("refused: {refusal:?}"))),
            Ok(other) => Err(AppCallError::Unknown { to, reason: format!("answered with {other:?}") }),
            Err(e @ CallError::Unreachable { .. }) => Err(not_delivered(e.to_string())),
            Err(e) => Err(AppCallError::Unknown { to, reason: e.to_string() }),
        }
    }
}

impl CanonNode {
    /// This process's incarnation: it grows with every start from the same data directory.
    pub fn incarnation(&self) -> u64 {
        (self.inner.client_base >> 24) & 0xf_ffff
    }
}
