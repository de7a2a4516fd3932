//! The one error type of the facade and its one mapping to HTTP.
//!
//! Every failure a client can see leaves through [`ApiError`]'s `IntoResponse`: a status and a
//! JSON body `{"code": "...", "message": "..."}`. Codes are stable (clients branch on them);
//! messages are for people. Runtime errors keep the runtime's own code
//! ([`ActorError::code`]), so one code means one thing from the actor layer to the client.
//!
//! Deliberately absent: a second place that picks statuses. Rejections of axum's extractors are
//! converted here (see `extract.rs`), and responses made outside our handlers (405s, the body
//! limit layer) are rewritten to this shape by `middleware::json_errors`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vcos_actors::ActorError;

/// What went wrong, as the facade reports it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The runtime refused or failed; status and code follow the variant.
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// The request itself is malformed (body, path, header); the message names the problem.
    #[error("{0}")]
    BadRequest(String),
    /// The bearer key is missing where required, malformed, or unknown (a bare 401 made
    /// outside our handlers).
    #[error("{0}")]
    Unauthorized(String),
    /// No valid key: `code` says why (`key_missing`, `key_malformed`, `key_unknown`,
    /// `key_revoked`, `key_expired`, `key_in_url`).
    #[error("{message}")]
    Unauthenticated {
        /// Stable code.
        code: &'static str,
        /// For people; never repeats the key.
        message: String,
    },
    /// The caller is not authenticated for the tenant it reads from.
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate or concurrency limit (`rate_limited`, `too_many_concurrent`,
    /// `too_many_failures`): 429 with `Retry-After`.
    #[error("{message}")]
    Throttled {
        /// Stable code.
        code: &'static str,
        /// For people.
        message: String,
        /// Seconds to wait.
        retry_after_s: u64,
    },
    /// No such route, tenant or IMVU.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (a tenant name or key already taken).
    #[error("{0}")]
    Conflict(String),
    /// The body exceeds the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The body is declared as something other than JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The canon layer refused or failed.
    #[error(transparent)]
    Canon(vcos_canon_raft::CanonError),
    /// A bug in the facade (a panic in a handler of this crate).
    #[error("{0}")]
    Internal(String),
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"code": "not_found", "message": "imvu default/7 not found"}))]
pub struct ErrorBody {
    /// Stable, machine-readable code: `bad_request`, `unauthorized`, `key_missing`,
    /// `key_malformed`, `key_unknown`, `key_revoked`, `key_expired`, `key_in_url`, `forbidden`,
    /// `rate_limited`, `too_many_concurrent`, `too_many_failures`, `model_overloaded` (429, with
    /// `Retry-After`),
    /// `quota_exceeded` (429; with `Retry-After` for a quota that renews, such as messages per
    /// day),
    /// `handshake_refused`, `not_found`, `unknown_kind`, `method_not_allowed`, `conflict`,
    /// `illegal_transition`, `terminated`, `too_large`, `unsupported_media_type`, `queue_full`,
    /// `imvu_crashed`, `store_error`, `internal`, `unavailable`, `refused` (a canon membership
    /// change that would lose quorum), `canon_unavailable` (the canon has no quorum now: retry
    /// after `Retry-After`), `learner_not_promoted` (a node added as a voter stayed a learner).
    pub code: String,
    /// What happened, for people; names the offending field where there is one.
    pub message: String,
}

impl ApiError {
    /// The status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Actor(e) => (actor_status(e), e.code()),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Unauthenticated { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Throttled { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Canon(e) => canon_status(e),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The JSON body of this error. Messages quote what was wrong; a huge input is not echoed
    /// back whole: past [`ERROR_MESSAGE_LEN_MAX`] bytes the message is cut and says so.
    pub fn body(&self) -> ErrorBody {
        let mut message = self.to_string();
        if message.len() > ERROR_MESSAGE_LEN_MAX {
            let cut = message.len() - ERROR_MESSAGE_LEN_MAX;
            let mut at = ERROR_MESSAGE_LEN_MAX;
            while !message.is_char_boundary(at) {
                at -= 1;
            }
            message.truncate(at);
            message.push_str(&format!("… ({cut} more bytes not shown)"));
        }
        ErrorBody { code: self.status_and_code().1.to_owned(), message }
    }

    /// The error a bare status would mean, for responses not made by our handlers.
    pub(crate) fn from_status(status: StatusCode, detail: String) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest(detail),
            StatusCode::UNAUTHORIZED => Self::Unauthorized(detail),
            StatusCode::FORBIDDEN => Self::Forbidden(detail),
            StatusCode::NOT_FOUND => Self::NotFound(detail),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed(detail),
            StatusCode::CONFLICT => Self::Conflict(detail),
            StatusCode::PAYLOAD_TOO_LARGE => Self::TooLarge(detail),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(detail),
            StatusCode::SERVICE_UNAVAILABLE => Self::Actor(ActorError::Unavailable(detail)),
            s if s.is_client_error() => Self::BadRequest(detail),
            _ => Self::Internal(detail),
        }
    }
}

/// The one table from canon errors to statuses and codes.
fn canon_status(e: &vcos_canon_raft::CanonError) -> (StatusCode, &'static str) {
    use vcos_canon_raft::CanonError;
    match e {
        CanonError::UnknownRegion(_) => (StatusCode::NOT_FOUND, "not_found"),
        CanonError::InvalidRegion(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        CanonError::Refused(_) => (StatusCode::CONFLICT, "refused"),
        CanonError::NotPromoted(_) => (StatusCode::CONFLICT, "learner_not_promoted"),
        CanonError::NoLeader { .. } | CanonError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "canon_unavailable"),
        CanonError::Removed(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        CanonError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
    }
}

/// Longest error message sent (inputs quoted in messages are cut past it).
pub const ERROR_MESSAGE_LEN_MAX: usize = 512;

/// Seconds a client should wait before retrying a 503 (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 1;

/// The one table from runtime errors to statuses.
fn actor_status(e: &ActorError) -> StatusCode {
    match e {
        ActorError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        // The kind is part of the request body, not the path: a bad request, not a missing page.
        ActorError::UnknownKind(_) => StatusCode::BAD_REQUEST,
        ActorError::NotFound { .. } => StatusCode::NOT_FOUND,
        ActorError::IllegalTransition { .. } | ActorError::Terminated(_) | ActorError::Conflict(_) => StatusCode::CONFLICT,
        ActorError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        ActorError::HandshakeRefused { .. } => StatusCode::FORBIDDEN,
        ActorError::Crashed { .. } | ActorError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ActorError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ActorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ActorError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        ActorError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ActorError::AlreadyApplied(_) => StatusCode::CONFLICT,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "request failed");
        } else {
            tracing::debug!(code, error = %self, "request refused");
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Retryable: no quorum now, or the node is stopping (another node may answer).
            return (status, [(axum::http::header::RETRY_AFTER, RETRY_AFTER_S.to_string())], Json(self.body())).into_response();
        }
        if let Self::Actor(ActorError::QuotaExceeded { retry_after_s: Some(retry_after_s), .. }) = &self {
            return (status, [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())], Json(self.body())).into_response();
        }
        if let Self::Throttled { retry_after_s, .. } = &self {
            return (status, [(axum::http::header::RETRY_AFTER, retry_after_s.to_string())], Json(self.body())).into_response();
        }
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(axum::http::header::WWW_AUTHENTICATE, "Bearer")], Json(self.body())).into_response();
        }
        (status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcos_actors::{Stage, Transition};

    fn check(e: ActorError, status: u16, code: &str) {
        let (s, c) = ApiError::from(e).status_and_code();
        assert_eq!((s.as_u16(), c), (status, code));
    }

    #[test]
    fn every_actor_error_has_its_status() {
        check(ActorError::BadRequest { field: "f".into(), reason: "r".into() }, 400, "bad_request");
        check(ActorError::UnknownKind("x".into()), 400, "unknown_kind");
        check(ActorError::NotFound { what: "imvu", key: "a/1".into() }, 404, "not_found");
        check(
            ActorError::IllegalTransition { transition: Transition::Resume, current: "active".into() },
            409,
            "illegal_transition",
        );
        check(ActorError::Terminated("a/1".into()), 409, "terminated");
        check(ActorError::QueueFull("q".into()), 429, "queue_full");
        check(
            ActorError::HandshakeRefused { stage: Stage::Compliance, transition: Transition::Create, reason: "r".into() },
            403,
            "handshake_refused",
        );
        check(ActorError::Crashed { key: "a/1".into(), reason: "boom".into() }, 500, "imvu_crashed");
        check(ActorError::TooLarge("t".into()), 413, "too_large");
        check(ActorError::Store("s".into()), 500, "store_error");
        check(ActorError::Unavailable("u".into()), 503, "unavailable");
        check(ActorError::Failed("f".into()), 422, "failed");
    }

    #[test]
    fn canon_errors_have_their_status_and_retryable_ones_a_retry_after() {
        use vcos_canon_raft::CanonError;
        let unavailable = CanonError::Unavailable { region: "eu".into(), deadline_ms: 5_000, reason: "no leader known".into() };
        let cases = [
            (unavailable, 503, "canon_unavailable"),
            (CanonError::NoLeader { region: "eu".into(), waited: std::time::Duration::ZERO, last: "x".into() }, 503, "canon_unavailable"),
            (CanonError::NotPromoted("node 9 stayed a learner".into()), 409, "learner_not_promoted"),
            (CanonError::Refused("quorum".into()), 409, "refused"),
            (CanonError::Failed("disk".into()), 500, "store_error"),
        ];
        for (error, status, code) in cases {
            let error = ApiError::Canon(error);
            let (s, c) = error.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code));
            let response = error.into_response();
            assert_eq!(response.headers().get("retry-after").is_some(), status == 503, "{code}");
        }
        let store_unavailable = ActorError::from(vcos_actors::store::StoreError::Unavailable("no quorum".into()));
        check(store_unavailable, 503, "unavailable");
    }

    #[test]
    fn a_huge_input_is_not_echoed_back_whole() {
        let name = "é".repeat(40_000);
        let body = ApiError::BadRequest(format!("tenant names are short (got {name:?})")).body();
        assert!(body.message.len() < ERROR_MESSAGE_LEN_MAX + 64, "{}", body.message.len());
        assert!(body.message.ends_with("more bytes not shown)"), "{}", &body.message[body.message.len() - 40..]);
    }

    #[test]
    fn bare_statuses_map_to_codes() {
        let e = ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, "big".into());
        assert_eq!(e.body(), ErrorBody { code: "too_large".into(), message: "big".into() });
        assert_eq!(ApiError::from_status(StatusCode::IM_A_TEAPOT, String::new()).status_and_code().1, "bad_request");
        assert_eq!(ApiError::from_status(StatusCode::BAD_GATEWAY, String::new()).status_and_code().1, "internal");
    }
}
