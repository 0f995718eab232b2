//! Shadow mode: a candidate balancer decides beside the active one on
//! every session, and only its agreement is recorded. An operator tries a
//! new policy on real traffic this way, then promotes it by moving it to
//! `balancer` in the config.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::metrics::{Metrics, ShadowLabels};
use crate::plugin::types::RequestContext;
use crate::plugin::{BalancerPlugin, PushedPool};

/// Disagreements kept for `/status`: the latest ones.
const SAMPLES: usize = 16;

pub struct Shadow {
    plugin: BalancerPlugin,
    mode: &'static str,
    decisions: AtomicU64,
    /// Same first backend: the session would have gone to the same MTA.
    agreed: AtomicU64,
    /// Same whole order, failover included.
    same_order: AtomicU64,
    /// The candidate trapped, ran out of time or answered garbage.
    failed: AtomicU64,
    samples: Mutex<VecDeque<Disagreement>>,
    counters: [Counter; 3],
}

/// One session on which the two balancers chose differently.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    /// RFC 3339, UTC.
    pub at: String,
    pub client: String,
    /// Backend names in the order the active balancer (or, when it
    /// failed, the built-in fallback) gave: the order that was used.
    pub active: Vec<String>,
    pub candidate: Vec<String>,
}

/// What `/status` shows of a shadow.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub plugin: String,
    pub mode: &'static str,
    pub decisions: u64,
    pub agreed: u64,
    pub disagreed: u64,
    pub same_order: u64,
    pub failed: u64,
    /// agreed / (decisions - failed); absent before the first comparison.
    pub agreement: Option<f64>,
    pub disagreements: Vec<Disagreement>,
}

impl Shadow {
    pub fn new(plugin: BalancerPlugin, mode: &'static str, metrics: &Metrics, pool: &str) -> Self {
        let counter = |outcome: &str| {
            metrics
                .shadow_decisions
                .get_or_create(&ShadowLabels {
                    pool: pool.to_string(),
                    outcome: outcome.to_string(),
                })
                .clone()
        };
        Shadow {
            plugin,
            mode,
            decisions: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            same_order: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            counters: [counter("agreed"), counter("disagreed"), counter("failed")],
        }
    }

    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    pub fn info(&self) -> &crate::plugin::PluginInfo {
        self.plugin.info()
    }

    /// The candidate's answer, unchecked against the active one (for the
    /// self-check).
    pub fn select(
        &self,
        pool: &PushedPool,
        ctx: &RequestContext,
    ) -> Result<Vec<u32>, crate::plugin::CallFailure> {
        self.plugin.select(pool, ctx)
    }

    /// Ask the candidate for `ctx` and compare with `used`, the order the
    /// session goes by. Never affects the session.
    pub fn observe(&self, pool: &PushedPool, ctx: &RequestContext, used: &[u32]) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        let order = match self.plugin.select(pool, ctx) {
            Ok(order) => order,
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.counters[2].inc();
                return;
            }
        };
        if order == used {
            self.same_order.fetch_add(1, Ordering::Relaxed);
        }
        if order.first() == used.first() {
            self.agreed.fetch_add(1, Ordering::Relaxed);
            self.counters[0].inc();
            return;
        }
        self.counters[1].inc();
        let names = |ids: &[u32]| -> Vec<String> {
            ids.iter()
                .filter_map(|&id| pool.backends.get(id as usize))
                .map(|b| b.name.clone())
                .collect()
        };
        let sample = Disagreement {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            client: crate::generation::ip_of(&ctx.client_ip).to_string(),
            active: names(used),
            candidate: names(&order),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn report(&self) -> ShadowReport {
        let decisions = self.decisions.load(Ordering::Relaxed);
        let agreed = self.agreed.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let compared = decisions.saturating_sub(failed);
        ShadowReport {
            plugin: self.name().to_string(),
            mode: self.mode,
            decisions,
            agreed,
            disagreed: compared.saturating_sub(agreed),
            same_order: self.same_order.load(Ordering::Relaxed),
            failed,
            agreement: (compared > 0).then(|| agreed as f64 / compared as f64),
            disagreements: self
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}
