//! The swarm driver: one coordinator task per swarm around [`SwarmCore`], and the pullers of
//! its members. Every decision is the core's; this file moves items and writes canon.

use std::collections::{BTreeMap, VecDeque};
use std::sync::RwLock;

use tokio::sync::{mpsc, oneshot};
use vcos_supervision::{
    ChildSpec, Directive, ExitReason, Intensity, RestartType, Strategy, Supervisor,
};

use super::core::{Completion, Failure, ItemStatus, MemberRef, SwarmCore};
use super::records::*;
use crate::error::ActorError;
use crate::ids::{Caller, ImvuId, ImvuKey, SwarmId, SwarmKey, TenantId};
use crate::records::{decode, encode};
use crate::runtime::Runtime;
use crate::ownership::Fence;
use crate::store::{commit_durable, CanonWrite, StoreError};

/// Commands queued for a coordinator, at most.
const SWARM_QUEUE_LEN_MAX: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, ActorError>>;

/// What a member made of an item.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(serde_json::Value),
    Crashed(String),
    /// The item is not a message the member's kind takes: it never will be.
    Refused(String),
    MemberGone(String),
    Retry,
}

pub(crate) enum SwarmCmd {
    Submit {
        items: Vec<(u64, serde_json::Value)>,
        reply: Reply<Vec<u64>>,
    },
    Pull {
        member: MemberRef,
        reply: oneshot::Sender<Option<(u64, serde_json::Value)>>,
    },
    Finish {
        item: u64,
        member: MemberRef,
        outcome: Outcome,
    },
    Info {
        reply: oneshot::Sender<SwarmInfo>,
    },
    AwaitItem {
        item: u64,
        reply: Reply<serde_json::Value>,
    },
    OpenVote {
        id: u64,
        proposal: String,
        options: Vec<String>,
        quorum: Option<u32>,
        reply: Reply<VoteRecord>,
    },
    CastVote {
        vote: u64,
        member: MemberRef,
        choice: String,
        reply: Reply<VoteRecord>,
    },
    Stop,
}

/// A running coordinator: its queue and the fence it writes under.
type Running = (mpsc::Sender<SwarmCmd>, Option<Fence>);

/// The node's swarms, by key.
#[derive(Default)]
pub(crate) struct Registry {
    /// The coordinators running here, with the fence each writes under.
    swarms: RwLock<BTreeMap<SwarmKey, Running>>,
    /// One recovery at a time: two requests racing for a swarm start one coordinator.
    recovering: tokio::sync::Mutex<()>,
}

impl Registry {
    fn entry(&self, key: &SwarmKey) -> Option<Running> {
        self.swarms.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn insert(&self, key: SwarmKey, tx: mpsc::Sender<SwarmCmd>, fence: Option<Fence>) {
        self.swarms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (tx, fence));
    }

    fn remove(&self, key: &SwarmKey) {
        self.swarms.write().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    pub(crate) fn all(&self) -> Vec<mpsc::Sender<SwarmCmd>> {
        self.swarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(tx, _)| tx.clone())
            .collect()
    }
}

/// The fence a coordinator of `key` writes under on this node: a swarm is placed like the
/// IMVU with its id (swarm ids share the IMVU id space), so in a cluster only the node holding
/// that bucket may coordinate it, and a coordinator whose node lost the bucket can commit
/// nothing more (the canon refuses its stale epoch). An error: this node does not hold it.
pub(crate) fn fence_of(runtime: &Runtime, key: &SwarmKey) -> Result<Option<Fence>, ActorError> {
    let as_imvu = ImvuKey { tenant: key.tenant, id: ImvuId(key.id.0) };
    runtime.ownership().fence(&as_imvu, runtime.clock().now_ms()).map_err(|e| match e {
        ActorError::Unavailable(reason) => ActorError::Unavailable(format!("swarm {key}: {reason}")),
        other => other,
    })
}

/// Whether swarm `key` exists (its record is in canon; any node of the region can read it).
pub(crate) fn exists(runtime: &Runtime, key: &SwarmKey) -> Result<(), ActorError> {
    if runtime.swarms().entry(key).is_some() || runtime.store().get(&spec_key(key))?.is_some() {
        return Ok(());
    }
    Err(ActorError::not_found("swarm", key))
}

/// The coordinator of `key` on this node: the running one if it still writes under the fence
/// this node holds now; else (recovered here from canon, or moved elsewhere) it is started
/// from canon when this node holds the swarm's bucket, and refused with a retryable error
/// when it does not.
pub(crate) async fn coordinator(runtime: &Runtime, key: &SwarmKey) -> Result<mpsc::Sender<SwarmCmd>, ActorError> {
    let fence = fence_of(runtime, key)?;
    if let Some((tx, held)) = runtime.swarms().entry(key) {
        if fence == held && !tx.is_closed() {
            return Ok(tx);
        }
    }
    // One at a time from here: two requests racing for a swarm start one coordinator.
    let _one_at_a_time = runtime.swarms().recovering.lock().await;
    if let Some((tx, held)) = runtime.swarms().entry(key) {
        if fence == held && !tx.is_closed() {
            return Ok(tx);
        }
        // The bucket moved (or came back under a new epoch): this coordinator can no longer
        // commit. It must be gone before another starts from canon: a successor reading canon
        // while a credit of its predecessor is in flight would hand that item out again. (A
        // lease that cannot be proven for a moment is no reason: the request is refused above
        // and the coordinator kept.)
        let _ = tx.try_send(SwarmCmd::Stop);
        if tokio::time::timeout(COORDINATOR_STOP_MAX, tx.closed()).await.is_err() {
            return Err(ActorError::Unavailable(format!("swarm {key}: its previous coordinator on this node is still stopping; retry")));
        }
        runtime.swarms().remove(key);
    }
    let spec = spec_key(key);
    let Some(bytes) = runtime.store().get(&spec)? else {
        return Err(ActorError::not_found("swarm", key));
    };
    let record: SwarmRecord = decode(&spec, &bytes)?;
    restart(runtime, *key, record, fence)?;
    tracing::info!(swarm = %key, "swarm coordinator started from canon on this node");
    runtime.swarms().entry(key).map(|(tx, _)| tx).ok_or_else(|| ActorError::not_found("swarm", key))
}

struct Coordinator {
    runtime: Runtime,
    key: SwarmKey,
    record: SwarmRecord,
    core: SwarmCore,
    payloads: BTreeMap<u64, serde_json::Value>,
    waiting: VecDeque<(MemberRef, oneshot::Sender<Option<(u64, serde_json::Value)>>)>,
    awaiting: BTreeMap<u64, Vec<Reply<serde_json::Value>>>,
    supervisor: Supervisor<MemberRef>,
    votes: BTreeMap<u64, VoteRecord>,
    /// The bucket fence every write carries (`None`: a node that owns everything).
    fence: Option<Fence>,
    /// A write was refused for a stale fence: another node coordinates the swarm now.
    fenced_out: bool,
}

fn strategy(s: SwarmStrategy) -> Strategy {
    match s {
        SwarmStrategy::OneForOne => Strategy::OneForOne,
        SwarmStrategy::OneForAll => Strategy::OneForAll,
        SwarmStrategy::RestForOne => Strategy::RestForOne,
    }
}

/// Validates a spec, creates member IMVUs, records the swarm, starts it.
pub(crate) async fn create(
    runtime: &Runtime,
    tenant: &TenantId,
    spec: SwarmSpec,
    caller: &Caller,
) -> Result<SwarmInfo, ActorError> {
    let bad = |field: &str, reason: String| ActorError::BadRequest {
        field: field.into(),
        reason,
    };
    let total_members = u64::from(spec.members) + spec.member_swarms.len() as u64;
    if total_members == 0 {
        return Err(bad(
            "members",
            "a swarm needs at least one member (members > 0 or member_swarms)".into(),
        ));
    }
    if total_members > u64::from(SWARM_MEMBERS_MAX) {
        return Err(bad(
            "members",
            format!("at most {SWARM_MEMBERS_MAX} members"),
        ));
    }
    if spec.members > 0 && spec.member_kind.is_none() {
        return Err(bad("member_kind", "required when members > 0".into()));
    }
    if spec.max_in_flight_per_member == 0
        || spec.max_in_flight_per_member > IN_FLIGHT_PER_MEMBER_MAX
    {
        return Err(bad(
            "max_in_flight_per_member",
            format!("must be 1..={IN_FLIGHT_PER_MEMBER_MAX}"),
        ));
    }
    if spec.max_attempts == 0 {
        return Err(bad("max_attempts", "must be at least 1".into()));
    }
    let restarts_max = vcos_supervision::constants::INTENSITY_RESTARTS_MAX;
    if spec.max_restarts > restarts_max {
        return Err(bad("max_restarts", format!("at most {restarts_max}")));
    }
    if spec.restart_period_ms == 0 {
        return Err(bad("restart_period_ms", "must be positive".into()));
    }
    let unique: std::collections::BTreeSet<&u64> = spec.member_swarms.iter().collect();
    if unique.len() != spec.member_swarms.len() {
        return Err(bad("member_swarms", "a swarm joins at most once".into()));
    }
    let mut members = Vec::new();
    for sub in &spec.member_swarms {
        let sub_key = SwarmKey {
            tenant: tenant.clone(),
            id: SwarmId(*sub),
        };
        exists(runtime, &sub_key).map_err(|_| {
            bad(
                "member_swarms",
                format!("no swarm {sub} in tenant {tenant}"),
            )
        })?;
        members.push(MemberRef::Swarm(*sub));
    }
    if let Some(kind) = &spec.member_kind {
        for _ in 0..spec.members {
            match runtime.create_placed(tenant, kind, caller).await {
                Ok(info) => members.push(MemberRef::Imvu(info.key.id.0)),
                Err(e) => {
                    // No half-made swarms: terminate the members created so far.
                    for member in &members {
                        if let MemberRef::Imvu(id) = member {
                            let key = ImvuKey {
                                tenant: *tenant,
                                id: ImvuId(*id),
                            };
                            let _ = runtime
                                .transition_placed(&key, crate::lifecycle::Transition::Terminate, caller)
                                .await;
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
    // Coordinated here: its id must fall in a bucket this node holds (a few tries in a
    // cluster of N nodes, about N; ids are plentiful).
    let mut attempt = 0;
    let (key, fence) = loop {
        let key = SwarmKey { tenant: *tenant, id: SwarmId(runtime.allocate_id().await?) };
        match fence_of(runtime, &key) {
            Ok(fence) => break (key, fence),
            Err(e) if attempt >= SWARM_ID_ATTEMPTS_MAX => return Err(e),
            Err(_) => attempt += 1,
        }
    };
    let record = SwarmRecord {
        spec,
        members,
        status: SwarmStatus::Running,
        created_unix_ms: runtime.clock().unix_ms(),
    };
    let mut writes = vec![CanonWrite::Put { key: spec_key(&key), value: encode(&record) }];
    writes.extend(fence.map(|f| runtime.ownership().guard(f)));
    commit_durable(&**runtime.store(), writes).await?;
    let core = SwarmCore::new(
        record.members.iter().copied(),
        record.spec.max_in_flight_per_member,
        record.spec.max_attempts,
    );
    let info = start(runtime, key, record, core, BTreeMap::new(), BTreeMap::new(), fence);
    Ok(info)
}

/// How long a coordinator whose bucket moved may take to stop before its successor starts.
const COORDINATOR_STOP_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Ids drawn, at most, looking for one in a bucket this node holds.
const SWARM_ID_ATTEMPTS_MAX: usize = 256;

fn start(
    runtime: &Runtime,
    key: SwarmKey,
    record: SwarmRecord,
    core: SwarmCore,
    payloads: BTreeMap<u64, serde_json::Value>,
    votes: BTreeMap<u64, VoteRecord>,
    fence: Option<Fence>,
) -> SwarmInfo {
    let (tx, rx) = mpsc::channel(SWARM_QUEUE_LEN_MAX);
    let mut supervisor = Supervisor::new(
        strategy(record.spec.strategy),
        Intensity {
            max_restarts: record.spec.max_restarts,
            period_ms: record.spec.restart_period_ms,
        },
    );
    for member in &record.members {
        // Members are few (SWARM_MEMBERS_MAX < CHILDREN_MAX) and distinct.
        let _ = supervisor.add_child(ChildSpec {
            id: *member,
            restart: RestartType::Permanent,
            shutdown_timeout_ms: 0,
        });
    }
    let info = SwarmInfo {
        key: key.clone(),
        spec: record.spec.clone(),
        members: record.members.clone(),
        status: record.status.clone(),
        progress: core.progress(),
    };
    let running = record.status == SwarmStatus::Running;
    let coordinator = Coordinator {
        runtime: runtime.clone(),
        key: key.clone(),
        record,
        core,
        payloads,
        waiting: VecDeque::new(),
        awaiting: BTreeMap::new(),
        supervisor,
        votes,
        fence,
        fenced_out: false,
    };
    if running {
        for member in &coordinator.record.members {
            for _ in 0..coordinator.record.spec.max_in_flight_per_member {
                tokio::spawn(puller(runtime.clone(), key.clone(), *member, tx.clone()));
            }
        }
    }
    runtime.swarms().insert(key, tx, fence);
    tokio::spawn(coordinator.run(rx));
    info
}

/// Restarts every recorded swarm of every tenant (after a node restart).
pub(crate) async fn recover(runtime: &Runtime) -> Result<usize, ActorError> {
    let store = runtime.store().clone();
    let mut count = 0;
    for tenant in runtime.tenants() {
        let prefix = format!("t/{}/swarm/", tenant.id);
        let mut after: Option<String> = None;
        let mut specs = Vec::new();
        loop {
            let page = store.scan_prefix(&prefix, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, bytes) in page {
                if let Some(id) = k
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix("/spec"))
                {
                    let id: u64 = id
                        .parse()
                        .map_err(|_| ActorError::Store(format!("bad swarm key {k}")))?;
                    specs.push((id, decode::<SwarmRecord>(&k, &bytes)?));
                }
            }
        }
        for (id, record) in specs {
            let key = SwarmKey { tenant: tenant.id, id: SwarmId(id) };
            // In a cluster a node holds no bucket yet at start: its swarms start on their
            // owners, on the first request for them (`coordinator`).
            let Ok(fence) = fence_of(runtime, &key) else { continue };
            restart(runtime, key, record, fence)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Starts the coordinator of `key` from its records in canon: its items (pending and in
/// flight are handed out again; credits stay) and its votes.
fn restart(runtime: &Runtime, key: SwarmKey, record: SwarmRecord, fence: Option<Fence>) -> Result<(), ActorError> {
    let store = runtime.store().clone();
    let mut core = SwarmCore::new(record.members.iter().copied(), record.spec.max_in_flight_per_member, record.spec.max_attempts);
    let mut payloads = BTreeMap::new();
    let item_prefix = format!("{}item/", swarm_prefix(&key));
    let mut after: Option<String> = None;
    loop {
        let page = store.scan_prefix(&item_prefix, after.as_deref(), 4096)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, bytes) in page {
            let item: u64 = k[item_prefix.len()..].parse().map_err(|_| ActorError::Store(format!("bad item key {k}")))?;
            let rec: ItemRecord = decode(&k, &bytes)?;
            if matches!(rec.status, ItemStatus::Pending | ItemStatus::InFlight { .. }) {
                payloads.insert(item, rec.payload);
            }
            core.submit(item, rec.status, rec.attempts);
        }
    }
    let votes = store
        .scan_prefix(&format!("{}vote/", swarm_prefix(&key)), None, 10_000)?
        .into_iter()
        .map(|(k, b)| decode::<VoteRecord>(&k, &b).map(|v| (v.id, v)))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    start(runtime, key, record, core, payloads, votes, fence);
    Ok(())
}

/// One pull loop of a member: ask for an item, do it, report, repeat.
async fn puller(runtime: Runtime, swarm: SwarmKey, member: MemberRef, tx: mpsc::Sender<SwarmCmd>) {
    loop {
        let (reply, rx) = oneshot::channel();
        if tx.send(SwarmCmd::Pull { member, reply }).await.is_err() {
            return;
        }
        let Ok(Some((item, payload))) = rx.await else {
            return;
        };
        let outcome = run_item(&runtime, &swarm.tenant, member, payload).await;
        if tx
            .send(SwarmCmd::Finish {
                item,
                member,
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn run_item(
    runtime: &Runtime,
    tenant: &TenantId,
    member: MemberRef,
    payload: serde_json::Value,
) -> Outcome {
    match member {
        MemberRef::Imvu(id) => {
            let key = ImvuKey {
                tenant: tenant.clone(),
                id: ImvuId(id),
            };
            let caller = crate::ids::Caller::internal(tenant, "swarm");
            match runtime.ask_placed(&key, payload, &caller).await {
                Ok(result) => Outcome::Done(result),
                Err(ActorError::Crashed { reason, .. }) => Outcome::Crashed(reason),
                // The item is not a valid message for the member's kind: its own fault, for good.
                Err(e @ ActorError::BadRequest { .. }) => Outcome::Refused(e.to_string()),
                Err(
                    e @ (ActorError::Terminated(_)
                    | ActorError::NotFound { .. }
                    | ActorError::IllegalTransition { .. }),
                ) => Outcome::MemberGone(e.to_string()),
                Err(_) => {
                    // Full mailbox, stopping node, store trouble: not the item's fault; back off.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    Outcome::Retry
                }
            }
        }
        MemberRef::Swarm(id) => {
            let sub = SwarmKey {
                tenant: tenant.clone(),
                id: SwarmId(id),
            };
            match runtime.swarm_run_item(&sub, payload).await {
                Ok(result) => Outcome::Done(result),
                Err(ActorError::NotFound { .. } | ActorError::Unavailable(_)) => {
                    Outcome::MemberGone(format!("sub-swarm {sub} is gone"))
                }
                Err(e) => Outcome::Crashed(e.to_string()),
            }
        }
    }
}

impl Coordinator {
    async fn run(mut self, mut rx: mpsc::Receiver<SwarmCmd>) {
        while let Some(cmd) = rx.recv().await {
            if let SwarmCmd::Stop = cmd {
                break;
            }
            self.handle(cmd).await;
            if self.fenced_out {
                // Its registry entry stays (its queue now closed) until `coordinator` replaces
                // it, under the recovery lock: removing it here could remove a successor's.
                tracing::warn!(swarm = %self.key, "another node coordinates this swarm now (its bucket moved): stopping here");
                metrics::counter!("vcos_swarm_coordinators_fenced_total").increment(1);
                break;
            }
            self.dispatch();
        }
        // Pullers waiting for work learn that there is none.
        self.waiting.clear();
    }

    async fn handle(&mut self, cmd: SwarmCmd) {
        match cmd {
            SwarmCmd::Submit { items, reply } => {
                let _ = reply.send(self.submit(items).await);
            }
            SwarmCmd::Pull { member, reply } => self.waiting.push_back((member, reply)),
            SwarmCmd::Finish {
                item,
                member,
                outcome,
            } => self.finish(item, member, outcome).await,
            SwarmCmd::Info { reply } => {
                let _ = reply.send(self.info());
            }
            SwarmCmd::AwaitItem { item, reply } => match self.core.status(item) {
                None => {
                    let _ = reply.send(Err(ActorError::not_found("item", item)));
                }
                Some(ItemStatus::Done { .. }) => {
                    let _ = reply.send(self.credited_result(item));
                }
                Some(ItemStatus::DeadLettered { reason }) => {
                    let _ = reply.send(Err(ActorError::Crashed {
                        key: self.key.to_string(),
                        reason: reason.clone(),
                    }));
                }
                Some(_) => self.awaiting.entry(item).or_default().push(reply),
            },
            SwarmCmd::OpenVote {
                id,
                proposal,
                options,
                quorum,
                reply,
            } => {
                let _ = reply.send(self.open_vote(id, proposal, options, quorum).await);
            }
            SwarmCmd::CastVote {
                vote,
                member,
                choice,
                reply,
            } => {
                let _ = reply.send(self.cast_vote(vote, member, choice).await);
            }
            SwarmCmd::Stop => {}
        }
    }

    /// Commits `writes` under the swarm's bucket fence; a refusal for a stale fence means the
    /// bucket moved, and this coordinator stops after the current command.
    async fn commit(&mut self, mut writes: Vec<CanonWrite>) -> Result<u64, StoreError> {
        if let Some(fence) = self.fence {
            writes.push(self.runtime.ownership().guard(fence));
        }
        // And under the tenant's fence: nothing of an erased tenant is written back.
        match self.runtime.tenant(&self.key.tenant) {
            Ok(tenant) => writes.extend(tenant.guard()),
            Err(_) => {
                self.fenced_out = true;
                return Err(StoreError::Conflict { key: crate::records::tenant_fence_key(&self.key.tenant) });
            }
        }
        let result = commit_durable(&**self.runtime.store(), writes).await;
        if matches!(result, Err(StoreError::Conflict { .. })) {
            self.fenced_out = true;
        }
        result
    }

    fn info(&self) -> SwarmInfo {
        SwarmInfo {
            key: self.key.clone(),
            spec: self.record.spec.clone(),
            members: self.record.members.clone(),
            status: self.record.status.clone(),
            progress: self.core.progress(),
        }
    }

    fn credited_result(&self, item: u64) -> Result<serde_json::Value, ActorError> {
        let key = credit_key(&self.key, item);
        match self.runtime.store().get(&key)? {
            Some(bytes) => Ok(decode::<CreditRecord>(&key, &bytes)?.result),
            None => Err(ActorError::Store(format!(
                "item {item} is done but has no credit record"
            ))),
        }
    }

    async fn submit(
        &mut self,
        items: Vec<(u64, serde_json::Value)>,
    ) -> Result<Vec<u64>, ActorError> {
        if let SwarmStatus::Failed { reason } = &self.record.status {
            return Err(ActorError::Unavailable(format!(
                "swarm {} has failed: {reason}",
                self.key
            )));
        }
        if self.payloads.len() + items.len() > SWARM_OPEN_ITEMS_MAX {
            return Err(ActorError::QueueFull(format!(
                "swarm {} holds {} open items (max {SWARM_OPEN_ITEMS_MAX})",
                self.key,
                self.payloads.len()
            )));
        }
        let writes = items
            .iter()
            .map(|(id, payload)| CanonWrite::Put {
                key: item_key(&self.key, *id),
                value: encode(&ItemRecord {
                    payload: payload.clone(),
                    status: ItemStatus::Pending,
                    attempts: 0,
                }),
            })
            .collect();
        self.commit(writes).await?;
        let ids = items.iter().map(|(id, _)| *id).collect();
        for (id, payload) in items {
            self.core.submit(id, ItemStatus::Pending, 0);
            self.payloads.insert(id, payload);
        }
        Ok(ids)
    }

    /// Hands queued items to waiting pullers; tells pullers of departed members to stop.
    fn dispatch(&mut self) {
        let running = self.record.status == SwarmStatus::Running;
        let mut still_waiting = VecDeque::with_capacity(self.waiting.len());
        while let Some((member, reply)) = self.waiting.pop_front() {
            if !running || self.core.is_gone(member) {
                let _ = reply.send(None);
                continue;
            }
            match self.core.pull(member) {
                Some(id) => {
                    let payload = self
                        .payloads
                        .get(&id)
                        .cloned()
                        .unwrap_or(serde_json::Value::Null);
                    if let Err(Some((id, _))) = reply.send(Some((id, payload))) {
                        // The puller is gone (its task ended): the item goes back.
                        self.core.release(id, member);
                    }
                }
                None => still_waiting.push_back((member, reply)),
            }
        }
        self.waiting = still_waiting;
    }

    async fn finish(&mut self, item: u64, member: MemberRef, outcome: Outcome) {
        match outcome {
            Outcome::Done(result) => self.complete(item, member, result).await,
            Outcome::Retry => self.core.release(item, member),
            Outcome::MemberGone(reason) => {
                tracing::info!(swarm = %self.key, %member, %reason, "member gone; its items are handed out again");
                self.core.member_down(member);
                self.supervisor.remove_child(&member);
                if self.core.progress().members_alive == 0 {
                    self.fail_swarm(format!("no members left (last: {reason})"))
                        .await;
                }
            }
            Outcome::Refused(reason) => {
                if self.core.reject(item, member, &reason) {
                    self.dead_letter(item, &reason).await;
                }
            }
            Outcome::Crashed(reason) => {
                match self.core.fail(item, member, &reason) {
                    Failure::DeadLettered => self.dead_letter(item, &reason).await,
                    Failure::Requeued | Failure::Ignored => {}
                }
                // A crash on an item counts against that item's attempts (a poison item ends
                // dead-lettered), not against the swarm's restart intensity: the member IMVU was
                // restarted by its tenant's supervisor already. A sub-swarm that fails is a
                // member failure, and counts.
                if matches!(member, MemberRef::Swarm(_)) {
                    self.supervise(member, reason).await;
                }
            }
        }
    }

    async fn complete(&mut self, item: u64, member: MemberRef, result: serde_json::Value) {
        if self.core.status(item) != Some(&ItemStatus::InFlight { member }) {
            return;
        }
        let attempts = self.core.attempts(item);
        let credit = CreditRecord {
            item,
            member,
            result: result.clone(),
            attempts,
            unix_ms: self.runtime.clock().unix_ms(),
        };
        let payload = self
            .payloads
            .get(&item)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let writes = vec![
            CanonWrite::Put {
                key: item_key(&self.key, item),
                value: encode(&ItemRecord {
                    payload,
                    status: ItemStatus::Done { member },
                    attempts,
                }),
            },
            CanonWrite::Put {
                key: credit_key(&self.key, item),
                value: encode(&credit),
            },
        ];
        match self.commit(writes).await {
            Ok(_) => {
                let decided = self.core.complete(item, member);
                debug_assert_eq!(decided, Completion::Credit);
                self.payloads.remove(&item);
                metrics::counter!("vcos_swarm_items_completed_total").increment(1);
                for waiter in self.awaiting.remove(&item).into_iter().flatten() {
                    let _ = waiter.send(Ok(result.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(swarm = %self.key, item, error = %e, "credit not durable; item handed out again");
                self.core.release(item, member);
            }
        }
    }

    /// A member crashed: the swarm's supervisor decides about its siblings.
    /// Records item `item` dead-lettered with `reason` and fails those waiting on it.
    async fn dead_letter(&mut self, item: u64, reason: &str) {
        let rec = ItemRecord {
            payload: self.payloads.remove(&item).unwrap_or(serde_json::Value::Null),
            status: ItemStatus::DeadLettered { reason: reason.to_owned() },
            attempts: self.core.attempts(item),
        };
        let _ = self.commit(vec![CanonWrite::Put { key: item_key(&self.key, item), value: encode(&rec) }]).await;
        for waiter in self.awaiting.remove(&item).into_iter().flatten() {
            let _ = waiter.send(Err(ActorError::Crashed { key: self.key.to_string(), reason: reason.to_owned() }));
        }
    }

    async fn supervise(&mut self, member: MemberRef, reason: String) {
        let now = self.runtime.clock().now_ms();
        match self
            .supervisor
            .handle_child_exit(now, &member, ExitReason::Failed(reason.clone()))
        {
            Directive::Restart { stop, .. } => {
                // The crashed IMVU was already restarted by its tenant supervisor; siblings that
                // the strategy restarts reload from canon.
                for sibling in stop {
                    if let MemberRef::Imvu(id) = sibling {
                        let _ = self
                            .runtime
                            .evict(&ImvuKey {
                                tenant: self.key.tenant.clone(),
                                id: ImvuId(id),
                            })
                            .await;
                    }
                }
            }
            Directive::Ignore => {}
            Directive::Escalate { reason: why, .. } => {
                self.fail_swarm(format!(
                    "swarm supervisor: {why}; last crash of {member}: {reason}"
                ))
                .await;
            }
        }
    }

    async fn fail_swarm(&mut self, reason: String) {
        tracing::warn!(swarm = %self.key, %reason, "swarm failed");
        self.core.requeue_all_in_flight();
        self.record.status = SwarmStatus::Failed {
            reason: reason.clone(),
        };
        let _ = self.commit(
            vec![CanonWrite::Put {
                key: spec_key(&self.key),
                value: encode(&self.record),
            }],
        )
        .await;
        for (_, waiters) in std::mem::take(&mut self.awaiting) {
            for waiter in waiters {
                let _ = waiter.send(Err(ActorError::Unavailable(format!(
                    "swarm {} failed: {reason}",
                    self.key
                ))));
            }
        }
    }

    async fn open_vote(
        &mut self,
        id: u64,
        proposal: String,
        options: Vec<String>,
        quorum: Option<u32>,
    ) -> Result<VoteRecord, ActorError> {
        if options.len() < 2 {
            return Err(ActorError::BadRequest {
                field: "options".into(),
                reason: "a vote needs at least two options".into(),
            });
        }
        let members = self.record.members.len() as u32;
        let quorum = quorum.unwrap_or(members / 2 + 1);
        if quorum == 0 || quorum > members {
            return Err(ActorError::BadRequest {
                field: "quorum".into(),
                reason: format!("must be 1..={members} (the swarm's members)"),
            });
        }
        let vote = VoteRecord {
            id,
            proposal,
            options,
            quorum,
            ballots: BTreeMap::new(),
            decision: None,
        };
        self.commit(
            vec![CanonWrite::Put {
                key: vote_key(&self.key, id),
                value: encode(&vote),
            }],
        )
        .await?;
        self.votes.insert(id, vote.clone());
        Ok(vote)
    }

    async fn cast_vote(
        &mut self,
        vote: u64,
        member: MemberRef,
        choice: String,
    ) -> Result<VoteRecord, ActorError> {
        if !self.record.members.contains(&member) {
            return Err(ActorError::BadRequest {
                field: "member".into(),
                reason: format!("{member} is not a member of {}", self.key),
            });
        }
        let mut record = self
            .votes
            .get(&vote)
            .cloned()
            .ok_or_else(|| ActorError::not_found("vote", vote))?;
        if let Some(decision) = &record.decision {
            return Err(ActorError::Conflict(format!(
                "vote {vote} is already decided: {decision:?}"
            )));
        }
        if !record.options.contains(&choice) {
            return Err(ActorError::BadRequest {
                field: "choice".into(),
                reason: format!("{choice:?} is not one of {:?}", record.options),
            });
        }
        record.ballots.insert(member.to_string(), choice.clone());
        let for_choice = record.ballots.values().filter(|c| **c == choice).count() as u32;
        if for_choice >= record.quorum {
            record.decision = Some(choice);
        }
        self.commit(
            vec![CanonWrite::Put {
                key: vote_key(&self.key, vote),
                value: encode(&record),
            }],
        )
        .await?;
        self.votes.insert(vote, record.clone());
        Ok(record)
    }
}

/// Request/response helpers used by `Runtime`.
pub(crate) async fn call<T>(
    tx: &mpsc::Sender<SwarmCmd>,
    make: impl FnOnce(Reply<T>) -> SwarmCmd,
) -> Result<T, ActorError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| ActorError::Unavailable("swarm coordinator stopped".into()))?;
    rx.await
        .map_err(|_| ActorError::Unavailable("swarm coordinator stopped".into()))?
}

pub(crate) async fn info(tx: &mpsc::Sender<SwarmCmd>) -> Result<SwarmInfo, ActorError> {
    let (reply, rx) = oneshot::channel();
    tx.send(SwarmCmd::Info { reply })
        .await
        .map_err(|_| ActorError::Unavailable("swarm coordinator stopped".into()))?;
    rx.await
        .map_err(|_| ActorError::Unavailable("swarm coordinator stopped".into()))
}

/// Stops the coordinators of `tenant`'s swarms on this node (the tenant was erased).
pub(crate) fn stop_tenant(registry: &Registry, tenant: &crate::ids::TenantId) {
    let stopped: Vec<(SwarmKey, mpsc::Sender<SwarmCmd>)> = {
        let mut swarms = registry.swarms.write().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<SwarmKey> = swarms.keys().filter(|k| &k.tenant == tenant).cloned().collect();
        keys.into_iter().filter_map(|k| swarms.remove(&k).map(|(tx, _)| (k, tx))).collect()
    };
    for (_, tx) in stopped {
        let _ = tx.try_send(SwarmCmd::Stop);
    }
}

pub(crate) fn stop_all(registry: &Registry) {
    for tx in registry.all() {
        let _ = tx.try_send(SwarmCmd::Stop);
    }
}
