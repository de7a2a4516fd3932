//! The pure, deterministic core of the state machine: [`apply`] over any [`Tables`], and
//! [`KvState`], the core on in-memory maps.
//!
//! The rules live once, generic over where the data is kept: [`KvState`] keeps it in ordered
//! maps (tests, the simulator's checkers, property tests), and the state machine keeps it in
//! redb tables on disk (`disk::DiskTables`), so a replica's memory does not grow with the
//! canon. [`apply`] takes the log index and a [`Request`] and returns the [`Response`]; no IO
//! of its own, no clock, no randomness, ordered tables only, so the same requests in the same
//! order give the same state on every replica. Lease time comes inside the request
//! (`now_ms`), chosen by the client.
//!
//! Dedup: the state keeps, per client, the last applied `seq` and its response. A request with
//! that `seq` again returns the stored response; a lower `seq` returns
//! [`Response::StaleSequence`]. At most [`CLIENTS_MAX`] clients are kept; past it the client
//! whose last request was applied at the lowest log index is forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::constants::{BATCH_DEPTH_MAX, BATCH_OPS_MAX, CLIENTS_MAX, RANGE_LIMIT_MAX};
use crate::error::Error;
use crate::types::{LeaseInfo, Op, Request, Response};

/// Where the state is kept: keys, leases, the client dedup table and the canon index.
///
/// Every method may fail for tables on disk (an IO error); the in-memory [`KvState`] never
/// does. Implementations must be ordered: the same calls give the same contents.
pub trait Tables {
    /// The value of `key`.
    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Sets `key` to `value`.
    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error>;
    /// Sets `key` to `value`, returning the value it replaced.
    fn kv_insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Removes `key`, returning its value.
    fn kv_remove(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// The lease `name`.
    fn lease_get(&self, name: &str) -> Result<Option<LeaseInfo>, Error>;
    /// Sets (or, with `None`, removes) the lease `name`.
    fn lease_set(&mut self, name: &str, lease: Option<&LeaseInfo>) -> Result<(), Error>;
    /// The last `(seq, applied_index)` of client `id`.
    fn client_last(&self, id: u64) -> Result<Option<(u64, u64)>, Error>;
    /// The response stored for client `id`'s last request.
    fn client_response(&self, id: u64) -> Result<Option<Response>, Error>;
    /// Records client `id`'s last request; returns the `applied_index` of the record it replaced.
    fn client_put(&mut self, id: u64, seq: u64, applied_index: u64, response: &Response) -> Result<Option<u64>, Error>;
    /// Forgets client `id`.
    fn client_remove(&mut self, id: u64) -> Result<(), Error>;
    /// How many clients are remembered.
    fn clients_len(&self) -> Result<u64, Error>;
    /// Adds `(applied_index, id)` to the eviction order.
    fn age_insert(&mut self, applied_index: u64, id: u64) -> Result<(), Error>;
    /// Removes `(applied_index, id)` from the eviction order.
    fn age_remove(&mut self, applied_index: u64, id: u64) -> Result<(), Error>;
    /// Takes the oldest `(applied_index, id)` out of the eviction order.
    fn age_pop_first(&mut self) -> Result<Option<(u64, u64)>, Error>;
    /// The last canon index assigned by an [`Op::Append`] (0: none yet).
    fn canon_index(&self) -> u64;
    /// Sets the canon index.
    fn set_canon_index(&mut self, index: u64);
}

/// The last applied request of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    applied_index: u64,
    response: Response,
}

/// The replicated key-value state in memory: keys, leases and the client dedup table.
///
/// It serialises (JSON-friendly: byte keys travel as pairs); the format of the snapshots of
/// stores from before the state moved to disk, read once to migrate them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "KvStateImage", from = "KvStateImage")]
pub struct KvState {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    leases: BTreeMap<String, LeaseInfo>,
    clients: BTreeMap<u64, ClientRecord>,
    /// `(applied_index, client_id)` of every entry of `clients`: the eviction order.
    clients_by_age: BTreeSet<(u64, u64)>,
    /// The last canon index assigned by an [`Op::Append`] (0: none yet).
    canon_index: u64,
}

/// The encoded form of [`KvState`] (JSON maps need string keys, so byte keys travel as pairs).
#[derive(Serialize, Deserialize)]
struct KvStateImage {
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    leases: Vec<(String, LeaseInfo)>,
    clients: Vec<(u64, ClientRecord)>,
    #[serde(default)]
    canon_index: u64,
}

impl From<KvState> for KvStateImage {
    fn from(state: KvState) -> Self {
        Self {
            kv: state.kv.into_iter().collect(),
            leases: state.leases.into_iter().collect(),
            clients: state.clients.into_iter().collect(),
            canon_index: state.canon_index,
        }
    }
}

impl From<KvStateImage> for KvState {
    fn from(image: KvStateImage) -> Self {
        let kv = image.kv.into_iter().collect();
        let leases = image.leases.into_iter().collect();
        let clients: BTreeMap<u64, ClientRecord> = image.clients.into_iter().collect();
        let clients_by_age = clients.iter().map(|(id, record)| (record.applied_index, *id)).collect();
        Self { kv, leases, clients, clients_by_age, canon_index: image.canon_index }
    }
}

/// In-memory tables cannot fail: a result of theirs is unwrapped here, once.
fn infallibly<T>(result: Result<T, Error>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => unreachable!("in-memory tables do not fail: {e}"),
    }
}

impl KvState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`apply`].
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        infallibly(apply(self, index, request))
    }

    /// See [`apply_owned`].
    pub fn apply_owned(&mut self, index: u64, request: Request) -> Response {
        infallibly(apply_owned(self, index, request))
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.kv.get(key).map(Vec::as_slice)
    }

    /// Up to `limit` (at most [`RANGE_LIMIT_MAX`]) entries whose key starts with `prefix`, in
    /// key order, starting after `after` when given (for paging: pass the last key returned).
    pub fn range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let start = range_start(prefix, after);
        self.kv
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit.min(RANGE_LIMIT_MAX))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    /// The state of lease `name`, if it was ever granted.
    pub fn lease(&self, name: &str) -> Option<&LeaseInfo> {
        self.leases.get(name)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    /// The last canon index assigned by an append (0: none yet).
    pub fn canon_index(&self) -> u64 {
        self.canon_index
    }

    /// How many clients the dedup table remembers (at most [`CLIENTS_MAX`]).
    pub fn clients_len(&self) -> usize {
        self.clients.len()
    }

    /// Builds a state from its parts (the disk store's copy for checkers): keys, leases,
    /// clients as `(id, seq, applied_index, response)`, and the canon index.
    pub fn from_parts(
        kv: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        leases: impl IntoIterator<Item = (String, LeaseInfo)>,
        clients: impl IntoIterator<Item = (u64, u64, u64, Response)>,
        canon_index: u64,
    ) -> Self {
        let clients = clients
            .into_iter()
            .map(|(id, seq, applied_index, response)| (id, ClientRecord { seq, applied_index, response }))
            .collect();
        KvState::from(KvStateImage { kv: kv.into_iter().collect(), leases: leases.into_iter().collect(), clients, canon_index })
    }

    /// The parts of this state, as [`KvState::from_parts`] takes them (to migrate an old store).
    pub(crate) fn into_parts(self) -> StateParts {
        let clients = self.clients.into_iter().map(|(id, r)| (id, r.seq, r.applied_index, r.response)).collect();
        StateParts { kv: self.kv, leases: self.leases, clients, canon_index: self.canon_index }
    }
}

/// What [`KvState::into_parts`] returns.
pub(crate) struct StateParts {
    pub(crate) kv: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) leases: BTreeMap<String, LeaseInfo>,
    pub(crate) clients: Vec<(u64, u64, u64, Response)>,
    pub(crate) canon_index: u64,
}

/// Where a range read starts: after `after` when it is within the prefix, else at `prefix`.
pub(crate) fn range_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> Bound<&'a [u8]> {
    match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

impl Tables for KvState {
    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.get(key).cloned())
    }

    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.kv.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn kv_insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.insert(key.to_vec(), value.to_vec()))
    }

    fn kv_remove(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.remove(key))
    }

    fn lease_get(&self, name: &str) -> Result<Option<LeaseInfo>, Error> {
        Ok(self.leases.get(name).cloned())
    }

    fn lease_set(&mut self, name: &str, lease: Option<&LeaseInfo>) -> Result<(), Error> {
        match lease {
            Some(lease) => self.leases.insert(name.to_owned(), lease.clone()),
            None => self.leases.remove(name),
        };
        Ok(())
    }

    fn client_last(&self, id: u64) -> Result<Option<(u64, u64)>, Error> {
        Ok(self.clients.get(&id).map(|r| (r.seq, r.applied_index)))
    }

    fn client_response(&self, id: u64) -> Result<Option<Response>, Error> {
        Ok(self.clients.get(&id).map(|r| r.response.clone()))
    }

    fn client_put(&mut self, id: u64, seq: u64, applied_index: u64, response: &Response) -> Result<Option<u64>, Error> {
        let record = ClientRecord { seq, applied_index, response: response.clone() };
        Ok(self.clients.insert(id, record).map(|old| old.applied_index))
    }

    fn client_remove(&mut self, id: u64) -> Result<(), Error> {
        self.clients.remove(&id);
        Ok(())
    }

    fn clients_len(&self) -> Result<u64, Error> {
        Ok(self.clients.len() as u64)
    }

    fn age_insert(&mut self, applied_index: u64, id: u64) -> Result<(), Error> {
        self.clients_by_age.insert((applied_index, id));
        Ok(())
    }

    fn age_remove(&mut self, applied_index: u64, id: u64) -> Result<(), Error> {
        self.clients_by_age.remove(&(applied_index, id));
        Ok(())
    }

    fn age_pop_first(&mut self) -> Result<Option<(u64, u64)>, Error> {
        Ok(self.clients_by_age.pop_first())
    }

    fn canon_index(&self) -> u64 {
        self.canon_index
    }

    fn set_canon_index(&mut self, index: u64) {
        self.canon_index = index;
    }
}

/// One effect to undo when a batch fails.
enum Undo {
    Kv(Vec<u8>, Option<Vec<u8>>),
    Lease(String, Option<LeaseInfo>),
    CanonIndex(u64),
}

/// Applies `request`, which sits at log `index`, to `tables` and returns its response. A
/// retried `(client_id, seq)` returns the stored response without applying again.
pub fn apply<T: Tables>(tables: &mut T, index: u64, request: &Request) -> Result<Response, Error> {
    if let Some((seq, _)) = tables.client_last(request.client_id)? {
        if request.seq == seq {
            return stored_response(tables, request.client_id);
        }
        if request.seq < seq {
            return Ok(Response::StaleSequence { last_seq: seq });
        }
    }
    let mut undo = Vec::new();
    let (response, _ok) = apply_op(tables, &request.op, &mut undo, 0)?;
    remember(tables, request.client_id, request.seq, index, &response)?;
    Ok(response)
}

fn stored_response<T: Tables>(tables: &T, client_id: u64) -> Result<Response, Error> {
    match tables.client_response(client_id)? {
        Some(response) => Ok(response),
        None => unreachable!("client {client_id} has a last seq, so it has a response"),
    }
}

/// Like [`apply`], taking the request by value: a batch of puts, deletes and appends only (the
/// canon's group commits) cannot fail, so it is applied with no undo log. Anything else goes
/// through [`apply`]. Same results either way.
///
/// A group ([`Op::Group`], the canon's group commits) takes the fast path for each of its
/// inner batches that is infallible; the others (those with guards, compare-and-sets, leases)
/// go through the general path, each with its own undo log.
pub fn apply_owned<T: Tables>(tables: &mut T, index: u64, request: Request) -> Result<Response, Error> {
    let fast = match &request.op {
        Op::Batch(ops) => infallible(ops, 0) && ops_count(ops, 1) <= BATCH_OPS_MAX,
        // A group at depth 0 is within the depth limit (BATCH_DEPTH_MAX >= 1).
        Op::Group(ops) => ops_count(ops, 1) <= BATCH_OPS_MAX,
        _ => false,
    };
    if !fast || tables.client_last(request.client_id)?.is_some_and(|(seq, _)| request.seq <= seq) {
        return apply(tables, index, &request);
    }
    let Request { client_id, seq, op } = request;
    let response = match op {
        Op::Batch(ops) => apply_infallible(tables, ops)?,
        Op::Group(ops) => apply_group_owned(tables, ops)?,
        other => unreachable!("checked above: a batch or a group, not {other:?}"),
    };
    remember(tables, client_id, seq, index, &response)?;
    Ok(response)
}

/// A top-level group (its operations at depth 1), limits already checked: infallible inner
/// batches take the fast path, anything else goes through [`apply_op`] on its own.
fn apply_group_owned<T: Tables>(tables: &mut T, ops: Vec<Op>) -> Result<Response, Error> {
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            Op::Batch(inner) if infallible(&inner, 1) => apply_infallible(tables, inner)?,
            other => {
                let mut undo = Vec::new();
                apply_op(tables, &other, &mut undo, 1)?.0
            }
        };
        responses.push(response);
    }
    Ok(Response::Batch { committed: true, responses, canon_index: tables.canon_index() })
}

fn apply_infallible<T: Tables>(tables: &mut T, ops: Vec<Op>) -> Result<Response, Error> {
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op {
            Op::Put { key, value } => {
                tables.kv_put(&key, &value)?;
                Response::Put
            }
            Op::Delete { key } => Response::Deleted { existed: tables.kv_remove(&key)?.is_some() },
            Op::Append { mut prefix, value } => {
                let index = tables.canon_index() + 1;
                tables.set_canon_index(index);
                prefix.extend_from_slice(format!("{index:020}").as_bytes());
                tables.kv_put(&prefix, &value)?;
                Response::Appended { index }
            }
            Op::Batch(inner) => apply_infallible(tables, inner)?,
            other => unreachable!("infallible() admitted {other:?}"),
        };
        responses.push(response);
    }
    Ok(Response::Batch { committed: true, responses, canon_index: tables.canon_index() })
}

fn remember<T: Tables>(tables: &mut T, client_id: u64, seq: u64, index: u64, response: &Response) -> Result<(), Error> {
    if let Some(old_index) = tables.client_put(client_id, seq, index, response)? {
        tables.age_remove(old_index, client_id)?;
    }
    tables.age_insert(index, client_id)?;
    while tables.clients_len()? > CLIENTS_MAX as u64 {
        let Some((_, oldest)) = tables.age_pop_first()? else {
            unreachable!("the eviction order indexes every client");
        };
        tables.client_remove(oldest)?;
    }
    Ok(())
}

/// Applies one operation; returns its response and whether it succeeded. Effects are recorded
/// in `undo` so that a failing batch can take them back.
fn apply_op<T: Tables>(tables: &mut T, op: &Op, undo: &mut Vec<Undo>, depth: usize) -> Result<(Response, bool), Error> {
    Ok(match op {
        Op::Put { key, value } => {
            let old = tables.kv_insert(key, value)?;
            undo.push(Undo::Kv(key.clone(), old));
            (Response::Put, true)
        }
        Op::Append { prefix, value } => {
            undo.push(Undo::CanonIndex(tables.canon_index()));
            let index = tables.canon_index() + 1;
            tables.set_canon_index(index);
            let mut key = prefix.clone();
            key.extend_from_slice(format!("{index:020}").as_bytes());
            let old = tables.kv_insert(&key, value)?;
            undo.push(Undo::Kv(key, old));
            (Response::Appended { index }, true)
        }
        Op::Delete { key } => {
            let old = tables.kv_remove(key)?;
            let existed = old.is_some();
            undo.push(Undo::Kv(key.clone(), old));
            (Response::Deleted { existed }, true)
        }
        Op::CompareAndSet { key, expected, new } => {
            let current = tables.kv_get(key)?;
            if current != *expected {
                return Ok((Response::Cas { success: false, current }, false));
            }
            let old = match new {
                Some(new) => tables.kv_insert(key, new)?,
                None => tables.kv_remove(key)?,
            };
            undo.push(Undo::Kv(key.clone(), old));
            (Response::Cas { success: true, current: new.clone() }, true)
        }
        Op::AcquireLease { name, holder, ttl_ms, now_ms } => {
            let expires_at_ms = now_ms.saturating_add(*ttl_ms);
            let previous = tables.lease_get(name)?;
            let granted = match &previous {
                Some(lease) if *now_ms < lease.expires_at_ms && lease.holder.is_some() => {
                    if lease.holder.as_deref() == Some(holder.as_str()) {
                        Some(LeaseInfo { expires_at_ms, ..lease.clone() })
                    } else {
                        None
                    }
                }
                _ => Some(LeaseInfo {
                    holder: Some(holder.clone()),
                    epoch: previous.as_ref().map_or(1, |lease| lease.epoch + 1),
                    expires_at_ms,
                }),
            };
            set_lease(tables, name, previous, granted, undo)?
        }
        Op::RenewLease { name, holder, ttl_ms, now_ms } => {
            let previous = tables.lease_get(name)?;
            let granted = match &previous {
                Some(lease) if *now_ms < lease.expires_at_ms && lease.holder.as_deref() == Some(holder.as_str()) => {
                    Some(LeaseInfo { expires_at_ms: now_ms.saturating_add(*ttl_ms), ..lease.clone() })
                }
                _ => None,
            };
            set_lease(tables, name, previous, granted, undo)?
        }
        Op::ReleaseLease { name, holder } => {
            let previous = tables.lease_get(name)?;
            let granted = match &previous {
                Some(lease) if lease.holder.as_deref() == Some(holder.as_str()) => {
                    Some(LeaseInfo { holder: None, ..lease.clone() })
                }
                _ => None,
            };
            set_lease(tables, name, previous, granted, undo)?
        }
        Op::Expect { key, value } => {
            let matched = tables.kv_get(key)? == *value;
            (Response::Expect { matched }, matched)
        }
        Op::Group(ops) => {
            if depth >= BATCH_DEPTH_MAX || ops_count(ops, depth + 1) > BATCH_OPS_MAX {
                return Ok((Response::BatchTooLarge, false));
            }
            // Each operation stands alone: a failing inner batch has already rolled itself
            // back, and a failing single operation had no effect. What succeeded stays in
            // `undo`, so a batch around this group can still take the whole group back.
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                responses.push(apply_op(tables, op, undo, depth + 1)?.0);
            }
            (Response::Batch { committed: true, responses, canon_index: tables.canon_index() }, true)
        }
        Op::Batch(ops) => {
            if depth >= BATCH_DEPTH_MAX || ops_count(ops, depth + 1) > BATCH_OPS_MAX {
                return Ok((Response::BatchTooLarge, false));
            }
            let mark = undo.len();
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                let (response, ok) = apply_op(tables, op, undo, depth + 1)?;
                responses.push(response);
                if !ok {
                    roll_back(tables, undo, mark)?;
                    return Ok((Response::Batch { committed: false, responses, canon_index: tables.canon_index() }, false));
                }
            }
            (Response::Batch { committed: true, responses, canon_index: tables.canon_index() }, true)
        }
    })
}

fn set_lease<T: Tables>(
    tables: &mut T,
    name: &str,
    previous: Option<LeaseInfo>,
    granted: Option<LeaseInfo>,
    undo: &mut Vec<Undo>,
) -> Result<(Response, bool), Error> {
    Ok(match granted {
        Some(lease) => {
            if let Some(previous) = &previous {
                assert!(lease.epoch >= previous.epoch, "lease epochs never go back");
            }
            tables.lease_set(name, Some(&lease))?;
            undo.push(Undo::Lease(name.to_owned(), previous));
            (Response::Lease { granted: true, lease: Some(lease) }, true)
        }
        None => (Response::Lease { granted: false, lease: previous }, false),
    })
}

fn roll_back<T: Tables>(tables: &mut T, undo: &mut Vec<Undo>, mark: usize) -> Result<(), Error> {
    while undo.len() > mark {
        match undo.pop() {
            Some(Undo::Kv(key, Some(value))) => tables.kv_put(&key, &value)?,
            Some(Undo::Kv(key, None)) => {
                tables.kv_remove(&key)?;
            }
            Some(Undo::Lease(name, lease)) => tables.lease_set(&name, lease.as_ref())?,
            Some(Undo::CanonIndex(index)) => tables.set_canon_index(index),
            None => unreachable!("undo.len() > mark >= 0"),
        }
    }
    Ok(())
}

/// Whether every operation of `ops` (nested batches included, within the depth limit) is one
/// that cannot fail: put, delete, append (a group is not: the fast path takes it apart).
fn infallible(ops: &[Op], depth: usize) -> bool {
    depth < BATCH_DEPTH_MAX
        && ops.iter().all(|op| match op {
            Op::Put { .. } | Op::Delete { .. } | Op::Append { .. } => true,
            Op::Batch(inner) => infallible(inner, depth + 1),
            _ => false,
        })
}

/// How many operations `ops` holds, nested ones included; `usize::MAX` past the depth limit.
fn ops_count(ops: &[Op], depth: usize) -> usize {
    if depth > BATCH_DEPTH_MAX {
        return usize::MAX;
    }
    ops.iter()
        .map(|op| match op {
            Op::Batch(inner) | Op::Group(inner) => ops_count(inner, depth + 1).saturating_add(1),
            _ => 1,
        })
        .fold(0usize, usize::saturating_add)
}
