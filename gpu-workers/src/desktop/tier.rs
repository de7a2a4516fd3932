//! Desktop tiers: what a session's desktop gets and what an hour of it costs.

use serde::{Deserialize, Serialize};

/// A session's resource tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesktopTier {
    /// 1024×768, 24-bit; 512 MiB; 1 NexCoin-rate unit.
    Basic,
    /// 1280×720, 24-bit; 1 GiB; twice the basic rate.
    Standard,
    /// 1920×1080, 24-bit; 2 GiB; four times the basic rate.
    Pro,
}

impl DesktopTier {
    /// Every tier.
    pub const ALL: [Self; 3] = [Self::Basic, Self::Standard, Self::Pro];

    /// Its name in requests and records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Standard => "standard",
            Self::Pro => "pro",
        }
    }

    /// Parses a name; the error lists the tiers.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| format!("unknown tier {name:?}; choose one of: basic, standard, pro"))
    }

    /// Screen width, height and colour depth.
    pub fn screen(self) -> (u16, u16, u8) {
        match self {
            Self::Basic => (1024, 768, 24),
            Self::Standard => (1280, 720, 24),
            Self::Pro => (1920, 1080, 24),
        }
    }

    /// Address space each desktop process may take (`RLIMIT_AS`), bytes.
    pub fn memory_bytes(self) -> u64 {
        match self {
            Self::Basic => 512 << 20,
            Self::Standard => 1 << 30,
            Self::Pro => 2 << 30,
        }
    }

    /// CPU share, in thousandths of a core: the budget `RLIMIT_CPU` grants per hour of life
    /// (enforced as CPU seconds per process, renewed at each restart).
    pub fn cpu_millicores(self) -> u64 {
        match self {
            Self::Basic => 250,
            Self::Standard => 500,
            Self::Pro => 1_000,
        }
    }

    /// How many basic-tier seconds one second of this tier bills as: the tenant's usage
    /// counts `desktop_seconds` at the basic rate.
    pub fn rate_multiplier(self) -> u64 {
        match self {
            Self::Basic => 1,
            Self::Standard => 2,
            Self::Pro => 4,
        }
    }

    /// NexCoin per hour at the tenant tier's base price (`desktop_seconds` × 3,600 × multiplier).
    pub fn nexcoin_per_hour(self, tenant_tier: vcos_actors::tenants::Tier) -> f64 {
        let micro = vcos_actors::metering::UsageUnit::DesktopSeconds.price_micro_nxc(tenant_tier, 3_600 * self.rate_multiplier());
        micro as f64 / 1e6
    }
}

impl std::fmt::Display for DesktopTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
