//! Test balancer: every healthy, undrained backend of weight > 0 in the
//! order the config lists them, whatever their role. Its decisions differ
//! from round-robin's on any pool of two, so a test can tell which of the
//! two decided.

use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct FirstListed;

impl Balancer for FirstListed {
    fn new(_settings: &Settings) -> Result<Self, String> {
        Ok(FirstListed)
    }

    fn select(&mut self, pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
        pool.iter()
            .filter(|b| b.healthy && !b.draining && b.weight > 0)
            .map(|b| b.id)
            .collect()
    }
}

gale_sdk::export_balancer!(FirstListed);
