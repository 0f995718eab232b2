//! Backend selection through a balancer plugin.

use std::sync::Arc;

use super::bindings::balancer::Balancer;
use super::bindings::types::{Backend, RequestContext};
use super::instance::Guest;
use super::runtime::PluginRuntime;
use super::state::LiveCounters;
use super::{CallFailure, PluginError};
use crate::config::PluginSpec;

/// The pool as pushed to balancers: changes only on membership, weight,
/// health or drain changes, never per session.
#[derive(Debug, Clone)]
pub struct PushedPool {
    /// Increases on every change; never 0.
    pub version: u64,
    pub backends: Vec<Backend>,
    /// Names of the listeners the pool serves (`request-context.listener`).
    pub listeners: Vec<String>,
    /// Backends that may take a session (healthy, not draining, weight > 0).
    pub eligible: usize,
}

impl PushedPool {
    pub fn new(version: u64, backends: Vec<Backend>, listeners: Vec<String>) -> Self {
        let eligible = backends
            .iter()
            .filter(|b| b.healthy && !b.draining && b.weight > 0)
            .count();
        Self {
            version,
            backends,
            listeners,
            eligible,
        }
    }
}

/// A loaded balancer plugin with its reused instance.
pub struct BalancerPlugin {
    guest: Guest<Balancer>,
}

impl BalancerPlugin {
    /// Load and start the plugin (blocking: compiles on a cache miss).
    pub fn load(
        runtime: &PluginRuntime,
        spec: &PluginSpec,
        name: &str,
        live: Arc<LiveCounters>,
    ) -> Result<Self, PluginError> {
        Ok(Self {
            guest: Guest::load(runtime, spec, name, live)?,
        })
    }

    pub fn name(&self) -> &str {
        self.guest.name()
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &super::PluginInfo {
        &self.guest.info
    }

    /// The order to try backends in, as indices into `pool.backends`,
    /// checked: every id exists, none repeats, and the list is empty only
    /// when no backend is eligible.
    pub fn select(&self, pool: &PushedPool, ctx: &RequestContext) -> Result<Vec<u32>, CallFailure> {
        let budget = self.guest.budget;
        self.guest.call(
            |runtime, live, pushed| {
                let api = live.exports.gale_plugin_selector();
                if *pushed != pool.version {
                    // Pushing a pool costs one marshal of every backend; it gets
                    // ten decisions' worth of CPU.
                    runtime.arm(&mut live.store, budget.times(10));
                    api.call_set_pool(&mut live.store, &pool.backends, &pool.listeners)?;
                    *pushed = pool.version;
                }
                runtime.arm(&mut live.store, budget);
                api.call_select(&mut live.store, ctx)
            },
            |order| check_order(order, pool),
        )
    }
}

fn check_order(order: &mut Vec<u32>, pool: &PushedPool) -> Result<(), CallFailure> {
    let n = pool.backends.len();
    if let Some(bad) = order.iter().find(|&&id| id as usize >= n) {
        return Err(CallFailure::Malformed(format!(
            "backend id {bad} is not in the pool of {n}"
        )));
    }
    if order.is_empty() && pool.eligible > 0 {
        return Err(CallFailure::Malformed(format!(
            "empty answer while {} backends can take sessions",
            pool.eligible
        )));
    }
    // Repeats are harmless to drop, but an answer longer than the pool
    // would pin its memory for the whole session.
    if order.len() > n {
        return Err(CallFailure::Malformed(format!(
            "{} ids for a pool of {n}",
            order.len()
        )));
    }
    // Pools are small: a bit set covers the common case without
    // allocating.
    if n <= 64 {
        let mut seen = 0u64;
        order.retain(|&id| {
            let bit = 1u64 << id;
            let fresh = seen & bit == 0;
            seen |= bit;
            fresh
        });
    } else {
        let mut seen = vec![false; n];
        order.retain(|&id| !std::mem::replace(&mut seen[id as usize], true));
    }
    Ok(())
}
