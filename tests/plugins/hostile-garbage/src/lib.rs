//! Answers with backend ids far past the end of the pool.
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Garbage;

impl Balancer for Garbage {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Garbage)
    }
    fn select(&mut self, pool: &Pool, _: &RequestContext) -> Vec<BackendId> {
        vec![pool.len() as u32 + 7, u32::MAX]
    }
}

gale_sdk::export_balancer!(Garbage);
