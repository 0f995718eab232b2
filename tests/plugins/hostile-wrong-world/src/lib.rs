//! A valid health plugin: configured as a balancer, it must be refused.
use gale_sdk::{Backend, HealthPolicy, HealthVerdict, ProbeResult, Settings};

struct AlwaysUp;

impl HealthPolicy for AlwaysUp {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(AlwaysUp)
    }
    fn evaluate(&mut self, _: &Backend, _: bool, _: &[ProbeResult]) -> HealthVerdict {
        HealthVerdict {
            healthy: true,
            weight: None,
        }
    }
}

gale_sdk::export_health!(AlwaysUp);
