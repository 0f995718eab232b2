//! Smooth weighted round-robin over the healthy backends of the pool.
//!
//! The pick comes first; every other healthy backend follows, heaviest
//! first, so a retry needs no second call.

use gale_sdk::wrr::SmoothWrr;
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct WeightedRoundRobin {
    wrr: SmoothWrr,
}

impl Balancer for WeightedRoundRobin {
    fn new(_settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            wrr: SmoothWrr::default(),
        })
    }

    fn pool_changed(&mut self, pool: &Pool) {
        let weights: Vec<u32> = pool
            .iter()
            .map(|b| {
                if b.healthy && !b.draining {
                    b.weight
                } else {
                    0
                }
            })
            .collect();
        self.wrr.set_weights(&weights);
    }

    fn select(&mut self, _pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
        let mut order = Vec::with_capacity(self.wrr.eligible());
        self.wrr.order(&mut order);
        order
    }
}

gale_sdk::export_balancer!(WeightedRoundRobin);
