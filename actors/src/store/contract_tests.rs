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

#[test]
fn memory_store_meets_contract() {
    check_contract(&MemoryStore::new());
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
