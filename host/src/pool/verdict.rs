//! How results become a backend's verdict: probe results through the
//! health plugin, traffic failures and successes through the host rules
//! of [`super::ejection`] (per-client runs, `max_ejection_percent`,
//! ejection time), all under one lock per change.

use std::sync::atomic::Ordering;

use gale_sdk::threshold::RiseFall;

use super::ejection::{Depth, Out, Ruling};
use super::{BackendState, Pool};
use crate::attempts::{Failure, FailureReason};
use crate::metrics::ProbeLabels;
use crate::plugin::HealthDetail;
use crate::plugin::types::{ProbeResult, ProbeSource};

impl Pool {
    /// Count a failure seen on live traffic and report it to the health
    /// rules: [`Pool::count_failure`] and [`Pool::record_traffic_failure`].
    pub fn traffic_failure(&self, id: usize, latency: std::time::Duration, failure: &Failure) {
        self.count_failure(id, failure.reason);
        self.record_traffic_failure(id, latency, failure);
    }

    /// A failure seen on live traffic (refused, timed out, bad greeting or
    /// response). It counts as a health result, so a dead backend leaves
    /// the pool before its next probe, within the rules of [`ejection`].
    pub fn record_traffic_failure(
        &self,
        id: usize,
        latency: std::time::Duration,
        failure: &Failure,
    ) -> Option<bool> {
        let depth = match failure.reason {
            FailureReason::Deferred => Depth::Transaction,
            _ => Depth::Session,
        };
        if !self.backends[id]
            .ejection
            .failed(failure.about_client, depth)
        {
            // This client was refused already in this run.
            return None;
        }
        self.observe(
            id,
            ProbeResult {
                ok: false,
                latency_us: latency.as_micros() as u64,
                code: failure.code,
                detail: failure.detail.clone(),
                source: ProbeSource::Traffic,
            },
            failure.about_client.is_some(),
        )
    }

    /// Backend `id` took a session or request that began at `at` (or,
    /// with [`Depth::Transaction`], a message). Ends a failure run no
    /// deeper than `depth` (the health plugin sees a success then);
    /// otherwise it costs one atomic load.
    pub fn record_traffic_success(&self, id: usize, at: std::time::Instant, depth: Depth) {
        if self.backends[id].ejection.succeeded(depth) {
            self.record(
                id,
                ProbeResult {
                    ok: true,
                    latency_us: at.elapsed().as_micros() as u64,
                    code: None,
                    detail: "ok".to_string(),
                    source: ProbeSource::Traffic,
                },
            );
        }
    }

    /// Backend `id` greeted `client` with 220 in a session begun `at`.
    pub fn welcomed(&self, id: usize, at: std::time::Instant, client: std::net::IpAddr) {
        self.backends[id].ejection.welcome(at, client);
    }

    /// Whether backend `id`'s refusal of `client`, whom it knows, is its
    /// verdict on that client rather than an outage: it passes its probes
    /// and greeted another client with 220 within [`WELCOME_WINDOW`].
    pub fn vouches_for_refusal(&self, id: usize, client: std::net::IpAddr) -> bool {
        let b = &self.backends[id];
        b.healthy.load(Ordering::Acquire) && b.ejection.welcomed_another(client)
    }

    /// Why backend `id` is out of rotation, if it is.
    pub fn out(&self, id: usize) -> Option<Out> {
        let b = &self.backends[id];
        if b.healthy.load(Ordering::Acquire) {
            return None;
        }
        Some(b.ejection.state().out.unwrap_or(Out::Probe))
    }

    /// Feed one probe or traffic result for backend `id` through the
    /// health plugin, then the host's rules. Returns the new verdict if it
    /// changed.
    pub fn record(&self, id: usize, result: ProbeResult) -> Option<bool> {
        self.observe(id, result, false)
    }

    /// [`Pool::record`], `per_client`: the result was a refusal about one
    /// client (the health plugin can ask).
    fn observe(&self, id: usize, result: ProbeResult, per_client: bool) -> Option<bool> {
        let state = &self.backends[id];
        if result.source == ProbeSource::Probe {
            self.metrics
                .probes
                .get_or_create(&ProbeLabels {
                    pool: self.name.clone(),
                    backend: state.config.name.clone(),
                    result: if result.ok { "ok" } else { "failed" }.to_string(),
                })
                .inc();
        }
        let (recent, per_client) = state
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&result, per_client);
        let current = state.healthy.load(Ordering::Acquire);
        // The weight the plugin would scale: before its own override.
        let mut backend = self.pushed.load().backends[id].clone();
        backend.weight = self.base_weight(id);
        let detail = HealthDetail {
            per_client,
            load: self.load(id),
        };
        self.health_stats.calls.inc();
        let called = std::time::Instant::now();
        let (wanted, weight) = match self.health.evaluate(&backend, current, &recent, detail) {
            Ok(v) => (v.healthy, Some(v.weight)),
            Err(failure) => {
                self.health_stats
                    .failed(&self.name, self.health.name(), &failure);
                // The weight in force stays.
                let healthy = RiseFall::default().next_state(current, recent.iter().map(|r| r.ok));
                (healthy, None)
            }
        };
        // The contract: a verdict's weight replaces the configured one
        // while the verdict holds; `None` gives it back.
        let reweighted = weight.is_some_and(|weight| {
            let mut held = state
                .verdict_weight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *held, weight) != weight
        });
        self.health_stats
            .latency
            .observe(called.elapsed().as_secs_f64());
        if result.source == ProbeSource::Probe {
            state.probes_want_in.store(wanted, Ordering::Release);
        }
        let ruling = self.rule(id, (current, wanted), &result);
        let verdict = match ruling {
            Ruling::Leaves(_) => false,
            Ruling::Returns => true,
            Ruling::Stays | Ruling::Capped => current,
        };
        state
            .timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(&result, verdict, verdict != current);
        if verdict == current {
            if reweighted {
                self.publish();
            }
            return None;
        }
        if verdict {
            self.start_ramp(state);
        }
        // One line per change; "left rotation" whatever the cause, `by`
        // says which.
        match ruling {
            Ruling::Leaves(Out::Traffic { until }) => tracing::warn!(
                pool = %self.name,
                backend = %state.config.name,
                address = %state.config.address,
                by = "traffic",
                ejected_for_ms = until.saturating_duration_since(std::time::Instant::now()).as_millis() as u64,
                detail = %result.detail,
                "backend left rotation"
            ),
            Ruling::Leaves(Out::Probe) => tracing::info!(
                pool = %self.name,
                backend = %state.config.name,
                address = %state.config.address,
                by = "probe",
                detail = %result.detail,
                "backend left rotation"
            ),
            _ => tracing::info!(
                pool = %self.name,
                backend = %state.config.name,
                address = %state.config.address,
                detail = %result.detail,
                "backend is back in rotation"
            ),
        }
        self.publish();
        Some(verdict)
    }

    /// Backends out of rotation for any reason (down, ejected, drained by
    /// an operator or by its agent), `except` one.
    fn out_count(&self, except: usize) -> usize {
        (0..self.backends.len())
            .filter(|&i| {
                i != except
                    && !(self.is_healthy(i)
                        && self.takes_sessions(i)
                        && self.effective_weight(i) > 0)
            })
            .count()
    }

    /// How many backends may be out when traffic evidence decides.
    fn ejections_allowed(&self) -> usize {
        self.backends.len() * self.ejection.max_percent as usize / 100
    }

    /// Apply the host's rules to the plugin's verdict for backend `id`.
    fn rule(&self, id: usize, (current, wanted): (bool, bool), result: &ProbeResult) -> Ruling {
        let state = &self.backends[id];
        if current == wanted && current {
            return Ruling::Stays;
        }
        let traffic_ejects = current && !wanted && result.source == ProbeSource::Traffic;
        // Held across the count and the change, so two changes at once
        // (two ejections, a probe's and an ejection) cannot both pass on
        // what the other is changing.
        let _deciding = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        if state.healthy.load(Ordering::Acquire) != current {
            // Another result, evaluated at the same time, changed it.
            return Ruling::Stays;
        }
        let allowed = self.ejections_allowed();
        let others_out = self.out_count(id);
        let may_eject = traffic_ejects && others_out < allowed;
        // With this backend out, more of the pool is out than traffic may
        // keep out: probes (or drains) took others since it was ejected.
        let over_cap = !current && others_out + 1 > allowed;
        let mut ejection = state.ejection.state();
        let ruling = ejection.rule(
            (current, wanted),
            (result.source, result.ok),
            (may_eject, over_cap),
            &self.ejection,
        );
        let first_cap = ruling == Ruling::Capped && ejection.first_cap_in_run();
        drop(ejection);
        match ruling {
            Ruling::Capped => {
                self.capped.inc();
                if first_cap {
                    tracing::warn!(
                        pool = %self.name,
                        backend = %state.config.name,
                        max_ejection_percent = self.ejection.max_percent,
                        detail = %result.detail,
                        "backend failing on live traffic stays in rotation: ejecting it would pass max_ejection_percent"
                    );
                }
            }
            Ruling::Leaves(Out::Traffic { .. }) => {
                state.ejections.inc();
                // Stored before the lock goes, so the next count sees it.
                state.healthy.store(false, Ordering::Release);
                self.forget_traffic(state);
            }
            Ruling::Leaves(Out::Probe) => {
                state.healthy.store(false, Ordering::Release);
                self.restore_within_cap(id);
            }
            Ruling::Returns => {
                state.healthy.store(true, Ordering::Release);
                self.forget_traffic(state);
            }
            Ruling::Stays => {}
        }
        ruling
    }

    /// A backend left or came back: the failures that took it out count no
    /// more (Envoy resets its counters on ejection), or it would leave
    /// again on its first failure.
    fn forget_traffic(&self, state: &BackendState) {
        state.ejection.end_run();
        state
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .traffic
            .clear();
    }

    /// Probes took backend `left` out. If traffic ejections now keep more
    /// of the pool out than `max_ejection_percent`, ejected backends whose
    /// latest probe passed come back at once rather than at their next
    /// probe: traffic evidence must never be what empties a pool.
    fn restore_within_cap(&self, left: usize) {
        let allowed = self.ejections_allowed();
        for (id, state) in self.backends.iter().enumerate() {
            if id == left || self.out_count(usize::MAX) <= allowed {
                continue;
            }
            let mut ejection = state.ejection.state();
            if !state.probes_want_in.load(Ordering::Acquire)
                || !matches!(ejection.out, Some(Out::Traffic { .. }))
            {
                continue;
            }
            ejection.return_now();
            drop(ejection);
            state.healthy.store(true, Ordering::Release);
            self.start_ramp(state);
            self.forget_traffic(state);
            tracing::warn!(
                pool = %self.name,
                backend = %state.config.name,
                address = %state.config.address,
                "backend is back in rotation before its ejection time: probes took others out, and traffic may not keep more than max_ejection_percent of the pool out"
            );
        }
    }
}
