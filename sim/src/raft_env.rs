//! The canon's simulated environment, shared by the canon scenario and the actor world on Raft:
//! turmoil's TCP as the canon's `Transport`, and redb disks that outlive a crash and fail
//! fsyncs when the plan says so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::StorageBackend;
use vcos_canon_raft::transport::{BoxStream, ConnectFuture, Transport};

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

/// A node's disk: a redb in-memory backend that survives the node's crash, whose fsyncs fail
/// while the plan says so.
#[derive(Debug, Default)]
pub(crate) struct SimDb {
    bytes: redb::backends::InMemoryBackend,
    pub(crate) fail_fsync_until_ms: AtomicU64,
    /// Whether a database is open on it (a disk is opened by one process at a time).
    open: AtomicBool,
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

impl SharedDb {
    fn failing(&self) -> bool {
        crate::node_env::sim_now_ms() < self.0.fail_fsync_until_ms.load(Ordering::Relaxed)
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

