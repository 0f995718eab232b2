//! Active/standby by priority.
//!
//! Backends of the lowest `priority` (role "primary" is 0, "standby" 1)
//! that has a healthy member take every session, weighted round-robin among
//! them; higher tiers are used only while every backend below is unhealthy.
//! When a primary recovers, new sessions go back to it at once. For
//! retries, the healthy backends of later tiers follow the chosen tier, so
//! a session is deferred only when no backend at all can take it; set
//! `standby_retry = "false"` to keep standbys out of primary sessions.

use gale_sdk::wrr::SmoothWrr;
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Failover {
    standby_retry: bool,
    /// One round-robin per tier, lowest priority first.
    tiers: Vec<Tier>,
}

/// Round-robin of one tier: weight 0 for backends outside it or down.
type Tier = SmoothWrr;

impl Balancer for Failover {
    fn new(settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            standby_retry: settings.parse_or("standby_retry", true)?,
            tiers: Vec::new(),
        })
    }

    fn pool_changed(&mut self, pool: &Pool) {
        let mut priorities: Vec<u32> = pool.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        self.tiers = priorities
            .into_iter()
            .map(|p| {
                let weights: Vec<u32> = pool
                    .iter()
                    .map(|b| {
                        let up = b.priority == p && b.healthy && !b.draining;
                        if up { b.weight } else { 0 }
                    })
                    .collect();
                SmoothWrr::new(&weights)
            })
            .filter(|t| t.weights().iter().any(|&w| w > 0))
            .collect();
    }

    fn select(&mut self, _pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
        let mut order = Vec::new();
        let mut tier_order = Vec::new();
        for (i, tier) in self.tiers.iter_mut().enumerate() {
            if i > 0 && !self.standby_retry {
                break;
            }
            tier.order(&mut tier_order);
            order.extend_from_slice(&tier_order);
        }
        order
    }
}

gale_sdk::export_balancer!(Failover);
