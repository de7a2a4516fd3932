//! The files under the Raft log ([`crate::wal`]): a small trait so that the simulator can keep
//! them in memory (surviving a node's crash, failing when its plan says the disk fails) while
//! `vcos up` keeps them in a directory.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Flat files by name: what the log needs of a file system.
pub trait WalFiles: Send + Sync + Debug + 'static {
    /// The names of the files there.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The length of `name`.
    fn len(&self, name: &str) -> io::Result<u64>;
    /// Fills `out` from `name` at `offset` (all of it, or an error).
    fn read_at(&self, name: &str, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` into `name` at `offset`, creating it (durably named) if it is missing
    /// and extending it if `data` ends past its length (a gap reads as zeros).
    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `name` at least `len` bytes long, the added bytes zeros with their space
    /// allocated: writes into them and their fsync then change no file metadata (see
    /// [`crate::wal`]: a segment is reserved whole when it starts).
    fn reserve(&self, name: &str, len: u64) -> io::Result<()>;
    /// Makes what was appended to `name` durable.
    fn sync(&self, name: &str) -> io::Result<()>;
    /// Cuts `name` to `len` bytes, durably.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Removes `name`, durably.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Replaces the whole of `name` with `data`, atomically and durably: a crash leaves the
    /// old contents or the new, never a mix.
    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()>;
}

/// The log's files in a directory of their own.
#[derive(Debug)]
pub struct DirFiles {
    dir: PathBuf,
    /// Open handles by name (the log touches few files: its segments and its meta).
    open: Mutex<HashMap<String, Arc<File>>>,
}

impl DirFiles {
    /// The files of `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_owned(), open: Mutex::default() })
    }

    fn handle(&self, name: &str, create: bool) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = open.get(name) {
            return Ok(Arc::clone(file));
        }
        let path = self.dir.join(name);
        let existed = path.exists();
        let file = Arc::new(OpenOptions::new().read(true).write(true).create(create).open(&path)?);
        if !existed {
            // The new file's name must survive a crash as its contents will.
            self.sync_dir()?;
        }
        open.insert(name.to_owned(), Arc::clone(&file));
        Ok(file)
    }

    fn forget(&self, name: &str) {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(name);
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl WalFiles for DirFiles {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        Ok(self.handle(name, false)?.metadata()?.len())
    }

    fn read_at(&self, name: &str, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.handle(name, false)?.read_exact_at(out, offset)
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.handle(name, true)?.write_all_at(data, offset)
    }

    fn reserve(&self, name: &str, len: u64) -> io::Result<()> {
        let file = self.handle(name, false)?;
        if file.metadata()?.len() >= len {
            return Ok(());
        }
        // Mode 0: the file's length becomes `len` and the blocks are allocated (as unwritten
        // extents, reading as zeros), so an append's fsync flushes data only.
        rustix::fs::fallocate(&*file, rustix::fs::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.handle(name, false)?.sync_data()
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = self.handle(name, false)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.forget(name);
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        }
        // Durably gone: a segment that a truncation removed must not come back after a crash
        // with the entries it cut.
        self.sync_dir()
    }

    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let temporary = self.dir.join(format!("{name}.tmp"));
        {
            let mut file = File::create(&temporary)?;
            file.write_all(data)?;
            file.sync_all()?;
        }
        self.forget(name);
        std::fs::rename(&temporary, self.dir.join(name))?;
        self.sync_dir()
    }
}

/// The log's files in memory: for tests, and the simulator's disks (wrapped with faults).
#[derive(Debug, Default)]
pub struct MemFiles {
    files: Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
}

impl MemFiles {
    fn files(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Vec<u8>>> {
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name:?}"))
}

impl WalFiles for MemFiles {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.files().keys().cloned().collect())
    }

    fn len(&self, name: &str) -> io::Result<u64> {
        self.files().get(name).map(|f| f.len() as u64).ok_or_else(|| not_found(name))
    }

    fn read_at(&self, name: &str, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let files = self.files();
        let file = files.get(name).ok_or_else(|| not_found(name))?;
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let bytes = start.checked_add(out.len()).and_then(|end| file.get(start..end)).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut files = self.files();
        let file = files.entry(name.to_owned()).or_default();
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let end = start.checked_add(data.len()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if file.len() < end {
            file.resize(end, 0);
        }
        file[start..end].copy_from_slice(data);
        Ok(())
    }

    fn reserve(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files();
        let file = files.get_mut(name).ok_or_else(|| not_found(name))?;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if file.len() < len {
            file.resize(len, 0);
        }
        Ok(())
    }

    fn sync(&self, name: &str) -> io::Result<()> {
        self.files().get(name).map(|_| ()).ok_or_else(|| not_found(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files();
        let file = files.get_mut(name).ok_or_else(|| not_found(name))?;
        file.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files().remove(name);
        Ok(())
    }

    fn replace(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.files().insert(name.to_owned(), data.to_vec());
        Ok(())
    }
}
