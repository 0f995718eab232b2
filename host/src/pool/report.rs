//! What `/status` and the status page show of each backend: its state,
//! weights, sessions, failures and a timeline of recent health results.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{AdminState, Out, Pool};
use crate::attempts::FailureReason;
use crate::metrics::FailureLabels;
use crate::plugin::types::{ProbeResult, ProbeSource};

/// Results kept per backend for the timeline (a minute at a 1 s probe
/// interval).
pub const TIMELINE: usize = 60;

/// A backend for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendReport {
    pub name: String,
    pub address: String,
    /// `up`, `down`, `draining` or `disabled`: health and the operator's
    /// steering in one word (an operator's state wins).
    pub state: &'static str,
    pub weight: u32,
    /// The weight balancers see: an operator's override, else `weight`,
    /// scaled down while the backend ramps up after coming back.
    pub effective_weight: u32,
    /// The weight the health plugin's verdict holds it at (a load report
    /// lowered it, say), if it set one.
    pub health_weight: Option<u32>,
    /// The latest answer of its load agent (`agent_port`): "up 50%",
    /// "drain", ...
    pub load: Option<String>,
    /// Set through the admin API: enabled, draining or disabled.
    pub admin_state: AdminState,
    pub priority: u32,
    pub healthy: bool,
    /// Why the backend is out of rotation, if it is.
    pub out: Option<OutReport>,
    /// Times live traffic took it out since gale started.
    pub ejections_total: u64,
    /// When the health verdict last changed (Unix ms), or when the
    /// backend was first loaded.
    pub healthy_since_ms: u64,
    pub active_sessions: u32,
    /// Sessions or requests the backend took since gale started.
    pub sessions_total: u64,
    /// Failed attempts since gale started, by reason (only those seen).
    pub failures: BTreeMap<&'static str, u64>,
    pub last_result: Option<LastResult>,
    /// The latest results, oldest first.
    pub timeline: Vec<Mark>,
}

/// Why a backend is out of rotation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutReport {
    /// `probe`: its probes fail; `traffic`: ejected on live-traffic
    /// failures.
    pub by: &'static str,
    /// Ejected: ms until it may return (0: it returns on the next passing
    /// probe).
    pub ejected_ms_left: Option<u64>,
}

/// The latest probe or traffic result of a backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastResult {
    pub ok: bool,
    pub latency_us: u64,
    pub code: Option<u16>,
    pub detail: String,
    /// "probe" or "traffic".
    pub source: &'static str,
}

/// One result on a backend's timeline.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Mark {
    /// Unix time, ms.
    pub at_ms: u64,
    pub ok: bool,
    /// The verdict after this result.
    pub healthy: bool,
    pub latency_us: u64,
    pub source: &'static str,
}

/// Recent results of one backend and since when its verdict holds.
#[derive(Debug, Clone)]
pub struct Timeline {
    marks: VecDeque<Mark>,
    since_ms: u64,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            marks: VecDeque::with_capacity(TIMELINE),
            since_ms: unix_ms(),
        }
    }
}

impl Timeline {
    /// Add `result`, after which the verdict is `healthy` (`changed` if
    /// it was not before).
    pub fn push(&mut self, result: &ProbeResult, healthy: bool, changed: bool) {
        let at_ms = unix_ms();
        if changed {
            self.since_ms = at_ms;
        }
        if self.marks.len() == TIMELINE {
            self.marks.pop_front();
        }
        self.marks.push_back(Mark {
            at_ms,
            ok: result.ok,
            healthy,
            latency_us: result.latency_us,
            source: source_name(result.source),
        });
    }
}

fn source_name(source: ProbeSource) -> &'static str {
    match source {
        ProbeSource::Probe => "probe",
        ProbeSource::Traffic => "traffic",
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Pool {
    /// Each backend as `/status` shows it.
    pub fn backend_reports(&self) -> Vec<BackendReport> {
        self.backends
            .iter()
            .enumerate()
            .map(|(id, b)| {
                let last = b
                    .history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last
                    .clone();
                let timeline = b.timeline.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let steered = self.steering_of(id);
                let healthy = b.healthy.load(Ordering::Acquire);
                BackendReport {
                    name: b.config.name.clone(),
                    address: b.config.address.to_string(),
                    state: match (steered.state, healthy) {
                        (AdminState::Disabled, _) => "disabled",
                        (AdminState::Draining, _) => "draining",
                        (AdminState::Enabled, true) => "up",
                        (AdminState::Enabled, false) => "down",
                    },
                    weight: b.config.weight,
                    effective_weight: self.effective_weight(id),
                    health_weight: self.health_weight(id),
                    load: self.load(id).map(|r| r.to_string()),
                    admin_state: steered.state,
                    priority: b.config.priority,
                    healthy,
                    out: self.out(id).map(|out| match out {
                        Out::Probe => OutReport {
                            by: "probe",
                            ejected_ms_left: None,
                        },
                        Out::Traffic { until } => OutReport {
                            by: "traffic",
                            ejected_ms_left: Some(
                                until
                                    .saturating_duration_since(std::time::Instant::now())
                                    .as_millis() as u64,
                            ),
                        },
                    }),
                    ejections_total: b.ejections.get(),
                    healthy_since_ms: timeline.since_ms,
                    active_sessions: self.live.active(id),
                    sessions_total: b.sessions.get(),
                    failures: self.failures_of(&b.config.name),
                    last_result: last.map(|r| LastResult {
                        ok: r.ok,
                        latency_us: r.latency_us,
                        code: r.code,
                        detail: r.detail,
                        source: source_name(r.source),
                    }),
                    timeline: timeline.marks.into(),
                }
            })
            .collect()
    }

    /// `gale_backend_failures_total` of one backend, without creating the
    /// series it does not have yet.
    fn failures_of(&self, backend: &str) -> BTreeMap<&'static str, u64> {
        FailureReason::ALL
            .iter()
            .filter_map(|reason| {
                let labels = FailureLabels {
                    pool: self.name.clone(),
                    backend: backend.to_string(),
                    reason: reason.label().to_string(),
                };
                let count = self.metrics.backend_failures.get(&labels)?.get();
                Some((reason.label(), count))
            })
            .collect()
    }
}
