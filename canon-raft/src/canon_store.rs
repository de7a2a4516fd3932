//! [`RaftCanonStore`]: the actor layer's `CanonStore` on the node's home region group.
//!
//! Commits queue in order and are group-committed: the writer takes every commit waiting (up
//! to [`COMMIT_OPS_MAX`] operations), sends them as one Raft entry — a batch of batches, one
//! per commit — and completes each commit when that entry is committed on a quorum and applied
//! here. One entry per round trip means one fsync per voter for the whole group, whatever the
//! number of callers. The entry is an [`Op::Group`]: each commit's batch commits or rolls back
//! on its own, so a commit whose guard ([`CanonWrite::Expect`], sent as [`Op::Expect`] ahead
//! of its writes, hence checked against the state before the commit) fails completes with
//! [`StoreError::Conflict`] and the others of the group are applied. Other conditional
//! operations (compare-and-set, leases) go through [`CanonNode::write`] on their own.
//!
//! Deadline: each commit must end by the node's request deadline from when it was queued; a
//! group commit is sent with the earliest deadline of its commits, and a commit whose deadline
//! passed while it waited is answered unavailable without being sent (`StoreError::Unavailable`,
//! `CanonError::Unavailable`).
//!
//! Reads (`get`, `scan_prefix`) serve this node's applied state: every commit completed on this
//! node is visible to them (the writer waits for the local apply). Reads that must reflect
//! other nodes' writes use [`CanonNode::read_barrier`] first.

use tokio::sync::mpsc;
use vcos_actors::store::{CanonStore, CanonWrite, Completion, StoreError};

use crate::node::{CanonError, CanonNode};
use crate::types::{Op, Response};

/// The most operations one group commit carries (a single larger commit travels alone).
pub const COMMIT_OPS_MAX: usize = 4_096;
/// How many commits may wait for the writer before `commit` answers `Overloaded`.
pub const COMMIT_QUEUE_MAX: usize = 65_536;

/// What a queued commit is answered with.
pub enum Answer {
    /// A `CanonStore` completion: the canon index of the commit's last record.
    Canon(Completion),
    /// The per-operation responses and the log index of the entry that carried them (HTTP
    /// writes).
    Responses(tokio::sync::oneshot::Sender<Result<(Vec<Response>, u64), CanonError>>),
}

struct Job {
    ops: Vec<Op>,
    /// The keys of the commit's guards, in the order of the leading `Op::Expect`s of `ops`
    /// (empty, unallocated, for a commit without guards).
    guards: Vec<String>,
    answer: Answer,
    deadline: tokio::time::Instant,
}

/// The `CanonStore` of a node; cloning shares the queue.
#[derive(Clone)]
pub struct RaftCanonStore {
    node: CanonNode,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for RaftCanonStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCanonStore").field("node", &self.node).finish_non_exhaustive()
    }
}

fn to_op(write: CanonWrite) -> Op {
    match write {
        CanonWrite::Put { key, value } => Op::Put { key: key.into_bytes(), value },
        CanonWrite::Delete { key } => Op::Delete { key: key.into_bytes() },
        CanonWrite::Append { prefix, value } => Op::Append { prefix: prefix.into_bytes(), value },
        CanonWrite::Expect { key, value } => Op::Expect { key: key.into_bytes(), value },
    }
}

/// A commit's operations, guards first (the seam checks guards against the state before the
/// commit), and the keys of those guards in order.
fn to_ops(writes: Vec<CanonWrite>) -> (Vec<Op>, Vec<String>) {
    if !writes.iter().any(|write| matches!(write, CanonWrite::Expect { .. })) {
        return (writes.into_iter().map(to_op).collect(), Vec::new());
    }
    let (guards, rest): (Vec<CanonWrite>, Vec<CanonWrite>) =
        writes.into_iter().partition(|write| matches!(write, CanonWrite::Expect { .. }));
    let keys = guards
        .iter()
        .map(|guard| match guard {
            CanonWrite::Expect { key, .. } => key.clone(),
            _ => unreachable!("partitioned: guards only"),
        })
        .collect();
    (guards.into_iter().chain(rest).map(to_op).collect(), keys)
}

fn store_error(error: &CanonError) -> StoreError {
    if error.is_retryable() {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Io(error.to_string())
    }
}

/// A read of the group's tables that failed: retryable while the group is closed (a restart),
/// else a disk error.
fn read_error(error: &crate::Error) -> StoreError {
    match error {
        crate::Error::Closed => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Io(format!("canon read: {error}")),
    }
}

impl RaftCanonStore {
    /// Starts the writer task for `node`'s home group (call inside a tokio runtime).
    pub fn start(node: CanonNode) -> Self {
        let (jobs, rx) = mpsc::channel(COMMIT_QUEUE_MAX);
        tokio::spawn(write_loop(node.clone(), rx));
        Self { node, jobs }
    }

    /// The node underneath.
    pub fn node(&self) -> &CanonNode {
        &self.node
    }

    /// Queues unconditional operations (put, delete, append) and waits for their responses;
    /// also returns the log index of the Raft entry that carried them.
    pub async fn write_ops(&self, ops: Vec<Op>) -> Result<(Vec<Response>, u64), CanonError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Job { ops, guards: Vec::new(), answer: Answer::Responses(tx), deadline: self.node.deadline() })
            .map_err(|_| CanonError::Failed("canon write queue full or closed".into()))?;
        rx.await.unwrap_or_else(|_| Err(CanonError::Failed("canon writer stopped".into())))
    }
}

impl CanonStore for RaftCanonStore {
    fn commit(&self, writes: Vec<CanonWrite>, done: Completion) {
        let (ops, guards) = to_ops(writes);
        if let Err(e) = self.jobs.try_send(Job { ops, guards, answer: Answer::Canon(done), deadline: self.node.deadline() }) {
            let (job, error) = match e {
                mpsc::error::TrySendError::Full(job) => (job, StoreError::Overloaded),
                mpsc::error::TrySendError::Closed(job) => (job, StoreError::Closed),
            };
            if let Answer::Canon(done) = job.answer {
                done(Err(error));
            }
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let home = self.node.home().map_err(|e| store_error(&e))?;
        home.reader().get(key.as_bytes()).map_err(|e| read_error(&e))
    }

    fn scan_prefix(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let home = self.node.home().map_err(|e| store_error(&e))?;
        home.reader()
            .range(prefix.as_bytes(), after.map(str::as_bytes), limit)
            .map_err(|e| read_error(&e))?
            .into_iter()
            .map(|(key, value)| {
                String::from_utf8(key)
                    .map(|key| (key, value))
                    .map_err(|e| StoreError::Corrupt { key: String::from_utf8_lossy(e.as_bytes()).into_owned(), reason: "key is not UTF-8".into() })
            })
            .collect()
    }

    fn stored_bytes(&self, tenant: &vcos_actors::TenantId) -> Result<Option<u64>, StoreError> {
        let home = self.node.home().map_err(|e| store_error(&e))?;
        home.reader().usage(tenant.as_str().as_bytes()).map(Some).map_err(|e| read_error(&e))
    }
}

/// Takes jobs in order, one group commit at a time.
async fn write_loop(node: CanonNode, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut count = first.ops.len();
        let mut batch = vec![first];
        while count < COMMIT_OPS_MAX {
            match jobs.try_recv() {
                Ok(job) => {
                    count += job.ops.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let (batch, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| job.deadline > tokio::time::Instant::now());
        if !expired.is_empty() {
            let reason = "the commit waited in the queue past its deadline; it was not sent".to_owned();
            deliver(expired.into_iter().map(|job| (job.answer, job.guards)).collect(), Err(node.unavailable(node.region(), reason)));
        }
        let Some(deadline) = batch.iter().map(|job| job.deadline).min() else { continue };
        let mut answers = Vec::with_capacity(batch.len());
        let mut commits = Vec::with_capacity(batch.len());
        for job in batch {
            commits.push(Op::Batch(job.ops));
            answers.push((job.answer, job.guards));
        }
        metrics::histogram!("vcos_canon_group_commit_size").record(answers.len() as f64);
        let region = node.region().to_owned();
        let result = node.write_by(&region, Op::Group(commits), deadline).await;
        deliver(answers, result);
    }
}

/// Hands each commit of a group commit its own outcome.
fn deliver(answers: Vec<(Answer, Vec<String>)>, result: Result<(Response, u64), CanonError>) {
    let log_index = result.as_ref().map_or(0, |(_, index)| *index);
    let per_commit: Result<Vec<Response>, CanonError> = match result {
        Ok((Response::Batch { committed: true, responses, .. }, _)) if responses.len() == answers.len() => Ok(responses),
        Ok((Response::BatchTooLarge, _)) => Err(CanonError::Refused("commit too large for one canon entry".into())),
        Ok((other, _)) => Err(CanonError::Failed(format!("unexpected group commit response {other:?}"))),
        Err(e) => Err(e),
    };
    match per_commit {
        Ok(responses) => {
            for ((answer, guards), response) in answers.into_iter().zip(responses) {
                match answer {
                    Answer::Canon(done) => match response {
                        Response::Batch { committed: true, canon_index, .. } => done(Ok(canon_index)),
                        other => done(Err(commit_error(&guards, other))),
                    },
                    Answer::Responses(tx) => {
                        let result = match response {
                            Response::Batch { committed: true, responses, .. } => Ok((responses, log_index)),
                            other => Err(CanonError::Failed(format!("write not applied: {other:?}"))),
                        };
                        let _ = tx.send(result);
                    }
                }
            }
        }
        Err(e) => {
            for (answer, _) in answers {
                match answer {
                    Answer::Canon(done) => done(Err(store_error(&e))),
                    Answer::Responses(tx) => {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Why a commit's batch was not applied: [`StoreError::Conflict`] when it stopped at one of its
/// guards (the leading operations, whose keys are `guards`), else an I/O error.
fn commit_error(guards: &[String], response: Response) -> StoreError {
    if let Response::Batch { committed: false, responses, .. } = &response {
        if let (Some(Response::Expect { matched: false }), Some(at)) = (responses.last(), responses.len().checked_sub(1)) {
            if let Some(key) = guards.get(at) {
                return StoreError::Conflict { key: key.clone() };
            }
        }
    }
    StoreError::Io(format!("canon commit not applied: {response:?}"))
}
