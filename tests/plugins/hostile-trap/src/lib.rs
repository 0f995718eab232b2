//! Traps (an explicit `unreachable`) on every selection, after a valid init.
use gale_sdk::{Backend, BackendId, Balancer, RequestContext, Settings};

struct Trap;

impl Balancer for Trap {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Trap)
    }
    fn select(&mut self, _: &[Backend], _: &RequestContext) -> Vec<BackendId> {
        core::arch::wasm32::unreachable()
    }
}

gale_sdk::export_balancer!(Trap);
