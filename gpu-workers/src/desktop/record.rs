//! The session record the canon keeps (`SuperCoreSession`): what a session is, where it runs,
//! what it used. Written at every transition and every metering interval, so that a node that
//! dies loses at most one interval of usage, and read back by any node.

use serde::{Deserialize, Serialize};

use super::tier::DesktopTier;

/// Canon key prefix of session records: `desktop/sessions/<tenant>/<id, 16 digits>`.
pub const SESSION_PREFIX: &str = "desktop/sessions/";
/// Restarts kept in a record (the oldest are dropped).
pub const RESTARTS_KEPT: usize = 16;

/// The canon key of a session.
pub fn session_key(tenant: &str, id: u64) -> String {
    format!("{SESSION_PREFIX}{tenant}/{id:016}")
}

/// The prefix of a tenant's sessions.
pub fn tenant_prefix(tenant: &str) -> String {
    format!("{SESSION_PREFIX}{tenant}/")
}

/// A session's lifecycle state: the IMVU states, for a desktop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Provisioning: the desktop is starting.
    Genesis,
    /// Running: the display answers.
    Active,
    /// Suspended: every process stopped, memory kept; the display does not answer.
    Paused,
    /// Ended: processes gone, display released. Final.
    Terminated,
}

impl SessionState {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Genesis => "genesis",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Terminated => "terminated",
        }
    }
}

/// One restart of a session's desktop by its supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartNote {
    /// When (unix ms).
    pub at_ms: u64,
    /// Why the desktop had ended.
    pub reason: String,
}

/// How to reach a session over VNC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VncEndpoint {
    /// The address x11vnc listens on.
    pub host: String,
    /// Its port.
    pub port: u16,
}

/// A session, as the canon keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Its id (unique in the cluster).
    pub id: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its tier.
    pub tier: DesktopTier,
    /// Its state.
    pub state: SessionState,
    /// The node running it.
    pub node: u64,
    /// Its display number while it has one.
    pub display: Option<u32>,
    /// The process group of its desktop (Xvfb's pid) while it has one: what a restarted node
    /// cleans up.
    pub pgid: Option<i32>,
    /// The application started inside it, if any.
    pub app: Option<Vec<String>>,
    /// Its VNC endpoint, if it serves one.
    pub vnc: Option<VncEndpoint>,
    /// The workspace it belongs to, if any.
    pub workspace: Option<u64>,
    /// How limits are enforced (`rlimit`).
    pub limits: String,
    /// Created (unix ms).
    pub created_ms: u64,
    /// Last written (unix ms).
    pub updated_ms: u64,
    /// Start to ready, milliseconds (from the warm pool or cold).
    pub start_ms: u64,
    /// Whether it started from the warm pool.
    pub warm: bool,
    /// Active wall time metered so far, ms.
    pub active_ms: u64,
    /// CPU time of its processes metered so far, ms.
    pub cpu_ms: u64,
    /// Desktop seconds charged to the tenant so far (basic-rate seconds: the tier's multiplier
    /// applied).
    pub billed_desktop_seconds: u64,
    /// Restarts by its supervisor, newest last (at most [`RESTARTS_KEPT`]).
    pub restarts: Vec<RestartNote>,
    /// Restarts in all.
    pub restart_count: u32,
    /// Why it ended, once terminated.
    pub reason: Option<String>,
}
