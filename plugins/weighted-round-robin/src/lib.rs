//! Smooth weighted round-robin over the healthy backends of the pool.
//!
//! The pick comes first; every other healthy backend follows, in the order
//! the next sessions would pick them, so a retry needs no second call.

use gale_sdk::wrr::SmoothWrr;
use gale_sdk::{Backend, BackendId, Balancer, RequestContext, Settings};

struct WeightedRoundRobin {
    wrr: SmoothWrr,
    weights: Vec<u32>,
    order: Vec<BackendId>,
}

impl Balancer for WeightedRoundRobin {
    fn new(_settings: &Settings) -> Result<Self, String> {
        Ok(Self {
            wrr: SmoothWrr::new(),
            weights: Vec::new(),
            order: Vec::new(),
        })
    }

    fn pool_changed(&mut self, pool: &[Backend]) {
        self.wrr.reset();
        self.weights = pool
            .iter()
            .map(|b| if b.healthy && !b.draining { b.weight } else { 0 })
            .collect();
    }

    fn select(&mut self, _pool: &[Backend], _ctx: &RequestContext) -> Vec<BackendId> {
        self.wrr.order(&self.weights, &mut self.order);
        self.order.clone()
    }
}

gale_sdk::export_balancer!(WeightedRoundRobin);
