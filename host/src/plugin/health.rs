//! Health verdicts through a health plugin.

use std::sync::Arc;

use super::bindings::health::Health;
use super::bindings::types::{Backend, HealthVerdict, ProbeResult};
use super::instance::Guest;
use super::runtime::PluginRuntime;
use super::state::LiveCounters;
use super::{CallFailure, PluginError};
use crate::config::PluginSpec;

/// What a health plugin may ask about the results of one `evaluate` call
/// through the `health-detail` import (since contract 0.1.2): what the
/// records of 0.1.0 cannot carry.
#[derive(Debug, Clone, Default)]
pub struct HealthDetail {
    /// For each result of `recent`: a refusal about one client.
    pub per_client: Vec<bool>,
    /// The backend's latest load report.
    pub load: Option<crate::health::LoadReport>,
}

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
    /// results, oldest first, with what `detail` adds about them.
    pub fn evaluate(
        &self,
        backend: &Backend,
        currently_healthy: bool,
        recent: &[ProbeResult],
        detail: HealthDetail,
    ) -> Result<HealthVerdict, CallFailure> {
        let budget = self.guest.budget;
        self.guest.call(
            |runtime, live, _| {
                runtime.arm(&mut live.store, budget);
                live.store.data_mut().health_detail = detail;
                let verdict = live.exports.gale_plugin_evaluator().call_evaluate(
                    &mut live.store,
                    backend,
                    currently_healthy,
                    recent,
                );
                live.store.data_mut().health_detail = HealthDetail::default();
                verdict
            },
            |_| Ok(()),
        )
    }
}
