//! The canon's simulated environment, shared by the canon scenario and the actor world on Raft:
//! turmoil's TCP as the canon's `Transport`, and disks (the state's redb file, the log's
//! files) that outlive a crash and fail writes and fsyncs when the plan says so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::StorageBackend;
use vcos_canon_raft::transport::{BoxStream, ConnectFuture, Transport};
use vcos_canon_raft::wal_files::{MemFiles, WalFiles};

use crate::sockets::HostSockets;

/// Turmoil's TCP as the canon's transport; the host's streams close in opening order when it
/// goes down (see `sockets`).
#[derive(Debug, Clone)]
pub(crate) struct SimTransport {
    pub(crate) sockets: Arc<HostSockets>,
}

impl Transport for SimTransport {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let (addr, sockets) = (addr.to_owned(), self.sockets.clone());
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(sockets.wrap(stream)) as BoxStream)
        })
    }
}

/// The page cache of a simulated node's canon file: small, so that runs go through cache
/// misses and evictions as a node whose canon outgrew its cache does.
pub(crate) const SIM_CACHE_BYTES: usize = 1 << 20;

/// A node's disk: a redb in-memory backend (the state) and in-memory files (the Raft log) that
/// survive the node's crash, whose writes and fsyncs fail while the plan says so.
#[derive(Debug, Default)]
pub(crate) struct SimDb {
    bytes: redb::backends::InMemoryBackend,
    log: MemFiles,
    pub(crate) fail_fsync_until_ms: AtomicU64,
    /// Whether a database is open on it (a disk is opened by one process at a time).
    open: AtomicBool,
    /// Whether the state's file was ever created whole. `vcos up` creates it under a temporary
    /// name and renames it once synced (`vcos_canon_raft::open_with`); this flag is that
    /// rename, and a file without it is the temporary one, removed at the next open.
    state_whole: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct SharedDb(Arc<SimDb>);

impl SharedDb {
    /// Takes the disk, or says who still holds it.
    pub(crate) fn take(disk: &Arc<SimDb>) -> Result<Self, String> {
        if disk.open.swap(true, Ordering::AcqRel) {
            return Err("the disk is still held by the node's previous instance".into());
        }
        Ok(Self(disk.clone()))
    }
}

impl SimDb {
    fn failing(&self) -> bool {
        crate::node_env::sim_now_ms() < self.fail_fsync_until_ms.load(Ordering::Relaxed)
    }
}

impl SharedDb {
    fn failing(&self) -> bool {
        self.0.failing()
    }
}

/// Opens a node's canon group on its disk: the state's database and the log's files (what
/// `vcos up` keeps in `canon-state.redb` and `raft-log/`).
pub(crate) fn open_group_files(disk: &Arc<SimDb>) -> Result<vcos_canon_raft::GroupFiles, String> {
    let backend = SharedDb::take(disk)?;
    if !disk.state_whole.load(Ordering::Acquire) {
        // The temporary file of a creation cut short (see `SimDb::state_whole`).
        backend.0.bytes.set_len(0).map_err(|e| e.to_string())?;
    }
    let state = redb::Database::builder().set_cache_size(SIM_CACHE_BYTES).create_with_backend(backend).map_err(|e| e.to_string())?;
    disk.state_whole.store(true, Ordering::Release);
    Ok(vcos_canon_raft::GroupFiles { state, log: Arc::new(SimLogFiles(Arc::clone(disk))), log_segment_bytes: SIM_LOG_SEGMENT_BYTES })
}

/// Where a simulated node's Raft log starts a new segment: small, so that runs roll segments
/// and truncate and purge across their boundaries as a long-lived node's log does.
pub(crate) const SIM_LOG_SEGMENT_BYTES: u64 = 16 << 10;

/// The log's files on a node's disk.
#[derive(Debug)]
struct SimLogFiles(Arc<SimDb>);

impl SimLogFiles {
    fn fail_if_failing(&self, what: &str) -> std::io::Result<()> {
        if self.0.failing() {
            return Err(std::io::Error::other(format!("simulated {what} failure")));
        }
        Ok(())
    }
}

impl WalFiles for SimLogFiles {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.0.log.list()
    }

    fn len(&self, name: &str) -> std::io::Result<u64> {
        self.0.log.len(name)
    }

    fn read_at(&self, name: &str, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.log.read_at(name, offset, out)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.fail_if_failing("write")?;
        self.0.log.write_at(name, offset, data)
    }

    fn reserve(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.fail_if_failing("fallocate")?;
        self.0.log.reserve(name, len)
    }

    fn sync(&self, name: &str) -> std::io::Result<()> {
        self.fail_if_failing("fsync")?;
        self.0.log.sync(name)
    }

    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.fail_if_failing("truncate")?;
        self.0.log.truncate(name, len)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.fail_if_failing("unlink")?;
        self.0.log.remove(name)
    }

    fn replace(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.fail_if_failing("write")?;
        self.0.log.replace(name, data)
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        self.0.open.store(false, Ordering::Release);
    }
}

impl StorageBackend for SharedDb {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.bytes.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.bytes.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.bytes.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.failing() {
            return Err(std::io::Error::other("simulated fsync failure"));
        }
        self.0.bytes.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        // A failing disk fails writes too (EIO): a commit dies before it half-lands. (With
        // writes landing and only the fsync failing, a reopened redb sometimes lost its log
        // table; see the issue 5 note.)
        if self.failing() {
            return Err(std::io::Error::other("simulated write failure"));
        }
        self.0.bytes.write(offset, data)
    }
}

