//! Workspaces: sessions of one tenant grouped into one unit (a collaborative workspace),
//! created, paused, resumed and terminated together; its usage is the sum of its sessions'.
//!
//! The workspace record (`desktop/workspaces/<tenant>/<id>`) holds its name and its sessions'
//! ids; state and usage are derived from the session records, so they cannot disagree.

use serde::{Deserialize, Serialize};
use vcos_actors::store::{commit_durable, CanonWrite};
use vcos_actors::{ActorError, TenantId};

use super::host::{CreateSession, Desktops};
use super::record::{SessionRecord, SessionState};

/// Canon key prefix of workspace records.
pub const WORKSPACE_PREFIX: &str = "desktop/workspaces/";
/// Sessions one workspace may hold, at most.
pub const WORKSPACE_SESSIONS_MAX: usize = 16;
/// Bytes of a workspace name, at most.
pub const WORKSPACE_NAME_MAX: usize = 128;

/// The canon key of a workspace.
pub fn workspace_key(tenant: &str, id: u64) -> String {
    format!("{WORKSPACE_PREFIX}{tenant}/{id:016}")
}

/// A workspace as the canon keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Its id.
    pub id: u64,
    /// Its tenant.
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// Its sessions, in creation order.
    pub sessions: Vec<u64>,
    /// Created (unix ms).
    pub created_ms: u64,
}

/// Usage summed over a workspace's sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceUsage {
    /// Active wall time, ms.
    pub active_ms: u64,
    /// CPU time, ms.
    pub cpu_ms: u64,
    /// Desktop seconds charged (basic rate).
    pub billed_desktop_seconds: u64,
}

/// A workspace with its sessions as they are now.
#[derive(Clone, Debug, PartialEq)]
pub struct Workspace {
    /// The record.
    pub record: WorkspaceRecord,
    /// Its sessions.
    pub sessions: Vec<SessionRecord>,
}

impl Workspace {
    /// `active` if any session is, else `paused` if any is, else `terminated`.
    pub fn state(&self) -> SessionState {
        let any = |state| self.sessions.iter().any(|s| s.state == state);
        if any(SessionState::Active) || any(SessionState::Genesis) {
            SessionState::Active
        } else if any(SessionState::Paused) {
            SessionState::Paused
        } else {
            SessionState::Terminated
        }
    }

    /// Its sessions' usage, summed.
    pub fn usage(&self) -> WorkspaceUsage {
        self.sessions.iter().fold(WorkspaceUsage::default(), |sum, s| WorkspaceUsage {
            active_ms: sum.active_ms + s.active_ms,
            cpu_ms: sum.cpu_ms + s.cpu_ms,
            billed_desktop_seconds: sum.billed_desktop_seconds + s.billed_desktop_seconds,
        })
    }
}

enum Action {
    Pause,
    Resume,
    Terminate,
}

impl Desktops {
    /// Creates a workspace of `tenant` named `name` with a session for each request (all of
    /// them, or none: a session that fails ends the ones already started). Returns it and
    /// each session's VNC password (if it asked for VNC), in order.
    pub async fn create_workspace(&self, tenant: &TenantId, name: &str, requests: Vec<CreateSession>) -> Result<(Workspace, Vec<Option<String>>), ActorError> {
        let bad = |reason: String| ActorError::BadRequest { field: "workspace".into(), reason };
        if name.is_empty() || name.len() > WORKSPACE_NAME_MAX {
            return Err(bad(format!("the name must be 1 to {WORKSPACE_NAME_MAX} bytes")));
        }
        if requests.is_empty() || requests.len() > WORKSPACE_SESSIONS_MAX {
            return Err(bad(format!("a workspace holds 1 to {WORKSPACE_SESSIONS_MAX} sessions; {} asked", requests.len())));
        }
        let now = self.runtime().clock().unix_ms();
        let id = self.new_id(now);
        let mut record = WorkspaceRecord { id, tenant: tenant.as_str().to_owned(), name: name.to_owned(), sessions: Vec::new(), created_ms: now };
        self.put_workspace(&record).await?;
        let mut sessions = Vec::new();
        let mut passwords = Vec::new();
        for mut request in requests {
            request.workspace = Some(id);
            match self.create(tenant, request).await {
                Ok((session, password)) => {
                    record.sessions.push(session.id);
                    sessions.push(session);
                    passwords.push(password);
                }
                Err(e) => {
                    for started in &sessions {
                        let _ = self.terminate(tenant, started.id).await;
                    }
                    self.put_workspace(&record).await?;
                    return Err(e);
                }
            }
        }
        self.put_workspace(&record).await?;
        Ok((Workspace { record, sessions }, passwords))
    }

    /// A workspace and its sessions as they are now.
    pub fn workspace(&self, tenant: &TenantId, id: u64) -> Result<Workspace, ActorError> {
        let bytes = self.runtime().store().get(&workspace_key(tenant.as_str(), id)).map_err(|e| ActorError::Store(e.to_string()))?;
        let record: WorkspaceRecord = bytes
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ActorError::NotFound { what: "workspace", key: format!("{tenant}/{id}") })?;
        let sessions = record.sessions.iter().map(|s| self.get(tenant, *s)).collect::<Result<Vec<_>, _>>()?;
        Ok(Workspace { record, sessions })
    }

    /// Pauses every active session of the workspace.
    pub async fn pause_workspace(&self, tenant: &TenantId, id: u64) -> Result<Workspace, ActorError> {
        self.workspace_action(tenant, id, Action::Pause).await
    }

    /// Resumes every paused session of the workspace.
    pub async fn resume_workspace(&self, tenant: &TenantId, id: u64) -> Result<Workspace, ActorError> {
        self.workspace_action(tenant, id, Action::Resume).await
    }

    /// Terminates every session of the workspace.
    pub async fn terminate_workspace(&self, tenant: &TenantId, id: u64) -> Result<Workspace, ActorError> {
        self.workspace_action(tenant, id, Action::Terminate).await
    }

    /// Applies `action` to each session in the state it applies to (the others are left as
    /// they are); the first failure is returned after every session was tried.
    async fn workspace_action(&self, tenant: &TenantId, id: u64, action: Action) -> Result<Workspace, ActorError> {
        let workspace = self.workspace(tenant, id)?;
        let (wanted, what): (&[SessionState], &str) = match action {
            Action::Pause => (&[SessionState::Active], "pause"),
            Action::Resume => (&[SessionState::Paused], "resume"),
            Action::Terminate => (&[SessionState::Genesis, SessionState::Active, SessionState::Paused], "terminate"),
        };
        if !workspace.sessions.iter().any(|s| wanted.contains(&s.state)) {
            return Err(ActorError::Conflict(format!("cannot {what} workspace {id}: it is {}", workspace.state().name())));
        }
        let mut failure = None;
        for session in workspace.sessions.iter().filter(|s| wanted.contains(&s.state)) {
            let done = match action {
                Action::Pause => self.pause(tenant, session.id).await,
                Action::Resume => self.resume(tenant, session.id).await,
                Action::Terminate => self.terminate(tenant, session.id).await,
            };
            if let Err(e) = done {
                tracing::warn!(workspace = id, session = session.id, error = %e, "workspace {what}: a session did not follow");
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => self.workspace(tenant, id),
        }
    }

    async fn put_workspace(&self, record: &WorkspaceRecord) -> Result<(), ActorError> {
        let value = serde_json::to_vec(record).map_err(|e| ActorError::Store(e.to_string()))?;
        commit_durable(self.runtime().store().as_ref(), vec![CanonWrite::Put { key: workspace_key(&record.tenant, record.id), value }])
            .await
            .map(|_| ())
            .map_err(|e| ActorError::Store(e.to_string()))
    }
}
