//! API keys in the simulator: drawn from seeded generators, and handed to the workload's
//! client the way `vcos up` hands its first cluster-admin key to an operator (a file there,
//! this run's table here).
//!
//! State is per thread and reset at the start of every run ([`reset`]): a run is one thread
//! (turmoil steps every host on it), and nothing carries over to the next run.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vcos_actors::auth::SecretSource;

#[derive(Default)]
struct RunKeys {
    seed: u64,
    /// Node starts so far, per host: a restarted node draws from a fresh stream.
    starts: BTreeMap<String, u64>,
    /// The cluster-admin key each host issued at its bootstrap.
    admin: BTreeMap<String, String>,
    /// The key each host drew and kept before committing it (its `admin.key`): valid once
    /// the commit lands, never if another host's landed first.
    kept: BTreeMap<String, String>,
}

thread_local! {
    static KEYS: RefCell<RunKeys> = RefCell::new(RunKeys::default());
}

/// Forgets the previous run's keys; draws of this run derive from `seed`.
pub fn reset(seed: u64) {
    KEYS.with(|k| *k.borrow_mut() = RunKeys { seed, ..RunKeys::default() });
}

/// A generator for this start of `host`: seeded by the run, the host and its start count.
pub fn secrets_for(host: &str) -> Arc<dyn SecretSource> {
    let seed = KEYS.with(|k| {
        let mut keys = k.borrow_mut();
        let seed = keys.seed;
        let start = keys.starts.entry(host.to_owned()).or_insert(0);
        *start += 1;
        let host_hash = host.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        seed ^ host_hash ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    Arc::new(Seeded(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
}

/// Records the cluster-admin key `host` issued.
pub fn remember_admin(host: &str, key: &str) {
    KEYS.with(|k| k.borrow_mut().admin.insert(host.to_owned(), key.to_owned()));
}

/// Keeps the cluster-admin key `host` drew, before it commits it.
pub fn keep_admin(host: &str, key: &str) {
    KEYS.with(|k| k.borrow_mut().kept.insert(host.to_owned(), key.to_owned()));
}

/// The cluster-admin key `host` itself drew and kept, if any (its `admin.key`).
pub fn kept_admin(host: &str) -> Option<String> {
    KEYS.with(|k| k.borrow().kept.get(host).cloned())
}

/// The key the client sends to `host`: the one it issued, else (a shared canon) any one
/// issued in this run.
pub fn admin_for(host: &str) -> Option<String> {
    KEYS.with(|k| {
        let keys = k.borrow();
        keys.admin.get(host).or_else(|| keys.admin.values().next()).cloned()
    })
}

struct Seeded(Mutex<ChaCha8Rng>);

impl SecretSource for Seeded {
    fn fill(&self, buf: &mut [u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).fill_bytes(buf);
    }
}

/// The cluster secret of the run of `seed` (every node of a run holds it, as every node of a
/// cluster does).
pub fn cluster_secret(seed: u64) -> vcos_canon_raft::auth::ClusterSecret {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc1a5_7e55_ec7e_7000);
    vcos_canon_raft::auth::ClusterSecret::generate(|buf| rng.fill_bytes(buf))
}
