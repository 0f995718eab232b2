//! HAProxy-style rise/fall health: a backend leaves after `fall` failed
//! results in a row (probes, or live traffic: gale keeps the two apart)
//! and returns after `rise` good ones. Settings: `rise` (default 2),
//! `fall` (default 3).
//!
//! A backend with a load agent (`agent_port`) is weighed as HAProxy's
//! agent-check does: "75%" sets its weight to 75 % of its own (rounded
//! up, so only 0 % drains), "drain" to 0 (no new sessions), "down" takes
//! it out at once, "up" lets rise/fall decide.

use gale_sdk::threshold::RiseFall;
use gale_sdk::{AgentState, Backend, HealthPolicy, HealthVerdict, ProbeResult, Settings};

/// Longest streak the host's history is guaranteed to hold.
const MAX_THRESHOLD: u32 = 16;

struct ThresholdHealth(RiseFall);

impl HealthPolicy for ThresholdHealth {
    fn new(settings: &Settings) -> Result<Self, String> {
        let defaults = RiseFall::default();
        let rf = RiseFall {
            rise: settings.parse_or("rise", defaults.rise)?,
            fall: settings.parse_or("fall", defaults.fall)?,
        };
        for (key, v) in [("rise", rf.rise), ("fall", rf.fall)] {
            if !(1..=MAX_THRESHOLD).contains(&v) {
                return Err(format!(
                    "setting `{key}` = {v}: must be 1..={MAX_THRESHOLD}"
                ));
            }
        }
        Ok(Self(rf))
    }

    fn evaluate(
        &mut self,
        backend: &Backend,
        currently_healthy: bool,
        recent: &[ProbeResult],
    ) -> HealthVerdict {
        let healthy = self
            .0
            .next_state(currently_healthy, recent.iter().map(|r| r.ok));
        let Some(report) = gale_sdk::load_report() else {
            return HealthVerdict {
                healthy,
                weight: None,
            };
        };
        let scaled = report.weight_percent.map(|p| {
            let scaled = (u64::from(backend.weight) * u64::from(p)).div_ceil(100);
            u32::try_from(scaled).unwrap_or(u32::MAX)
        });
        match report.state {
            Some(AgentState::Down) => HealthVerdict {
                healthy: false,
                weight: scaled,
            },
            Some(AgentState::Drain) => HealthVerdict {
                healthy,
                weight: Some(0),
            },
            _ => HealthVerdict {
                healthy,
                weight: scaled,
            },
        }
    }
}

gale_sdk::export_health!(ThresholdHealth);
