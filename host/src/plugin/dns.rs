//! DNS record planning through a DNS plugin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bindings::dns::Dns;
use super::bindings::types::{DnsRecord, DnsSnapshot};
use super::instance::Guest;
use super::runtime::PluginRuntime;
use super::state::LiveCounters;
use super::{CallFailure, PluginError};
use crate::config::PluginSpec;

/// Most records a plan may hold: far more than one name needs (an A
/// RRset of 64 already exceeds a 1232-byte UDP answer).
pub const MAX_RECORDS: usize = 256;

/// A loaded DNS plugin.
pub struct DnsPlugin {
    guest: Guest<Dns>,
    /// Plans asked for, and how many failed, since it was loaded: a reload
    /// whose DNS plugin keeps failing is rolled back like a balancer.
    plans: AtomicU64,
    failed: AtomicU64,
}

impl DnsPlugin {
    pub fn load(
        runtime: &PluginRuntime,
        spec: &PluginSpec,
        name: &str,
    ) -> Result<Self, PluginError> {
        Ok(Self {
            guest: Guest::load(runtime, spec, name, Arc::new(LiveCounters::default()))?,
            plans: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        self.guest.name()
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &super::PluginInfo {
        &self.guest.info
    }

    /// The records wanted for `snapshot`. An empty plan while members exist
    /// is refused: removing every record is never what an operator wants.
    pub fn plan(&self, snapshot: &DnsSnapshot) -> Result<Vec<DnsRecord>, CallFailure> {
        let budget = self.guest.budget;
        self.plans.fetch_add(1, Ordering::Relaxed);
        self.guest
            .call(
                |runtime, live, _| {
                    runtime.arm(&mut live.store, budget);
                    live.exports
                        .gale_plugin_publisher()
                        .call_plan(&mut live.store, snapshot)
                },
                |records| check_plan(records, snapshot),
            )
            .inspect_err(|failure| {
                if failure.is_plugins_fault() {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            })
    }

    /// (plans asked for, of which the plugin failed) since it was loaded.
    pub fn plan_counts(&self) -> (u64, u64) {
        (
            self.plans.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The guardrails every plan must pass; one that fails is malformed, like
/// any answer the host rejects.
fn check_plan(records: &mut [DnsRecord], snapshot: &DnsSnapshot) -> Result<(), CallFailure> {
    if records.is_empty() && !snapshot.members.is_empty() {
        return Err(CallFailure::Malformed(
            "empty plan would remove every record".into(),
        ));
    }
    // Plans are kept, compared and answered from: bounded, like a
    // name server bounds what it serves.
    if records.len() > MAX_RECORDS {
        return Err(CallFailure::Malformed(format!(
            "{} records (at most {MAX_RECORDS})",
            records.len()
        )));
    }
    if let Some(r) = records
        .iter()
        .find(|r| r.name.len() > 255 || r.value.len() > 255 || r.set_id.len() > 255)
    {
        return Err(CallFailure::Malformed(format!(
            "a field of the record {}... is longer than 255 bytes",
            super::state::escape_for_log(&r.set_id, 40)
        )));
    }
    Ok(())
}
