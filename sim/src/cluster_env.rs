//! A node's cluster in the simulator: what `vcos up` adds to the canon and the runtime (SWIM
//! membership on turmoil's UDP, the bucket leases, placement and the IMVU router), plus what
//! the placement checkers observe of every node.
//!
//! Observations come from two places, neither of which decides anything:
//! - [`ObservedStore`] wraps the node's canon store and records every IMVU commit that the
//!   canon applied: its log index and the fencing epoch its guard expected (`None`: unfenced).
//!   Read in log order, these are "the canon's epochs" the at-most-one checker reads.
//! - The runtime's served-answer failpoint records every answer an IMVU released from memory
//!   (a `LifecycleOnly` kind, which commits nothing per message), with the epoch it was
//!   served under and the simulated time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use vcos_actors::imvu::{Context, Imvu, Persistence};
use vcos_actors::store::{CanonStore, CanonWrite, Completion, StoreError};
use vcos_actors::ImvuKey;
use vcos_cluster::membership::{MembershipConfig, NodeIdentity, NodeMeta, Roles};
use vcos_cluster::placement::lease::Holder;
use vcos_cluster::node::EPOCH_PREFIX;
use vcos_cluster::{LeaseTable, MembershipHandle};

/// Port of every node's gossip socket.
pub(crate) const GOSSIP_PORT: u16 = 7100;

/// Where the observed store appends its ordering markers.
const ORDER_PREFIX: &str = "sim/commit-order/";

/// One IMVU commit the canon applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSeen {
    /// Its canon index (commits in log order have rising indexes).
    pub index: u64,
    /// The node that made it.
    pub node: u8,
    /// The IMVU's canon prefix (`t/{tenant}/imvu/{id}/`).
    pub imvu: String,
    /// The fencing epoch its guard expected; `None` when it carried no fence.
    pub epoch: Option<u64>,
}

/// One swarm credit the canon applied (a completion: item done + its credit record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditSeen {
    /// The credit record's key (`t/{tenant}/swarm/{id}/credit/{item}`).
    pub key: String,
    /// The node whose coordinator committed it.
    pub node: u8,
    /// The fencing epoch its guard expected; `None` when it carried no fence.
    pub epoch: Option<u64>,
}

/// One answer released from memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedSeen {
    /// Simulated time.
    pub at_ms: u64,
    /// The IMVU.
    pub key: ImvuKey,
    /// The epoch it was served under; `None`: no fence.
    pub epoch: Option<u64>,
}

/// What the placement checkers observed of every node in one run.
#[derive(Debug, Default)]
pub struct Observations {
    inner: Mutex<Seen>,
}

/// A bucket lease claimed: its new epoch committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimSeen {
    /// When the claimer learned it was committed (simulated time).
    pub at_ms: u64,
    /// The bucket.
    pub bucket: u16,
    /// Its new epoch.
    pub epoch: u64,
}

#[derive(Debug, Default)]
struct Seen {
    commits: Vec<CommitSeen>,
    served: Vec<ServedSeen>,
    claims: Vec<ClaimSeen>,
    credits: Vec<CreditSeen>,
}

impl Observations {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits seen so far, in the order they completed.
    pub fn commits(&self) -> Vec<CommitSeen> {
        self.lock().commits.clone()
    }

    /// Bucket claims committed so far, in time order.
    pub fn claims(&self) -> Vec<ClaimSeen> {
        self.lock().claims.clone()
    }

    /// Swarm credits applied so far, in the order they completed.
    pub fn credits(&self) -> Vec<CreditSeen> {
        self.lock().credits.clone()
    }

    /// Answers released from memory so far, in time order.
    pub fn served(&self) -> Vec<ServedSeen> {
        self.lock().served.clone()
    }

    pub(crate) fn record_served(&self, key: &ImvuKey, epoch: Option<u64>) {
        self.lock().served.push(ServedSeen { at_ms: crate::node_env::sim_now_ms(), key: *key, epoch });
    }
}

/// A node's canon store, observed: see the module docs.
pub(crate) struct ObservedStore {
    pub(crate) inner: Arc<dyn CanonStore>,
    pub(crate) node: u8,
    pub(crate) observations: Arc<Observations>,
}

/// The IMVU prefix of an IMVU record key, if it is one.
fn imvu_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("t/")?;
    let at = rest.find("/imvu/")?;
    let after = &rest[at + "/imvu/".len()..];
    let id_len = after.find('/')?;
    Some(key[..2 + at + "/imvu/".len() + id_len + 1].to_owned())
}

impl CanonStore for ObservedStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let mut imvu = None;
        let mut epoch = None;
        for write in &writes {
            match write {
                CanonWrite::Put { key, .. } | CanonWrite::Delete { key } | CanonWrite::Append { prefix: key, .. } => {
                    imvu = imvu.or_else(|| imvu_of(key));
                }
                CanonWrite::Expect { key, value: Some(value) } if key.starts_with(EPOCH_PREFIX) => {
                    epoch = <[u8; 8]>::try_from(value.as_slice()).ok().map(u64::from_be_bytes);
                }
                _ => {}
            }
        }
        let claim = writes.iter().find_map(|write| match write {
            CanonWrite::Put { key, value } => {
                let bucket = key.strip_prefix(EPOCH_PREFIX)?.parse::<u16>().ok()?;
                let epoch = u64::from_be_bytes(<[u8; 8]>::try_from(value.as_slice()).ok()?);
                Some((bucket, epoch))
            }
            _ => None,
        });
        if let Some((bucket, epoch)) = claim {
            let observations = self.observations.clone();
            return self.inner.commit(
                writes,
                Box::new(move |result: Result<u64, StoreError>| {
                    if result.is_ok() {
                        let at_ms = crate::node_env::sim_now_ms();
                        observations.lock().claims.push(ClaimSeen { at_ms, bucket, epoch });
                    }
                    done(result);
                }),
            );
        }
        let credit = writes.iter().find_map(|write| match write {
            CanonWrite::Put { key, .. } if key.contains("/swarm/") && key.contains("/credit/") => Some(key.clone()),
            _ => None,
        });
        if let Some(key) = credit {
            let (node, observations) = (self.node, self.observations.clone());
            return self.inner.commit(
                writes,
                Box::new(move |result: Result<u64, StoreError>| {
                    if result.is_ok() {
                        observations.lock().credits.push(CreditSeen { key, node, epoch });
                    }
                    done(result);
                }),
            );
        }
        let Some(imvu) = imvu else {
            return self.inner.commit(writes, done);
        };
        // An IMVU commit may append nothing (a snapshot put), and the canon index it completes
        // with counts appends only: one appended marker gives each commit its own index, in
        // log order.
        let mut writes = writes;
        writes.push(CanonWrite::Append { prefix: ORDER_PREFIX.into(), value: Vec::new() });
        let (node, observations) = (self.node, self.observations.clone());
        self.inner.commit(
            writes,
            Box::new(move |result: Result<u64, StoreError>| {
                if let Ok(index) = result {
                    observations.lock().commits.push(CommitSeen { index, node, imvu, epoch });
                }
                done(result);
            }),
        );
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }
}

/// `tally`: a counter kept in memory (`Persistence::LifecycleOnly`), answered without a commit:
/// the kind whose answers only the lease (not the canon's fence) keeps to one node at a time.
pub struct Tally;

impl Imvu for Tally {
    const KIND: &'static str = "tally";
    type State = i64;
    type Msg = vcos_actors::kinds::CounterMsg;
    type Reply = i64;

    fn genesis(&self) -> i64 {
        0
    }

    fn handle(&self, total: &mut i64, msg: Self::Msg, _ctx: &mut Context<'_>) -> i64 {
        if let vcos_actors::kinds::CounterMsg::Add { n } = msg {
            *total = total.saturating_add(n);
        }
        *total
    }

    fn persistence(&self) -> Persistence {
        Persistence::LifecycleOnly
    }
}

/// The gossip address of node `i`.
pub(crate) fn gossip_addr(name: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(name), GOSSIP_PORT)
}

/// The lease holder identity of node `node_id` in its `incarnation`.
pub(crate) fn holder(node_id: u64, incarnation: u64) -> Holder {
    Holder { node: node_id, incarnation }
}

/// A fresh lease table for `holder` with `vcos up`'s lease timing.
pub(crate) fn lease_table(holder: Holder) -> Result<Arc<LeaseTable>, String> {
    LeaseTable::new(holder, vcos_cluster::placement::LeaseConfig::default()).map_err(|e| e.to_string())
}

/// Starts SWIM membership for node `index` (node id `index + 1`) on turmoil's UDP as `vcos up`
/// does on a real socket: every other node is a seed; the renewal is above every renewal of
/// earlier incarnations; the RNG comes from the run's seed.
pub(crate) async fn start_membership(
    names: &[String],
    index: usize,
    incarnation: u64,
    region: &str,
    http_port: u16,
    raft_port: u16,
    seed: u64,
) -> Result<MembershipHandle, String> {
    let socket = turmoil::net::UdpSocket::bind(("0.0.0.0", GOSSIP_PORT)).await.map_err(|e| e.to_string())?;
    // Node ids are 1-based, as the world numbers its canon nodes.
    let node_id = index as u64 + 1;
    let me = &names[index];
    let ip = turmoil::lookup(me.as_str());
    let seeds = names.iter().enumerate().filter(|(j, _)| *j != index).map(|(_, n)| gossip_addr(n)).collect();
    let identity = NodeIdentity {
        node_id,
        renewal: incarnation << 32,
        gossip_addr: gossip_addr(me),
        meta: NodeMeta {
            region: region.to_owned(),
            roles: Roles::HOST.with(Roles::CANON_VOTER).with(Roles::API),
            http_addr: Some(SocketAddr::new(ip, http_port)),
            canon_addr: Some(SocketAddr::new(ip, raft_port)),
        },
    };
    let cluster_size = u32::try_from(names.len()).unwrap_or(u32::MAX).max(3);
    let rng_seed = seed ^ (node_id << 40) ^ incarnation;
    let mut config = MembershipConfig::lan("sim", identity, seeds, cluster_size, rng_seed);
    config.secret = Some(Arc::new(crate::keys::cluster_secret(seed)));
    let (handle, mut events) = vcos_cluster::spawn(socket, config).map_err(|e| e.to_string())?;
    // Events are for operators; the view is what placement reads. Drain them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::imvu_of;

    #[test]
    fn imvu_prefixes_are_cut_from_record_keys() {
        assert_eq!(imvu_of("t/default/imvu/00000000000000004097/snap").as_deref(), Some("t/default/imvu/00000000000000004097/"));
        assert_eq!(imvu_of("t/default/imvu/00000000000000004097/h/000001").as_deref(), Some("t/default/imvu/00000000000000004097/"));
        assert_eq!(imvu_of("node/next_id"), None);
        assert_eq!(imvu_of("cluster/leases/001"), None);
    }
}
