//! Snapshots of the on-disk state. The state's redb file is itself the snapshot (as etcd's and
//! TiKV's are): building one fsyncs the state and records where it stands, which costs one
//! commit whatever the state's size (see `StateMachineStore`). Only when a snapshot is *sent*
//! (a follower too far behind, a new node) is the state written out as a stream: from one read
//! transaction (a consistent view; writes go on meanwhile), into a page table of its own, read
//! page by page while it is sent, and dropped with the stream. A receiver writes the stream
//! into pages as it comes and installs it chunk by chunk, so no step holds a whole snapshot
//! in memory.
//!
//! Format: a byte stream of frames, each a 4-byte little-endian length and an rkyv-encoded
//! [`Frame`]: one `Header`, then `Kv`, `Leases` and `Clients` frames of up to
//! [`FRAME_BYTES`] of records each, then `End` with the record count, so a stream cut short
//! is refused rather than installed. The stream is stored in a table of [`PAGE_BYTES`] pages
//! (`sm_snapshot_pages.N`, page number → bytes); [`SnapshotStream`] is openraft's snapshot
//! data: the live state not yet written out, such a table read for sending, or one written
//! while receiving.

use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use crate::disk::{self, AppliedMeta, DiskTables, Names};
use crate::error::Error;

/// Bytes per stored page of a snapshot stream.
pub(crate) const PAGE_BYTES: usize = 1 << 20;

/// Records per frame stop at this many bytes (a single larger record makes a frame of its own).
pub(crate) const FRAME_BYTES: usize = 256 << 10;

/// Pages written per write transaction while building or receiving.
const PAGES_PER_TXN: usize = 8;

/// Records installed per write transaction (the staging tables are committed as they fill,
/// so an install's dirty pages stay bounded).
const RECORDS_PER_TXN: u64 = 50_000;

/// The prefix of the page tables' names.
pub(crate) const PAGES_PREFIX: &str = "sm_snapshot_pages.";

/// The largest frame accepted when reading a stream (a frame holds records up to
/// [`FRAME_BYTES`] plus one record, which a value's size bounds far below this).
const FRAME_MAX: usize = 256 << 20;

pub(crate) fn pages_table(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

/// Deletes the page table `table` (unsynced: a crash leaves it for the next open, which drops
/// every page table).
pub(crate) fn drop_pages(db: &Database, table: &str) -> Result<(), Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    txn.delete_table(pages_table(table))?;
    txn.commit()?;
    Ok(())
}

/// One frame of a snapshot stream.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Frame {
    /// Where the state stands: format version, last applied log id and membership (JSON, as
    /// openraft's types are serde), canon index.
    Header { format: u64, last_applied: Vec<u8>, membership: Vec<u8>, canon_index: u64 },
    /// Keys and values.
    Kv(Vec<(Vec<u8>, Vec<u8>)>),
    /// Lease names and their records.
    Leases(Vec<(String, Vec<u8>)>),
    /// Client ids and their dedup records.
    Clients(Vec<(u64, Vec<u8>)>),
    /// The end, with how many records came before it.
    End { records: u64 },
}

fn encode_frame(frame: &Frame, out: &mut PageWriter) -> Result<(), Error> {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(frame)
        .map_err(|e| Error::CorruptRecord { what: "snapshot frame", reason: e.to_string() })?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| Error::CorruptRecord { what: "snapshot frame", reason: format!("{} bytes", bytes.len()) })?;
    out.write(&len.to_le_bytes())?;
    out.write(&bytes)
}

/// Writes a byte stream as pages of a table, committing every few pages.
pub(crate) struct PageWriter {
    db: Arc<Database>,
    table: String,
    buf: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    next_page: u64,
    len: u64,
}

impl PageWriter {
    pub(crate) fn new(db: Arc<Database>, table: String) -> Self {
        Self { db, table, buf: Vec::with_capacity(PAGE_BYTES), pending: Vec::new(), next_page: 0, len: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (PAGE_BYTES - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == PAGE_BYTES {
                let page = std::mem::replace(&mut self.buf, Vec::with_capacity(PAGE_BYTES));
                self.pending.push((self.next_page, page));
                self.next_page += 1;
                if self.pending.len() >= PAGES_PER_TXN {
                    self.commit()?;
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(pages_table(&self.table))?;
            for (page, bytes) in self.pending.drain(..) {
                table.insert(page, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes what is buffered (the last, partial page included); returns the length.
    pub(crate) fn finish(mut self) -> Result<u64, Error> {
        if !self.buf.is_empty() {
            let page = std::mem::take(&mut self.buf);
            self.pending.push((self.next_page, page));
            self.next_page += 1;
        }
        self.commit()?;
        Ok(self.len)
    }
}

/// Writes the state as `read` sees it into the page table `table`; returns the stream's
/// length and the applied meta it describes.
pub(crate) fn build(db: &Arc<Database>, read: &ReadTransaction, table: &str) -> Result<(u64, AppliedMeta), Error> {
    let meta = disk::read_meta(&read.open_table(disk::META)?)?;
    let names = Names::live();
    let mut out = PageWriter::new(Arc::clone(db), table.to_owned());
    encode_frame(
        &Frame::Header {
            format: disk::SNAPSHOT_FORMAT,
            last_applied: disk::encode_json(&meta.last_applied),
            membership: disk::encode_json(&meta.membership),
            canon_index: meta.canon_index,
        },
        &mut out,
    )?;
    let mut records = 0u64;
    {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for item in read.open_table(names.kv())?.iter()? {
            let (key, value) = item?;
            bytes += key.value().len() + value.value().len();
            batch.push((key.value().to_vec(), value.value().to_vec()));
            records += 1;
            if bytes >= FRAME_BYTES {
                encode_frame(&Frame::Kv(std::mem::take(&mut batch)), &mut out)?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            encode_frame(&Frame::Kv(batch), &mut out)?;
        }
    }
    {
        let mut batch = Vec::new();
        for item in read.open_table(names.leases())?.iter()? {
            let (name, value) = item?;
            batch.push((name.value().to_owned(), value.value().to_vec()));
            records += 1;
            if batch.len() >= 1_024 {
                encode_frame(&Frame::Leases(std::mem::take(&mut batch)), &mut out)?;
            }
        }
        if !batch.is_empty() {
            encode_frame(&Frame::Leases(batch), &mut out)?;
        }
    }
    {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for item in read.open_table(names.clients())?.iter()? {
            let (id, value) = item?;
            bytes += value.value().len() + 8;
            batch.push((id.value(), value.value().to_vec()));
            records += 1;
            if bytes >= FRAME_BYTES {
                encode_frame(&Frame::Clients(std::mem::take(&mut batch)), &mut out)?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            encode_frame(&Frame::Clients(batch), &mut out)?;
        }
    }
    encode_frame(&Frame::End { records }, &mut out)?;
    Ok((out.finish()?, meta))
}

/// Reads a page table's stream sequentially.
struct PageReader<'a> {
    read: &'a ReadTransaction,
    table: &'a str,
    len: u64,
    pos: u64,
    page: Option<(u64, Vec<u8>)>,
}

impl PageReader<'_> {
    fn read_exact(&mut self, out: &mut Vec<u8>, n: usize) -> Result<(), Error> {
        out.clear();
        if self.pos + n as u64 > self.len {
            return Err(cut(format!("it ends at byte {} inside a frame", self.len)));
        }
        while out.len() < n {
            let page_no = self.pos / PAGE_BYTES as u64;
            let offset = (self.pos % PAGE_BYTES as u64) as usize;
            if self.page.as_ref().is_none_or(|(no, _)| *no != page_no) {
                let table = self.read.open_table(pages_table(self.table))?;
                let Some(bytes) = table.get(page_no)? else {
                    return Err(cut(format!("page {page_no} is missing")));
                };
                self.page = Some((page_no, bytes.value().to_vec()));
            }
            let Some((_, page)) = &self.page else { unreachable!("loaded above") };
            let available = page.len().saturating_sub(offset);
            if available == 0 {
                return Err(cut(format!("page {page_no} is short")));
            }
            let take = available.min(n - out.len());
            out.extend_from_slice(&page[offset..offset + take]);
            self.pos += take as u64;
        }
        Ok(())
    }

    fn frame(&mut self, scratch: &mut Vec<u8>) -> Result<Frame, Error> {
        self.read_exact(scratch, 4)?;
        let len = u32::from_le_bytes([scratch[0], scratch[1], scratch[2], scratch[3]]) as usize;
        if len > FRAME_MAX {
            return Err(cut(format!("a frame of {len} bytes (at most {FRAME_MAX})")));
        }
        self.read_exact(scratch, len)?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
        aligned.extend_from_slice(scratch);
        rkyv::from_bytes::<Frame, rkyv::rancor::Error>(&aligned)
            .map_err(|e| Error::CorruptRecord { what: "snapshot frame", reason: e.to_string() })
    }
}

fn cut(reason: String) -> Error {
    Error::CorruptRecord { what: "snapshot stream", reason }
}

/// Decodes the stream in page table `table` (`len` bytes) into the staging tables, committed
/// every [`RECORDS_PER_TXN`] records; returns the applied meta of its header. The caller swaps
/// the staging tables in (see `state_machine`).
pub(crate) fn install_into_staging(db: &Arc<Database>, table: &str, len: u64) -> Result<AppliedMeta, Error> {
    let staging = Names::staging();
    clear_staging(db)?;
    let read = db.begin_read()?;
    let mut reader = PageReader { read: &read, table, len, pos: 0, page: None };
    let mut scratch = Vec::new();
    let Frame::Header { format, last_applied, membership, canon_index } = reader.frame(&mut scratch)? else {
        return Err(cut("it does not start with a header".into()));
    };
    if format != disk::SNAPSHOT_FORMAT {
        return Err(Error::Format { found: format, expected: disk::SNAPSHOT_FORMAT });
    }
    let meta = AppliedMeta {
        last_applied: serde_json::from_slice(&last_applied).map_err(|source| Error::Corrupt { what: "snapshot header", source })?,
        membership: serde_json::from_slice(&membership).map_err(|source| Error::Corrupt { what: "snapshot header", source })?,
        canon_index,
    };
    let mut records = 0u64;
    let mut in_txn = 0u64;
    let mut txn = Some(begin_staging(db)?);
    loop {
        let frame = reader.frame(&mut scratch)?;
        let Some(open) = txn.as_ref() else { unreachable!("a transaction is open inside the loop") };
        {
            let mut tables = DiskTables::open(open, &staging, canon_index)?;
            match frame {
                Frame::Kv(entries) => {
                    for (key, value) in &entries {
                        tables.put_kv(key, value)?;
                    }
                    records += entries.len() as u64;
                    in_txn += entries.len() as u64;
                }
                Frame::Leases(entries) => {
                    for (name, value) in &entries {
                        tables.put_lease(name, value)?;
                    }
                    records += entries.len() as u64;
                    in_txn += entries.len() as u64;
                }
                Frame::Clients(entries) => {
                    for (id, value) in &entries {
                        tables.put_client_record(*id, value)?;
                    }
                    records += entries.len() as u64;
                    in_txn += entries.len() as u64;
                }
                Frame::End { records: expected } => {
                    if expected != records {
                        return Err(cut(format!("its end counts {expected} records, it held {records}")));
                    }
                    break;
                }
                Frame::Header { .. } => return Err(cut("a second header".into())),
            }
            tables.finish()?;
        }
        if in_txn >= RECORDS_PER_TXN {
            if let Some(full) = txn.take() {
                full.commit()?;
            }
            txn = Some(begin_staging(db)?);
            in_txn = 0;
        }
    }
    if reader.pos != len {
        return Err(cut(format!("{} bytes follow its end", len - reader.pos)));
    }
    if let Some(last) = txn.take() {
        last.commit()?;
    }
    Ok(meta)
}

fn begin_staging(db: &Database) -> Result<redb::WriteTransaction, Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    Ok(txn)
}

/// Deletes the staging tables (what a failed or interrupted install left).
pub(crate) fn clear_staging(db: &Database) -> Result<(), Error> {
    let staging = Names::staging();
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::None)?;
    txn.delete_table(staging.kv())?;
    txn.delete_table(staging.leases())?;
    txn.delete_table(staging.clients())?;
    txn.delete_table(staging.age())?;
    txn.delete_table(staging.usage())?;
    txn.commit()?;
    Ok(())
}

/// openraft's snapshot data: the live state as one read transaction sees it (written out on
/// first read), a stream in a page table read for sending, or one written while receiving.
pub struct SnapshotStream {
    mode: Mode,
    pos: u64,
    /// The page table this stream wrote the live state into, dropped with the stream.
    owned: Option<(Arc<Database>, String)>,
}

enum Mode {
    /// The state as `read` sees it, not written out yet: the first read, seek or copy writes
    /// it into the page table `table` (then the stream reads it as [`Mode::Read`]). A snapshot
    /// that is only built, never sent, costs nothing more.
    Live { db: Arc<Database>, read: ReadTransaction, table: String },
    /// A stored snapshot, read through one read transaction (which keeps its pages alive even
    /// if a newer snapshot replaces it meanwhile).
    Read { read: ReadTransaction, table: String, len: u64, page: Option<(u64, Vec<u8>)> },
    /// A snapshot being received.
    Write { writer: Option<PageWriter>, table: String, len: Option<u64> },
}

impl std::fmt::Debug for SnapshotStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mode, table) = match &self.mode {
            Mode::Live { table, .. } => ("live", table),
            Mode::Read { table, .. } => ("read", table),
            Mode::Write { table, .. } => ("write", table),
        };
        f.debug_struct("SnapshotStream").field("mode", &mode).field("table", table).field("pos", &self.pos).finish()
    }
}

fn io_err(e: Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl SnapshotStream {
    /// The state as `read` sees it, to be written into the (new) page table `table` if it is
    /// ever read.
    pub(crate) fn live(db: Arc<Database>, read: ReadTransaction, table: String) -> Self {
        Self { mode: Mode::Live { db, read, table }, pos: 0, owned: None }
    }

    /// Receives a stream into the (new) page table `table`.
    pub(crate) fn writer(db: Arc<Database>, table: String) -> Self {
        Self { mode: Mode::Write { writer: Some(PageWriter::new(db, table.clone())), table, len: None }, pos: 0, owned: None }
    }

    /// Writes the live state out into its page table (once; nothing to do in other modes).
    /// Heavy: it reads the whole state, so it runs off the runtime's workers.
    fn materialize(&mut self) -> Result<(), Error> {
        let (db, table) = match &self.mode {
            Mode::Live { db, table, .. } => (Arc::clone(db), table.clone()),
            _ => return Ok(()),
        };
        // Owned from the first page on: a write that fails half-way leaves nothing behind.
        self.owned = Some((Arc::clone(&db), table.clone()));
        let len = match &self.mode {
            Mode::Live { read, .. } => crate::state_machine::off_the_runtime(|| build(&db, read, &table))?.0,
            _ => unreachable!("checked above"),
        };
        self.mode = Mode::Read { read: db.begin_read()?, table, len, page: None };
        Ok(())
    }

    /// The page table and length of a received stream (finishing it if it was not shut down);
    /// `None` for another store's snapshot handed over as it is (see
    /// [`SnapshotStream::copy_into`]).
    pub(crate) fn received(&mut self) -> Result<Option<(String, u64)>, Error> {
        match &mut self.mode {
            Mode::Write { writer, table, len } => {
                if let Some(writer) = writer.take() {
                    *len = Some(writer.finish()?);
                }
                Ok(Some((table.clone(), len.unwrap_or(0))))
            }
            Mode::Read { .. } | Mode::Live { .. } => Ok(None),
        }
    }

    /// Copies a snapshot's stream, page by page, into `out` (a snapshot of another store
    /// handed over whole, as openraft's storage suite does).
    pub(crate) fn copy_into(&mut self, out: &mut PageWriter) -> Result<(), Error> {
        self.materialize()?;
        let Mode::Read { read, table, len, .. } = &self.mode else {
            return Err(cut("a snapshot being received is not read back".into()));
        };
        let mut reader = PageReader { read, table, len: *len, pos: 0, page: None };
        let mut chunk = Vec::new();
        while reader.pos < *len {
            let n = (*len - reader.pos).min(PAGE_BYTES as u64) as usize;
            reader.read_exact(&mut chunk, n)?;
            out.write(&chunk)?;
        }
        Ok(())
    }

    fn end(&self) -> u64 {
        match &self.mode {
            Mode::Live { .. } => 0,
            Mode::Read { len, .. } => *len,
            Mode::Write { writer: Some(writer), .. } => writer.len(),
            Mode::Write { len, .. } => len.unwrap_or(0),
        }
    }

    /// The stream's whole content (tests: small snapshots only).
    pub fn to_vec(&mut self) -> std::io::Result<Vec<u8>> {
        self.materialize().map_err(io_err)?;
        let Mode::Read { read, table, len, .. } = &self.mode else {
            return Err(std::io::Error::other("a snapshot being received is not read back"));
        };
        let mut reader = PageReader { read, table, len: *len, pos: 0, page: None };
        let mut out = Vec::new();
        reader.read_exact(&mut out, *len as usize).map_err(io_err)?;
        Ok(out)
    }
}

impl tokio::io::AsyncRead for SnapshotStream {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.materialize() {
            return Poll::Ready(Err(io_err(e)));
        }
        let pos = self.pos;
        let Mode::Read { read, table, len, page } = &mut self.mode else {
            return Poll::Ready(Err(std::io::Error::other("a snapshot being received is not read back")));
        };
        if pos >= *len || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let page_no = pos / PAGE_BYTES as u64;
        if page.as_ref().is_none_or(|(no, _)| *no != page_no) {
            let loaded = read
                .open_table(pages_table(table))
                .map_err(|e| io_err(e.into()))
                .and_then(|t| t.get(page_no).map_err(|e| io_err(e.into())))
                .map(|bytes| bytes.map(|b| b.value().to_vec()));
            match loaded {
                Ok(Some(bytes)) => *page = Some((page_no, bytes)),
                Ok(None) => return Poll::Ready(Err(io_err(cut(format!("page {page_no} is missing"))))),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let Some((_, bytes)) = page.as_ref() else { unreachable!("loaded above") };
        let offset = (pos % PAGE_BYTES as u64) as usize;
        let available = bytes.len().saturating_sub(offset);
        if available == 0 {
            return Poll::Ready(Err(io_err(cut(format!("page {page_no} is short")))));
        }
        let take = available.min(buf.remaining());
        buf.put_slice(&bytes[offset..offset + take]);
        self.pos += take as u64;
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for SnapshotStream {
    /// Appends at the end; bytes at offsets already written (a chunk sent again after a lost
    /// answer: the same snapshot, so the same bytes) are skipped.
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let pos = self.pos;
        let Mode::Write { writer: Some(writer), .. } = &mut self.mode else {
            return Poll::Ready(Err(std::io::Error::other("this snapshot stream is not being received")));
        };
        let written = writer.len();
        if pos < written {
            let skip = ((written - pos) as usize).min(data.len());
            self.pos += skip as u64;
            return Poll::Ready(Ok(skip));
        }
        if let Err(e) = writer.write(data) {
            return Poll::Ready(Err(io_err(e)));
        }
        self.pos += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Mode::Write { writer, len, .. } = &mut self.mode {
            if let Some(writer) = writer.take() {
                match writer.finish() {
                    Ok(total) => *len = Some(total),
                    Err(e) => return Poll::Ready(Err(io_err(e))),
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncSeek for SnapshotStream {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        // The length is known once the state is written out (openraft asks it first).
        self.materialize().map_err(io_err)?;
        let end = self.end();
        let target = match position {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => end.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(target) if target <= end => {
                self.pos = target;
                Ok(())
            }
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("seek to {position:?} outside 0..={end}"))),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

impl Drop for SnapshotStream {
    /// Drops the page table this stream wrote the live state into. (A crash before this
    /// leaves it for the next open, which drops every page table.)
    fn drop(&mut self) {
        let Some((db, table)) = self.owned.take() else { return };
        if let Err(e) = drop_pages(&db, &table) {
            tracing::warn!(table, error = %e, "could not drop a sent snapshot's pages; the next open drops them");
        }
    }
}
