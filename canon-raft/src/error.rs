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
