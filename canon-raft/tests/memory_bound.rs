//! The canon's memory bound: a replica's resident memory does not grow with its state. 80 MB of
//! values go through the log and the state machine as a node runs them (fsynced appends,
//! applies); the resident set stays within the page cache and a fixed allowance, and stays there while every
//! key is read back.
//!
//! Measured as the growth of this test process's resident set (the test binary holds this one
//! test): redb reads its file with `pread`, so the file's pages in the OS cache are not in it.

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership};
use vcos_canon_raft::{Op, Request, TypeConfig};

/// This process's resident set, in bytes (Linux: `/proc/self/statm`, in pages of 4 KiB).
fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm is readable on Linux");
    let pages: isize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's second field");
    pages * 4096
}

const CACHE_BYTES: usize = 8 << 20;
const KEYS: u64 = 40_000;
const VALUE_BYTES: usize = 2_048;
const PER_ENTRY: u64 = 100;

#[tokio::test(flavor = "current_thread")]
async fn resident_memory_stays_bounded_while_the_state_grows_far_past_it() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (mut log, mut sm) = vcos_canon_raft::open_with(dir.path(), CACHE_BYTES).expect("the store opens");
    let membership = Entry::<TypeConfig> {
        log_id: log_id(1, 1, 0),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1u64])], None)),
    };
    log.blocking_append([membership.clone()]).await.expect("appended");
    sm.apply([membership]).await.expect("applied");
    let baseline = rss();
    let mut peak_growth = 0isize;
    for n in 0..KEYS / PER_ENTRY {
        let index = n + 1;
        let ops = (0..PER_ENTRY)
            .map(|i| Op::Put { key: format!("imvu/{:08}", n * PER_ENTRY + i).into_bytes(), value: vec![(i % 256) as u8; VALUE_BYTES] })
            .collect();
        let entry = Entry::<TypeConfig> {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Request { client_id: 1, seq: index, op: Op::Batch(ops) }),
        };
        log.blocking_append([entry.clone()]).await.expect("appended");
        sm.apply([entry]).await.expect("applied");
        peak_growth = peak_growth.max(rss() - baseline);
    }
    let reader = sm.reader();
    for k in (0..KEYS).step_by(7) {
        let value = reader.get(format!("imvu/{k:08}").as_bytes()).expect("read").expect("present");
        assert_eq!(value.len(), VALUE_BYTES);
        peak_growth = peak_growth.max(rss() - baseline);
    }
    let data = KEYS as isize * VALUE_BYTES as isize;
    let allowance = CACHE_BYTES as isize + (16 << 20);
    eprintln!("state {} MB, resident growth at peak {} MB (cache {} MB)", data >> 20, peak_growth >> 20, CACHE_BYTES >> 20);
    assert!(peak_growth < allowance, "the resident set grew by {peak_growth} bytes for {data} bytes of state (allowance {allowance})");
}
