//! Smooth weighted round-robin over the healthy backends of the pool, in
//! tiers as HAProxy's `backup` servers: standbys (`role = "standby"`,
//! priority 1) take sessions only while every primary is out.
//!
//! The pick comes first; the other healthy backends of its tier follow,
//! heaviest first, then the later tiers the same way, so a retry needs no
//! second call and a session is deferred only when no backend at all can
//! take it. Setting `standby_retry = false` keeps standbys out of the
//! retries of sessions the primaries could take.

use gale_sdk::wrr::TieredWrr;
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct WeightedRoundRobin {
    standby_retry: bool,
    tiers: TieredWrr,
}

impl Balancer for WeightedRoundRobin {
    fn new(settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            standby_retry: settings.parse_or("standby_retry", true)?,
            tiers: TieredWrr::default(),
        })
    }

    fn pool_changed(&mut self, pool: &Pool) {
        let backends: Vec<(u32, u32)> = pool
            .iter()
            .map(|b| {
                let up = b.healthy && !b.draining;
                (b.priority, if up { b.weight } else { 0 })
            })
            .collect();
        self.tiers = TieredWrr::new(&backends);
    }

    fn select(&mut self, _pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
        let mut order = Vec::with_capacity(self.tiers.eligible());
        self.tiers.order(&mut order, self.standby_retry);
        order
    }
}

gale_sdk::export_balancer!(WeightedRoundRobin);
