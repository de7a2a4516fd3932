//! [`KvState`]: the pure, deterministic core of the state machine.
//!
//! It is a plain struct: [`KvState::apply`] takes the log index and a [`Request`] and returns
//! the [`Response`]; no IO, no clock, no randomness, and only ordered maps (`BTreeMap`), so
//! the same requests in the same order give the same state on every replica. Lease time comes
//! inside the request (`now_ms`), chosen by the client.
//!
//! Dedup: the state keeps, per client, the last applied `seq` and its response. A request with
//! that `seq` again returns the stored response; a lower `seq` returns
//! [`Response::StaleSequence`]. At most [`CLIENTS_MAX`] clients are kept; past it the client
//! whose last request was applied at the lowest log index is forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::constants::{BATCH_DEPTH_MAX, BATCH_OPS_MAX, CLIENTS_MAX, RANGE_LIMIT_MAX};
use crate::types::{LeaseInfo, Op, Request, Response};

/// The last applied request of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientRecord {
    seq: u64,
    applied_index: u64,
    response: Response,
}

/// The replicated key-value state: keys, leases and the client dedup table.
///
/// It serialises (JSON-friendly: byte keys travel as pairs) into snapshots.
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

/// One effect to undo when a batch fails.
enum Undo {
    Kv(Vec<u8>, Option<Vec<u8>>),
    Lease(String, Option<LeaseInfo>),
    CanonIndex(u64),
}

impl KvState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `request`, which sits at log `index`, and returns its response. A retried
    /// `(client_id, seq)` returns the stored response without applying again.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        if let Some(record) = self.clients.get(&request.client_id) {
            if request.seq == record.seq {
                return record.response.clone();
            }
            if request.seq < record.seq {
                return Response::StaleSequence { last_seq: record.seq };
            }
        }
        let mut undo = Vec::new();
        let (response, _ok) = self.apply_op(&request.op, &mut undo, 0);
        self.remember(request.client_id, request.seq, index, response.clone());
        response
    }

    /// Like [`KvState::apply`], taking the request by value: a batch of puts, deletes and
    /// appends only (the canon's group commits) cannot fail, so it is applied by moving keys
    /// and values into the map, with no undo log and no copies. Anything else goes through
    /// [`KvState::apply`]. Same results either way.
    ///
    /// A group ([`Op::Group`], the canon's group commits) takes the fast path for each of its
    /// inner batches that is infallible; the others (those with guards, compare-and-sets,
    /// leases) go through the general path, each with its own undo log.
    pub fn apply_owned(&mut self, index: u64, request: Request) -> Response {
        let fast = match &request.op {
            Op::Batch(ops) => infallible(ops, 0) && ops_count(ops, 1) <= BATCH_OPS_MAX,
            // A group at depth 0 is within the depth limit (BATCH_DEPTH_MAX >= 1).
            Op::Group(ops) => ops_count(ops, 1) <= BATCH_OPS_MAX,
            _ => false,
        };
        if !fast || self.clients.get(&request.client_id).is_some_and(|record| request.seq <= record.seq) {
            return self.apply(index, &request);
        }
        let Request { client_id, seq, op } = request;
        let response = match op {
            Op::Batch(ops) => self.apply_infallible(ops),
            Op::Group(ops) => self.apply_group_owned(ops),
            other => unreachable!("checked above: a batch or a group, not {other:?}"),
        };
        self.remember(client_id, seq, index, response.clone());
        response
    }

    /// A top-level group (its operations at depth 1), limits already checked: infallible inner
    /// batches are moved in, anything else goes through [`KvState::apply_op`] on its own.
    fn apply_group_owned(&mut self, ops: Vec<Op>) -> Response {
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                Op::Batch(inner) if infallible(&inner, 1) => self.apply_infallible(inner),
                other => {
                    let mut undo = Vec::new();
                    self.apply_op(&other, &mut undo, 1).0
                }
            };
            responses.push(response);
        }
        Response::Batch { committed: true, responses, canon_index: self.canon_index }
    }

    fn apply_infallible(&mut self, ops: Vec<Op>) -> Response {
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                Op::Put { key, value } => {
                    self.kv.insert(key, value);
                    Response::Put
                }
                Op::Delete { key } => Response::Deleted { existed: self.kv.remove(&key).is_some() },
                Op::Append { mut prefix, value } => {
                    self.canon_index += 1;
                    prefix.extend_from_slice(format!("{:020}", self.canon_index).as_bytes());
                    self.kv.insert(prefix, value);
                    Response::Appended { index: self.canon_index }
                }
                Op::Batch(inner) => self.apply_infallible(inner),
                other => unreachable!("infallible() admitted {other:?}"),
            };
            responses.push(response);
        }
        Response::Batch { committed: true, responses, canon_index: self.canon_index }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.kv.get(key).map(Vec::as_slice)
    }

    /// Up to `limit` (at most [`RANGE_LIMIT_MAX`]) entries whose key starts with `prefix`, in
    /// key order, starting after `after` when given (for paging: pass the last key returned).
    pub fn range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let limit = limit.min(RANGE_LIMIT_MAX);
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        self.kv
            .range((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
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


    fn remember(&mut self, client_id: u64, seq: u64, index: u64, response: Response) {
        let record = ClientRecord { seq, applied_index: index, response };
        if let Some(old) = self.clients.insert(client_id, record) {
            self.clients_by_age.remove(&(old.applied_index, client_id));
        }
        self.clients_by_age.insert((index, client_id));
        while self.clients.len() > CLIENTS_MAX {
            let Some((_, oldest)) = self.clients_by_age.pop_first() else {
                unreachable!("clients_by_age indexes every client");
            };
            self.clients.remove(&oldest);
        }
        assert_eq!(self.clients.len(), self.clients_by_age.len());
    }

    /// Applies one operation; returns its response and whether it succeeded. Effects are
    /// recorded in `undo` so that a failing batch can take them back.
    fn apply_op(&mut self, op: &Op, undo: &mut Vec<Undo>, depth: usize) -> (Response, bool) {
        match op {
            Op::Put { key, value } => {
                let old = self.kv.insert(key.clone(), value.clone());
                undo.push(Undo::Kv(key.clone(), old));
                (Response::Put, true)
            }
            Op::Append { prefix, value } => {
                undo.push(Undo::CanonIndex(self.canon_index));
                self.canon_index += 1;
                let mut key = prefix.clone();
                key.extend_from_slice(format!("{:020}", self.canon_index).as_bytes());
                let old = self.kv.insert(key.clone(), value.clone());
                undo.push(Undo::Kv(key, old));
                (Response::Appended { index: self.canon_index }, true)
            }
            Op::Delete { key } => {
                let old = self.kv.remove(key);
                let existed = old.is_some();
                undo.push(Undo::Kv(key.clone(), old));
                (Response::Deleted { existed }, true)
            }
            Op::CompareAndSet { key, expected, new } => {
                let current = self.kv.get(key);
                if current != expected.as_ref() {
                    return (Response::Cas { success: false, current: current.cloned() }, false);
                }
                let old = match new {
                    Some(new) => self.kv.insert(key.clone(), new.clone()),
                    None => self.kv.remove(key),
                };
                undo.push(Undo::Kv(key.clone(), old));
                (Response::Cas { success: true, current: new.clone() }, true)
            }
            Op::AcquireLease { name, holder, ttl_ms, now_ms } => {
                let expires_at_ms = now_ms.saturating_add(*ttl_ms);
                let previous = self.leases.get(name).cloned();
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
                self.set_lease(name, previous, granted, undo)
            }
            Op::RenewLease { name, holder, ttl_ms, now_ms } => {
                let previous = self.leases.get(name).cloned();
                let granted = match &previous {
                    Some(lease)
                        if *now_ms < lease.expires_at_ms
                            && lease.holder.as_deref() == Some(holder.as_str()) =>
                    {
                        Some(LeaseInfo { expires_at_ms: now_ms.saturating_add(*ttl_ms), ..lease.clone() })
                    }
                    _ => None,
                };
                self.set_lease(name, previous, granted, undo)
            }
            Op::ReleaseLease { name, holder } => {
                let previous = self.leases.get(name).cloned();
                let granted = match &previous {
                    Some(lease) if lease.holder.as_deref() == Some(holder.as_str()) => {
                        Some(LeaseInfo { holder: None, ..lease.clone() })
                    }
                    _ => None,
                };
                self.set_lease(name, previous, granted, undo)
            }
            Op::Expect { key, value } => {
                let matched = self.kv.get(key) == value.as_ref();
                (Response::Expect { matched }, matched)
            }
            Op::Group(ops) => {
                if depth >= BATCH_DEPTH_MAX || ops_count(ops, depth + 1) > BATCH_OPS_MAX {
                    return (Response::BatchTooLarge, false);
                }
                // Each operation stands alone: a failing inner batch has already rolled itself
                // back, and a failing single operation had no effect. What succeeded stays in
                // `undo`, so a batch around this group can still take the whole group back.
                let responses = ops.iter().map(|op| self.apply_op(op, undo, depth + 1).0).collect();
                (Response::Batch { committed: true, responses, canon_index: self.canon_index }, true)
            }
            Op::Batch(ops) => {
                if depth >= BATCH_DEPTH_MAX || ops_count(ops, depth + 1) > BATCH_OPS_MAX {
                    return (Response::BatchTooLarge, false);
                }
                let mark = undo.len();
                let mut responses = Vec::with_capacity(ops.len());
                for op in ops {
                    let (response, ok) = self.apply_op(op, undo, depth + 1);
                    responses.push(response);
                    if !ok {
                        self.roll_back(undo, mark);
                        return (Response::Batch { committed: false, responses, canon_index: self.canon_index }, false);
                    }
                }
                (Response::Batch { committed: true, responses, canon_index: self.canon_index }, true)
            }
        }
    }

    fn set_lease(
        &mut self,
        name: &str,
        previous: Option<LeaseInfo>,
        granted: Option<LeaseInfo>,
        undo: &mut Vec<Undo>,
    ) -> (Response, bool) {
        match granted {
            Some(lease) => {
                if let Some(previous) = &previous {
                    assert!(lease.epoch >= previous.epoch, "lease epochs never go back");
                }
                self.leases.insert(name.to_owned(), lease.clone());
                undo.push(Undo::Lease(name.to_owned(), previous));
                (Response::Lease { granted: true, lease: Some(lease) }, true)
            }
            None => (Response::Lease { granted: false, lease: previous }, false),
        }
    }

    fn roll_back(&mut self, undo: &mut Vec<Undo>, mark: usize) {
        while undo.len() > mark {
            match undo.pop() {
                Some(Undo::Kv(key, Some(value))) => {
                    self.kv.insert(key, value);
                }
                Some(Undo::Kv(key, None)) => {
                    self.kv.remove(&key);
                }
                Some(Undo::Lease(name, Some(lease))) => {
                    self.leases.insert(name, lease);
                }
                Some(Undo::Lease(name, None)) => {
                    self.leases.remove(&name);
                }
                Some(Undo::CanonIndex(index)) => self.canon_index = index,
                None => unreachable!("undo.len() > mark >= 0"),
            }
        }
    }
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
