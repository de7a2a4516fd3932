//! `RaftCanonStore` end to end on a one-node region over loopback TCP: a failed `Expect`
//! fails only its own commit of a group commit (`StoreError::Conflict` naming the key), the
//! others of the group are applied; and the bytes each tenant stores, which the store counts
//! as it applies, are what reading the tenant's records sums.

use std::sync::Arc;

use tempfile::TempDir;
use vcos_actors::store::{commit_durable, CanonStore, CanonWrite, StoreError};
use vcos_canon_raft::{CanonNode, NodeConfig, RaftCanonStore, TcpTransport};

fn put(key: &str, value: &[u8]) -> CanonWrite {
    CanonWrite::Put { key: key.into(), value: value.to_vec() }
}

fn expect(key: &str, value: Option<&[u8]>) -> CanonWrite {
    CanonWrite::Expect { key: key.into(), value: value.map(<[u8]>::to_vec) }
}

/// A one-node region serving on loopback, and its store.
async fn one_node(dir: &TempDir) -> (RaftCanonStore, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = NodeConfig::new(1, "eu", &dir.path().join("n1"));
    config.info.raft_addr = listener.local_addr().expect("addr").to_string();
    let node = CanonNode::start(config, Arc::new(TcpTransport)).await.expect("node starts");
    let server = tokio::spawn({
        let node = node.clone();
        async move {
            let _ = node.serve(listener).await;
        }
    });
    node.bootstrap().await.expect("bootstrap");
    (RaftCanonStore::start(node), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_guard_fails_only_its_commit_of_the_group() {
    let dir = TempDir::new().expect("temp dir");
    let (store, server) = one_node(&dir).await;

    commit_durable(&store, vec![expect("n", None), put("n", b"0")]).await.expect("guarded create");
    assert_eq!(
        commit_durable(&store, vec![put("lost", b"x"), expect("n", None), put("n", b"9")]).await,
        Err(StoreError::Conflict { key: "n".into() })
    );
    assert_eq!(store.get("lost").expect("get"), None, "nothing of a failed commit is applied");

    // Queued back to back (one group commit when the writer is busy): one winner, one
    // conflict, and the unguarded commit between them applied.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, writes) in [
        vec![expect("n", Some(b"0")), put("n", b"a")],
        vec![put("free", b"f")],
        vec![expect("n", Some(b"0")), put("n", b"b")],
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        store.commit(writes, Box::new(move |result| {
            let _ = tx.send((i, result));
        }));
    }
    drop(tx);
    let mut outcomes = Vec::new();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    assert!(outcomes[0].1.is_ok(), "{outcomes:?}");
    assert!(outcomes[1].1.is_ok(), "{outcomes:?}");
    assert_eq!(outcomes[2].1, Err(StoreError::Conflict { key: "n".into() }));
    assert_eq!(store.get("n").expect("get"), Some(b"a".to_vec()));
    assert_eq!(store.get("free").expect("get"), Some(b"f".to_vec()));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_stored_bytes_are_counted_as_a_read_of_its_records_sums_them() {
    use vcos_actors::quota::scan_stored_bytes;
    use vcos_actors::TenantId;
    let dir = TempDir::new().expect("temp dir");
    let (store, server) = one_node(&dir).await;
    // `ab` shares a prefix with `a`: neither may count the other's records.
    let tenants = [TenantId::new("a").expect("name"), TenantId::new("ab").expect("name")];
    for (n, tenant) in tenants.iter().enumerate() {
        let mut writes = Vec::new();
        for (i, section) in vcos_actors::export::sections(tenant).into_iter().enumerate() {
            let value = vec![b'x'; 10 * (i + 1) + n];
            if section.single {
                writes.push(put(&section.prefix, &value));
            } else {
                writes.push(put(&format!("{}one", section.prefix), &value));
                writes.push(put(&format!("{}two", section.prefix), &value));
            }
        }
        commit_durable(&store, writes).await.expect("committed");
    }
    commit_durable(&store, vec![put("k/nobody", b"v"), put("t/a", b"no tenant's prefix")]).await.expect("committed");
    // Overwritten with a shorter value, deleted, and a commit stopped by its guard.
    let a = &tenants[0];
    commit_durable(&store, vec![put(&format!("tkv/{a}/one"), b"short"), CanonWrite::Delete { key: format!("t/{a}/imvu/two") }])
        .await
        .expect("committed");
    let refused = commit_durable(&store, vec![expect("k/nobody", None), put(&format!("t/{a}/imvu/three"), &[0; 500])]).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. })), "{refused:?}");
    for tenant in &tenants {
        let counted = store.stored_bytes(tenant).expect("counted").expect("the Raft canon counts");
        let scanned = scan_stored_bytes(&store, tenant).await.expect("scanned");
        assert_eq!(counted, scanned, "tenant {tenant}");
        assert!(counted > 0);
    }
    let none = TenantId::new("c").expect("name");
    assert_eq!(store.stored_bytes(&none).expect("counted"), Some(0));
    server.abort();
}
