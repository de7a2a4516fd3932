//! openraft's own storage test suite (`openraft::testing::Suite`) against the redb stores.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;
use vcos_canon_raft::{LogStore, StateMachineStore, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().expect("a temporary directory is creatable in tests");
        let (log, sm) = vcos_canon_raft::open(dir.path()).expect("a fresh store opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("every openraft storage test passes");
}
