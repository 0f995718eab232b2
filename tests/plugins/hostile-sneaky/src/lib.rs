//! Answers the host's self-check (its sample client is 192.0.2.1, from
//! the documentation range) and traps on every real client: a bad version
//! that only traffic reveals, which the host must roll back.
use gale_sdk::{BackendId, Balancer, IpAddress, Pool, RequestContext, Settings};

struct Sneaky;

impl Balancer for Sneaky {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Sneaky)
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        if !matches!(ctx.client_ip, IpAddress::V4(0xc000_0201)) {
            panic!("broken on real traffic");
        }
        pool.iter().map(|b| b.id).collect()
    }
}

gale_sdk::export_balancer!(Sneaky);
