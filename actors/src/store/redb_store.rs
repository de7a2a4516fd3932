//! The durable single-node `CanonStore` on redb, with group commit.
//!
//! One writer thread owns all write transactions. It takes the first waiting commit, then
//! everything else already queued (up to `COMMIT_BATCH_MAX` commits or `COMMIT_BATCH_BYTES_MAX`
//! bytes), applies them in one redb transaction with `Durability::Immediate` (fsync), and only
//! then calls their completions, in order. One fsync thus acknowledges many commits: the cost of
//! durability is paid per batch, not per record. If the transaction fails, every completion of
//! the batch gets the error and nothing of the batch is visible. A commit whose guard
//! ([`CanonWrite::Expect`]) fails inside the transaction — checked against the state including
//! the batch's earlier commits — is skipped and completes with [`StoreError::Conflict`]; the
//! rest of the batch goes on.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{appended_key, failed_guard, CanonStore, CanonWrite, Completion, StoreError};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_INDEX: &str = "canon_index";

/// Page cache of a store opened with [`RedbStore::open`].
pub const CACHE_BYTES_DEFAULT: usize = 128 * 1024 * 1024;
/// Commits waiting for the writer; beyond it `commit` answers `Overloaded`.
pub(crate) const COMMIT_QUEUE_LEN_MAX: usize = 16 * 1024;
/// Most commits folded into one fsync.
pub(crate) const COMMIT_BATCH_MAX: usize = 4096;
/// Most bytes folded into one fsync.
pub(crate) const COMMIT_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

struct Job {
    writes: Vec<CanonWrite>,
    done: Completion,
}

/// redb-backed canon store. Dropping it drains the queue and joins the writer.
pub struct RedbStore {
    /// `None` once closed: closing releases the file (and its lock) even while other parts of
    /// the process still hold the store.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    queue: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` with the default page cache.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES_DEFAULT)
    }

    /// Opens with a page cache of `cache_bytes` (redb's own default is 1 GiB: too much for a
    /// node that also hosts a million IMVUs).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StoreError::Io(format!("open {}: {e}", path.display())))?;
        // Create the tables so that readers never see "table does not exist".
        let mut txn = db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate).map_err(io)?;
        {
            txn.open_table(KV).map_err(io)?;
            txn.open_table(META).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        let db = Arc::new(db);
        let (tx, rx) = sync_channel(COMMIT_QUEUE_LEN_MAX);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("canon-writer".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(|e| StoreError::Io(format!("spawn writer thread: {e}")))?;
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Stops accepting commits, waits for queued ones to be durable, joins the writer.
    pub fn close(&self) {
        let sender = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(sender);
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            if writer.join().is_err() {
                tracing::error!("canon writer thread panicked while closing");
            }
        }
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(StoreError::Closed)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn writer_loop(db: &Database, rx: &Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(COMMIT_BATCH_MAX);
    while let Ok(first) = rx.recv() {
        let mut bytes: usize = first.writes.iter().map(CanonWrite::len_bytes).sum();
        batch.push(first);
        while batch.len() < COMMIT_BATCH_MAX && bytes < COMMIT_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.writes.iter().map(CanonWrite::len_bytes).sum::<usize>();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let result = apply_batch(db, &mut batch);
        metrics::counter!("vcos_canon_fsyncs_total").increment(1);
        metrics::counter!("vcos_canon_commits_total").increment(batch.len() as u64);
        match result {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    (job.done)(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commits = batch.len(), "canon batch failed; nothing of it acknowledged");
                for job in batch.drain(..) {
                    (job.done)(Err(e.clone()));
                }
            }
        }
    }
}

/// Applies the batch in one transaction; returns each job's outcome: its last canon index, or
/// the conflict that skipped it.
fn apply_batch(db: &Database, batch: &mut [Job]) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let mut txn = db.begin_write().map_err(io)?;
    txn.set_durability(Durability::Immediate).map_err(io)?;
    let mut lasts = Vec::with_capacity(batch.len());
    {
        let mut kv = txn.open_table(KV).map_err(io)?;
        let mut meta = txn.open_table(META).map_err(io)?;
        let mut index = meta.get(META_INDEX).map_err(io)?.map_or(0, |v| v.value());
        for job in batch.iter_mut() {
            let failed = failed_guard(&job.writes, |key, value| {
                Ok::<_, StoreError>(kv.get(key).map_err(io)?.map(|v| v.value().to_vec()).as_deref() == value)
            })?;
            if let Some(key) = failed {
                lasts.push(Err(StoreError::Conflict { key: key.to_owned() }));
                continue;
            }
            for write in job.writes.drain(..) {
                match write {
                    CanonWrite::Put { key, value } => {
                        kv.insert(key.as_str(), value.as_slice()).map_err(io)?;
                    }
                    CanonWrite::Delete { key } => {
                        kv.remove(key.as_str()).map_err(io)?;
                    }
                    CanonWrite::Append { prefix, value } => {
                        index += 1;
                        let key = appended_key(&prefix, index);
                        kv.insert(key.as_str(), value.as_slice()).map_err(io)?;
                    }
                    CanonWrite::Expect { .. } => {}
                }
            }
            lasts.push(Ok(index));
        }
        meta.insert(META_INDEX, index).map_err(io)?;
    }
    txn.commit().map_err(io)?;
    Ok(lasts)
}

impl CanonStore for RedbStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = queue.as_ref() else {
            drop(queue);
            done(Err(StoreError::Closed));
            return;
        };
        match sender.try_send(Job { writes, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                drop(queue);
                (job.done)(Err(StoreError::Overloaded));
            }
            Err(TrySendError::Disconnected(job)) => {
                drop(queue);
                (job.done)(Err(StoreError::Closed));
            }
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.database()?.begin_read().map_err(io)?;
        let kv = txn.open_table(KV).map_err(io)?;
        Ok(kv.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    fn scan_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.database()?.begin_read().map_err(io)?;
        let kv = txn.open_table(KV).map_err(io)?;
        let start = after.unwrap_or(prefix);
        let mut out = Vec::new();
        for entry in kv.range(start..).map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let key = k.value();
            if Some(key) == after {
                continue;
            }
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((key.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(writes: Vec<CanonWrite>) -> Job {
        Job { writes, done: Box::new(|_| {}) }
    }

    /// One transaction, three commits: a guard sees the batch's earlier commits, and a failed
    /// guard skips only its own commit.
    #[test]
    fn a_failed_guard_fails_only_its_commit_within_one_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("b.redb")).expect("open");
        let db = store.database().expect("open database");
        let put = |key: &str, value: &[u8]| CanonWrite::Put { key: key.into(), value: value.to_vec() };
        let expect = |key: &str, value: Option<&[u8]>| CanonWrite::Expect { key: key.into(), value: value.map(<[u8]>::to_vec) };
        let mut batch = vec![
            job(vec![expect("n", None), put("n", b"1")]),
            job(vec![expect("n", None), put("n", b"x"), put("lost", b"x")]),
            job(vec![expect("n", Some(b"1")), put("n", b"2"), CanonWrite::Append { prefix: "log/".into(), value: vec![] }]),
        ];
        let outcomes = apply_batch(&db, &mut batch).expect("transaction");
        assert_eq!(outcomes, vec![Ok(0), Err(StoreError::Conflict { key: "n".into() }), Ok(1)]);
        assert_eq!(store.get("n").expect("get"), Some(b"2".to_vec()));
        assert_eq!(store.get("lost").expect("get"), None);
    }
}
