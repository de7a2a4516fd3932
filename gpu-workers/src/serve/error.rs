//! What a caller of a model pool can be told.

/// Why a pool did not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The request itself is wrong (empty input, too long, bad parameter): do not retry as is.
    #[error("{0}")]
    Invalid(String),
    /// The queue in front of the worker is full: retry later.
    #[error("the {model} worker is overloaded ({queued} requests queued, the limit); retry later")]
    Overloaded {
        /// The model.
        model: String,
        /// Requests waiting.
        queued: usize,
    },
    /// The worker failed (panicked, erred or hung) while serving this request; it was restarted.
    #[error("the {model} worker failed while serving this request ({reason}); it was restarted: retry")]
    WorkerFailed {
        /// The model.
        model: String,
        /// What happened.
        reason: String,
    },
    /// The worker is stopped (shutting down).
    #[error("the {0} worker is stopped")]
    Stopped(String),
}

impl ServeError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ServeError::Invalid(_))
    }
}
