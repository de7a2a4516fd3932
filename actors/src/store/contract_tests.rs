//! One suite, run against every `CanonStore`, so the stores cannot drift apart.

use super::*;

fn check_contract(store: &dyn CanonStore) {
    let idx = commit_durable_blocking(
        store,
        vec![
            CanonWrite::Put {
                key: "a/1".into(),
                value: b"one".to_vec(),
            },
            CanonWrite::Append {
                prefix: "log/".into(),
                value: b"first".to_vec(),
            },
            CanonWrite::Append {
                prefix: "log/".into(),
                value: b"second".to_vec(),
            },
        ],
    )
    .expect("commit");
    assert_eq!(store.get("a/1").expect("get"), Some(b"one".to_vec()));
    let log = store.scan_prefix("log/", None, 10).expect("scan");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].1, b"second".to_vec());
    assert_eq!(index_of_appended_key(&log[1].0), Some(idx));
    assert!(index_of_appended_key(&log[0].0) < Some(idx));
    let after_first = store
        .scan_prefix("log/", Some(&log[0].0), 10)
        .expect("scan after");
    assert_eq!(after_first.len(), 1);
    commit_durable_blocking(store, vec![CanonWrite::Delete { key: "a/1".into() }]).expect("delete");
    assert_eq!(store.get("a/1").expect("get"), None);
    assert!(store
        .scan_prefix("zzz/", None, 10)
        .expect("scan empty")
        .is_empty());
}

fn put(key: &str, value: &[u8]) -> CanonWrite {
    CanonWrite::Put { key: key.into(), value: value.to_vec() }
}

fn expect(key: &str, value: Option<&[u8]>) -> CanonWrite {
    CanonWrite::Expect { key: key.into(), value: value.map(<[u8]>::to_vec) }
}

fn conflict(key: &str) -> Result<u64, StoreError> {
    Err(StoreError::Conflict { key: key.into() })
}

/// Guards: a commit applies only if every `Expect` holds before it; a failed guard applies
/// nothing of its commit and names the key.
fn check_guards(store: &dyn CanonStore) {
    // Absent as expected: applied.
    commit_durable_blocking(store, vec![expect("g/counter", None), put("g/counter", b"1")]).expect("guarded create");
    assert_eq!(store.get("g/counter").expect("get"), Some(b"1".to_vec()));
    // No longer absent: nothing applied, not even the unguarded put or the append.
    let before = store.scan_prefix("g/", None, 10).expect("scan");
    assert_eq!(
        commit_durable_blocking(
            store,
            vec![
                put("g/other", b"x"),
                CanonWrite::Append { prefix: "g/log/".into(), value: b"lost".to_vec() },
                expect("g/counter", None),
                put("g/counter", b"2"),
            ],
        ),
        conflict("g/counter")
    );
    assert_eq!(store.scan_prefix("g/", None, 10).expect("scan"), before);
    // The right value: applied. The wrong value: refused, the first failing guard is named.
    commit_durable_blocking(store, vec![expect("g/counter", Some(b"1")), put("g/counter", b"2")]).expect("advance");
    assert_eq!(
        commit_durable_blocking(
            store,
            vec![expect("g/counter", Some(b"2")), expect("g/absent", Some(b"1")), put("g/counter", b"3")],
        ),
        conflict("g/absent")
    );
    assert_eq!(store.get("g/counter").expect("get"), Some(b"2".to_vec()));
    // Guards see the state before the commit, not the commit's own writes.
    assert_eq!(
        commit_durable_blocking(store, vec![put("g/fresh", b"1"), expect("g/fresh", Some(b"1"))]),
        conflict("g/fresh")
    );
    assert_eq!(store.get("g/fresh").expect("get"), None);
    // A guard alone writes nothing; a guard on a deleted key sees it absent.
    commit_durable_blocking(store, vec![expect("g/counter", Some(b"2"))]).expect("bare guard");
    commit_durable_blocking(store, vec![CanonWrite::Delete { key: "g/counter".into() }]).expect("delete");
    commit_durable_blocking(store, vec![expect("g/counter", None)]).expect("absent after delete");
    assert_eq!(store.get("g/counter").expect("get"), None);
}

/// Two writers race to advance the same guarded value, queued back to back (one group commit
/// on a store that groups): exactly one wins, the loser alone fails, and an unguarded commit
/// queued between them is applied.
fn check_guards_race(store: &dyn CanonStore) {
    commit_durable_blocking(store, vec![put("race/n", b"0")]).expect("seed");
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, write) in [
        vec![expect("race/n", Some(b"0")), put("race/n", b"a")],
        vec![put("race/free", b"f")],
        vec![expect("race/n", Some(b"0")), put("race/n", b"b")],
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        store.commit(write, Box::new(move |result| {
            let _ = tx.send((i, result));
        }));
    }
    drop(tx);
    let mut outcomes: Vec<_> = rx.iter().collect();
    outcomes.sort_by_key(|(i, _)| *i);
    assert!(outcomes[0].1.is_ok(), "the first guarded commit wins: {outcomes:?}");
    assert!(outcomes[1].1.is_ok(), "the unguarded commit is applied: {outcomes:?}");
    assert_eq!(outcomes[2].1, conflict("race/n"));
    assert_eq!(store.get("race/n").expect("get"), Some(b"a".to_vec()));
    assert_eq!(store.get("race/free").expect("get"), Some(b"f".to_vec()));
}

#[test]
fn memory_store_meets_contract() {
    check_contract(&MemoryStore::new());
}

#[test]
fn memory_store_checks_guards() {
    let store = MemoryStore::new();
    check_guards(&store);
    check_guards_race(&store);
}

#[test]
fn redb_store_checks_guards_within_a_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("g.redb")).expect("open");
    check_guards(&store);
    check_guards_race(&store);
}

#[test]
fn redb_store_meets_contract_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("canon.redb");
    let last = {
        let store = RedbStore::open(&path).expect("open");
        check_contract(&store);
        commit_durable_blocking(
            &store,
            vec![CanonWrite::Append {
                prefix: "log/".into(),
                value: b"third".to_vec(),
            }],
        )
        .expect("append")
    };
    let store = RedbStore::open(&path).expect("reopen");
    let log = store.scan_prefix("log/", None, 10).expect("scan");
    assert_eq!(log.len(), 3);
    assert_eq!(index_of_appended_key(&log[2].0), Some(last));
    // The index continues after a restart: canon order is never reused.
    let next = commit_durable_blocking(
        &store,
        vec![CanonWrite::Append {
            prefix: "log/".into(),
            value: vec![],
        }],
    )
    .expect("append");
    assert!(next > last);
}

#[test]
fn redb_group_commit_acknowledges_every_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(RedbStore::open(&dir.path().join("c.redb")).expect("open"));
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..500u32 {
        let tx = tx.clone();
        store.commit(
            vec![CanonWrite::Put {
                key: format!("k/{i:04}"),
                value: i.to_le_bytes().to_vec(),
            }],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
    }
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len(), 500);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        store.scan_prefix("k/", None, 1000).expect("scan").len(),
        500
    );
}
