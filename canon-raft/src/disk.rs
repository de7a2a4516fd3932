//! The state machine's tables on disk, in the group's redb file, and their encodings.
//!
//! Tables (`*` is the live set; the same names with `.staging` hold a snapshot being
//! installed until it replaces the live set in one transaction):
//! - `sm_kv*`: key → value;
//! - `sm_leases*`: lease name → [`LeaseInfo`] as JSON (few, small, rarely written);
//! - `sm_clients*`: client id → its last `seq`, `applied_index` (8 bytes each, big-endian) and
//!   response (rkyv);
//! - `sm_clients_age*`: `(applied_index, client id)` → `()`: the dedup table's eviction order;
//! - `sm_usage*`: tenant → the bytes (keys and values) of the records in `sm_kv*` that count
//!   for it (`vcos_actors::quota::counted_tenant`), kept as writes are applied so that a
//!   tenant's storage quota is read, not measured by reading every record; a tenant with none
//!   has no row. Derived from `sm_kv*` alone: snapshots do not carry it, an install counts
//!   the records it inserts;
//! - `sm_meta`: the store's format version, the last applied log id, the membership and the
//!   canon index. (Builds before the state file became the snapshot also kept, under
//!   `snapshot`, where their last snapshot's pages were; opening drops both.)
//!
//! Memory: only redb's page cache (its size set when the file is opened) and the pages of the
//! transaction being written; a key's value is read from disk when it is not cached.

use std::collections::BTreeMap;
use std::ops::Bound;

use openraft::{LogId, StoredMembership};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::constants::RANGE_LIMIT_MAX;
use crate::error::Error;
use crate::state::{range_start, KvState, Tables};
use crate::types::{LeaseInfo, NodeInfo, Response};

/// The store's format version. 1: the state in memory, saved as a JSON snapshot (migrated on
/// open, see `state_machine`); 2: the state in these tables; 3: with `sm_usage` (a format 2
/// file is migrated on open: its records are counted once).
pub(crate) const FORMAT_VERSION: u64 = 3;
/// The format of snapshot streams (`snapshot`). The usage table is derived from the records, so
/// format 3 streams as format 2 did, and nodes of either version send each other snapshots.
pub(crate) const SNAPSHOT_FORMAT: u64 = 2;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_LAST_APPLIED: &str = "last_applied";
pub(crate) const KEY_MEMBERSHIP: &str = "membership";
pub(crate) const KEY_CANON_INDEX: &str = "canon_index";
/// Where builds before the state file became the snapshot kept their last snapshot's pages.
pub(crate) const KEY_SNAPSHOT: &str = "snapshot";

/// Keys and values, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// The names of one set of state tables.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) kv: String,
    pub(crate) leases: String,
    pub(crate) clients: String,
    pub(crate) age: String,
    pub(crate) usage: String,
}

/// The suffix of the tables a snapshot is installed into.
pub(crate) const STAGING_SUFFIX: &str = ".staging";

impl Names {
    /// The live tables.
    pub(crate) fn live() -> Self {
        Self::with_suffix("")
    }

    /// The tables a snapshot is installed into.
    pub(crate) fn staging() -> Self {
        Self::with_suffix(STAGING_SUFFIX)
    }

    fn with_suffix(suffix: &str) -> Self {
        Self {
            kv: format!("sm_kv{suffix}"),
            leases: format!("sm_leases{suffix}"),
            clients: format!("sm_clients{suffix}"),
            age: format!("sm_clients_age{suffix}"),
            usage: format!("sm_usage{suffix}"),
        }
    }

    pub(crate) fn kv(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.kv)
    }

    pub(crate) fn leases(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.leases)
    }

    pub(crate) fn clients(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.clients)
    }

    pub(crate) fn age(&self) -> TableDefinition<'_, (u64, u64), ()> {
        TableDefinition::new(&self.age)
    }

    pub(crate) fn usage(&self) -> TableDefinition<'_, &'static [u8], u64> {
        TableDefinition::new(&self.usage)
    }
}

/// A client's dedup record: `seq`, `applied_index`, then the response in rkyv form.
pub(crate) fn encode_client(seq: u64, applied_index: u64, response: &Response) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(&applied_index.to_be_bytes());
    match rkyv::to_bytes::<rkyv::rancor::Error>(response) {
        Ok(encoded) => bytes.extend_from_slice(&encoded),
        Err(e) => unreachable!("a response always encodes: {e}"),
    }
    bytes
}

/// The `(seq, applied_index)` of a client record.
pub(crate) fn client_header(bytes: &[u8]) -> Result<(u64, u64), Error> {
    let corrupt = || Error::CorruptRecord { what: "client record", reason: format!("{} bytes, under 16", bytes.len()) };
    let seq = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)?;
    let applied = bytes.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)?;
    Ok((seq, applied))
}

/// The response of a client record.
pub(crate) fn client_response(bytes: &[u8]) -> Result<Response, Error> {
    let body = bytes.get(16..).unwrap_or_default();
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<Response, rkyv::rancor::Error>(&aligned)
        .map_err(|e| Error::CorruptRecord { what: "client response", reason: e.to_string() })
}

pub(crate) fn encode_lease(lease: &LeaseInfo) -> Vec<u8> {
    match serde_json::to_vec(lease) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("a lease always encodes: {e}"),
    }
}

pub(crate) fn decode_lease(bytes: &[u8]) -> Result<LeaseInfo, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { what: "lease", source })
}

pub(crate) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(e) => unreachable!("log ids and memberships always encode: {e}"),
    }
}

/// What `sm_meta` says about the applied state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AppliedMeta {
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) membership: StoredMembership<u64, NodeInfo>,
    pub(crate) canon_index: u64,
}

fn decode_meta<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { what, source })
}

fn canon_index_of(bytes: &[u8]) -> Result<u64, Error> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::CorruptRecord { what: "canon index", reason: format!("{} bytes, not 8", bytes.len()) })
}

/// Reads the applied meta from a meta table (read or write side).
pub(crate) fn read_meta(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<AppliedMeta, Error> {
    let mut meta = AppliedMeta::default();
    if let Some(bytes) = table.get(KEY_LAST_APPLIED)? {
        meta.last_applied = decode_meta("last applied log id", bytes.value())?;
    }
    if let Some(bytes) = table.get(KEY_MEMBERSHIP)? {
        meta.membership = decode_meta("membership", bytes.value())?;
    }
    if let Some(bytes) = table.get(KEY_CANON_INDEX)? {
        meta.canon_index = canon_index_of(bytes.value())?;
    }
    Ok(meta)
}

/// Writes the applied meta.
pub(crate) fn write_meta(table: &mut Table<'_, &'static str, &'static [u8]>, meta: &AppliedMeta) -> Result<(), Error> {
    table.insert(KEY_LAST_APPLIED, encode_json(&meta.last_applied).as_slice())?;
    table.insert(KEY_MEMBERSHIP, encode_json(&meta.membership).as_slice())?;
    table.insert(KEY_CANON_INDEX, meta.canon_index.to_be_bytes().as_slice())?;
    Ok(())
}

/// One set of state tables, open in a write transaction: what [`crate::state::apply`] runs on.
pub(crate) struct DiskTables<'t> {
    kv: Table<'t, &'static [u8], &'static [u8]>,
    leases: Table<'t, &'static str, &'static [u8]>,
    clients: Table<'t, u64, &'static [u8]>,
    age: Table<'t, (u64, u64), ()>,
    usage: Table<'t, &'static [u8], u64>,
    /// What the writes through these tables changed in `usage`, by tenant, until
    /// [`DiskTables::finish`] adds it (one update per tenant per transaction, not per write).
    usage_changes: BTreeMap<Vec<u8>, i64>,
    canon_index: u64,
    /// Records written or removed through [`Tables`] (what applying did; see
    /// [`DiskTables::writes`]).
    writes: u64,
}

impl<'t> DiskTables<'t> {
    /// Opens (creating them if missing) the tables `names` in `txn`.
    pub(crate) fn open(txn: &'t WriteTransaction, names: &Names, canon_index: u64) -> Result<Self, Error> {
        Ok(Self {
            kv: txn.open_table(names.kv())?,
            leases: txn.open_table(names.leases())?,
            clients: txn.open_table(names.clients())?,
            age: txn.open_table(names.age())?,
            usage: txn.open_table(names.usage())?,
            usage_changes: BTreeMap::new(),
            canon_index,
            writes: 0,
        })
    }

    /// Adds what the writes changed to the usage table. Call it before the transaction
    /// commits: tables dropped without it leave the usage behind the records.
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        for (tenant, change) in std::mem::take(&mut self.usage_changes) {
            if change == 0 {
                continue;
            }
            let before = self.usage.get(tenant.as_slice())?.map_or(0, |v| v.value());
            let after = before.checked_add_signed(change).unwrap_or_else(|| {
                // Only a usage table out of step with the records gets here; the figure
                // stays a floor rather than wrapping.
                tracing::warn!(tenant = %String::from_utf8_lossy(&tenant), before, change, "canon usage would go below zero: kept at zero");
                0
            });
            if after == 0 {
                self.usage.remove(tenant.as_slice())?;
            } else {
                self.usage.insert(tenant.as_slice(), after)?;
            }
        }
        Ok(())
    }

    /// Counts the usage again from every record (a format 2 store, which had no usage table).
    pub(crate) fn recount_usage(&mut self) -> Result<(), Error> {
        let usage = count_usage(&self.kv)?;
        self.usage.retain(|_, _| false)?;
        for (tenant, bytes) in &usage {
            self.usage.insert(tenant.as_slice(), *bytes)?;
        }
        self.usage_changes.clear();
        Ok(())
    }

    /// Notes that `key`'s record went from `before` value bytes to `after` (`None`: absent).
    fn count(&mut self, key: &[u8], before: Option<usize>, after: Option<usize>) {
        let Some(tenant) = vcos_actors::quota::counted_tenant(key) else { return };
        let size = |len: Option<usize>| len.map_or(0, |len| (key.len() + len) as i64);
        let change = size(after) - size(before);
        match self.usage_changes.get_mut(tenant) {
            Some(sum) => *sum += change,
            None => {
                self.usage_changes.insert(tenant.to_vec(), change);
            }
        }
    }

    /// How many records the tables hold (keys, leases, clients), as a snapshot would carry
    /// them. Cheap: redb keeps each table's length in its header.
    pub(crate) fn records(&self) -> Result<u64, Error> {
        Ok(self.kv.len()? + self.leases.len()? + self.clients.len()?)
    }

    /// How many records applying has written or removed through these tables (the measure of
    /// the snapshot schedule: a snapshot is due when the writes since the last one are a
    /// fraction of [`DiskTables::records`]).
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    /// Inserts a record as a snapshot carries it (no old value returned).
    pub(crate) fn put_kv(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let before = self.kv.insert(key, value)?.map(|old| old.value().len());
        self.count(key, before, Some(value.len()));
        Ok(())
    }

    pub(crate) fn put_lease(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        decode_lease(bytes)?;
        self.leases.insert(name, bytes)?;
        Ok(())
    }

    /// Inserts a client record as a snapshot carries it, with its place in the eviction order.
    pub(crate) fn put_client_record(&mut self, id: u64, bytes: &[u8]) -> Result<(), Error> {
        let (_, applied_index) = client_header(bytes)?;
        client_response(bytes)?;
        self.clients.insert(id, bytes)?;
        self.age.insert((applied_index, id), ())?;
        Ok(())
    }
}

impl Tables for DiskTables<'_> {
    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.kv.get(key)?.map(|v| v.value().to_vec()))
    }

    fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.writes += 1;
        self.put_kv(key, value)
    }

    fn kv_insert(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.writes += 1;
        let old = self.kv.insert(key, value)?.map(|old| old.value().to_vec());
        self.count(key, old.as_ref().map(Vec::len), Some(value.len()));
        Ok(old)
    }

    fn kv_remove(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.writes += 1;
        let old = self.kv.remove(key)?.map(|old| old.value().to_vec());
        self.count(key, old.as_ref().map(Vec::len), None);
        Ok(old)
    }

    fn lease_get(&self, name: &str) -> Result<Option<LeaseInfo>, Error> {
        self.leases.get(name)?.map(|v| decode_lease(v.value())).transpose()
    }

    fn lease_set(&mut self, name: &str, lease: Option<&LeaseInfo>) -> Result<(), Error> {
        self.writes += 1;
        match lease {
            Some(lease) => {
                self.leases.insert(name, encode_lease(lease).as_slice())?;
            }
            None => {
                self.leases.remove(name)?;
            }
        }
        Ok(())
    }

    fn client_last(&self, id: u64) -> Result<Option<(u64, u64)>, Error> {
        self.clients.get(id)?.map(|v| client_header(v.value())).transpose()
    }

    fn client_response(&self, id: u64) -> Result<Option<Response>, Error> {
        self.clients.get(id)?.map(|v| client_response(v.value())).transpose()
    }

    fn client_put(&mut self, id: u64, seq: u64, applied_index: u64, response: &Response) -> Result<Option<u64>, Error> {
        self.writes += 1;
        let record = encode_client(seq, applied_index, response);
        let old = self.clients.insert(id, record.as_slice())?;
        old.map(|old| client_header(old.value()).map(|(_, applied)| applied)).transpose()
    }

    fn client_remove(&mut self, id: u64) -> Result<(), Error> {
        self.writes += 1;
        self.clients.remove(id)?;
        Ok(())
    }

    fn clients_len(&self) -> Result<u64, Error> {
        Ok(self.clients.len()?)
    }

    fn age_insert(&mut self, applied_index: u64, id: u64) -> Result<(), Error> {
        self.age.insert((applied_index, id), ())?;
        Ok(())
    }

    fn age_remove(&mut self, applied_index: u64, id: u64) -> Result<(), Error> {
        self.age.remove((applied_index, id))?;
        Ok(())
    }

    fn age_pop_first(&mut self) -> Result<Option<(u64, u64)>, Error> {
        Ok(self.age.pop_first()?.map(|(key, _)| key.value()))
    }

    fn canon_index(&self) -> u64 {
        self.canon_index
    }

    fn set_canon_index(&mut self, index: u64) {
        self.canon_index = index;
    }
}

/// Reads from the live tables in one read transaction (one consistent view).
pub(crate) struct DiskReader {
    txn: ReadTransaction,
}

impl DiskReader {
    pub(crate) fn new(txn: ReadTransaction) -> Self {
        Self { txn }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let names = Names::live();
        let table = self.txn.open_table(names.kv())?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// See [`KvState::range`].
    pub(crate) fn range(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<KeyValues, Error> {
        let names = Names::live();
        let table = self.txn.open_table(names.kv())?;
        let limit = limit.min(RANGE_LIMIT_MAX);
        let mut entries = Vec::new();
        for item in table.range::<&[u8]>((range_start(prefix, after), Bound::Unbounded))? {
            if entries.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if !key.value().starts_with(prefix) {
                break;
            }
            entries.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(entries)
    }

    pub(crate) fn lease(&self, name: &str) -> Result<Option<LeaseInfo>, Error> {
        let names = Names::live();
        let table = self.txn.open_table(names.leases())?;
        table.get(name)?.map(|v| decode_lease(v.value())).transpose()
    }

    /// The bytes of the records that count for `tenant` (see the module's doc).
    pub(crate) fn usage(&self, tenant: &[u8]) -> Result<u64, Error> {
        let names = Names::live();
        let table = self.txn.open_table(names.usage())?;
        Ok(table.get(tenant)?.map_or(0, |v| v.value()))
    }

    /// A copy of the whole state in memory (for tests and checkers). The usage table is
    /// derived, so it is checked against the records instead: a difference is an error.
    pub(crate) fn state(&self) -> Result<KvState, Error> {
        let names = Names::live();
        let meta = read_meta(&self.txn.open_table(META)?)?;
        let kv_table = self.txn.open_table(names.kv())?;
        let counted = count_usage(&kv_table)?;
        let mut kept = BTreeMap::new();
        for item in self.txn.open_table(names.usage())?.iter()? {
            let (tenant, bytes) = item?;
            kept.insert(tenant.value().to_vec(), bytes.value());
        }
        if counted != kept {
            let show = |m: &BTreeMap<Vec<u8>, u64>| m.iter().map(|(t, b)| format!("{}={b}", String::from_utf8_lossy(t))).collect::<Vec<_>>().join(", ");
            return Err(Error::CorruptRecord { what: "usage table", reason: format!("it holds [{}], the records count [{}]", show(&kept), show(&counted)) });
        }
        let mut kv = Vec::new();
        for item in kv_table.iter()? {
            let (key, value) = item?;
            kv.push((key.value().to_vec(), value.value().to_vec()));
        }
        let mut leases = Vec::new();
        for item in self.txn.open_table(names.leases())?.iter()? {
            let (name, bytes) = item?;
            leases.push((name.value().to_owned(), decode_lease(bytes.value())?));
        }
        let mut clients = Vec::new();
        for item in self.txn.open_table(names.clients())?.iter()? {
            let (id, bytes) = item?;
            let (seq, applied) = client_header(bytes.value())?;
            clients.push((id.value(), seq, applied, client_response(bytes.value())?));
        }
        Ok(KvState::from_parts(kv, leases, clients, meta.canon_index))
    }
}

/// The usage of every tenant, counted from every record of `kv` (see the module's doc).
fn count_usage(kv: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<BTreeMap<Vec<u8>, u64>, Error> {
    let mut usage: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for item in kv.iter()? {
        let (key, value) = item?;
        let key = key.value();
        if let Some(tenant) = vcos_actors::quota::counted_tenant(key) {
            let bytes = (key.len() + value.value().len()) as u64;
            match usage.get_mut(tenant) {
                Some(sum) => *sum += bytes,
                None => {
                    usage.insert(tenant.to_vec(), bytes);
                }
            }
        }
    }
    Ok(usage)
}
