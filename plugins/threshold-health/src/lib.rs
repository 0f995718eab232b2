//! HAProxy-style rise/fall health: a backend leaves after `fall` failed
//! results in a row (probes or live traffic) and returns after `rise` good
//! ones. Settings: `rise` (default 2), `fall` (default 3).

use gale_sdk::threshold::RiseFall;
use gale_sdk::{Backend, HealthPolicy, HealthVerdict, ProbeResult, Settings};

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
        _backend: &Backend,
        currently_healthy: bool,
        recent: &[ProbeResult],
    ) -> HealthVerdict {
        HealthVerdict {
            healthy: self
                .0
                .next_state(currently_healthy, recent.iter().map(|r| r.ok)),
            weight: None,
        }
    }
}

gale_sdk::export_health!(ThresholdHealth);
