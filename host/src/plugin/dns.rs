//! DNS record planning through a DNS plugin.

use std::sync::Arc;

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
}

impl DnsPlugin {
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
        &self.guest.name
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &super::PluginInfo {
        &self.guest.info
    }

    /// The records wanted for `snapshot`. An empty plan while members exist
    /// is refused: removing every record is never what an operator wants.
    pub fn plan(&self, snapshot: &DnsSnapshot) -> Result<Vec<DnsRecord>, CallFailure> {
        let budget = self.guest.budget;
        let records = self.guest.call(|runtime, live, _| {
            runtime.arm(&mut live.store, budget);
            live.exports
                .gale_plugin_publisher()
                .call_plan(&mut live.store, snapshot)
        })?;
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
                "a field of the record {:.40}... is longer than 255 bytes",
                r.set_id
            )));
        }
        Ok(records)
    }
}
