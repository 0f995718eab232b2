//! What reloads and rollbacks happened, for `/status`: an operator who
//! saved a file wants to see whether it took, and if not, why.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Events kept: the latest ones.
const KEPT: usize = 32;

/// One reload attempt or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadEvent {
    /// RFC 3339, UTC.
    pub at: String,
    /// `reload` or `rollback`.
    pub kind: &'static str,
    /// What asked for it: `SIGHUP`, `file change`, `admin`, or for a
    /// rollback the pool whose balancer failed.
    pub trigger: String,
    /// The generation built (or attempted), or for a rollback the one put
    /// back.
    pub generation: u64,
    /// The generation serving new sessions afterwards.
    pub serving: u64,
    pub ok: bool,
    /// Why a reload failed, or why a rollback happened.
    pub error: Option<String>,
    pub took_ms: u64,
}

impl ReloadEvent {
    pub fn now(kind: &'static str, trigger: &str, generation: u64, serving: u64) -> Self {
        Self {
            at: rfc3339(SystemTime::now()),
            kind,
            trigger: trigger.to_string(),
            generation,
            serving,
            ok: true,
            error: None,
            took_ms: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct History {
    events: Mutex<VecDeque<ReloadEvent>>,
}

/// The history as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// The latest reload attempt, whatever its result.
    pub last_reload: Option<ReloadEvent>,
    /// The latest rollback.
    pub last_rollback: Option<ReloadEvent>,
    /// Newest first.
    pub events: Vec<ReloadEvent>,
}

impl History {
    pub fn record(&self, event: ReloadEvent) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub fn report(&self) -> HistoryReport {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let latest = |kind: &str| events.iter().rev().find(|e| e.kind == kind).cloned();
        HistoryReport {
            last_reload: latest("reload"),
            last_rollback: latest("rollback"),
            events: events.iter().rev().cloned().collect(),
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
