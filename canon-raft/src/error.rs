//! The crate's error type: opening and reading the stores. Errors inside openraft's traits are
//! reported as openraft's `StorageError`, built from these.

/// An error of the canon layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system refused an operation.
    #[error("io: {0}")]
    Io(#[source] std::io::Error),
    /// redb failed.
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    /// A stored log entry did not decode (or sits under the wrong index): the log is corrupt.
    #[error("corrupt log entry at index {index}: {reason}")]
    CorruptEntry {
        /// The index it is stored under.
        index: u64,
        /// What was wrong.
        reason: String,
    },
    /// Data read from disk did not decode: the store is corrupt.
    #[error("corrupt {what}: {source}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Why it did not decode.
        #[source]
        source: serde_json::Error,
    },
    /// A record read from disk (or a snapshot stream) did not decode: the store is corrupt,
    /// or a received snapshot was cut short.
    #[error("corrupt {what}: {reason}")]
    CorruptRecord {
        /// What was being decoded.
        what: &'static str,
        /// Why it did not decode.
        reason: String,
    },
    /// The store (or a snapshot) was written by a format version this build does not read.
    #[error("canon store format version {found}: this build reads version {expected} and migrates versions 1 and 2; use the build that wrote it")]
    Format {
        /// The version found.
        found: u64,
        /// The version this build writes.
        expected: u64,
    },
    /// The group's database is closed (its Raft node stopped).
    #[error("the canon group is closed")]
    Closed,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
