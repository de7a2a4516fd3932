//! Extractors that reject with [`ApiError`], so no plain-text rejection of axum reaches a client.
//!
//! - [`ApiJson`]: the body as JSON, bounded by the body limit; syntax errors, wrong types,
//!   missing and unknown fields are 400s whose message names the field path; an oversized body
//!   is a 413.
//! - [`Auth`] / [`Who`]: the caller and the key's principal, as the authorisation middleware
//!   established them.
//! - [`TenantPath`] / [`ImvuPath`] / [`SwarmPath`] / [`VotePath`] / [`MemoryKeyPath`]: path
//!   segments validated into runtime ids (400 naming the segment otherwise).

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use vcos_actors::auth::Principal;
use vcos_actors::{Caller, ImvuId, ImvuKey, SwarmId, SwarmKey, TenantId};

use crate::error::ApiError;

/// A JSON body of type `T`.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(req.headers().get(CONTENT_TYPE))?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!("request body exceeds {} bytes", crate::BODY_LEN_MAX))
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {}", rejection.body_text()))
            }
        })?;
        match axum::Json::<Object<T>>::from_bytes(&bytes) {
            Ok(axum::Json(Object(value))) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A value that must come as a JSON object ([`object`]).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer).map(Self)
    }
}

/// Deserialises a struct from a JSON object only. Serde's derived structs also take an array
/// (their fields by position, `["acme", {}]` for `{"name": "acme", "policy": {}}`): a second
/// form that no schema shows and no client is told about. Request bodies go through it, and
/// so do the structs inside them (`#[serde(deserialize_with = "crate::extract::object")]`);
/// error paths are kept (`policy.max_imvus: …`).
pub(crate) fn object<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    struct ObjectOnly<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// JSON is the only body this API reads. A missing content type is accepted; a declared
/// non-JSON one (e.g. the form type of a bare `curl --data`) is a 415 saying what to send.
fn check_content_type(value: Option<&axum::http::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else { return Ok(()) };
    let essence = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "request bodies are JSON: send `Content-Type: application/json` (got {essence:?})"
        )))
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        // The source is serde's error with its field path (`policy.max_imvus: invalid type…`);
        // the rejection's own text only adds axum's generic preamble.
        JsonRejection::JsonDataError(e) => ApiError::BadRequest(format!("invalid request body: {}", cause(&e))),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!("malformed JSON: {}", cause(&e))),
        other => ApiError::from_status(other.status(), other.body_text()),
    }
}

fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    e.source().map_or_else(|| e.to_string(), ToString::to_string)
}

/// The caller, as the authorisation middleware (`auth.rs`) established it from the key.
#[derive(Clone, Debug)]
pub(crate) struct Auth(pub(crate) Caller);

/// The key's principal (set by the authorisation middleware).
#[derive(Clone, Debug)]
pub(crate) struct Who(pub(crate) Principal);

/// What the authorisation middleware left in the request for the handler; absent only on a
/// route without an access rule (a bug the authorisation-matrix test catches).
fn left_by_middleware<T: Clone + Send + Sync + 'static>(parts: &Parts, what: &str) -> Result<T, ApiError> {
    parts.extensions.get::<T>().cloned().ok_or_else(|| ApiError::Internal(format!("no {what}: the route has no access rule")))
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        left_by_middleware(parts, "caller").map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        left_by_middleware(parts, "principal").map(Self)
    }
}

/// `/v1/tenants/{tenant}/…`.
#[derive(Clone, Debug)]
pub(crate) struct TenantPath(pub(crate) TenantId);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(tenant) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))?;
        Ok(Self(TenantId::new(&tenant)?))
    }
}

/// `/v1/tenants/{tenant}/imvus/{id}/…`.
#[derive(Clone, Debug)]
pub(crate) struct ImvuPath(pub(crate) ImvuKey);

impl<S: Send + Sync> FromRequestParts<S> for ImvuPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((tenant, id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))?;
        let tenant = TenantId::new(&tenant)?;
        let id = id
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("path segment `id`: IMVU ids are unsigned integers (got {id:?})")))?;
        Ok(Self(ImvuKey { tenant, id: ImvuId(id) }))
    }
}

/// A path segment that must be an unsigned integer; the error names the segment.
fn numeric_segment(name: &str, what: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .map_err(|_| ApiError::BadRequest(format!("path segment `{name}`: {what} are unsigned integers (got {value:?})")))
}

/// Named path parameters, read by name so that one extractor serves routes with more of them.
async fn named_params<T: DeserializeOwned + Send, S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<T, ApiError> {
    let Path(params) = Path::<T>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("bad path: {}", e.body_text())))?;
    Ok(params)
}

#[derive(Deserialize)]
struct SwarmParams {
    tenant: String,
    id: String,
}

/// `/v1/tenants/{tenant}/swarms/{id}/…`.
#[derive(Clone, Debug)]
pub(crate) struct SwarmPath(pub(crate) SwarmKey);

impl<S: Send + Sync> FromRequestParts<S> for SwarmPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let SwarmParams { tenant, id } = named_params(parts, state).await?;
        let tenant = TenantId::new(&tenant)?;
        let id = numeric_segment("id", "swarm ids", &id)?;
        Ok(Self(SwarmKey { tenant, id: SwarmId(id) }))
    }
}

/// `/v1/tenants/{tenant}/sessions/{id}/…`: a desktop session.
#[derive(Clone, Debug)]
pub(crate) struct SessionPath(pub(crate) TenantId, pub(crate) u64);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let SwarmParams { tenant, id } = named_params(parts, state).await?;
        let tenant = TenantId::new(&tenant)?;
        let id = numeric_segment("id", "session ids", &id)?;
        Ok(Self(tenant, id))
    }
}

/// `/v1/tenants/{tenant}/workspaces/{id}/…`: a workspace of desktop sessions.
#[derive(Clone, Debug)]
pub(crate) struct WorkspacePath(pub(crate) TenantId, pub(crate) u64);

impl<S: Send + Sync> FromRequestParts<S> for WorkspacePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let SwarmParams { tenant, id } = named_params(parts, state).await?;
        Ok(Self(TenantId::new(&tenant)?, numeric_segment("id", "workspace ids", &id)?))
    }
}

#[derive(Deserialize)]
struct VoteParams {
    vote: String,
}

/// `…/votes/{vote}/…`: a vote id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VotePath(pub(crate) u64);

impl<S: Send + Sync> FromRequestParts<S> for VotePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let VoteParams { vote } = named_params(parts, state).await?;
        Ok(Self(numeric_segment("vote", "vote ids", &vote)?))
    }
}

#[derive(Deserialize)]
struct MemoryKeyParams {
    key: String,
}

/// `…/memory/{key}`: a shared-memory key, percent-decoded (the runtime validates it).
#[derive(Clone, Debug)]
pub(crate) struct MemoryKeyPath(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for MemoryKeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let MemoryKeyParams { key } = named_params(parts, state).await?;
        Ok(Self(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(deserialize_with = "object")]
        inner: Inner,
    }

    #[test]
    fn structs_come_as_objects_only() {
        let parse = |text: &str| axum::Json::<Object<Outer>>::from_bytes(text.as_bytes()).map(|axum::Json(Object(o))| o);
        assert_eq!(parse(r#"{"name": "a", "inner": {"n": 1}}"#).expect("an object"), Outer { name: "a".into(), inner: Inner { n: 1 } });
        for positional in [r#"["a", {"n": 1}]"#, r#"{"name": "a", "inner": [1]}"#] {
            let e = json_rejection(parse(positional).expect_err(positional));
            assert!(e.to_string().contains("a JSON object"), "{positional}: {e}");
        }
        let e = json_rejection(parse(r#"{"name": "a", "inner": {"n": "x"}}"#).expect_err("a wrong type"));
        assert!(e.to_string().contains("inner.n"), "the path survives: {e}");
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(None).is_ok());
        for ok in ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"] {
            assert!(check_content_type(Some(&HeaderValue::from_static(ok))).is_ok(), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"] {
            let e = check_content_type(Some(&HeaderValue::from_static(bad))).unwrap_err();
            assert_eq!(e.status_and_code().1, "unsupported_media_type", "{bad}");
        }
    }
}
