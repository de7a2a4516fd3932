//! The write-ahead log against a model (a map of index → term): random appends, truncations,
//! purges and reopenings, with segments small enough to roll every few entries, so that cuts
//! and purges fall on, before and after segment boundaries.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, LogId};
use proptest::prelude::*;
use vcos_canon_raft::wal::Wal;
use vcos_canon_raft::wal_files::{MemFiles, WalFiles};
use vcos_canon_raft::{Op, Request, TypeConfig};

#[derive(Debug, Clone)]
enum Step {
    /// Appends this many entries after the last one, a new term if the flag says so.
    Append(u8, bool),
    /// Truncates from this fraction of the way into the log.
    Truncate(u8),
    /// Purges up to this fraction of the way into the log.
    Purge(u8),
    CommitHint,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..6, any::<bool>()).prop_map(|(n, t)| Step::Append(n, t)),
        1 => any::<u8>().prop_map(Step::Truncate),
        1 => any::<u8>().prop_map(Step::Purge),
        1 => Just(Step::CommitHint),
        1 => Just(Step::Reopen),
    ]
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let op = Op::Put { key: format!("k/{index}").into_bytes(), value: vec![index as u8; (index % 50) as usize] };
    Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Normal(Request { client_id: 1, seq: index, op }) }
}

/// The index `fraction`/256 of the way from `first` to `end`.
fn point(first: u64, end: u64, fraction: u8) -> u64 {
    first + (end - first) * u64::from(fraction) / 256
}

struct Model {
    terms: BTreeMap<u64, u64>,
    purged: Option<LogId<u64>>,
    committed: Option<LogId<u64>>,
}

impl Model {
    fn last(&self) -> Option<LogId<u64>> {
        self.terms.last_key_value().map(|(&i, &t)| log_id(t, 1, i)).or(self.purged)
    }

    fn next(&self) -> u64 {
        self.last().map_or(0, |id| id.index + 1)
    }

    fn first(&self) -> u64 {
        self.purged.map_or(0, |id| id.index + 1)
    }
}

fn check(wal: &Wal, model: &Model) -> Result<(), TestCaseError> {
    let entries = wal.entries(0, u64::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got: Vec<(u64, u64)> = entries.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect();
    let want: Vec<(u64, u64)> = model.terms.iter().map(|(&i, &t)| (i, t)).collect();
    prop_assert_eq!(got, want);
    for entry in &entries {
        prop_assert_eq!(entry, &self::entry(entry.log_id.leader_id.term, entry.log_id.index));
    }
    prop_assert_eq!(wal.last_log_id(), model.last());
    prop_assert_eq!(wal.last_purged(), model.purged);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn the_log_is_what_was_appended_cut_and_purged(steps in proptest::collection::vec(step(), 1..60), segment_bytes in 64u64..600) {
        let files: Arc<dyn WalFiles> = Arc::new(MemFiles::default());
        let open = |files: &Arc<dyn WalFiles>| Wal::open_with_segment_bytes(Arc::clone(files), segment_bytes).map_err(|e| TestCaseError::fail(e.to_string()));
        let mut wal = open(&files)?;
        let mut model = Model { terms: BTreeMap::new(), purged: None, committed: None };
        let mut term = 1;
        for step in steps {
            match step {
                Step::Append(n, new_term) => {
                    term += u64::from(new_term);
                    let start = model.next();
                    let batch: Vec<_> = (start..start + u64::from(n)).map(|i| entry(term, i)).collect();
                    wal.append(batch).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for i in start..start + u64::from(n) {
                        model.terms.insert(i, term);
                    }
                }
                Step::Truncate(fraction) => {
                    let from = point(model.first(), model.next() + 1, fraction);
                    // Raft never cuts committed entries; the commit hint stays below the cut.
                    if model.committed.is_some_and(|c| c.index >= from) {
                        continue;
                    }
                    wal.truncate(from).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.terms.split_off(&from);
                }
                Step::Purge(fraction) => {
                    let Some(last) = model.terms.last_key_value().map(|(&i, _)| i) else { continue };
                    let upto = point(model.first(), last + 1, fraction);
                    let id = log_id(model.terms[&upto], 1, upto);
                    wal.purge(id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.terms = model.terms.split_off(&(upto + 1));
                    model.purged = Some(id);
                }
                Step::CommitHint => {
                    model.committed = model.terms.last_key_value().map(|(&i, &t)| log_id(t, 1, i)).or(model.committed);
                    wal.save_committed(model.committed);
                    wal.append(std::iter::empty()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                Step::Reopen => {
                    drop(wal);
                    wal = open(&files)?;
                    prop_assert_eq!(wal.committed(), model.committed);
                }
            }
            check(&wal, &model)?;
        }
        drop(wal);
        check(&open(&files)?, &model)?;
    }
}
