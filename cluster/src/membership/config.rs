//! Membership settings: a LAN preset scaled to the cluster size, validated with named errors.
//!
//! | setting | LAN preset | why |
//! |---|---|---|
//! | `probe_period_ms` | 200; 100 above 64 members | each member probes one other per period; a dead node is probed within about one period |
//! | `probe_rtt_ms` | 60; 40 above 64 members | a direct ack later than this starts the indirect probes (LAN round trips are < 1 ms) |
//! | `indirect_probes` | 3 | members asked to probe on our behalf when the direct probe fails |
//! | `suspect_to_down_ms` | `probe_period × (2 + log2 n)` up to 16 members, then half a period per doubling: 720 ms at n = 3, 1.2 s at 16, 1.4 s at 50, 0.78 s at 200 (100 ms periods) | a suspect has this long to refute; larger clusters need longer to spread the refutation, and gossip twice as often above 16 members |
//! | `gossip_period_ms` / `gossip_fanout` | 200 / 3; 100 / 3 above 16 members | updates also spread without probes (foca's periodic gossip): a verdict reaches every view of 200 members in a few rounds |
//! | `announce_period_ms` | 5,000 | ask one member for its member list (discovers members missed at join) |
//! | `announce_down_period_ms` | 2,000 | talk to two members we think down: heals partitions without help |
//! | `rejoin_period_ms` | 1,000 | a node with no live member re-sends join requests to its seeds (foca issue #15) |
//! | `max_transmissions` | foca's `4 × log10(n + 1)`, at least 6 | times each update is piggybacked (small clusters need more than foca's 2–3 for a suspect to hear of its suspicion) |
//!
//! Worst-case detection of a crashed node on a quiet LAN is about one probe period to be
//! probed, one to be suspected, then `suspect_to_down_ms` and one gossip round: about 1.3 s
//! for 3 nodes.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::membership::frame::{DATAGRAM_LEN_MAX, HEADER_LEN, TAG_LEN};
use crate::membership::identity::{NodeIdentity, REGION_LEN_MAX};

/// Fewest times an update is piggybacked, whatever the cluster size.
pub const TRANSMISSIONS_MIN: u8 = 6;
/// Most seeds a node may list.
pub const SEEDS_MAX: usize = 64;
/// Largest cluster the presets are tuned for (beyond it foca still works, detection slows).
pub const CLUSTER_SIZE_MAX: u32 = 10_000;

/// How one member runs.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// The cluster's name; its hash tags every datagram.
    pub cluster_name: String,
    /// The cluster secret: every datagram carries an HMAC tag made with it, and one without a
    /// valid tag is dropped (`reason="unauthenticated"`). `None`: tests of this crate only.
    pub secret: Option<std::sync::Arc<vcos_canon_raft::auth::ClusterSecret>>,
    /// This process's identity.
    pub identity: NodeIdentity,
    /// Gossip addresses to join through (this node's own address is skipped).
    pub seeds: Vec<SocketAddr>,
    /// Seed of foca's RNG (member choice). Production: anything; simulator: from the run seed.
    pub rng_seed: u64,
    /// Expected number of members (scales suspicion and retransmissions).
    pub cluster_size: u32,
    /// See the module table.
    pub probe_period_ms: u64,
    /// See the module table.
    pub probe_rtt_ms: u64,
    /// See the module table.
    pub indirect_probes: usize,
    /// See the module table.
    pub suspect_to_down_ms: u64,
    /// See the module table.
    pub gossip_period_ms: u64,
    /// See the module table.
    pub gossip_fanout: usize,
    /// See the module table.
    pub announce_period_ms: u64,
    /// See the module table.
    pub announce_down_period_ms: u64,
    /// See the module table.
    pub rejoin_period_ms: u64,
}

/// A setting that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The cluster name is empty.
    #[error("cluster name is empty")]
    EmptyClusterName,
    /// The region name is too long.
    #[error("region {0:?} is longer than {REGION_LEN_MAX} bytes")]
    RegionTooLong(String),
    /// Cluster size out of range.
    #[error("cluster size {0} is not in 1..={CLUSTER_SIZE_MAX}")]
    ClusterSize(u32),
    /// Too many seeds.
    #[error("{0} seeds; at most {SEEDS_MAX}")]
    TooManySeeds(usize),
    /// A period or count is zero.
    #[error("{0} must not be zero")]
    Zero(&'static str),
    /// The probe round trip does not fit twice in the probe period (the indirect cycle needs it).
    #[error("probe_rtt_ms ({rtt}) must be at most half of probe_period_ms ({period})")]
    RttTooLong {
        /// The round trip.
        rtt: u64,
        /// The period.
        period: u64,
    },
    /// Suspicion shorter than a probe period: members would be declared down before they can refute.
    #[error("suspect_to_down_ms ({suspect}) must be at least probe_period_ms ({period})")]
    SuspicionTooShort {
        /// The suspicion.
        suspect: u64,
        /// The period.
        period: u64,
    },
}

impl MembershipConfig {
    /// The LAN preset (see the module table) for an expected `cluster_size`.
    pub fn lan(cluster_name: impl Into<String>, identity: NodeIdentity, seeds: Vec<SocketAddr>, cluster_size: u32, rng_seed: u64) -> Self {
        // Above 64 members the dead member's verdict needs more gossip rounds to reach every
        // view, so members probe and suspect at twice the pace to keep detection under 2 s
        // (measured: 2.4 s at 200 members with 200 ms probes).
        let probe_period_ms = if cluster_size > 64 { 100 } else { 200 };
        let log2 = f64::from(cluster_size.max(1)).log2();
        Self {
            cluster_name: cluster_name.into(),
            secret: None,
            identity,
            seeds,
            rng_seed,
            cluster_size,
            probe_period_ms,
            probe_rtt_ms: if cluster_size > 64 { 40 } else { 60 },
            indirect_probes: 3,
            suspect_to_down_ms: (probe_period_ms as f64 * (2.0 + log2.min(4.0) + (log2 - 4.0).max(0.0) / 2.0)) as u64,
            gossip_period_ms: if cluster_size > 16 { 100 } else { 200 },
            gossip_fanout: 3,
            announce_period_ms: 5_000,
            announce_down_period_ms: 2_000,
            rejoin_period_ms: 1_000,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_name.is_empty() {
            return Err(ConfigError::EmptyClusterName);
        }
        if self.identity.meta.region.len() > REGION_LEN_MAX {
            return Err(ConfigError::RegionTooLong(self.identity.meta.region.clone()));
        }
        if self.cluster_size == 0 || self.cluster_size > CLUSTER_SIZE_MAX {
            return Err(ConfigError::ClusterSize(self.cluster_size));
        }
        if self.seeds.len() > SEEDS_MAX {
            return Err(ConfigError::TooManySeeds(self.seeds.len()));
        }
        for (name, value) in [
            ("probe_period_ms", self.probe_period_ms),
            ("probe_rtt_ms", self.probe_rtt_ms),
            ("indirect_probes", self.indirect_probes as u64),
            ("gossip_period_ms", self.gossip_period_ms),
            ("gossip_fanout", self.gossip_fanout as u64),
            ("announce_period_ms", self.announce_period_ms),
            ("announce_down_period_ms", self.announce_down_period_ms),
            ("rejoin_period_ms", self.rejoin_period_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.probe_rtt_ms * 2 > self.probe_period_ms {
            return Err(ConfigError::RttTooLong { rtt: self.probe_rtt_ms, period: self.probe_period_ms });
        }
        if self.suspect_to_down_ms < self.probe_period_ms {
            return Err(ConfigError::SuspicionTooShort { suspect: self.suspect_to_down_ms, period: self.probe_period_ms });
        }
        Ok(())
    }

    /// foca's configuration. Call after [`Self::validate`].
    pub(crate) fn foca_config(&self) -> foca::Config {
        let size = NonZeroU32::new(self.cluster_size).unwrap_or(NonZeroU32::MIN);
        let nonzero = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = Duration::from_millis(self.probe_period_ms);
        config.probe_rtt = Duration::from_millis(self.probe_rtt_ms);
        config.num_indirect_probes = nonzero(self.indirect_probes);
        config.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms);
        // One entry per node id (identity addr), so never forgetting costs one entry per node.
        // foca's 4 × log10(n + 1) is 2 for four nodes: a suspicion raised while the suspect is
        // cut off is spent before it can reach the suspect, which then cannot refute.
        config.max_transmissions = config.max_transmissions.max(std::num::NonZeroU8::new(TRANSMISSIONS_MIN).unwrap_or(std::num::NonZeroU8::MIN));
        config.remove_down_after = None;
        config.max_packet_size = nonzero(DATAGRAM_LEN_MAX - HEADER_LEN - TAG_LEN);
        config.notify_down_members = true;
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(self.announce_period_ms),
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(self.announce_down_period_ms),
            num_members: nonzero(2),
        });
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(self.gossip_period_ms),
            num_members: nonzero(self.gossip_fanout),
        });
        config
    }
}
