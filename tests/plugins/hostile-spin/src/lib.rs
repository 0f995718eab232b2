//! Never returns from a selection: only the host's CPU deadline stops it.
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Spin;

impl Balancer for Spin {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Spin)
    }
    fn select(&mut self, pool: &Pool, _: &RequestContext) -> Vec<BackendId> {
        let mut n: u64 = 0;
        loop {
            // Keep the loop observable so it is not optimised into a trap.
            n = std::hint::black_box(n.wrapping_add(pool.len() as u64));
        }
    }
}

gale_sdk::export_balancer!(Spin);
