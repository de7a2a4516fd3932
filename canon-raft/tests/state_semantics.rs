//! Semantics of the pure state machine core, [`KvState`]: compare-and-set, leases and their
//! fencing epochs, client dedup, prefix ranges, atomic batches.

use vcos_canon_raft::constants::CLIENTS_MAX;
use vcos_canon_raft::{KvState, LeaseInfo, Op, Request, Response};

/// Applies `ops` as client 1 with sequence numbers 1.. at log indexes 1..; returns the state
/// and the responses.
fn run(ops: Vec<Op>) -> (KvState, Vec<Response>) {
    let mut state = KvState::new();
    let responses = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let seq = i as u64 + 1;
            state.apply(seq, &Request { client_id: 1, seq, op })
        })
        .collect();
    (state, responses)
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> Op {
    Op::CompareAndSet { key: key.into(), expected: expected.map(Into::into), new: new.map(Into::into) }
}

fn acquire(holder: &str, ttl_ms: u64, now_ms: u64) -> Op {
    Op::AcquireLease { name: "leader".into(), holder: holder.into(), ttl_ms, now_ms }
}

fn renew(holder: &str, ttl_ms: u64, now_ms: u64) -> Op {
    Op::RenewLease { name: "leader".into(), holder: holder.into(), ttl_ms, now_ms }
}

fn release(holder: &str) -> Op {
    Op::ReleaseLease { name: "leader".into(), holder: holder.into() }
}

fn lease(granted: bool, holder: Option<&str>, epoch: u64, expires_at_ms: u64) -> Response {
    Response::Lease {
        granted,
        lease: Some(LeaseInfo { holder: holder.map(Into::into), epoch, expires_at_ms }),
    }
}

#[test]
fn put_get_delete() {
    let (state, responses) = run(vec![put("a", "1"), put("a", "2"), Op::Delete { key: "b".into() }]);
    assert_eq!(responses, vec![Response::Put, Response::Put, Response::Deleted { existed: false }]);
    assert_eq!(state.get(b"a"), Some(&b"2"[..]));
    let (state, responses) = run(vec![put("a", "1"), Op::Delete { key: "a".into() }]);
    assert_eq!(responses[1], Response::Deleted { existed: true });
    assert_eq!(state.get(b"a"), None);
    assert!(state.is_empty());
}

#[test]
fn compare_and_set_succeeds_and_fails() {
    let (state, responses) = run(vec![
        cas("k", None, Some("1")),      // absent as expected: created
        cas("k", None, Some("2")),      // not absent: fails
        cas("k", Some("9"), Some("2")), // wrong value: fails
        cas("k", Some("1"), Some("2")), // right value: replaced
        cas("k", Some("2"), None),      // right value, new None: removed
    ]);
    assert_eq!(
        responses,
        vec![
            Response::Cas { success: true, current: Some(b"1".to_vec()) },
            Response::Cas { success: false, current: Some(b"1".to_vec()) },
            Response::Cas { success: false, current: Some(b"1".to_vec()) },
            Response::Cas { success: true, current: Some(b"2".to_vec()) },
            Response::Cas { success: true, current: None },
        ]
    );
    assert_eq!(state.get(b"k"), None);
}

#[test]
fn lease_epochs_increase_with_each_new_grant() {
    let (state, responses) = run(vec![
        acquire("a", 100, 0),   // free: a gets epoch 1
        acquire("b", 100, 50),  // held by a: refused
        acquire("a", 100, 60),  // a again, unexpired: renewed, same epoch
        renew("a", 100, 100),   // renewed to 200
        renew("b", 100, 100),   // not b's: refused
        acquire("b", 100, 200), // expired at 200 (now >= expires): b gets epoch 2
        renew("a", 100, 210),   // a lost it
        release("a"),           // not a's: refused
        release("b"),           // b frees it, epoch kept
        acquire("a", 100, 220), // free: a gets epoch 3
    ]);
    assert_eq!(
        responses,
        vec![
            lease(true, Some("a"), 1, 100),
            lease(false, Some("a"), 1, 100),
            lease(true, Some("a"), 1, 160),
            lease(true, Some("a"), 1, 200),
            lease(false, Some("a"), 1, 200),
            lease(true, Some("b"), 2, 300),
            lease(false, Some("b"), 2, 300),
            lease(false, Some("b"), 2, 300),
            lease(true, None, 2, 300),
            lease(true, Some("a"), 3, 320),
        ]
    );
    assert_eq!(state.lease("leader"), Some(&LeaseInfo { holder: Some("a".into()), epoch: 3, expires_at_ms: 320 }));
    assert_eq!(state.lease("other"), None);
}

#[test]
fn renewing_an_expired_lease_is_refused() {
    let (_, responses) = run(vec![acquire("a", 10, 0), renew("a", 10, 10)]);
    assert_eq!(responses[1], lease(false, Some("a"), 1, 10));
    let (_, responses) = run(vec![renew("a", 10, 0), release("a")]);
    assert_eq!(responses, vec![Response::Lease { granted: false, lease: None }; 2]);
}

#[test]
fn retried_request_returns_the_stored_response_without_applying_twice() {
    let mut state = KvState::new();
    let create = Request { client_id: 7, seq: 1, op: cas("k", None, Some("1")) };
    let first = state.apply(1, &create);
    assert_eq!(first, Response::Cas { success: true, current: Some(b"1".to_vec()) });
    // Someone else changes the key; the retry must not fail (nor apply) again.
    state.apply(2, &Request { client_id: 8, seq: 1, op: put("k", "other") });
    assert_eq!(state.apply(3, &create), first);
    assert_eq!(state.get(b"k"), Some(&b"other"[..]));
    // A new seq applies; an older one is stale.
    let next = state.apply(4, &Request { client_id: 7, seq: 2, op: put("k", "2") });
    assert_eq!(next, Response::Put);
    assert_eq!(state.apply(5, &create), Response::StaleSequence { last_seq: 2 });
    assert_eq!(state.get(b"k"), Some(&b"2"[..]));
}

#[test]
fn dedup_table_is_bounded_and_forgets_the_oldest_client() {
    let mut state = KvState::new();
    let clients = CLIENTS_MAX as u64 + 3;
    for client_id in 0..clients {
        state.apply(client_id + 1, &Request { client_id, seq: 1, op: put("k", "v") });
    }
    assert_eq!(state.clients_len(), CLIENTS_MAX);
    // Client 0 was forgotten: its retry applies again (documented cost of the bound).
    let retry = state.apply(clients + 1, &Request { client_id: 0, seq: 1, op: put("k", "again") });
    assert_eq!(retry, Response::Put);
    assert_eq!(state.get(b"k"), Some(&b"again"[..]));
    // The newest client is remembered.
    let newest = Request { client_id: clients - 1, seq: 1, op: put("k", "never") };
    assert_eq!(state.apply(clients + 2, &newest), Response::Put);
    assert_eq!(state.get(b"k"), Some(&b"again"[..]));
}

#[test]
fn prefix_range_is_in_key_order_and_pages() {
    let (state, _) = run(vec![put("b/3", "3"), put("a/1", "x"), put("b/1", "1"), put("c", "y"), put("b/2", "2")]);
    let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<Vec<u8>> { entries.into_iter().map(|(k, _)| k).collect() };
    assert_eq!(keys(state.range(b"b/", None, 10)), vec![b"b/1".to_vec(), b"b/2".to_vec(), b"b/3".to_vec()]);
    assert_eq!(keys(state.range(b"b/", None, 2)), vec![b"b/1".to_vec(), b"b/2".to_vec()]);
    assert_eq!(keys(state.range(b"b/", Some(b"b/2"), 10)), vec![b"b/3".to_vec()]);
    assert_eq!(keys(state.range(b"b/", Some(b"a"), 1)), vec![b"b/1".to_vec()]);
    assert_eq!(state.range(b"b/", Some(b"b/3"), 10), vec![]);
    assert_eq!(state.range(b"d", None, 10), vec![]);
    assert_eq!(state.range(b"", None, 10).len(), 5);
    assert_eq!(state.range(b"b/1", None, 10), vec![(b"b/1".to_vec(), b"1".to_vec())]);
}

#[test]
fn batch_is_atomic() {
    let (state, responses) = run(vec![
        put("k", "0"),
        Op::Batch(vec![put("a", "1"), acquire("x", 10, 0), cas("k", Some("0"), Some("1"))]),
        Op::Batch(vec![put("a", "2"), Op::Delete { key: "k".into() }, release("x"), cas("k", Some("0"), None)]),
    ]);
    assert_eq!(
        responses[1],
        Response::Batch {
            committed: true,
            responses: vec![
                Response::Put,
                lease(true, Some("x"), 1, 10),
                Response::Cas { success: true, current: Some(b"1".to_vec()) }
            ],
            canon_index: 0,
        }
    );
    assert_eq!(
        responses[2],
        Response::Batch {
            committed: false,
            responses: vec![
                Response::Put,
                Response::Deleted { existed: true },
                lease(true, None, 1, 10),
                Response::Cas { success: false, current: None },
            ],
            canon_index: 0,
        }
    );
    // The failed batch left nothing behind.
    assert_eq!(state.get(b"a"), Some(&b"1"[..]));
    assert_eq!(state.get(b"k"), Some(&b"1"[..]));
    assert_eq!(state.lease("leader"), Some(&LeaseInfo { holder: Some("x".into()), epoch: 1, expires_at_ms: 10 }));
}

#[test]
fn nested_batch_failure_undoes_the_outer_batch_and_depth_is_bounded() {
    let (state, responses) = run(vec![Op::Batch(vec![put("a", "1"), Op::Batch(vec![put("b", "1"), cas("c", Some("x"), None)])])]);
    assert!(matches!(responses[0], Response::Batch { committed: false, .. }));
    assert!(state.is_empty());
    let mut deep = put("a", "1");
    for _ in 0..=vcos_canon_raft::constants::BATCH_DEPTH_MAX {
        deep = Op::Batch(vec![deep]);
    }
    let (state, responses) = run(vec![deep]);
    assert_eq!(responses[0], Response::BatchTooLarge);
    assert!(state.is_empty());
}

#[test]
fn appends_take_consecutive_canon_indexes_and_a_failed_batch_gives_its_index_back() {
    let append = |value: &str| Op::Append { prefix: b"log/".to_vec(), value: value.as_bytes().to_vec() };
    let (state, responses) = run(vec![
        append("a"),
        Op::Batch(vec![append("b"), append("c")]),
        Op::Batch(vec![append("lost"), cas("missing", Some("x"), None)]),
        append("d"),
    ]);
    assert_eq!(responses[0], Response::Appended { index: 1 });
    assert!(matches!(&responses[1], Response::Batch { committed: true, canon_index: 3, .. }));
    assert!(matches!(&responses[2], Response::Batch { committed: false, canon_index: 3, .. }));
    assert_eq!(responses[3], Response::Appended { index: 4 });
    let keys: Vec<_> = state.range(b"log/", None, 10).into_iter().map(|(k, v)| (String::from_utf8(k).unwrap(), v)).collect();
    assert_eq!(
        keys,
        vec![
            (format!("log/{:020}", 1), b"a".to_vec()),
            (format!("log/{:020}", 2), b"b".to_vec()),
            (format!("log/{:020}", 3), b"c".to_vec()),
            (format!("log/{:020}", 4), b"d".to_vec()),
        ]
    );
    assert_eq!(state.canon_index(), 4);
}

#[test]
fn owned_fast_path_matches_the_general_path() {
    let append = |value: &str| Op::Append { prefix: b"ev/".to_vec(), value: value.as_bytes().to_vec() };
    let requests: Vec<Op> = vec![
        Op::Batch(vec![put("a", "1"), append("x"), Op::Batch(vec![put("b", "2"), Op::Delete { key: "a".into() }])]),
        Op::Batch(vec![append("y"), Op::Batch(vec![append("z")])]),
        cas("b", Some("2"), Some("3")),
        Op::Batch(vec![put("c", "1"), cas("missing", Some("x"), None)]),
        Op::Batch(vec![Op::Delete { key: "nothing".into() }]),
    ];
    let mut general = KvState::new();
    let mut owned = KvState::new();
    for (i, op) in requests.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let request = Request { client_id: 9, seq, op };
        let a = general.apply(seq, &request);
        let b = owned.apply_owned(seq, request.clone());
        assert_eq!(a, b, "request {seq}");
        // A retry answers from the dedup table on both paths.
        assert_eq!(owned.apply_owned(seq + 100, request), b);
    }
    assert_eq!(general, owned);
}

fn expect(key: &str, value: Option<&str>) -> Op {
    Op::Expect { key: key.into(), value: value.map(Into::into) }
}

#[test]
fn expect_guards_its_batch_and_has_no_effect() {
    let (state, responses) = run(vec![
        expect("k", None),                                     // absent: matched
        put("k", "1"),
        expect("k", Some("2")),                                // wrong value: not matched
        Op::Batch(vec![put("a", "1"), expect("k", Some("2")), put("k", "2")]), // guard fails: nothing applied
        Op::Batch(vec![expect("k", Some("1")), put("k", "2")]), // guard holds: applied
        Op::Batch(vec![expect("gone", None)]),
    ]);
    assert_eq!(responses[0], Response::Expect { matched: true });
    assert_eq!(responses[2], Response::Expect { matched: false });
    assert_eq!(
        responses[3],
        Response::Batch {
            committed: false,
            responses: vec![Response::Put, Response::Expect { matched: false }],
            canon_index: 0,
        }
    );
    assert_eq!(
        responses[4],
        Response::Batch { committed: true, responses: vec![Response::Expect { matched: true }, Response::Put], canon_index: 0 }
    );
    assert!(matches!(responses[5], Response::Batch { committed: true, .. }));
    assert_eq!(state.get(b"k"), Some(&b"2"[..]));
    assert_eq!(state.get(b"a"), None);
    assert_eq!(state.len(), 1);
}

#[test]
fn group_applies_each_batch_on_its_own() {
    let append = |value: &str| Op::Append { prefix: b"log/".to_vec(), value: value.as_bytes().to_vec() };
    let (state, responses) = run(vec![
        put("n", "0"),
        Op::Group(vec![
            Op::Batch(vec![expect("n", Some("0")), put("n", "a"), append("a")]),
            Op::Batch(vec![expect("n", Some("0")), put("n", "b"), append("b")]), // lost the race
            Op::Batch(vec![put("free", "f"), append("f")]),
            cas("missing", Some("x"), None), // a failing single operation: no effect
        ]),
    ]);
    assert_eq!(
        responses[1],
        Response::Batch {
            committed: true,
            responses: vec![
                Response::Batch {
                    committed: true,
                    responses: vec![Response::Expect { matched: true }, Response::Put, Response::Appended { index: 1 }],
                    canon_index: 1,
                },
                Response::Batch { committed: false, responses: vec![Response::Expect { matched: false }], canon_index: 1 },
                Response::Batch { committed: true, responses: vec![Response::Put, Response::Appended { index: 2 }], canon_index: 2 },
                Response::Cas { success: false, current: None },
            ],
            canon_index: 2,
        }
    );
    assert_eq!(state.get(b"n"), Some(&b"a"[..]));
    assert_eq!(state.get(b"free"), Some(&b"f"[..]));
    assert_eq!(state.canon_index(), 2);
}

#[test]
fn group_inside_a_failing_batch_is_undone_and_groups_are_bounded() {
    let (state, responses) = run(vec![Op::Batch(vec![
        Op::Group(vec![Op::Batch(vec![put("a", "1")]), Op::Batch(vec![expect("x", Some("1"))])]),
        expect("a", None),
    ])]);
    assert!(matches!(responses[0], Response::Batch { committed: false, .. }));
    assert!(state.is_empty(), "the failing batch took the group's applied batch back");
    let mut deep = put("a", "1");
    for _ in 0..=vcos_canon_raft::constants::BATCH_DEPTH_MAX {
        deep = Op::Group(vec![deep]);
    }
    let (state, responses) = run(vec![deep]);
    assert_eq!(responses[0], Response::BatchTooLarge);
    assert!(state.is_empty());
    let too_many = Op::Group(vec![put("a", "1"); vcos_canon_raft::constants::BATCH_OPS_MAX + 1]);
    let (state, responses) = run(vec![too_many]);
    assert_eq!(responses[0], Response::BatchTooLarge);
    assert!(state.is_empty());
}

#[test]
fn owned_fast_path_matches_the_general_path_for_groups() {
    let append = |value: &str| Op::Append { prefix: b"ev/".to_vec(), value: value.as_bytes().to_vec() };
    let mut deep = put("deep", "1");
    // As deep as a batch inside a group may nest.
    for _ in 1..vcos_canon_raft::constants::BATCH_DEPTH_MAX {
        deep = Op::Batch(vec![deep]);
    }
    let requests: Vec<Op> = vec![
        Op::Group(vec![Op::Batch(vec![put("a", "1"), append("x")]), Op::Batch(vec![append("y"), Op::Batch(vec![append("z")])])]),
        Op::Group(vec![
            Op::Batch(vec![expect("a", Some("1")), put("a", "2"), append("g1")]),
            Op::Batch(vec![expect("a", Some("1")), put("a", "3"), append("lost")]),
            Op::Batch(vec![append("g2"), Op::Delete { key: "nothing".into() }]),
            put("single", "s"),
            cas("single", Some("s"), Some("t")),
            expect("single", Some("t")),
            Op::Group(vec![Op::Batch(vec![put("inner", "1")])]),
            deep,
        ]),
        Op::Group(vec![]),
        Op::Group(vec![put("x", "1"); vcos_canon_raft::constants::BATCH_OPS_MAX + 1]),
    ];
    let mut general = KvState::new();
    let mut owned = KvState::new();
    for (i, op) in requests.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let request = Request { client_id: 9, seq, op };
        let a = general.apply(seq, &request);
        let b = owned.apply_owned(seq, request.clone());
        assert_eq!(a, b, "request {seq}");
        assert_eq!(owned.apply_owned(seq + 100, request), b);
    }
    assert_eq!(general, owned);
    assert_eq!(owned.get(b"a"), Some(&b"2"[..]));
    assert_eq!(owned.get(b"single"), Some(&b"t"[..]));
    assert_eq!(owned.get(b"deep"), Some(&b"1"[..]));
    assert_eq!(owned.get(b"x"), None, "past the operations limit: refused on both paths");
}
