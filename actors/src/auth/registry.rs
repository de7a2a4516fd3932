//! The keys of a cluster: issued, listed, rotated, revoked and checked, kept in canon.
//!
//! Canon layout (replicated to every node of the region, so any node checks any key):
//! - `auth/keys/{id}`: the [`KeyRecord`] (hash, tenant, role, times) — never the secret;
//! - `auth/tenant-keys/{tenant}/{id}` and `auth/cluster-keys/{id}`: listing indexes;
//! - `auth/bootstrap`: present once the first cluster-admin key was issued.
//!
//! Checking a key reads its record from a cache that is refreshed from the local replica
//! after [`KEY_CACHE_TTL_MS`]: a revocation or rotation takes effect at once on the node that
//! made it, and on the others within that bound plus replication (documented in the README).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use vcos_supervision::Clock;

use super::key::{hash_from_hex, hash_hex, KeyFormatError, KeyText, SecretSource};
use super::role::Role;
use crate::error::ActorError;
use crate::ids::TenantId;
use crate::store::{commit_durable, CanonStore, CanonWrite, StoreError};

/// How long a cached key record is trusted before it is read again from the local replica.
pub const KEY_CACHE_TTL_MS: u64 = 1_000;
/// Keys a tenant (or the cluster) may hold, revoked ones included (listing stays bounded).
pub const KEYS_PER_OWNER_MAX: usize = 1_000;
/// Longest key name.
pub const KEY_NAME_LEN_MAX: usize = 128;

const RECORDS: &str = "auth/keys/";
const TENANT_INDEX: &str = "auth/tenant-keys/";
const CLUSTER_INDEX: &str = "auth/cluster-keys/";
const BOOTSTRAP: &str = "auth/bootstrap";

/// A key as stored: everything but the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public id (the `<id>` of `vcos_<id>_…`).
    pub id: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// The tenant it acts for; `None` for a cluster key.
    pub tenant: Option<TenantId>,
    /// What it may do.
    pub role: Role,
    /// A label chosen by whoever issued it.
    pub name: Option<String>,
    /// Issued at (unix ms; times of keys are wall-clock, shared by every node).
    pub created_ms: u64,
    /// Not valid from this time on.
    pub expires_ms: Option<u64>,
    /// Revoked at.
    pub revoked_ms: Option<u64>,
    /// The key that replaced it by rotation.
    pub replaced_by: Option<String>,
    /// The key that issued it.
    pub issued_by: Option<String>,
}

impl KeyRecord {
    /// Whether the key is valid at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|at| at > now_ms)
    }
}

/// Who a valid key says the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (what logs and audit records name).
    pub key_id: String,
    /// Its tenant; `None` for a cluster key.
    pub tenant: Option<TenantId>,
    /// Its role.
    pub role: Role,
}

/// Why a presented key does not authenticate. Each has a stable code; none repeats the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not the shape of a key.
    #[error("malformed API key: {0}")]
    Malformed(#[from] KeyFormatError),
    /// Well formed, but no such key (or not this secret).
    #[error("unknown API key")]
    Unknown,
    /// Revoked.
    #[error("API key {0} was revoked")]
    Revoked(String),
    /// Past its expiry (a rotated key after its overlap, too).
    #[error("API key {0} expired")]
    Expired(String),
    /// The key's record cannot be read now.
    #[error("cannot check the API key now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "key_malformed",
            Self::Unknown => "key_unknown",
            Self::Revoked(_) => "key_revoked",
            Self::Expired(_) => "key_expired",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// What [`KeyRegistry::issue`] is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    /// `None` for a cluster key.
    pub tenant: Option<TenantId>,
    /// Its role (a tenant role with a tenant, a cluster role without).
    pub role: Role,
    /// Label.
    pub name: Option<String>,
    /// Valid this long from now; `None`: until revoked.
    pub ttl_ms: Option<u64>,
    /// The issuing key (`None`: the node itself, at bootstrap).
    pub issued_by: Option<String>,
}

/// Reads a key's record from the replicas of the cluster's other regions (`vcos up` in a
/// cluster of regions): a key issued in one region authenticates in every other.
pub type ForeignRead = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

struct Cached {
    record: Arc<KeyRecord>,
    hash: [u8; 32],
    loaded_ms: u64,
}

/// The keys, over canon.
pub struct KeyRegistry {
    store: Arc<dyn CanonStore>,
    clock: Arc<dyn Clock>,
    secrets: Arc<dyn SecretSource>,
    cache: RwLock<BTreeMap<String, Cached>>,
    foreign: std::sync::OnceLock<ForeignRead>,
}

impl KeyRegistry {
    /// Keys kept in `store`, drawn from `secrets`, timed by `clock`.
    pub fn new(store: Arc<dyn CanonStore>, clock: Arc<dyn Clock>, secrets: Arc<dyn SecretSource>) -> Self {
        Self { store, clock, secrets, cache: RwLock::new(BTreeMap::new()), foreign: std::sync::OnceLock::new() }
    }

    /// Where keys of other regions are read (set once, by a node of a cluster of regions).
    pub fn set_foreign_reader(&self, read: ForeignRead) {
        let _ = self.foreign.set(read);
    }

    /// Who `presented` (a whole key) belongs to, if it is valid now.
    pub fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let key = KeyText::parse(presented)?;
        // Two reads, not `Clock::read`: key times are `unix_ms`, and `read` may derive its
        // wall time differently.
        let (mono_ms, now) = (self.clock.now_ms(), self.clock.unix_ms());
        let (record, hash) = self.cached(key.id(), mono_ms)?.ok_or(AuthError::Unknown)?;
        if !key.matches(&hash) {
            return Err(AuthError::Unknown);
        }
        if record.revoked_ms.is_some() {
            return Err(AuthError::Revoked(record.id.clone()));
        }
        if record.expires_ms.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired(record.id.clone()));
        }
        Ok(Principal { key_id: record.id.clone(), tenant: record.tenant.clone(), role: record.role })
    }

    /// Drops `ids` from this node's cache (their records were deleted: on other nodes they
    /// stop authenticating within [`KEY_CACHE_TTL_MS`]).
    pub fn forget_cached(&self, ids: &[String]) {
        let mut cache = self.write_cache();
        for id in ids {
            cache.remove(id);
        }
    }

    /// The record of `id`, from the cache while it is younger than the TTL (`mono_ms`: the
    /// monotonic clock).
    fn cached(&self, id: &str, mono_ms: u64) -> Result<Option<(Arc<KeyRecord>, [u8; 32])>, AuthError> {
        if let Some(c) = self.read_cache().get(id) {
            if mono_ms.saturating_sub(c.loaded_ms) < KEY_CACHE_TTL_MS {
                return Ok(Some((c.record.clone(), c.hash)));
            }
        }
        let record = self.load(id).map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let Some(record) = record else {
            self.write_cache().remove(id);
            return Ok(None);
        };
        let Some(hash) = hash_from_hex(&record.hash) else {
            return Err(AuthError::Unavailable(format!("the record of key {id} is damaged")));
        };
        let record = Arc::new(record);
        self.write_cache().insert(id.to_owned(), Cached { record: record.clone(), hash, loaded_ms: mono_ms });
        Ok(Some((record, hash)))
    }

    /// The record of `id`: this region's canon, else another region's replica.
    fn load(&self, id: &str) -> Result<Option<KeyRecord>, ActorError> {
        let key = format!("{RECORDS}{id}");
        let bytes = match self.store.get(&key)? {
            Some(bytes) => Some(bytes),
            None => self.foreign.get().and_then(|read| read(&key)),
        };
        match bytes {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ActorError::Store(format!("key record {id}: {e}"))),
        }
    }

    /// The record of key `id` if this region issued it (keys are managed in their region).
    pub fn get(&self, id: &str) -> Result<Option<KeyRecord>, ActorError> {
        match self.store.get(&format!("{RECORDS}{id}"))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| ActorError::Store(format!("key record {id}: {e}"))),
        }
    }

    /// Issues a key: returns its record and its text (the only time the secret exists outside
    /// the caller's hands).
    pub async fn issue(&self, request: KeyRequest) -> Result<(KeyRecord, KeyText), ActorError> {
        check_request(&request)?;
        let existing = self.list(request.tenant.as_ref(), usize::MAX)?;
        if existing.len() >= KEYS_PER_OWNER_MAX {
            return Err(ActorError::Conflict(format!("at most {KEYS_PER_OWNER_MAX} keys per tenant; revoke and delete old ones")));
        }
        let (record, text) = self.draw(&request);
        let writes = vec![
            CanonWrite::Expect { key: format!("{RECORDS}{}", record.id), value: None },
            put(&record)?,
            index_put(&record),
        ];
        commit_durable(self.store.as_ref(), writes).await?;
        self.remember(&record);
        Ok((record, text))
    }

    fn draw(&self, request: &KeyRequest) -> (KeyRecord, KeyText) {
        let text = KeyText::generate(self.secrets.as_ref());
        (self.record_for(text.clone(), request), text)
    }

    /// The record of key `text`, issued now for `request`.
    fn record_for(&self, text: KeyText, request: &KeyRequest) -> KeyRecord {
        let now = self.clock.unix_ms();
        KeyRecord {
            id: text.id().to_owned(),
            hash: hash_hex(&text.hash()),
            tenant: request.tenant.clone(),
            role: request.role,
            name: request.name.clone(),
            created_ms: now,
            expires_ms: request.ttl_ms.map(|ttl| now.saturating_add(ttl)),
            revoked_ms: None,
            replaced_by: None,
            issued_by: request.issued_by.clone(),
        }
    }

    /// Revokes key `id` now (revoking a revoked key changes nothing). Returns its record.
    pub async fn revoke(&self, id: &str) -> Result<KeyRecord, ActorError> {
        let (mut record, before) = self.fresh(id)?;
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(self.clock.unix_ms());
            let writes = vec![CanonWrite::Expect { key: format!("{RECORDS}{id}"), value: Some(before) }, put(&record)?];
            commit_durable(self.store.as_ref(), writes).await.map_err(changed_meanwhile)?;
        }
        self.remember(&record);
        Ok(record)
    }

    /// Replaces key `id` by a new one with the same tenant, role and name; the old one stays
    /// valid for `overlap_ms` more (never longer than it already would). Returns the old
    /// record as updated, the new one and its text.
    pub async fn rotate(&self, id: &str, overlap_ms: u64, ttl_ms: Option<u64>, issued_by: Option<String>) -> Result<(KeyRecord, KeyRecord, KeyText), ActorError> {
        let (mut old, before) = self.fresh(id)?;
        let now = self.clock.unix_ms();
        if !old.is_active(now) {
            return Err(ActorError::Conflict(format!("key {id} is no longer valid; issue a new one instead")));
        }
        let request = KeyRequest { tenant: old.tenant.clone(), role: old.role, name: old.name.clone(), ttl_ms, issued_by };
        let (new, text) = self.draw(&request);
        let until = now.saturating_add(overlap_ms);
        old.expires_ms = Some(old.expires_ms.map_or(until, |at| at.min(until)));
        old.replaced_by = Some(new.id.clone());
        let writes = vec![
            CanonWrite::Expect { key: format!("{RECORDS}{id}"), value: Some(before) },
            CanonWrite::Expect { key: format!("{RECORDS}{}", new.id), value: None },
            put(&old)?,
            put(&new)?,
            index_put(&new),
        ];
        commit_durable(self.store.as_ref(), writes).await.map_err(changed_meanwhile)?;
        self.remember(&old);
        self.remember(&new);
        Ok((old, new, text))
    }

    /// Keys of `tenant` (`None`: the cluster's), oldest id first, at most `limit`.
    pub fn list(&self, tenant: Option<&TenantId>, limit: usize) -> Result<Vec<KeyRecord>, ActorError> {
        let prefix = index_prefix(tenant);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        while out.len() < limit {
            let page = self.store.scan_prefix(&prefix, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, _) in &page {
                let id = &key[prefix.len()..];
                if let Some(record) = self.load(id)? {
                    out.push(record);
                    if out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Issues the first cluster-admin key, once per canon: `None` when one was issued before
    /// (by this node or another). For callers that hold the key in memory only (tests); a node
    /// that keeps it in a file uses [`KeyRegistry::bootstrap_kept`].
    pub async fn bootstrap(&self) -> Result<Option<(KeyRecord, KeyText)>, ActorError> {
        match self.bootstrap_kept(None, |_| Ok(())).await? {
            Bootstrap::Issued(record, text) => Ok(Some((record, text))),
            Bootstrap::Held(_) | Bootstrap::Elsewhere => Ok(None),
        }
    }

    /// Issues the first cluster-admin key, once per canon, so that a crash at any point leaves
    /// the canon's bootstrap key with its holder: a new key is handed to `keep` (which writes
    /// it durably, `vcos up`'s `admin.key`) *before* it is committed, and the next start passes
    /// what was kept as `kept`, which is committed in place of a new one if the first commit
    /// never landed. (Committing first and keeping after lost the cluster for good when the
    /// node died in between: a key in canon, hashed, that nobody held.)
    pub async fn bootstrap_kept(
        &self,
        kept: Option<&KeyText>,
        keep: impl FnOnce(&KeyText) -> Result<(), ActorError>,
    ) -> Result<Bootstrap, ActorError> {
        if let Some(found) = self.bootstrap_key_id()? {
            return Ok(held_or_elsewhere(found, kept));
        }
        let request = KeyRequest { tenant: None, role: Role::ClusterAdmin, name: Some("bootstrap".into()), ttl_ms: None, issued_by: None };
        let (record, text) = match kept {
            Some(text) => (self.record_for(text.clone(), &request), text.clone()),
            None => {
                let (record, text) = self.draw(&request);
                keep(&text)?;
                (record, text)
            }
        };
        let marker = serde_json::json!({"key_id": record.id, "created_ms": record.created_ms}).to_string();
        let writes = vec![
            CanonWrite::Expect { key: BOOTSTRAP.into(), value: None },
            CanonWrite::Expect { key: format!("{RECORDS}{}", record.id), value: None },
            CanonWrite::Put { key: BOOTSTRAP.into(), value: marker.into_bytes() },
            put(&record)?,
            index_put(&record),
        ];
        match commit_durable(self.store.as_ref(), writes).await {
            Ok(_) => {
                self.remember(&record);
                Ok(Bootstrap::Issued(record, text))
            }
            // Another node got there first, or this node's own earlier commit landed after
            // all: the marker says which.
            Err(StoreError::Conflict { .. }) => match self.bootstrap_key_id()? {
                Some(found) => Ok(held_or_elsewhere(found, Some(&text))),
                None => Ok(Bootstrap::Elsewhere),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The id of the canon's bootstrap key, once one is committed.
    fn bootstrap_key_id(&self) -> Result<Option<String>, ActorError> {
        let Some(bytes) = self.store.get(BOOTSTRAP)? else { return Ok(None) };
        let marker: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ActorError::Store(format!("{BOOTSTRAP}: {e}")))?;
        let id = marker.get("key_id").and_then(|id| id.as_str()).ok_or_else(|| ActorError::Store(format!("{BOOTSTRAP} names no key_id")))?;
        Ok(Some(id.to_owned()))
    }

    fn fresh(&self, id: &str) -> Result<(KeyRecord, Vec<u8>), ActorError> {
        let bytes = self.store.get(&format!("{RECORDS}{id}"))?.ok_or_else(|| ActorError::not_found("key", id))?;
        let record = serde_json::from_slice(&bytes).map_err(|e| ActorError::Store(format!("key record {id}: {e}")))?;
        Ok((record, bytes))
    }

    fn remember(&self, record: &KeyRecord) {
        if let Some(hash) = hash_from_hex(&record.hash) {
            let cached = Cached { record: Arc::new(record.clone()), hash, loaded_ms: self.clock.now_ms() };
            self.write_cache().insert(record.id.clone(), cached);
        }
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Cached>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Cached>> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What [`KeyRegistry::bootstrap_kept`] found or did.
#[derive(Debug)]
pub enum Bootstrap {
    /// This call committed the canon's first cluster-admin key.
    Issued(KeyRecord, KeyText),
    /// The canon's bootstrap key is the one passed as kept (an earlier start committed it).
    Held(String),
    /// Another key is the canon's bootstrap key: another node issued it.
    Elsewhere,
}

fn held_or_elsewhere(found: String, kept: Option<&KeyText>) -> Bootstrap {
    match kept {
        Some(text) if text.id() == found => Bootstrap::Held(found),
        _ => Bootstrap::Elsewhere,
    }
}

fn check_request(request: &KeyRequest) -> Result<(), ActorError> {
    let bad = |field: &str, reason: String| ActorError::BadRequest { field: field.into(), reason };
    match (&request.tenant, request.role.is_cluster_role()) {
        (Some(_), true) => return Err(bad("role", format!("{} is a cluster role; a tenant key is viewer, app, operator or tenant_admin", request.role))),
        (None, false) => return Err(bad("role", format!("{} is a tenant role; a cluster key is cluster_admin or metrics", request.role))),
        _ => {}
    }
    if let Some(name) = &request.name {
        if name.is_empty() || name.len() > KEY_NAME_LEN_MAX || name.chars().any(char::is_control) {
            return Err(bad("name", format!("1..={KEY_NAME_LEN_MAX} characters, no control characters")));
        }
    }
    if request.ttl_ms == Some(0) {
        return Err(bad("expires_in_s", "a key must be valid for some time".into()));
    }
    Ok(())
}

fn changed_meanwhile(e: StoreError) -> ActorError {
    match e {
        StoreError::Conflict { key } => ActorError::Conflict(format!("{key} changed meanwhile; read it again")),
        other => other.into(),
    }
}

fn put(record: &KeyRecord) -> Result<CanonWrite, ActorError> {
    let value = serde_json::to_vec(record).map_err(|e| ActorError::Store(format!("key record: {e}")))?;
    Ok(CanonWrite::Put { key: format!("{RECORDS}{}", record.id), value })
}

fn index_prefix(tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(t) => format!("{TENANT_INDEX}{t}/"),
        None => CLUSTER_INDEX.to_owned(),
    }
}

fn index_put(record: &KeyRecord) -> CanonWrite {
    CanonWrite::Put { key: format!("{}{}", index_prefix(record.tenant.as_ref()), record.id), value: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::key::OsSecrets;
    use crate::store::MemoryStore;
    use vcos_supervision::ManualClock;

    fn registry() -> (KeyRegistry, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        let store: Arc<dyn CanonStore> = Arc::new(MemoryStore::new());
        (KeyRegistry::new(store, clock.clone(), Arc::new(OsSecrets)), clock)
    }

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("tenant")
    }

    fn app_key(t: &str) -> KeyRequest {
        KeyRequest { tenant: Some(tenant(t)), role: Role::App, name: None, ttl_ms: None, issued_by: None }
    }

    #[tokio::test]
    async fn an_issued_key_authenticates_until_revoked() {
        let (keys, _) = registry();
        let (record, text) = keys.issue(app_key("acme")).await.expect("issued");
        let who = keys.authenticate(text.expose()).expect("valid");
        assert_eq!((who.tenant, who.role, who.key_id.as_str()), (Some(tenant("acme")), Role::App, record.id.as_str()));
        keys.revoke(&record.id).await.expect("revoked");
        assert_eq!(keys.authenticate(text.expose()), Err(AuthError::Revoked(record.id.clone())));
        let other = KeyText::generate(&OsSecrets);
        assert_eq!(keys.authenticate(other.expose()), Err(AuthError::Unknown));
    }

    #[tokio::test]
    async fn a_rotated_key_overlaps_then_expires_and_a_ttl_ends_a_key() {
        let (keys, clock) = registry();
        let (old, old_text) = keys.issue(app_key("acme")).await.expect("issued");
        let (_, new, new_text) = keys.rotate(&old.id, 5_000, None, None).await.expect("rotated");
        assert!(keys.authenticate(old_text.expose()).is_ok(), "valid during the overlap");
        assert!(keys.authenticate(new_text.expose()).is_ok());
        clock.advance(5_000);
        assert_eq!(keys.authenticate(old_text.expose()), Err(AuthError::Expired(old.id.clone())));
        assert!(keys.authenticate(new_text.expose()).is_ok());
        let (_, short) = keys.issue(KeyRequest { ttl_ms: Some(10), ..app_key("acme") }).await.expect("issued");
        clock.advance(10);
        assert!(matches!(keys.authenticate(short.expose()), Err(AuthError::Expired(_))));
        assert_eq!(keys.list(Some(&tenant("acme")), 100).expect("list").len(), 3);
        assert!(keys.list(Some(&tenant("globex")), 100).expect("list").is_empty());
        assert_eq!(new.tenant, Some(tenant("acme")));
    }

    #[tokio::test]
    async fn bootstrap_issues_one_cluster_admin_key_once() {
        let (keys, _) = registry();
        let (record, text) = keys.bootstrap().await.expect("bootstrap").expect("first time");
        assert_eq!(record.role, Role::ClusterAdmin);
        assert_eq!(keys.authenticate(text.expose()).expect("valid").tenant, None);
        assert!(keys.bootstrap().await.expect("bootstrap").is_none());
        assert_eq!(keys.list(None, 10).expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_bootstrap_key_is_kept_before_its_commit_and_a_kept_key_is_committed_on_the_next_start() {
        let (keys, _) = registry();
        // A node that drew and kept its key, then died before the commit landed.
        let kept = std::cell::RefCell::new(None);
        let probe = keys.bootstrap_key_id().expect("read");
        assert!(probe.is_none());
        let first = keys
            .bootstrap_kept(None, |text| {
                assert!(keys.bootstrap_key_id().expect("read").is_none(), "kept before the commit");
                *kept.borrow_mut() = Some(text.clone());
                Ok(())
            })
            .await
            .expect("bootstrap");
        let kept = kept.into_inner().expect("kept");
        assert!(matches!(&first, Bootstrap::Issued(_, text) if text.id() == kept.id()));
        // Its next start holds it; a node that kept nothing, or another key, does not.
        assert!(matches!(keys.bootstrap_kept(Some(&kept), |_| panic!("no new key")).await, Ok(Bootstrap::Held(id)) if id == kept.id()));
        assert!(matches!(keys.bootstrap_kept(None, |_| panic!("no new key")).await, Ok(Bootstrap::Elsewhere)));
        let stray = KeyText::generate(&OsSecrets);
        assert!(matches!(keys.bootstrap_kept(Some(&stray), |_| panic!("no new key")).await, Ok(Bootstrap::Elsewhere)));
        assert!(keys.authenticate(stray.expose()).is_err());

        // A kept key whose commit never landed is the one committed on the next start.
        let (fresh, _) = registry();
        let lost = KeyText::generate(&OsSecrets);
        let again = fresh.bootstrap_kept(Some(&lost), |_| panic!("the kept key is used")).await.expect("bootstrap");
        assert!(matches!(again, Bootstrap::Issued(record, _) if record.id == lost.id()));
        assert_eq!(fresh.authenticate(lost.expose()).expect("valid").role, Role::ClusterAdmin);
    }

    #[tokio::test]
    async fn roles_and_tenants_must_agree() {
        let (keys, _) = registry();
        let cluster_role_for_tenant = KeyRequest { role: Role::ClusterAdmin, ..app_key("acme") };
        assert!(matches!(keys.issue(cluster_role_for_tenant).await, Err(ActorError::BadRequest { .. })));
        let tenant_role_for_cluster = KeyRequest { tenant: None, ..app_key("acme") };
        assert!(matches!(keys.issue(tenant_role_for_cluster).await, Err(ActorError::BadRequest { .. })));
    }
}
