//! Traps (abort is `unreachable` in WebAssembly) on every selection, after a
//! valid init.
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Trap;

impl Balancer for Trap {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Trap)
    }
    fn select(&mut self, _: &Pool, _: &RequestContext) -> Vec<BackendId> {
        std::process::abort()
    }
}

gale_sdk::export_balancer!(Trap);
