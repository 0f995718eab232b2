//! Health verdicts through a health plugin.

use std::sync::Arc;

use super::bindings::health::Health;
use super::bindings::types::{Backend, HealthVerdict, ProbeResult};
use super::instance::Guest;
use super::runtime::PluginRuntime;
use super::state::LiveCounters;
use super::{CallFailure, PluginError};
use crate::config::PluginSpec;

/// A loaded health plugin.
pub struct HealthPlugin {
    guest: Guest<Health>,
}

impl HealthPlugin {
    pub fn load(
        runtime: &PluginRuntime,
        spec: &PluginSpec,
        name: &str,
    ) -> Result<Self, PluginError> {
        Ok(Self {
            guest: Guest::load(runtime, spec, name, Arc::new(LiveCounters::default()))?,
        })
    }

    pub fn name(&self) -> &str {
        self.guest.name()
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &super::PluginInfo {
        &self.guest.info
    }

    /// The verdict for `backend` given the verdict in force and its recent
    /// results, oldest first.
    pub fn evaluate(
        &self,
        backend: &Backend,
        currently_healthy: bool,
        recent: &[ProbeResult],
    ) -> Result<HealthVerdict, CallFailure> {
        let budget = self.guest.budget;
        self.guest.call(
            |runtime, live, _| {
                runtime.arm(&mut live.store, budget);
                live.exports.gale_plugin_evaluator().call_evaluate(
                    &mut live.store,
                    backend,
                    currently_healthy,
                    recent,
                )
            },
            |_| Ok(()),
        )
    }
}
