//! What an operator set on a backend through the admin API: drained or
//! disabled (no new sessions; those running finish), or a weight in place
//! of the configured one. Kept per pool by backend name in a record that
//! each new generation's pool takes over from the one it replaces, so a
//! reload does not undo it; only another call does.

use std::collections::HashMap;
use std::sync::Mutex;

/// A backend's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes sessions as its health and weight allow.
    #[default]
    Enabled,
    /// Takes no new sessions; those running finish.
    Draining,
    /// Takes no new sessions (and is left out of DNS, like draining).
    Disabled,
}

impl AdminState {
    pub fn takes_sessions(self) -> bool {
        self == AdminState::Enabled
    }
}

/// One backend's steering.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steering {
    pub state: AdminState,
    /// Replaces the configured weight while set.
    pub weight: Option<u32>,
}

/// An operator's request for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drain,
    Disable,
    /// Back to taking sessions (the weight override stays).
    Enable,
    Weight(u32),
}

/// The steering of a pool's backends, by name; shared by the generations
/// of one pool.
#[derive(Debug, Default)]
pub struct SteeringRecord {
    by_backend: Mutex<HashMap<String, Steering>>,
}

impl SteeringRecord {
    pub fn get(&self, backend: &str) -> Steering {
        self.lock().get(backend).copied().unwrap_or_default()
    }

    /// Apply `action` to `backend`; the steering it has now.
    pub fn apply(&self, backend: &str, action: Action) -> Steering {
        let mut all = self.lock();
        let steering = all.entry(backend.to_string()).or_default();
        match action {
            Action::Drain => steering.state = AdminState::Draining,
            Action::Disable => steering.state = AdminState::Disabled,
            Action::Enable => steering.state = AdminState::Enabled,
            Action::Weight(w) => steering.weight = Some(w),
        }
        *steering
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Steering>> {
        self.by_backend.lock().unwrap_or_else(|p| p.into_inner())
    }
}
