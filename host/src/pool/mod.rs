//! A pool of backends: their health state, the balancer and health
//! plugins that decide over them, and the built-in fallbacks used when a
//! plugin fails a call.
//!
//! Owns: per-backend state (health verdict, recent results, sessions in
//! flight) and the pool snapshot pushed to balancers. Does not touch:
//! sockets or probes (they report results here through [`Pool::record`]).

mod ejection;
mod fallback;
mod report;
mod shadow;
mod steering;
mod verdict;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;

use crate::attempts::FailureReason;
use crate::config::EjectionConfig;
use crate::config::{BackendConfig, PoolConfig};
use crate::health::LoadReport;
use crate::metrics::{BackendLabels, FailureLabels, FallbackLabels, Metrics, PluginLabels};
use crate::plugin::PushedPool;
use crate::plugin::types::{Backend, ProbeResult, ProbeSource, RequestContext};
use crate::plugin::{
    BalancerPlugin, CallFailure, HealthDetail, HealthPlugin, LiveCounters, PluginError,
    PluginRuntime,
};
use ejection::Ejection;
pub use ejection::{Depth, Out, WELCOME_WINDOW};
use fallback::{FallbackBalancer, RateLimitedLog};
use report::Timeline;
pub use report::{BackendReport, LastResult, Mark, OutReport};
pub use shadow::{Disagreement, Shadow, ShadowReport};
pub use steering::{Action, AdminState, Steering, SteeringRecord};

/// Results kept per backend for the health plugin; thresholds up to this
/// long can be evaluated.
pub const HISTORY: usize = 16;
/// While a backend ramps up, its weight is recomputed this often.
const RAMP_STEP: std::time::Duration = std::time::Duration::from_millis(200);

/// Who decided a session's backend order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decider {
    Plugin,
    Fallback(CallFailure),
}

/// The order to try backends in (indices into the pool) and who chose it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub order: Vec<u32>,
    pub decider: Decider,
}

/// Recent results of one backend, probes and traffic apart: a passing
/// probe that only says "220" must not break a run of deferred messages,
/// nor traffic a run of failed probes (Envoy keeps its active health
/// checks and outlier detection apart the same way).
#[derive(Debug, Clone, Default)]
struct History {
    /// Each result with whether it was about one client.
    probes: VecDeque<(ProbeResult, bool)>,
    traffic: VecDeque<(ProbeResult, bool)>,
    last: Option<ProbeResult>,
}

impl History {
    /// Add `result`; the recent results of its source, oldest first, and
    /// which of them were about one client.
    fn push(&mut self, result: &ProbeResult, per_client: bool) -> (Vec<ProbeResult>, Vec<bool>) {
        let recent = match result.source {
            ProbeSource::Probe => &mut self.probes,
            ProbeSource::Traffic => &mut self.traffic,
        };
        if recent.len() == HISTORY {
            recent.pop_front();
        }
        recent.push_back((result.clone(), per_client));
        self.last = Some(result.clone());
        recent.iter().cloned().unzip()
    }
}

struct BackendState {
    config: BackendConfig,
    healthy: AtomicBool,
    history: Mutex<History>,
    /// Recent results with times, for `/status` and the status page.
    timeline: Mutex<Timeline>,
    steering: Mutex<Steering>,
    /// Not drained or disabled; read on every decision.
    takes_sessions: AtomicBool,
    /// Since when the backend ramps up to its weight (`slow_start`).
    ramp_since: Mutex<Option<std::time::Instant>>,
    /// `gale_backend_sessions_total` for this backend, resolved once.
    sessions: Counter,
    /// The host's rules on traffic evidence (see [`ejection`]).
    ejection: Ejection,
    /// The weight the health plugin's latest verdict set, if it set one.
    verdict_weight: Mutex<Option<u32>>,
    /// The latest answer of the backend's load agent (`agent_port`).
    load: Mutex<Option<LoadReport>>,
    /// The health plugin's latest verdict on a probe result: whether the
    /// probes alone would have the backend in rotation.
    probes_want_in: AtomicBool,
    /// `gale_backend_ejections_total` for this backend.
    ejections: Counter,
}

/// One balancer decision in this many is timed into
/// `gale_plugin_call_seconds`: reading the clock twice and filling the
/// histogram cost ~90 ns on this project's VM, a quarter of a decision.
/// Every decision is counted in `gale_plugin_calls_total`.
const TIMED_DECISIONS: u64 = 8;

struct HookStats {
    calls: Counter,
    latency: prometheus_client::metrics::histogram::Histogram,
    fallbacks: FallbackCounters,
    log: RateLimitedLog,
}

/// Fallback counters by reason, resolved once.
struct FallbackCounters {
    metrics: Arc<Metrics>,
    pool: String,
    hook: &'static str,
}

impl FallbackCounters {
    fn inc(&self, reason: &str) {
        self.metrics
            .plugin_fallbacks
            .get_or_create(&FallbackLabels {
                pool: self.pool.clone(),
                hook: self.hook.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

impl HookStats {
    fn new(metrics: &Arc<Metrics>, pool: &str, hook: &'static str) -> Self {
        let labels = PluginLabels {
            pool: pool.to_string(),
            hook: hook.to_string(),
        };
        let calls = metrics.plugin_calls.get_or_create(&labels).clone();
        let latency = metrics.plugin_call_seconds.get_or_create(&labels).clone();
        Self {
            calls,
            latency,
            fallbacks: FallbackCounters {
                metrics: metrics.clone(),
                pool: pool.to_string(),
                hook,
            },
            log: RateLimitedLog::default(),
        }
    }

    fn failed(&self, pool: &str, plugin: &str, failure: &CallFailure) {
        self.fallbacks.inc(failure.reason());
        self.log.warn(pool, self.fallbacks.hook, plugin, failure);
    }
}

pub struct Pool {
    pub name: String,
    listeners: Vec<String>,
    backends: Vec<BackendState>,
    live: Arc<LiveCounters>,
    pushed: ArcSwap<PushedPool>,
    version: AtomicU64,
    metrics: Arc<Metrics>,
    /// Drain, disable and weight set by an operator; outlives reloads.
    steering: Arc<SteeringRecord>,
    slow_start: Option<std::time::Duration>,
    ejection: EjectionConfig,
    /// Held while deciding an ejection, so that two at once cannot both
    /// pass `max_ejection_percent`.
    ejecting: Mutex<()>,
    /// `gale_pool_ejections_capped_total`.
    capped: Counter,
    /// Some backend is ramping up: the snapshot is rebuilt as decisions
    /// come (at most every `RAMP_STEP`), so its weight rises.
    ramping: AtomicBool,
    published_at: Mutex<std::time::Instant>,
    balancer: BalancerPlugin,
    health: HealthPlugin,
    /// A candidate balancer in shadow mode, if the config names one.
    shadow: Option<Shadow>,
    fallback: FallbackBalancer,
    balancer_stats: HookStats,
    health_stats: HookStats,
    /// This pool's own decisions and how many of them the balancer plugin
    /// failed (trap, deadline, memory, malformed answer, no instance; the
    /// metrics count across generations; a rollback judges one generation).
    decisions: AtomicU64,
    failed_decisions: AtomicU64,
}

impl Pool {
    /// Load the pool's plugins and set every backend healthy until results
    /// say otherwise. Blocking (plugin compilation).
    pub fn build(
        runtime: &PluginRuntime,
        config: &PoolConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Pool, PluginError> {
        Self::build_after(runtime, config, metrics, None)
    }

    /// Like [`Pool::build`], sharing each backend's session slot (its
    /// sessions and the sessions queued for it) with `previous` when the
    /// backend is there too (same name and address).
    pub fn build_after(
        runtime: &PluginRuntime,
        config: &PoolConfig,
        metrics: &Arc<Metrics>,
        previous: Option<&Pool>,
    ) -> Result<Pool, PluginError> {
        // A shared slot keeps the limit of the generation that is current
        // until this one is (see `Pool::apply_limits`).
        let slots = config
            .backends
            .iter()
            .map(|b| {
                previous
                    .and_then(|p| p.slot_of(b))
                    .unwrap_or_else(|| Arc::new(crate::queue::Slot::new(b.max_sessions)))
            })
            .collect();
        let live = Arc::new(LiveCounters::from_slots(slots));
        let balancer = BalancerPlugin::load(
            runtime,
            &config.balancer,
            &format!("{}/balancer ({})", config.name, config.balancer.source),
            live.clone(),
        )?;
        let health = HealthPlugin::load(
            runtime,
            &config.health,
            &format!("{}/health ({})", config.name, config.health.source),
        )?;
        let shadow = match &config.candidate {
            None => None,
            Some(candidate) => {
                let plugin = BalancerPlugin::load(
                    runtime,
                    &candidate.plugin,
                    &format!("{}/candidate ({})", config.name, candidate.plugin.source),
                    live.clone(),
                )?;
                Some(Shadow::new(
                    plugin,
                    candidate.mode.as_str(),
                    metrics,
                    &config.name,
                ))
            }
        };
        let steering = previous.map(|p| p.steering.clone()).unwrap_or_default();
        let backends: Vec<BackendState> = config
            .backends
            .iter()
            .map(|b| {
                let steered = steering.get(&b.name);
                let labels = BackendLabels {
                    pool: config.name.clone(),
                    backend: b.name.clone(),
                };
                BackendState {
                    config: b.clone(),
                    healthy: AtomicBool::new(true),
                    history: Mutex::default(),
                    timeline: Mutex::default(),
                    steering: Mutex::new(steered),
                    takes_sessions: AtomicBool::new(steered.state.takes_sessions()),
                    ramp_since: Mutex::new(None),
                    sessions: metrics.backend_sessions.get_or_create(&labels).clone(),
                    ejection: Ejection::default(),
                    verdict_weight: Mutex::new(None),
                    load: Mutex::new(None),
                    probes_want_in: AtomicBool::new(true),
                    ejections: metrics.backend_ejections.get_or_create(&labels).clone(),
                }
            })
            .collect();
        let pool = Pool {
            name: config.name.clone(),
            listeners: config.listeners.clone(),
            live,
            pushed: ArcSwap::from_pointee(PushedPool::new(1, Vec::new(), Vec::new())),
            version: AtomicU64::new(1),
            metrics: metrics.clone(),
            steering,
            slow_start: config.slow_start,
            ejection: config.ejection,
            ejecting: Mutex::new(()),
            capped: metrics
                .ejections_capped
                .get_or_create(&crate::metrics::PoolLabels {
                    pool: config.name.clone(),
                })
                .clone(),
            ramping: AtomicBool::new(false),
            published_at: Mutex::new(std::time::Instant::now()),
            balancer,
            health,
            shadow,
            fallback: FallbackBalancer::default(),
            balancer_stats: HookStats::new(metrics, &config.name, "balancer"),
            health_stats: HookStats::new(metrics, &config.name, "health"),
            decisions: AtomicU64::new(0),
            failed_decisions: AtomicU64::new(0),
            backends,
        };
        pool.publish();
        Ok(pool)
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn backend(&self, id: usize) -> &BackendConfig {
        &self.backends[id].config
    }

    pub fn is_healthy(&self, id: usize) -> bool {
        self.backends[id].healthy.load(Ordering::Acquire)
    }

    /// Whether backend `id`'s last probe passed: not merely "not failed
    /// yet", as a backend that was never probed counts as healthy.
    pub fn last_probe_passed(&self, id: usize) -> bool {
        self.backends[id]
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probes
            .back()
            .is_some_and(|(r, _)| r.ok)
    }

    /// Backend `id` took a session or request.
    pub fn count_session(&self, id: usize) {
        self.backends[id].sessions.inc();
    }

    /// An attempt at backend `id` failed for `reason` (rare: the label
    /// set is looked up each time).
    pub fn count_failure(&self, id: usize, reason: FailureReason) {
        self.metrics
            .backend_failures
            .get_or_create(&FailureLabels {
                pool: self.name.clone(),
                backend: self.backends[id].config.name.clone(),
                reason: reason.label().to_string(),
            })
            .inc();
    }

    /// Neither drained nor disabled.
    pub fn takes_sessions(&self, id: usize) -> bool {
        self.backends[id].takes_sessions.load(Ordering::Acquire)
    }

    /// Drain, disable, enable or re-weight the backend named `backend`;
    /// its steering now, or `None` if the pool has no such backend. Kept
    /// across reloads until changed.
    pub fn steer(&self, backend: &str, action: Action) -> Option<Steering> {
        let state = self.backends.iter().find(|b| b.config.name == backend)?;
        let was_taking = state.takes_sessions.load(Ordering::Acquire);
        let steered = self.steering.apply(backend, action);
        *state.steering.lock().unwrap_or_else(|p| p.into_inner()) = steered;
        if !was_taking && steered.state.takes_sessions() {
            self.start_ramp(state);
        }
        state
            .takes_sessions
            .store(steered.state.takes_sessions(), Ordering::Release);
        tracing::info!(pool = %self.name, backend, state = ?steered.state, weight = ?steered.weight, "backend steered by the admin API");
        self.publish();
        Some(steered)
    }

    /// A backend back in rotation starts low and ramps up to its weight
    /// over `slow_start`, so a cold MTA is not flooded.
    fn start_ramp(&self, state: &BackendState) {
        if self.slow_start.is_some() {
            *state.ramp_since.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now());
            self.ramping.store(true, Ordering::Release);
        }
    }

    /// The weight before the health plugin's say: the operator's, else
    /// the configured one. A health plugin scales this one (a load report
    /// of 50 % halves it), so that its own override does not compound.
    pub fn base_weight(&self, id: usize) -> u32 {
        self.steering_of(id)
            .weight
            .unwrap_or(self.backends[id].config.weight)
    }

    /// The weight balancers see: the health plugin's (its verdict's
    /// `weight`, which scales [`Pool::base_weight`], the operator's
    /// included), else the operator's, else the configured one; scaled
    /// down while the backend ramps up (at least 1).
    pub fn effective_weight(&self, id: usize) -> u32 {
        let b = &self.backends[id];
        let base = self
            .health_weight(id)
            .or(self.steering_of(id).weight)
            .unwrap_or(b.config.weight);
        let since = *b.ramp_since.lock().unwrap_or_else(|p| p.into_inner());
        match (self.slow_start, since) {
            (Some(ramp), Some(since)) if since.elapsed() < ramp => {
                let share = since.elapsed().as_secs_f64() / ramp.as_secs_f64();
                ((f64::from(base) * share).ceil() as u32).clamp(base.min(1), base)
            }
            _ => base,
        }
    }

    /// The weight the health plugin's verdict holds the backend at.
    pub fn health_weight(&self, id: usize) -> Option<u32> {
        *self.backends[id]
            .verdict_weight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The latest answer of the backend's load agent.
    pub fn load(&self, id: usize) -> Option<LoadReport> {
        *self.backends[id]
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The backend's agent answered `report` (probes ask it, then feed
    /// their result, which the health plugin judges with the report).
    pub fn set_load(&self, id: usize, mut report: LoadReport) {
        let mut load = self.backends[id]
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // As HAProxy: a share holds until the agent names another ("up"
        // alone keeps "50%"), and so does a state.
        if let Some(last) = *load {
            report.weight_percent = report.weight_percent.or(last.weight_percent);
            report.state = report.state.or(last.state);
        }
        *load = Some(report);
    }

    fn steering_of(&self, id: usize) -> Steering {
        *self.backends[id]
            .steering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions in flight, as balancers see them through `pool-state`.
    pub fn live(&self) -> &Arc<LiveCounters> {
        &self.live
    }

    pub fn balancer_name(&self) -> &str {
        self.balancer.name()
    }

    pub fn health_name(&self) -> &str {
        self.health.name()
    }

    /// The pool's plugins by hook: balancer, health and any candidate.
    pub fn plugins(&self) -> Vec<(&'static str, &crate::plugin::PluginInfo)> {
        let mut plugins = vec![
            ("balancer", self.balancer.info()),
            ("health", self.health.info()),
        ];
        if let Some(shadow) = &self.shadow {
            plugins.push(("candidate", shadow.info()));
        }
        plugins
    }

    /// Balancer decisions since gale started, across reloads (the
    /// `gale_plugin_calls_total` counter), for rates.
    pub fn decisions_total(&self) -> u64 {
        self.balancer_stats.calls.get()
    }

    /// The candidate balancer's record, if the pool has one.
    pub fn shadow_report(&self) -> Option<ShadowReport> {
        self.shadow.as_ref().map(Shadow::report)
    }

    /// Rebuild the snapshot balancers see; called after any state change.
    fn publish(&self) {
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        let still_ramping = self.backends.iter().any(|b| {
            let mut since = b.ramp_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_some_and(|s| self.slow_start.is_none_or(|r| s.elapsed() >= r)) {
                *since = None;
            }
            since.is_some()
        });
        self.ramping.store(still_ramping, Ordering::Release);
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let steered = self.steering_of(i);
                Backend {
                    id: i as u32,
                    name: b.config.name.clone(),
                    address: b.config.address.to_string(),
                    weight: self.effective_weight(i),
                    priority: b.config.priority,
                    healthy: b.healthy.load(Ordering::Acquire),
                    draining: !steered.state.takes_sessions(),
                }
            })
            .collect();
        self.pushed.store(Arc::new(PushedPool::new(
            version,
            backends,
            self.listeners.clone(),
        )));
    }

    /// Backend order for one session. Never fails: a plugin failure is
    /// counted and the built-in weighted round-robin decides instead.
    pub fn select(&self, ctx: &RequestContext) -> Decision {
        if self.ramping.load(Ordering::Acquire) {
            let last = *self.published_at.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= RAMP_STEP {
                self.publish();
            }
        }
        let pool = self.pushed.load();
        self.balancer_stats.calls.inc();
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        let mut decision = if n.is_multiple_of(TIMED_DECISIONS) {
            let called = std::time::Instant::now();
            let decision = self.decide(&pool, ctx);
            self.balancer_stats
                .latency
                .observe(called.elapsed().as_secs_f64());
            decision
        } else {
            self.decide(&pool, ctx)
        };
        if let Some(shadow) = &self.shadow {
            shadow.observe(&pool, ctx, &decision.order);
        }
        // Whatever the plugin (or the fallback) answered: a drained or
        // disabled backend gets no new session.
        decision.order.retain(|&id| {
            self.backends
                .get(id as usize)
                .is_some_and(|b| b.takes_sessions.load(Ordering::Acquire))
        });
        decision
    }

    fn decide(&self, pool: &PushedPool, ctx: &RequestContext) -> Decision {
        match self.balancer.select(pool, ctx) {
            Ok(order) => Decision {
                order,
                decider: Decider::Plugin,
            },
            Err(failure) => {
                if failure.is_plugins_fault() {
                    self.failed_decisions.fetch_add(1, Ordering::Relaxed);
                }
                self.balancer_stats
                    .failed(&self.name, self.balancer.name(), &failure);
                Decision {
                    order: self.fallback.order(pool),
                    decider: Decider::Fallback(failure),
                }
            }
        }
    }

    /// This pool's generation became current: its backends' limits hold
    /// for every session, those of older generations included.
    pub fn apply_limits(&self) {
        self.live
            .set_limits(self.backends.iter().map(|b| b.config.max_sessions));
    }

    fn slot_of(&self, backend: &BackendConfig) -> Option<Arc<crate::queue::Slot>> {
        let id = self
            .backends
            .iter()
            .position(|b| b.config.name == backend.name && b.config.address == backend.address)?;
        self.live.slot(id).cloned()
    }

    /// (decisions, of which the balancer failed) since this pool was built.
    pub fn decision_counts(&self) -> (u64, u64) {
        (
            self.decisions.load(Ordering::Relaxed),
            self.failed_decisions.load(Ordering::Relaxed),
        )
    }

    /// Take over the health state of `old`'s backends that are still here
    /// (same name and address), so a reload never puts a dead backend back
    /// in rotation until its probes say so.
    pub fn inherit(&self, old: &Pool) {
        let mut changed = false;
        for state in &self.backends {
            let Some(before) = old.backends.iter().find(|b| {
                b.config.name == state.config.name && b.config.address == state.config.address
            }) else {
                continue;
            };
            let healthy = before.healthy.load(Ordering::Acquire);
            changed |= state.healthy.swap(healthy, Ordering::AcqRel) != healthy;
            state.ejection.inherit(&before.ejection);
            let weight = *before
                .verdict_weight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            changed |= weight.is_some();
            *state
                .verdict_weight
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = weight;
            // An agent's word holds only while gale still asks that agent.
            if state.config.agent_port == before.config.agent_port {
                *state.load.lock().unwrap_or_else(|p| p.into_inner()) =
                    *before.load.lock().unwrap_or_else(|p| p.into_inner());
            }
            // A ramp under way goes on from where it was.
            let ramp = *before.ramp_since.lock().unwrap_or_else(|p| p.into_inner());
            if ramp.is_some() && self.slow_start.is_some() {
                *state.ramp_since.lock().unwrap_or_else(|p| p.into_inner()) = ramp;
                self.ramping.store(true, Ordering::Release);
                changed = true;
            }
            let history = before
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *state.history.lock().unwrap_or_else(|p| p.into_inner()) = history;
            let timeline = before
                .timeline
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            *state.timeline.lock().unwrap_or_else(|p| p.into_inner()) = timeline;
        }
        if changed {
            self.publish();
        }
    }
}

impl Pool {
    /// Call both plugins once, directly (no fallback), on sample input.
    pub fn self_check(
        &self,
        ctx: &RequestContext,
        result: &ProbeResult,
    ) -> Result<(), PluginError> {
        let pool = self.pushed.load();
        self.balancer
            .select(&pool, ctx)
            .map_err(|failure| PluginError::SelfCheck {
                plugin: self.balancer.name().to_string(),
                failure,
            })?;
        if let Some(shadow) = &self.shadow {
            shadow
                .select(&pool, ctx)
                .map_err(|failure| PluginError::SelfCheck {
                    plugin: shadow.name().to_string(),
                    failure,
                })?;
        }
        if let Some(backend) = pool.backends.first() {
            self.health
                .evaluate(
                    backend,
                    true,
                    std::slice::from_ref(result),
                    HealthDetail::default(),
                )
                .map_err(|failure| PluginError::SelfCheck {
                    plugin: self.health.name().to_string(),
                    failure,
                })?;
        }
        Ok(())
    }
}
