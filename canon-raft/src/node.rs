//! [`CanonNode`]: one process's part of the Canon Memory Layer.
//!
//! A node hosts one Raft group per region it knows: its home region's group, where it is a
//! voter (or a learner while joining), and every other region's group as a learner, which is
//! how each region reads every other region's canon. Groups live under
//! `{data_dir}/groups/{region}/`, one redb file each; a restart reopens every group found there.
//!
//! The node is the client of its groups too: [`CanonNode::write`] sends a request to the
//! group's leader (locally, or forwarded over the canon connection to the leader: writes to a
//! follower are *forwarded*, not redirected, so a caller never needs to know the leader), and
//! retries on leader changes with the same `(client_id, seq)`, which the state machine applies
//! once. A write returns after the entry is committed on a quorum (each voter fsyncs before it
//! acknowledges) and applied on this node too, so a read here right after sees it.
//!
//! Reads: [`CanonNode::read_barrier`] gives linearizable reads by *read index*: the leader
//! confirms its leadership with a quorum round trip (openraft's `ensure_linearizable`) and
//! returns its commit index; the reading node waits until it has applied that far. No leader
//! lease is used, so correctness does not depend on clock drift. Stale reads skip the barrier
//! and report the replica's lag ([`CanonNode::lag`]).
//!
//! Deadlines: every write and read barrier ends by the node's request deadline
//! ([`NodeConfig::request_deadline`], default [`CANON_REQUEST_DEADLINE_MS`]); a region without
//! a quorum answers [`CanonError::Unavailable`] then, never a wait without end. The leader
//! bounds forwarded writes and read-index rounds by the same deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage as _;
use openraft::{ServerState, SnapshotPolicy};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::constants::{CANON_REQUEST_DEADLINE_MS, CANON_SHUTDOWN_MAX_MS};
use crate::network::{CanonNetwork, PeerSet};
use crate::early_append::EarlyAppend;
use crate::snapshot_schedule::SnapshotEvery;
use crate::transport::{CallError, Transport};
use crate::types::{NodeInfo, Op, Request, Response};
use crate::wire::{Refusal, Reply, Rpc};
use crate::{CanonRaft, StateReader};

/// How long a forwarded membership change may take (adding a learner waits for it to catch up).
pub const MEMBERSHIP_CALL_MAX: Duration = Duration::from_secs(60);
/// How long one forwarded request waits for the leader's answer before trying again (the
/// request is deduplicated, so a retry of one that did apply is harmless).
pub const FORWARD_ATTEMPT_MAX: Duration = Duration::from_secs(3);
/// Pause between retries while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The longest region name (it names a directory).
pub const REGION_LEN_MAX: usize = 64;

/// Errors of the canon node.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CanonError {
    /// This node hosts no group for that region.
    #[error("unknown region {0:?}: this node hosts no canon group for it")]
    UnknownRegion(String),
    /// A region name that cannot be one.
    #[error("invalid region name {0:?}: use 1 to 64 of A-Z a-z 0-9 - _")]
    InvalidRegion(String),
    /// No leader answered in time.
    #[error("region {region}: no leader reachable within {waited:?} ({last})")]
    NoLeader {
        /// The region.
        region: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure seen.
        last: String,
    },
    /// The change was refused (quorum safety, unknown node, …).
    #[error("{0}")]
    Refused(String),
    /// Storage or Raft failed on the node that handled the request.
    #[error("canon failure: {0}")]
    Failed(String),
    /// This node was removed from its region's group and serves no more.
    #[error("this node was removed from the canon group of region {0} and no longer serves")]
    Removed(String),
    /// The region's group did not answer within the request deadline: no leader, or a leader
    /// without a quorum. Retryable; a write that ended so may still be applied later (once).
    #[error("region {region}: canon unavailable, no quorum answered within {deadline_ms} ms ({reason}); retry later")]
    Unavailable {
        /// The region.
        region: String,
        /// The deadline that passed.
        deadline_ms: u64,
        /// What the last attempt saw.
        reason: String,
    },
    /// A node asked to be a voter was added as a learner but not promoted (it did not catch
    /// up in time); it stays a learner, which never blocks writes.
    #[error("{0}")]
    NotPromoted(String),
}

impl CanonError {
    /// Whether retrying the same request later may succeed (no quorum, no leader).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::NoLeader { .. })
    }
}

/// Checks a region name (it becomes a directory name and a frame field).
pub fn validate_region(region: &str) -> Result<(), CanonError> {
    let ok = !region.is_empty()
        && region.len() <= REGION_LEN_MAX
        && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CanonError::InvalidRegion(region.to_owned()))
    }
}

/// The cluster id that frames carry, from the cluster's name (FNV-1a, stable across builds).
pub fn cluster_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// How a node is set up.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster.
    pub node_id: u64,
    /// The cluster's name; frames of another cluster are refused.
    pub cluster: String,
    /// Where this node is reached, and its home region.
    pub info: NodeInfo,
    /// Where the groups live.
    pub data_dir: PathBuf,
    /// The page cache of each group's file (see [`crate::open_with`]).
    pub cache_bytes: usize,
    /// openraft's settings (timeouts, log kept behind a snapshot). Its snapshot policy is
    /// replaced by `snapshot_every` when that is set.
    pub raft: openraft::Config,
    /// How far apart snapshots are built (see [`crate::snapshot_schedule`]); `None` leaves
    /// openraft's `raft.snapshot_policy` in charge.
    pub snapshot_every: Option<SnapshotEvery>,
    /// Opens a region's database instead of a file under `data_dir` (the simulator).
    pub storage: Option<DbOpener>,
    /// This start's number instead of the count kept in `data_dir` (the simulator).
    pub incarnation: Option<u64>,
    /// The server-side deadline of every canon request (see [`CANON_REQUEST_DEADLINE_MS`]).
    pub request_deadline: Duration,
    /// The cluster secret every connection proves (see [`crate::auth`]); `None` accepts any
    /// peer that names the cluster, for tests of this crate only (`vcos up` and the simulator
    /// always set one; the node warns at start without it).
    pub secret: Option<crate::auth::ClusterSecret>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node_id", &self.node_id)
            .field("cluster", &self.cluster)
            .field("info", &self.info)
            .field("data_dir", &self.data_dir)
            .field("cache_bytes", &self.cache_bytes)
            .field("custom_storage", &self.storage.is_some())
            .field("request_deadline", &self.request_deadline)
            .field("snapshot_every", &self.snapshot_every)
            .finish_non_exhaustive()
    }
}

/// Opens the files of a region's group: the state's redb database and the log's files.
pub type DbOpener = Arc<dyn Fn(&str) -> Result<crate::GroupFiles, String> + Send + Sync>;

impl NodeConfig {
    /// Defaults for node `node_id` of `region`, stored under `data_dir`.
    pub fn new(node_id: u64, region: &str, data_dir: &Path) -> Self {
        let raft = openraft::Config {
            cluster_name: "vcos".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // Snapshots are built when `snapshot_every` says (in proportion to the state);
            // 5 k entries stay behind them so that a follower a little behind catches up
            // from the log.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 5_000,
            max_payload_entries: 512,
            ..Default::default()
        };
        Self {
            node_id,
            cluster: "vcos".into(),
            info: NodeInfo { raft_addr: String::new(), http_addr: String::new(), region: region.to_owned() },
            data_dir: data_dir.to_owned(),
            cache_bytes: crate::constants::CACHE_BYTES_DEFAULT,
            raft,
            snapshot_every: Some(SnapshotEvery::default()),
            storage: None,
            incarnation: None,
            request_deadline: Duration::from_millis(CANON_REQUEST_DEADLINE_MS),
            secret: None,
        }
    }
}

/// When this node last heard from a group's leader, and the commit index it announced.
#[derive(Debug, Clone, Copy, Default)]
struct Contact {
    at: Option<Instant>,
    leader_commit: u64,
}

/// One Raft group hosted by this node.
pub struct Group {
    region: String,
    raft: CanonRaft,
    reader: StateReader,
    contact: Mutex<Contact>,
    /// Set when this node reopened the group as the leader it was before it stopped: see
    /// [`LeaderRestartFloor`].
    restart_floor: Option<LeaderRestartFloor>,
    /// The task that starts the builds `snapshot_every` asks for; it ends with the group.
    _snapshots: Option<AbortOnDropHandle<()>>,
}

/// The last log index a restarted leader held when it reopened its group, and the term it
/// leads.
///
/// openraft 0.9 restarts a node whose stored vote is its own committed vote as the leader of
/// that same term, without proposing a blank entry. Its read index is then the larger of its
/// stored commit index and the first entry of its term. The stored commit index is written
/// without an fsync (openraft re-derives it from a quorum) and the first entry of the term was
/// committed long ago, so both can sit below entries the leader committed, and acknowledged,
/// before it stopped: a read at that index misses acknowledged writes (found by the canon
/// scenario, seed 1693). Raft's rule is that a leader knows what is committed only once an
/// entry it proposed in its term is committed; for a restarted leader, every entry in its log
/// when it reopened may be committed. So while it still leads that term, its read index is
/// at least its last log index at reopening. (It never truncates its own log in that term,
/// so those entries commit as soon as a quorum answers.)
#[derive(Debug, Clone, Copy)]
struct LeaderRestartFloor {
    leader: openraft::LeaderId<u64>,
    last_log_index: u64,
}

impl LeaderRestartFloor {
    /// The floor for node `id` given its stored vote and last log index, if it reopens as a
    /// leader.
    fn of(id: u64, vote: Option<&openraft::Vote<u64>>, last_log_index: Option<u64>) -> Option<Self> {
        let vote = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(id))?;
        Some(Self { leader: *vote.leader_id(), last_log_index: last_log_index? })
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("region", &self.region).finish_non_exhaustive()
    }
}

impl Group {
    /// The region whose canon this group replicates.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The openraft node.
    pub fn raft(&self) -> &CanonRaft {
        &self.raft
    }

    /// Reads of the applied state (no barrier: combine with [`CanonNode::read_barrier`]).
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    pub(crate) fn record_contact(&self, leader_commit: u64) {
        let mut contact = self.contact.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        contact.at = Some(Instant::now());
        contact.leader_commit = contact.leader_commit.max(leader_commit);
    }

    fn contact(&self) -> Contact {
        *self.contact.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current leader's id and address, as this node knows them.
    pub fn leader(&self) -> Option<(u64, NodeInfo)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let info = metrics.membership_config.membership().get_node(&leader).cloned()?;
        Some((leader, info))
    }

    /// The index this node has applied up to.
    pub fn applied_index(&self) -> u64 {
        self.reader.applied_index()
    }

    /// Confirms leadership with a quorum and returns the read index, without openraft's
    /// `ensure_linearizable` wait (see [`StateReader::wait_applied`] for why).
    ///
    /// The vote is read before and after: a read index computed while this node still led the
    /// term it restarted in needs [`LeaderRestartFloor`], and the vote may move on between
    /// openraft's answer and a look at it afterwards (found by the canon scenario, seed 1354,
    /// with leaders sending entries early: the restarted leader of term 1 answered 28, then
    /// learned of term 2, and the floor of 32 was skipped, so a read missed an acknowledged
    /// write). Votes only grow, so the same vote before and after is the vote the answer was
    /// computed under; a different one is answered as a lost leadership (the reader retries).
    pub(crate) async fn leader_read_index(&self) -> Result<u64, RaftError<u64, openraft::error::CheckIsLeaderError<u64, NodeInfo>>> {
        let before = *self.raft.metrics().borrow().vote.leader_id();
        let (read_log_id, _) = self.raft.get_read_log_id().await?;
        let after = *self.raft.metrics().borrow().vote.leader_id();
        if before != after {
            return Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(openraft::error::ForwardToLeader::empty())));
        }
        let index = read_log_id.map_or(0, |id| id.index);
        Ok(match self.restart_floor {
            Some(floor) if floor.leader == after => index.max(floor.last_log_index),
            _ => index,
        })
    }

    /// Waits until this node applied `index`, at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.reader.wait_applied(index, timeout).await
    }
}

/// A replica's distance from its group's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// This node's role in the group.
    pub role: &'static str,
    /// The index this node applied.
    pub applied_index: u64,
    /// The highest commit index the leader announced to this node (its own on the leader).
    pub leader_commit: u64,
    /// Committed entries not yet applied here (`leader_commit - applied_index`).
    pub entries_behind: u64,
    /// Milliseconds since the leader last reached this node (`None`: never; 0 on the leader).
    pub contact_age_ms: Option<u64>,
}

/// One process's part of the canon: see the module docs.
#[derive(Clone)]
pub struct CanonNode {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CanonNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonNode").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// What peers must prove on every connection.
    pub(crate) secret: Option<Arc<crate::auth::ClusterSecret>>,
    pub(crate) id: u64,
    pub(crate) cluster_id: u64,
    pub(crate) info: NodeInfo,
    data_dir: PathBuf,
    cache_bytes: usize,
    storage: Option<DbOpener>,
    raft_config: Arc<openraft::Config>,
    snapshot_every: Option<SnapshotEvery>,
    pub(crate) peers: Arc<PeerSet>,
    groups: RwLock<BTreeMap<String, Arc<Group>>>,
    /// Serialises the creation of groups (two frames of a new region arrive together).
    creating: tokio::sync::Mutex<()>,
    /// Idle client sessions: `(client_id, next seq)`. See [`CanonNode::write`].
    sessions: Mutex<Vec<(u64, u64)>>,
    /// The next session slot to create.
    next_slot: AtomicU64,
    /// The high bits of this node's client ids: node id and incarnation.
    pub(crate) client_base: u64,
    removed: AtomicBool,
    bug_stale_follower_reads: AtomicBool,
    /// Where [`crate::wire::Rpc::App`] messages go (set once by the layer above).
    pub(crate) app: std::sync::OnceLock<Arc<dyn crate::app::AppHandler>>,
    pub(crate) request_deadline: Duration,
}

/// The file that counts this node's starts: part of its client id, so that sequence numbers
/// restarting at 1 after a restart are not taken for retries of old requests.
const INCARNATION_FILE: &str = "incarnation";

fn next_incarnation(data_dir: &Path) -> std::io::Result<u64> {
    use std::io::Write as _;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(INCARNATION_FILE);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = previous + 1;
    let tmp = data_dir.join(format!("{INCARNATION_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(next.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(next)
}

fn lock_mutex<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Node ids fit in 20 bits (client ids pack node id, incarnation and session slot).
pub const NODE_ID_MASK: u64 = 0xf_ffff;

fn lock_read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CanonNode {
    /// Opens the node's groups from `config.data_dir` (its home region's group is created if
    /// missing, uninitialised) and returns the node. Nothing is served until the caller runs
    /// [`CanonNode::serve`] on a listener; a fresh single node calls
    /// [`CanonNode::bootstrap`], a joining one [`CanonNode::join`].
    pub async fn start(config: NodeConfig, transport: Arc<dyn Transport>) -> Result<Self, CanonError> {
        validate_region(&config.info.region)?;
        if config.node_id == 0 || config.node_id > NODE_ID_MASK {
            return Err(CanonError::Failed(format!("node id {} is out of range 1..={NODE_ID_MASK}", config.node_id)));
        }
        let mut raft = config.raft.clone();
        if config.snapshot_every.is_some() {
            raft.snapshot_policy = SnapshotPolicy::Never;
        }
        let raft_config = Arc::new(raft.validate().map_err(|e| CanonError::Failed(format!("raft config: {e}")))?);
        let incarnation = match config.incarnation {
            Some(incarnation) => incarnation,
            None => next_incarnation(&config.data_dir)
                .map_err(|e| CanonError::Failed(format!("incarnation file in {}: {e}", config.data_dir.display())))?,
        };
        let cluster = cluster_id(&config.cluster);
        let secret = config.secret.clone().map(Arc::new);
        let transport: Arc<dyn Transport> = match &secret {
            Some(secret) => Arc::new(crate::auth::AuthTransport { inner: transport, secret: Arc::clone(secret) }),
            None => {
                tracing::warn!("no cluster secret: canon connections are not authenticated (tests only)");
                transport
            }
        };
        let inner = Arc::new(Inner {
            secret,
            id: config.node_id,
            cluster_id: cluster,
            info: config.info.clone(),
            data_dir: config.data_dir.clone(),
            cache_bytes: config.cache_bytes,
            storage: config.storage.clone(),
            raft_config,
            snapshot_every: config.snapshot_every,
            peers: Arc::new(PeerSet::new(cluster, transport)),
            groups: RwLock::default(),
            creating: tokio::sync::Mutex::new(()),
            sessions: Mutex::default(),
            next_slot: AtomicU64::new(0),
            client_base: ((config.node_id & NODE_ID_MASK) << 44) | ((incarnation & 0xf_ffff) << 24),
            removed: AtomicBool::new(false),
            bug_stale_follower_reads: AtomicBool::new(false),
            app: std::sync::OnceLock::new(),
            request_deadline: config.request_deadline.max(Duration::from_millis(1)),
        });
        let node = Self { inner };
        let groups_dir = config.data_dir.join("groups");
        let mut regions = vec![config.info.region.clone()];
        let stored = if config.storage.is_none() { std::fs::read_dir(&groups_dir).ok() } else { None };
        if let Some(entries) = stored {
            let mut found: Vec<String> =
                entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
            found.sort();
            regions.extend(found.into_iter().filter(|r| validate_region(r).is_ok()));
        }
        for region in regions {
            node.open_group(&region).await?;
        }
        Ok(node)
    }

    /// The cluster secret connections prove (`None`: unauthenticated, tests only).
    pub fn secret(&self) -> Option<crate::auth::ClusterSecret> {
        self.inner.secret.as_deref().cloned()
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The server-side deadline of every canon request on this node.
    pub fn request_deadline(&self) -> Duration {
        self.inner.request_deadline
    }

    /// The instant by which a request starting now must end.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.inner.request_deadline
    }

    pub(crate) fn unavailable(&self, region: &str, reason: String) -> CanonError {
        metrics::counter!("vcos_canon_unavailable_total").increment(1);
        let deadline_ms = u64::try_from(self.inner.request_deadline.as_millis()).unwrap_or(u64::MAX);
        CanonError::Unavailable { region: region.to_owned(), deadline_ms, reason }
    }

    /// Where this node is reached, and its home region.
    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    /// This node's home region.
    pub fn region(&self) -> &str {
        &self.inner.info.region
    }

    /// The group of `region`, if this node hosts one.
    pub fn group(&self, region: &str) -> Result<Arc<Group>, CanonError> {
        if self.inner.removed.load(Ordering::Acquire) {
            return Err(CanonError::Removed(self.region().to_owned()));
        }
        lock_read(&self.inner.groups).get(region).cloned().ok_or_else(|| CanonError::UnknownRegion(region.to_owned()))
    }

    /// The home region's group.
    pub fn home(&self) -> Result<Arc<Group>, CanonError> {
        self.group(self.region())
    }

    /// Every hosted group, in region order.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        lock_read(&self.inner.groups).values().cloned().collect()
    }

    /// Opens (or creates, uninitialised) the group of `region`.
    pub(crate) async fn open_group(&self, region: &str) -> Result<Arc<Group>, CanonError> {
        validate_region(region)?;
        let _creating = self.inner.creating.lock().await;
        if let Some(group) = lock_read(&self.inner.groups).get(region) {
            return Ok(Arc::clone(group));
        }
        let (mut log, sm) = match &self.inner.storage {
            Some(open) => {
                let files = open(region).map_err(|e| CanonError::Failed(format!("open canon group {region}: {e}")))?;
                crate::open_on(files).map_err(|e| CanonError::Failed(format!("open canon group {region}: {e}")))?
            }
            None => {
                let dir = self.inner.data_dir.join("groups").join(region);
                crate::open_with(&dir, self.inner.cache_bytes).map_err(|e| CanonError::Failed(format!("open canon group {region} in {}: {e}", dir.display())))?
            }
        };
        let vote = log.read_vote().await.map_err(|e| CanonError::Failed(format!("open canon group {region}: {e}")))?;
        let log_state = log.get_log_state().await.map_err(|e| CanonError::Failed(format!("open canon group {region}: {e}")))?;
        let restart_floor = LeaderRestartFloor::of(self.inner.id, vote.as_ref(), log_state.last_log_id.map(|id| id.index));
        let reader = sm.reader();
        let schedule = sm.schedule();
        if let Some(every) = self.inner.snapshot_every {
            sm.set_snapshot_every(every);
        }
        let network = CanonNetwork::new(Arc::clone(&self.inner.peers), region.to_owned(), self.inner.id);
        let early_log = log.clone();
        let raft = CanonRaft::new(self.inner.id, Arc::clone(&self.inner.raft_config), network.clone(), log, sm)
            .await
            .map_err(|e| CanonError::Failed(format!("start raft for {region}: {e}")))?;
        early_log.send_early(Arc::new(EarlyAppend::new(self.inner.id, raft.metrics(), network)));
        let snapshots = self
            .inner
            .snapshot_every
            .map(|_| AbortOnDropHandle::new(tokio::spawn(crate::snapshot_schedule::run(schedule, raft.clone()))));
        let group = Arc::new(Group { region: region.to_owned(), raft, reader, contact: Mutex::default(), restart_floor, _snapshots: snapshots });
        lock_write(&self.inner.groups).insert(region.to_owned(), Arc::clone(&group));
        tracing::info!(node = self.inner.id, region, "canon group opened");
        Ok(group)
    }

    /// Makes this node the only voter of its home region's group if the group was never
    /// initialised (a fresh single node); does nothing on a node that already has a membership.
    pub async fn bootstrap(&self) -> Result<(), CanonError> {
        let home = self.home()?;
        let initialized = home.raft.is_initialized().await.map_err(|e| CanonError::Failed(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
            home.raft.initialize(members).await.map_err(|e| CanonError::Failed(format!("initialise {}: {e}", home.region)))?;
            tracing::info!(node = self.inner.id, region = %home.region, "canon group initialised with this node as its only voter");
        }
        Ok(())
    }

    /// Initialises the home group with `members` as its voters, if it never had a membership
    /// (a cluster whose members are known up front, as in the simulator).
    pub async fn bootstrap_with(&self, members: BTreeMap<u64, NodeInfo>) -> Result<(), CanonError> {
        let home = self.home()?;
        if !home.raft.is_initialized().await.map_err(|e| CanonError::Failed(e.to_string()))? {
            home.raft.initialize(members).await.map_err(|e| CanonError::Failed(format!("initialise {}: {e}", home.region)))?;
        }
        Ok(())
    }

    /// Planted bug for the simulator's checkers: followers answer read barriers at once,
    /// without asking the leader for its read index (so they may serve stale reads).
    #[doc(hidden)]
    pub fn plant_bug_follower_reads_without_read_index(&self, on: bool) {
        self.inner.bug_stale_follower_reads.store(on, Ordering::Relaxed);
    }

    /// Whether the home group has a membership (initialised here, or joined).
    pub async fn is_member(&self) -> Result<bool, CanonError> {
        self.home()?.raft.is_initialized().await.map_err(|e| CanonError::Failed(e.to_string()))
    }

    /// Applies `op` through `region`'s leader and returns its response and log index. See the
    /// module docs for forwarding, retries and when it returns.
    ///
    /// Exactly-once: the request travels as `(client_id, seq)` and the state machine keeps the
    /// last sequence number of every client, answering a retry with the stored response. That
    /// is only sound for a client with one request in flight, so each write borrows a *session*
    /// (a client id of this node) for its duration: concurrent writes use distinct sessions,
    /// and a session's sequence numbers increase write after write.
    ///
    /// Ends by the request deadline ([`CanonNode::request_deadline`]) with
    /// [`CanonError::Unavailable`] when the region has no quorum.
    pub async fn write(&self, region: &str, op: Op) -> Result<(Response, u64), CanonError> {
        self.write_by(region, op, self.deadline()).await
    }

    /// [`CanonNode::write`] ending by `deadline` instead of the request deadline from now.
    pub async fn write_by(&self, region: &str, op: Op, deadline: Instant) -> Result<(Response, u64), CanonError> {
        let (client_id, seq) = self.take_session();
        let result = self.submit_by(region, Request { client_id, seq, op }, deadline).await;
        self.end_session(client_id, seq, result)
    }

    /// Returns a session after its request finished, and turns a stale-sequence answer into
    /// an error. The session is reused even after a failure: a late copy of the request is
    /// then older than the session's next one and is refused as stale, not applied out of order.
    fn end_session(
        &self,
        client_id: u64,
        seq: u64,
        result: Result<(Response, u64), CanonError>,
    ) -> Result<(Response, u64), CanonError> {
        lock_mutex(&self.inner.sessions).push((client_id, seq + 1));
        match result {
            Ok((Response::StaleSequence { last_seq }, _)) => Err(CanonError::Failed(format!(
                "client {client_id:#x} sent seq {seq} after seq {last_seq} was applied; nothing was applied"
            ))),
            other => other,
        }
    }

    fn take_session(&self) -> (u64, u64) {
        if let Some(session) = lock_mutex(&self.inner.sessions).pop() {
            return session;
        }
        let slot = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        (self.inner.client_base | slot, 1)
    }

    /// Sends `request` to `region`'s leader until it is applied, or the request deadline
    /// passes ([`CanonError::Unavailable`]).
    pub async fn submit(&self, region: &str, request: Request) -> Result<(Response, u64), CanonError> {
        self.submit_by(region, request, self.deadline()).await
    }

    /// [`CanonNode::submit`] ending by `deadline`.
    pub async fn submit_by(&self, region: &str, request: Request, deadline: Instant) -> Result<(Response, u64), CanonError> {
        let group = self.group(region)?;
        let mut last = String::from("no attempt finished");
        loop {
            if Instant::now() >= deadline {
                return Err(self.unavailable(region, last));
            }
            // The attempt itself is bounded: a local leader without a quorum never answers.
            match tokio::time::timeout_at(deadline, self.try_submit(&group, &request, deadline)).await {
                Ok(Ok((response, log_index))) => {
                    // Applied on the leader; wait for it here too, so a local read sees it.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if !group.wait_applied(log_index, remaining.max(Duration::from_millis(100))).await {
                        tracing::warn!(region, log_index, "write committed but not yet applied on this node");
                    }
                    return Ok((response, log_index));
                }
                Ok(Err(Attempt::Retry(reason))) => last = reason,
                Ok(Err(Attempt::Fail(error))) => return Err(error),
                Err(_) => {
                    last = "the leader did not commit it in time (it may still apply)".into();
                    return Err(self.unavailable(region, last));
                }
            }
            tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
        }
    }

    async fn try_submit(&self, group: &Group, request: &Request, deadline: Instant) -> Result<(Response, u64), Attempt> {
        let attempt_max = FORWARD_ATTEMPT_MAX.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
        match group.leader() {
            Some((leader, _)) if leader == self.inner.id => match group.raft.client_write(request.clone()).await {
                Ok(done) => Ok((done.data, done.log_id.index)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Attempt::Retry("leadership moved".into())),
                Err(e) => Err(Attempt::Fail(CanonError::Failed(e.to_string()))),
            },
            Some((leader, info)) => {
                let reply = self
                    .call(&info.raft_addr, &group.region, leader, Rpc::ClientWrite(request.clone()), attempt_max)
                    .await
                    .map_err(|e| Attempt::Retry(e.to_string()))?;
                match reply {
                    Reply::ClientWrite { response, log_index } => Ok((response, log_index)),
                    Reply::Refused(Refusal::NotLeader { .. }) => Err(Attempt::Retry(format!("node {leader} is no longer the leader"))),
                    // A leader that stopped or failed: another one may take over; the request
                    // is deduplicated, so retrying is safe.
                    Reply::Refused(refusal) => Err(Attempt::Retry(format!("node {leader}: {refusal}"))),
                    other => Err(Attempt::Fail(CanonError::Failed(format!("unexpected reply {other:?}")))),
                }
            }
            None => Err(Attempt::Retry("no leader known".into())),
        }
    }

    /// A read barrier for linearizable reads of `region`: returns once this node applied
    /// everything committed before the call (read index confirmed by a quorum), or
    /// [`CanonError::Unavailable`] when that cannot happen by the request deadline.
    pub async fn read_barrier(&self, region: &str) -> Result<u64, CanonError> {
        self.read_barrier_by(region, self.deadline()).await
    }

    /// [`CanonNode::read_barrier`] ending by `deadline`.
    pub async fn read_barrier_by(&self, region: &str, deadline: Instant) -> Result<u64, CanonError> {
        let group = self.group(region)?;
        let mut last = String::from("no attempt finished");
        loop {
            if Instant::now() >= deadline {
                return Err(self.unavailable(region, last));
            }
            let attempt_max = FORWARD_ATTEMPT_MAX.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1));
            let attempt = match group.leader() {
                Some((leader, _)) if leader == self.inner.id => match tokio::time::timeout_at(deadline, group.leader_read_index()).await {
                    Ok(Ok(index)) => Ok(index),
                    Ok(Err(RaftError::APIError(e))) => Err(Attempt::Retry(e.to_string())),
                    Ok(Err(RaftError::Fatal(e))) => Err(Attempt::Fail(CanonError::Failed(e.to_string()))),
                    Err(_) => Err(Attempt::Retry("this leader heard no quorum in time".into())),
                },
                Some(_) if self.inner.bug_stale_follower_reads.load(Ordering::Relaxed) => return Ok(group.applied_index()),
                Some((leader, info)) => match self.call(&info.raft_addr, region, leader, Rpc::ReadIndex, attempt_max).await {
                    Ok(Reply::ReadIndex(index)) => Ok(index),
                    Ok(other) => Err(Attempt::Retry(format!("{other:?}"))),
                    Err(e) => Err(Attempt::Retry(e.to_string())),
                },
                None => Err(Attempt::Retry("no leader known".into())),
            };
            match attempt {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if group.wait_applied(index, remaining).await {
                        return Ok(index);
                    }
                    last = format!("did not apply up to the read index {index} in time");
                }
                Err(Attempt::Retry(reason)) => last = reason,
                Err(Attempt::Fail(error)) => return Err(error),
            }
            tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
        }
    }

    /// How far this node's replica of `region` is behind its leader.
    pub fn lag(&self, region: &str) -> Result<Lag, CanonError> {
        let group = self.group(region)?;
        let metrics = group.raft.metrics().borrow().clone();
        let applied_index = metrics.last_applied.map_or(0, |id| id.index);
        let role = role_name(metrics.state, &metrics, self.inner.id);
        let (leader_commit, contact_age_ms) = if metrics.state == ServerState::Leader {
            (applied_index, Some(0))
        } else {
            let contact = group.contact();
            let age = contact.at.map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX));
            (contact.leader_commit, age)
        };
        let entries_behind = leader_commit.saturating_sub(applied_index);
        Ok(Lag { role, applied_index, leader_commit, entries_behind, contact_age_ms })
    }

    /// Sends one request to node `to` at `addr`.
    pub(crate) async fn call(&self, addr: &str, region: &str, to: u64, rpc: Rpc, timeout: Duration) -> Result<Reply, CallError> {
        self.inner.peers.get(addr).call(region, self.inner.id, to, rpc, timeout).await
    }

    /// Whether this node was removed from its home group (it then stops serving): told so by
    /// the group's leader, or seen in the membership it replicated.
    pub fn check_removed(&self) -> bool {
        if self.inner.removed.load(Ordering::Acquire) {
            return true;
        }
        let Some(home) = lock_read(&self.inner.groups).get(self.region()).cloned() else {
            return false;
        };
        let removed = {
            let metrics = home.raft.metrics();
            let metrics = metrics.borrow();
            let was_member = metrics.membership_config.log_id().is_some();
            was_member && metrics.membership_config.membership().get_node(&self.inner.id).is_none()
        };
        if removed {
            self.mark_removed(0);
        }
        removed
    }

    /// Records that this node was removed from its home group (`by`: the leader that said so).
    pub(crate) fn mark_removed(&self, by: u64) {
        if !self.inner.removed.swap(true, Ordering::AcqRel) {
            tracing::warn!(node = self.inner.id, region = self.region(), by, "removed from the canon group: no longer serving");
        }
    }

    /// Resolves when a group's Raft stopped on a fatal error (a failed fsync, a storage
    /// error), with the reason. A node in that state serves nothing useful: its process should
    /// exit and be restarted, recovering from what is on disk (retrying an fsync that failed
    /// is not safe: the kernel may have dropped the dirty pages).
    pub async fn failed(&self) -> String {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            for group in self.groups() {
                if let Err(fatal) = &group.raft.metrics().borrow().running_state {
                    return format!("canon group {} stopped: {fatal}", group.region);
                }
            }
        }
    }

    /// Stops every group's Raft (the node answers nothing afterwards). Bounded: a group
    /// whose Raft does not stop within [`CANON_SHUTDOWN_MAX_MS`] is left behind (its tasks end
    /// with the process); the groups stop concurrently, so the whole call takes at most that.
    pub async fn shutdown(&self) {
        let max = Duration::from_millis(CANON_SHUTDOWN_MAX_MS);
        let stops = self.groups().into_iter().map(|group| async move {
            match tokio::time::timeout(max, group.raft.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(region = %group.region, error = %e, "raft shutdown"),
                Err(_) => tracing::warn!(region = %group.region, waited_ms = CANON_SHUTDOWN_MAX_MS, "raft did not stop in time; leaving it"),
            }
        });
        futures_util::future::join_all(stops).await;
    }
}

/// The role of a node in a group, for status output.
pub(crate) fn role_name(state: ServerState, metrics: &openraft::RaftMetrics<u64, NodeInfo>, id: u64) -> &'static str {
    let membership = metrics.membership_config.membership();
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Follower | ServerState::Learner => {
            if membership.voter_ids().any(|v| v == id) {
                "follower"
            } else if membership.get_node(&id).is_some() {
                "learner"
            } else {
                "joining"
            }
        }
    }
}

/// One try of a request: retry (leader change, unreachable) or fail for good.
enum Attempt {
    Retry(String),
    Fail(CanonError),
}
