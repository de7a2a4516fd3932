//! Determinism: the same random request sequence applied to two fresh states gives identical
//! states and responses, and the state survives its snapshot encoding unchanged. On disk, the
//! tenants' usage counts stay equal to their records (`state()` checks them).

use proptest::prelude::*;
use vcos_canon_raft::{KvState, Op, Request, Response};

/// Short keys, some under a tenant's prefixes, so that the disk tables' usage counts (which
/// `state()` checks against the records) see writes, overwrites, deletes and roll-backs.
fn key() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop::sample::select(vec!["", "", "t/a/", "t/b/", "tkv/a/", "tenant/", "audit/head/t/"]);
    (prefix, prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'/']), 0..4)).prop_map(|(prefix, rest)| {
        let mut key = prefix.as_bytes().to_vec();
        key.extend(rest);
        key
    })
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4)
}

fn holder() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["h1".to_owned(), "h2".to_owned(), "h3".to_owned()])
}

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["l1".to_owned(), "l2".to_owned()])
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        key().prop_map(|key| Op::Delete { key }),
        (key(), prop::option::of(value()), prop::option::of(value()))
            .prop_map(|(key, expected, new)| Op::CompareAndSet { key, expected, new }),
        (name(), holder(), 0..50u64, 0..200u64)
            .prop_map(|(name, holder, ttl_ms, now_ms)| Op::AcquireLease { name, holder, ttl_ms, now_ms }),
        (name(), holder(), 0..50u64, 0..200u64)
            .prop_map(|(name, holder, ttl_ms, now_ms)| Op::RenewLease { name, holder, ttl_ms, now_ms }),
        (name(), holder()).prop_map(|(name, holder)| Op::ReleaseLease { name, holder }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    leaf_op().prop_recursive(2, 8, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(Op::Batch))
}

fn requests() -> impl Strategy<Value = Vec<Request>> {
    // Few clients and small seqs, so retries and stale sequence numbers happen.
    prop::collection::vec((0..3u64, 0..6u64, op()), 0..60)
        .prop_map(|items| items.into_iter().map(|(client_id, seq, op)| Request { client_id, seq, op }).collect())
}

fn apply_all(requests: &[Request]) -> (KvState, Vec<Response>) {
    let mut state = KvState::new();
    let responses = requests.iter().enumerate().map(|(i, r)| state.apply(i as u64 + 1, r)).collect();
    (state, responses)
}

proptest! {
    #[test]
    fn same_requests_give_same_state(requests in requests()) {
        let (first, first_responses) = apply_all(&requests);
        let (second, second_responses) = apply_all(&requests);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first_responses, second_responses);
        let bytes = serde_json::to_vec(&first).expect("a state encodes");
        prop_assert_eq!(serde_json::to_vec(&second).expect("a state encodes"), bytes.clone());
        let decoded: KvState = serde_json::from_slice(&bytes).expect("an encoded state decodes");
        prop_assert_eq!(decoded, first);
    }

    #[test]
    fn leases_epochs_never_go_back(requests in requests()) {
        let mut state = KvState::new();
        let mut epochs = std::collections::BTreeMap::new();
        for (i, request) in requests.iter().enumerate() {
            state.apply(i as u64 + 1, request);
            for name in ["l1", "l2"] {
                if let Some(lease) = state.lease(name) {
                    let last = epochs.insert(name, lease.epoch).unwrap_or(0);
                    prop_assert!(lease.epoch >= last);
                }
            }
        }
    }
}

#[test]
fn corrupt_state_bytes_are_an_error() {
    assert!(serde_json::from_slice::<KvState>(b"{\"kv\": 3}").is_err());
    assert!(serde_json::from_slice::<KvState>(b"\xff\x00").is_err());
}

/// Operations for the disk equivalence: the leaf operations, appends, and batches and groups
/// (the canon's group commits) of them.
fn disk_op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        4 => leaf_op(),
        1 => (key(), value()).prop_map(|(prefix, value)| Op::Append { prefix, value }),
        1 => (key(), prop::option::of(value())).prop_map(|(key, value)| Op::Expect { key, value }),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Op::Batch),
            prop::collection::vec(inner, 0..4).prop_map(Op::Group),
        ]
    })
}

fn disk_requests() -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec((0..3u64, 0..6u64, disk_op()), 0..60)
        .prop_map(|items| items.into_iter().map(|(client_id, seq, op)| Request { client_id, seq, op }).collect())
}

/// Applies `requests` as a replica does: to the tables on disk, a few entries per call.
fn apply_on_disk(requests: &[Request], per_call: usize) -> (KvState, Vec<Response>) {
    use openraft::storage::RaftStateMachine;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let (_log, mut sm) = vcos_canon_raft::open_with(dir.path(), 1 << 20).expect("the store opens");
        let entries: Vec<openraft::Entry<vcos_canon_raft::TypeConfig>> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| openraft::Entry {
                log_id: openraft::testing::log_id(1, 1, i as u64 + 1),
                payload: openraft::EntryPayload::Normal(r.clone()),
            })
            .collect();
        let mut responses = Vec::new();
        for chunk in entries.chunks(per_call) {
            responses.extend(sm.apply(chunk.to_vec()).await.expect("applied"));
        }
        (sm.reader().state().expect("the state reads back"), responses)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The rules run on disk exactly as in memory: same state, same responses.
    #[test]
    fn the_tables_on_disk_give_what_the_maps_in_memory_give(requests in disk_requests(), per_call in 1..8usize) {
        let mut memory = KvState::new();
        let expected: Vec<Response> =
            requests.iter().enumerate().map(|(i, r)| memory.apply_owned(i as u64 + 1, r.clone())).collect();
        let (disk, responses) = apply_on_disk(&requests, per_call);
        prop_assert_eq!(responses, expected);
        prop_assert_eq!(disk, memory);
    }
}
