//! Prometheus metrics (text exposition via prometheus-client). Handles
//! used on hot paths are resolved once, at construction, so a decision
//! touches only atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub pool: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub pool: String,
    pub hook: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub pool: String,
    /// `agreed`, `disagreed` or `failed`.
    pub outcome: String,
}

/// Every metric gale exports.
pub struct Metrics {
    registry: Registry,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub plugin_fallbacks: Family<FallbackLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    /// Candidate balancers' decisions compared with the active ones.
    pub shadow_decisions: Family<ShadowLabels, Counter>,
    /// Reloads undone because their plugins failed on traffic.
    pub rollbacks: Counter,
    /// Id of the generation serving new sessions.
    pub generation: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gale");
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Plugin decisions asked for, by pool and hook",
            plugin_calls.clone(),
        );
        let plugin_fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "plugin_fallbacks",
            "Decisions taken by the built-in fallback because the plugin trapped, hit its deadline or memory cap, or answered garbage",
            plugin_fallbacks.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Config and plugin reloads, by result",
            reloads.clone(),
        );
        let shadow_decisions = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_decisions",
            "Decisions of candidate balancers in shadow mode, by whether they chose the same first backend as the balancer in use",
            shadow_decisions.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "rollbacks",
            "Reloads undone because a new plugin trapped or ran out of time in too many decisions",
            rollbacks.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "generation",
            "Id of the generation serving new sessions",
            generation.clone(),
        );
        Self {
            registry,
            plugin_calls,
            plugin_fallbacks,
            reloads,
            shadow_decisions,
            rollbacks,
            generation,
        }
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
