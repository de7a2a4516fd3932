//! The Raft log as an append-only write-ahead log: segment files of checksummed records, one
//! write and one `fdatasync` per append, and an index of where each entry sits.
//!
//! Why not a B-tree: the log was a redb table. Each append then cost a redb commit (13 page
//! writes and an fsync; about 37 % of the CPU of `vcos up` running workflows, measured with
//! `perf`): a log is only ever appended at its end, cut at its end (`truncate`) and dropped at
//! its start (`purge`), which a segmented file does with one write. etcd's WAL and TiKV's
//! raft-engine are built the same way.
//!
//! Files (see [`WalFiles`]):
//! - `{first index:020}.wal`: a segment, whose name is the index of its first entry. A header
//!   ([`SEGMENT_MAGIC`]: the format and its version), then records. A new segment starts when
//!   the last one passed [`SEGMENT_BYTES`].
//! - `meta.json`: the vote and the last purged log id, replaced atomically (rare writes).
//!
//! A record is `len: u32 LE | crc32: u32 LE | kind: u8 | payload` (`len` counts the kind and
//! the payload; the checksum covers them). Kinds: an entry (its index, 8 bytes LE, then
//! `wire::encode_entry`), or a commit index hint (JSON, as openraft saves it: a lower hint, so
//! it rides in the next append instead of costing a write of its own).
//!
//! A segment is reserved whole when it starts (`fallocate` to [`SEGMENT_BYTES`]): its length
//! is set and its blocks allocated once, so an append writes inside the file at its offset and
//! its `fdatasync` flushes data alone. Appending at the end of a growing file made every fsync
//! commit the file's new length and blocks to ext4's journal too: a median of 143–148 µs
//! against 97–100 µs per 1.2 KB write and `fdatasync` on this project's machine, idle. (etcd preallocates its WAL
//! segments for the same reason.) Only the last segment has a reserved tail: the one before is
//! cut to its data, durably, before a new segment is created.
//!
//! Recovery reads every segment. In the last one, zeros to the end are the reservation: the log
//! ends there. A bad record at the end of the last segment (the file ends inside it, or only
//! zeros follow it) is an append cut by a crash (never acknowledged: its fsync had not
//! returned) and is cut off; a bad record anywhere else is corruption, refused with the file
//! and offset.
//!
//! Memory: the index holds 32 bytes per entry not yet purged (the log is purged behind every
//! snapshot); entries are read from the files when openraft asks for them.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::wal_files::WalFiles;
use crate::TypeConfig;

/// The first bytes of every segment: the format and its version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"VCOSWAL1";
/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The most bytes one record may declare: a larger length is corruption, not an allocation.
pub const RECORD_BYTES_MAX: u32 = 256 << 20;
/// The meta file's name.
pub const META_FILE: &str = "meta.json";
const META_FORMAT: u32 = 1;
const SEGMENT_SUFFIX: &str = ".wal";
const RECORD_HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;

/// What `meta.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    format: u32,
    vote: Option<Vote<u64>>,
    last_purged: Option<LogId<u64>>,
}

/// Where one entry sits.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// Its segment (the segment's first index).
    segment: u64,
    /// Where its record starts in the segment.
    offset: u64,
    /// The record's length, header included.
    len: u32,
    /// The entry's leader id (its log id, without reading it).
    leader: openraft::CommittedLeaderId<u64>,
}

/// An append between [`Wal::prepare_append`] and [`Wal::finish_append`]: its bytes and where
/// they go.
#[derive(Debug)]
pub struct PendingAppend {
    name: String,
    segment: u64,
    base: u64,
    bytes: Vec<u8>,
    /// When it starts a new segment: the length to reserve for it, and the segment before
    /// (its name and data length), cut to its data first.
    starts: Option<(u64, Option<(String, u64)>)>,
    added: Vec<(u64, Loc)>,
    /// The commit hint it carries, if any.
    committed: Option<Option<LogId<u64>>>,
}

impl PendingAppend {
    /// Writes it and waits for the disk (one write, one fsync).
    pub fn write(&self, files: &dyn WalFiles) -> std::io::Result<()> {
        self.write_then_sync(files, || {})
    }

    /// Writes it, runs `written` (the write succeeded, the fsync has not started), then waits
    /// for the disk.
    pub fn write_then_sync(&self, files: &dyn WalFiles, written: impl FnOnce()) -> std::io::Result<()> {
        if let Some((_, Some((previous, len)))) = &self.starts {
            // Only the last segment may end in reserved zeros (recovery reads zeros there as
            // the log's end): the one before is cut to its data, durably, before this one exists.
            files.truncate(previous, *len)?;
        }
        files.write_at(&self.name, self.base, &self.bytes)?;
        written();
        if let Some((reserve, _)) = self.starts {
            reserve_segment(files, &self.name, reserve);
        }
        files.sync(&self.name)
    }
}

/// Reserves `len` bytes for the segment `name` (see the module's doc). A failure costs speed,
/// not correctness (appends past the reservation extend the file), so it is logged, not returned.
fn reserve_segment(files: &dyn WalFiles, name: &str, len: u64) {
    if let Err(e) = files.reserve(name, len) {
        tracing::warn!(segment = %name, error = %e, "raft log: could not reserve the segment's space; its appends will extend the file");
    }
}

/// The log: its files and what recovery and the appends since learned of them.
#[derive(Debug)]
pub struct Wal {
    files: Arc<dyn WalFiles>,
    meta: Meta,
    /// Segments by first index → their length in bytes.
    segments: BTreeMap<u64, u64>,
    /// Where each entry not purged sits, by index. (A map, not a vector: openraft's storage
    /// contract lets an append leave a gap after the last entry, as its test suite does.)
    locs: BTreeMap<u64, Loc>,
    /// Entries before this index are purged.
    first: u64,
    /// The newest commit hint written to the files, and one saved since (written next).
    committed: Option<LogId<u64>>,
    unwritten_committed: bool,
    /// Set when a write failed half-way and could not be undone: nothing more is written.
    broken: Option<String>,
    /// A segment is closed once it holds this many bytes ([`SEGMENT_BYTES`] but in tests).
    segment_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_SUFFIX}")
}

fn io(e: std::io::Error) -> Error {
    Error::Io(e)
}

fn corrupt(what: &'static str, reason: String) -> Error {
    Error::CorruptRecord { what, reason }
}

fn record(kind: u8, payload: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = 1 + payload.iter().map(|p| p.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for part in payload {
        crc.update(part);
    }
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    for part in payload {
        out.extend_from_slice(part);
    }
}

/// One record parsed from a segment's bytes.
enum Parsed<'a> {
    Record { kind: u8, payload: &'a [u8], len: usize },
    /// The bytes end inside the record, or its checksum does not match.
    Bad { reason: String, reaches_end: bool },
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn parse(bytes: &[u8]) -> Parsed<'_> {
    let Some(header) = bytes.get(..RECORD_HEADER) else {
        return Parsed::Bad { reason: format!("{} bytes, less than a record header", bytes.len()), reaches_end: true };
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > RECORD_BYTES_MAX {
        // Zeros to the end: a file whose length a crash extended before its data landed.
        return Parsed::Bad { reason: format!("a record length of {len} bytes"), reaches_end: is_zero(bytes) };
    }
    let end = 8 + len as usize;
    let Some(body) = bytes.get(8..end) else {
        return Parsed::Bad { reason: format!("a record of {len} bytes cut after {}", bytes.len() - 8), reaches_end: true };
    };
    if crc32fast::hash(body) != crc {
        // Zeros after it: the append was cut in a reserved segment.
        return Parsed::Bad { reason: "a record whose checksum does not match".into(), reaches_end: is_zero(&bytes[end..]) };
    }
    Parsed::Record { kind: body[0], payload: &body[1..], len: end }
}

impl Wal {
    /// Opens the log in `files`, recovering it (see the module's doc).
    pub fn open(files: Arc<dyn WalFiles>) -> Result<Self, Error> {
        Self::open_with_segment_bytes(files, SEGMENT_BYTES)
    }

    /// Like [`Wal::open`], closing segments at `segment_bytes` (tests roll segments often).
    pub fn open_with_segment_bytes(files: Arc<dyn WalFiles>, segment_bytes: u64) -> Result<Self, Error> {
        let names = files.list().map_err(io)?;
        let meta = if names.iter().any(|n| n == META_FILE) {
            let mut bytes = vec![0; usize::try_from(files.len(META_FILE).map_err(io)?).unwrap_or(0)];
            files.read_at(META_FILE, 0, &mut bytes).map_err(io)?;
            let meta: Meta = serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt { what: "raft log meta", source })?;
            if meta.format != META_FORMAT {
                return Err(Error::Format { found: u64::from(meta.format), expected: u64::from(META_FORMAT) });
            }
            meta
        } else {
            Meta { format: META_FORMAT, ..Meta::default() }
        };
        let mut segments: Vec<u64> = names.iter().filter_map(|n| n.strip_suffix(SEGMENT_SUFFIX)?.parse::<u64>().ok()).collect();
        segments.sort_unstable();
        // Entry 0 is the first of a log (openraft's initial membership), the first after a
        // purge is the one after the purged id.
        let first = meta.last_purged.map_or(0, |id| id.index + 1);
        let mut wal = Self {
            files,
            meta,
            segments: BTreeMap::new(),
            locs: BTreeMap::new(),
            first,
            committed: None,
            unwritten_committed: false,
            broken: None,
            segment_bytes,
        };
        let count = segments.len();
        let mut with_entries = std::collections::BTreeSet::new();
        for (i, segment) in segments.into_iter().enumerate() {
            if wal.recover_segment(segment, i + 1 == count)? {
                with_entries.insert(segment);
            }
        }
        // Segments that hold only purged entries (a purge that crashed before removing them):
        // all of them when no entry is left, so that the next append starts a new segment.
        let keep_from = wal.locs.first_key_value().map(|(_, loc)| loc.segment);
        let stale: Vec<u64> = wal.segments.keys().copied().filter(|s| match keep_from {
            Some(k) => *s < k,
            // No entry kept: the segments that hold entries hold only purged ones; one that
            // holds only a commit hint stays.
            None => with_entries.contains(s),
        }).collect();
        if !stale.is_empty() {
            wal.unwritten_committed = true;
        }
        for segment in stale {
            wal.files.remove(&segment_name(segment)).map_err(io)?;
            wal.segments.remove(&segment);
        }
        if wal.unwritten_committed && wal.committed.is_some() {
            // The commit hint sat in a segment just removed: written again at once.
            wal.append(std::iter::empty())?;
        }
        // The segment the next appends go to, reserved again if a cut or an older build left
        // it without its reservation.
        if let Some((&last, &len)) = wal.segments.last_key_value() {
            if len < wal.segment_bytes {
                reserve_segment(&*wal.files, &segment_name(last), wal.segment_bytes);
            }
        }
        Ok(wal)
    }

    /// Reads `segment` into the index; `true` when it holds entries (purged ones included).
    fn recover_segment(&mut self, segment: u64, last: bool) -> Result<bool, Error> {
        let name = segment_name(segment);
        let len = self.files.len(&name).map_err(io)?;
        let mut bytes = vec![0; usize::try_from(len).map_err(|_| corrupt("raft log segment", format!("{name} is {len} bytes")))?];
        self.files.read_at(&name, 0, &mut bytes).map_err(io)?;
        if bytes.len() < SEGMENT_MAGIC.len() {
            if last {
                // Created by an append that did not finish.
                self.files.remove(&name).map_err(io)?;
                return Ok(false);
            }
            return Err(corrupt("raft log segment", format!("{name} is shorter than its header")));
        }
        if &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
            return Err(corrupt("raft log segment", format!("{name} does not start with {:?} (another format, or not a v-COS log)", String::from_utf8_lossy(SEGMENT_MAGIC))));
        }
        let mut offset = SEGMENT_MAGIC.len();
        let mut expected = segment;
        let mut has_entries = false;
        while offset < bytes.len() {
            match parse(&bytes[offset..]) {
                Parsed::Record { kind, payload, len } => {
                    match kind {
                        KIND_ENTRY => {
                            let index = payload.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
                            let Some(index) = index else {
                                return Err(corrupt("raft log segment", format!("{name} at {offset}: an entry record without its index")));
                            };
                            if index < expected {
                                return Err(Error::CorruptEntry { index, reason: format!("{name} at {offset}: expected entry {expected} or later") });
                            }
                            expected = index + 1;
                            has_entries = true;
                            if index >= self.first {
                                if let Some(last) = self.last_index() {
                                    if index <= last {
                                        return Err(Error::CorruptEntry { index, reason: format!("{name} at {offset}: follows entry {last}") });
                                    }
                                }
                                let entry = crate::wire::decode_entry(&payload[8..]).map_err(|e| Error::CorruptEntry { index, reason: e.to_string() })?;
                                let len = u32::try_from(len).unwrap_or(u32::MAX);
                                self.locs.insert(index, Loc { segment, offset: offset as u64, len, leader: entry.log_id.leader_id });
                            }
                        }
                        KIND_COMMITTED => {
                            let committed: Option<LogId<u64>> = serde_json::from_slice(payload).map_err(|source| Error::Corrupt { what: "raft log commit hint", source })?;
                            self.committed = committed;
                        }
                        other => return Err(corrupt("raft log segment", format!("{name} at {offset}: unknown record kind {other}"))),
                    }
                    offset += len;
                }
                Parsed::Bad { reason, reaches_end } => {
                    if last && is_zero(&bytes[offset..]) {
                        // The rest of the segment's reservation: the log ends here.
                        break;
                    }
                    if last && reaches_end {
                        tracing::warn!(segment = %name, offset, %reason, "raft log: cutting off an append a crash interrupted");
                        self.files.truncate(&name, offset as u64).map_err(io)?;
                        break;
                    }
                    return Err(corrupt("raft log segment", format!("{name} at {offset}: {reason}")));
                }
            }
        }
        let segment_len = (offset as u64).min(len);
        self.segments.insert(segment, segment_len);
        Ok(has_entries)
    }

    /// The stored vote.
    pub fn vote(&self) -> Option<Vote<u64>> {
        self.meta.vote
    }

    /// The last purged log id.
    pub fn last_purged(&self) -> Option<LogId<u64>> {
        self.meta.last_purged
    }

    /// The newest commit hint (saved or written).
    pub fn committed(&self) -> Option<LogId<u64>> {
        self.committed
    }

    /// The id of the last entry, or of the last purged one when none is left.
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        match self.locs.last_key_value() {
            Some((&index, loc)) => Some(LogId::new(loc.leader, index)),
            None => self.meta.last_purged,
        }
    }

    fn last_index(&self) -> Option<u64> {
        self.locs.last_key_value().map(|(&index, _)| index)
    }

    /// The lowest index an append may start at.
    fn next_index(&self) -> u64 {
        self.last_index().map_or(self.first, |last| last + 1)
    }

    fn check(&self) -> Result<(), Error> {
        match &self.broken {
            Some(why) => Err(corrupt("raft log", format!("an earlier write failed and could not be undone ({why}); restart the node"))),
            None => Ok(()),
        }
    }

    fn write_meta(&mut self, meta: Meta) -> Result<(), Error> {
        let bytes = serde_json::to_vec(&meta).map_err(|source| Error::Corrupt { what: "raft log meta", source })?;
        self.files.replace(META_FILE, &bytes).map_err(io)?;
        self.meta = meta;
        Ok(())
    }

    /// Stores `vote` durably.
    pub fn save_vote(&mut self, vote: Vote<u64>) -> Result<(), Error> {
        self.check()?;
        let meta = Meta { vote: Some(vote), ..self.meta.clone() };
        self.write_meta(meta)
    }

    /// Keeps `committed`; the next append writes it.
    pub fn save_committed(&mut self, committed: Option<LogId<u64>>) {
        if committed != self.committed {
            self.committed = committed;
            self.unwritten_committed = true;
        }
    }

    /// Appends `entries` (which must follow the log) with one write and one fsync.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<(), Error> {
        let Some(pending) = self.prepare_append(entries)? else { return Ok(()) };
        let written = pending.write(&*self.files);
        self.finish_append(pending, written)
    }

    /// The log's files (for [`PendingAppend::write`] outside a lock on the log).
    pub fn files(&self) -> Arc<dyn WalFiles> {
        Arc::clone(&self.files)
    }

    /// The first half of an append: checks `entries`, encodes them and picks where they go.
    /// `None` when there is nothing to write. The caller writes the result (without holding
    /// the log, so that readers go on during the fsync) and then calls
    /// [`Wal::finish_append`], before any other change to the log.
    pub fn prepare_append(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> Result<Option<PendingAppend>, Error> {
        self.check()?;
        let mut bytes = Vec::new();
        let mut added = Vec::new();
        let mut entries = entries.into_iter().peekable();
        let first_new = entries.peek().map(|e| e.log_id.index);
        if self.locs.is_empty() && first_new.is_some() {
            // An empty log takes entries from any index (openraft's storage contract: its test
            // suite appends behind a purge that `get_initial_state` made), into a new segment
            // named by that index: the segments left hold no entry.
            let empty: Vec<u64> = self.segments.keys().copied().collect();
            for segment in empty {
                self.files.remove(&segment_name(segment)).map_err(io)?;
                self.segments.remove(&segment);
                self.unwritten_committed = true;
            }
        }
        let mut next = self.last_index().map_or(0, |last| last + 1);
        let mut starts = None;
        // The last segment takes the append while it has room, and always when it holds no
        // entry of the log (a commit hint, or what a truncation left): a new segment could
        // then take its very name.
        let live = self.locs.last_key_value().map(|(_, loc)| loc.segment);
        let segment = match self.segments.last_key_value() {
            Some((&segment, &len)) if len < self.segment_bytes || live != Some(segment) => segment,
            last => {
                bytes.extend_from_slice(SEGMENT_MAGIC);
                starts = Some((self.segment_bytes, last.map(|(&previous, &len)| (segment_name(previous), len))));
                // Named by the first index it holds (recovery checks its entries from there).
                first_new.unwrap_or_else(|| self.next_index())
            }
        };
        let base = self.segments.get(&segment).copied().unwrap_or(0);
        let committed = if self.unwritten_committed {
            let hint = serde_json::to_vec(&self.committed).map_err(|source| Error::Corrupt { what: "raft log commit hint", source })?;
            record(KIND_COMMITTED, &[&hint], &mut bytes);
            Some(self.committed)
        } else {
            None
        };
        for entry in entries {
            let index = entry.log_id.index;
            if index < next {
                return Err(Error::CorruptEntry { index, reason: format!("appended where entry {next} or a later one goes (truncate first)") });
            }
            let leader = entry.log_id.leader_id;
            let start = bytes.len();
            record(KIND_ENTRY, &[&index.to_le_bytes(), &crate::wire::encode_entry(entry)], &mut bytes);
            let len = u32::try_from(bytes.len() - start).map_err(|_| Error::CorruptEntry { index, reason: "over 4 GiB".into() })?;
            added.push((index, Loc { segment, offset: base + start as u64, len, leader }));
            next = index + 1;
        }
        if added.is_empty() && committed.is_none() {
            return Ok(None);
        }
        Ok(Some(PendingAppend { name: segment_name(segment), segment, base, bytes, starts, added, committed }))
    }

    /// The second half of an append: publishes its entries if `written` is `Ok`, else undoes
    /// a partial write (so that the next append does not follow garbage).
    pub fn finish_append(&mut self, pending: PendingAppend, written: std::io::Result<()>) -> Result<(), Error> {
        let PendingAppend { name, segment, base, bytes, added, committed, .. } = pending;
        if let Err(e) = written {
            let undone = if base == 0 { self.files.remove(&name) } else { self.files.truncate(&name, base) };
            if let Err(undo) = undone {
                self.broken = Some(format!("append to {name}: {e}; undo: {undo}"));
            }
            return Err(io(e));
        }
        self.segments.insert(segment, base + bytes.len() as u64);
        if committed.is_some_and(|written| written == self.committed) {
            self.unwritten_committed = false;
        }
        self.locs.extend(added);
        Ok(())
    }

    /// Deletes the entries from `from` on.
    pub fn truncate(&mut self, from: u64) -> Result<(), Error> {
        self.check()?;
        if from >= self.next_index() {
            return Ok(());
        }
        let Some((_, &Loc { segment, offset, .. })) = self.locs.range(from..).next() else {
            return Ok(());
        };
        let later: Vec<u64> = self.segments.range(segment + 1..).map(|(&s, _)| s).collect();
        for s in later.iter().rev() {
            self.files.remove(&segment_name(*s)).map_err(io)?;
            self.segments.remove(s);
        }
        if let Err(e) = self.files.truncate(&segment_name(segment), offset) {
            self.broken = Some(format!("truncate {}: {e}", segment_name(segment)));
            return Err(io(e));
        }
        // The last segment again: its appends go into reserved space.
        reserve_segment(&*self.files, &segment_name(segment), self.segment_bytes);
        self.segments.insert(segment, offset);
        self.locs.split_off(&from);
        // A commit hint written after the cut went with it: written again at once.
        self.unwritten_committed = true;
        self.append(std::iter::empty())
    }

    /// Records `log_id` as purged and drops the entries up to it (whole segments are deleted).
    pub fn purge(&mut self, log_id: LogId<u64>) -> Result<(), Error> {
        self.check()?;
        if self.meta.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        let meta = Meta { last_purged: Some(log_id), ..self.meta.clone() };
        self.write_meta(meta)?;
        self.locs = self.locs.split_off(&(log_id.index + 1));
        self.first = log_id.index + 1;
        // Segments that hold only purged entries go: those before the segment of the first
        // entry kept, all of them when none is kept (the next append starts a new one).
        let keep_from = self.locs.first_key_value().map(|(_, loc)| loc.segment);
        let segments: Vec<u64> = self.segments.keys().copied().collect();
        for segment in segments {
            let removable = keep_from.is_none_or(|k| segment < k);
            if removable {
                self.files.remove(&segment_name(segment)).map_err(io)?;
                self.segments.remove(&segment);
                // Its commit hints went with it.
                self.unwritten_committed = true;
            }
        }
        if self.unwritten_committed {
            self.append(std::iter::empty())?;
        }
        Ok(())
    }

    /// The entries with index in `start..end`, read from the files.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, Error> {
        if start >= end {
            return Ok(Vec::new());
        }
        let wanted: Vec<(u64, Loc)> = self.locs.range(start..end).map(|(&i, &loc)| (i, loc)).collect();
        let mut entries = Vec::with_capacity(wanted.len());
        // One read for each run of entries that sit together in one segment.
        for run in wanted.chunk_by(|a, b| a.1.segment == b.1.segment) {
            for run in run.chunks(1024) {
                let (first, last) = (run[0].1, run[run.len() - 1].1);
                let span = usize::try_from(last.offset + u64::from(last.len) - first.offset).unwrap_or(0);
                let mut bytes = vec![0; span];
                self.files.read_at(&segment_name(first.segment), first.offset, &mut bytes).map_err(io)?;
                for &(index, loc) in run {
                    let at = usize::try_from(loc.offset - first.offset).unwrap_or(usize::MAX);
                    let Parsed::Record { kind: KIND_ENTRY, payload, .. } = parse(bytes.get(at..).unwrap_or_default()) else {
                        return Err(Error::CorruptEntry { index, reason: format!("{} at {}: not a valid entry record", segment_name(loc.segment), loc.offset) });
                    };
                    let entry = crate::wire::decode_entry(payload.get(8..).unwrap_or_default()).map_err(|e| Error::CorruptEntry { index, reason: e.to_string() })?;
                    if entry.log_id.index != index {
                        return Err(Error::CorruptEntry { index, reason: format!("holds entry {}", entry.log_id.index) });
                    }
                    entries.push(entry);
                }
            }
        }
        Ok(entries)
    }
}
