//! Uses every host import: orders backends by sessions in flight (fewest
//! first, through `pool-state`), logs each decision with fields, and
//! refuses to answer if the monotonic clock ever goes backwards.
use gale_sdk::{BackendId, Balancer, Level, Pool, RequestContext, Settings};

struct ImportsProbe {
    last_now: u64,
}

impl Balancer for ImportsProbe {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(ImportsProbe { last_now: 0 })
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        let now = gale_sdk::monotonic_now();
        if now < self.last_now {
            return Vec::new();
        }
        self.last_now = now;
        let mut order: Vec<BackendId> = pool.iter().filter(|b| b.healthy).map(|b| b.id).collect();
        order.sort_by_key(|&id| gale_sdk::active_sessions(id));
        gale_sdk::log_with(
            Level::Info,
            "least active first",
            &[
                ("listener", pool.listener_name(ctx)),
                ("client", &ctx.client_ip().to_string()),
            ],
        );
        order
    }
}

gale_sdk::export_balancer!(ImportsProbe);
