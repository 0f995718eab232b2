//! Answers the host's self-check (its sample client is 192.0.2.1, from
//! the documentation range) and fails every real client: a bad version
//! that only traffic reveals, which the host must roll back. How it fails
//! is its setting `fail`: `trap` (the default) panics, `garbage` answers
//! backend id 999, which no pool has.
use gale_sdk::{BackendId, Balancer, IpAddress, Pool, RequestContext, Settings};

struct Sneaky {
    garbage: bool,
}

impl Balancer for Sneaky {
    fn new(settings: &Settings) -> Result<Self, String> {
        match settings.get("fail").unwrap_or("trap") {
            "trap" => Ok(Sneaky { garbage: false }),
            "garbage" => Ok(Sneaky { garbage: true }),
            other => Err(format!("fail = {other:?}: expected trap or garbage")),
        }
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        if !matches!(ctx.client_ip, IpAddress::V4(0xc000_0201)) {
            if self.garbage {
                return vec![999];
            }
            panic!("broken on real traffic");
        }
        pool.iter().map(|b| b.id).collect()
    }
}

gale_sdk::export_balancer!(Sneaky);
