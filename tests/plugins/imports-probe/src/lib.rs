//! Uses every host import and the WASI the host grants (clocks, random):
//! orders backends by sessions in flight (fewest first, through
//! `pool-state`), logs each decision with fields when info is enabled, and
//! refuses to answer if the monotonic clock ever goes backwards or the
//! wall clock shows anything but the UNIX epoch.
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
        // The WASI gale grants, reached through Rust's standard library
        // (which imports an older 0.2.x than the host links): a wall clock
        // stopped at the epoch (the contract grants no time of day) and
        // random numbers (HashMap's seed).
        let epoch = std::time::SystemTime::now() == std::time::UNIX_EPOCH;
        let seeded = std::collections::HashMap::<u8, u8>::new();
        if !epoch || !seeded.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<BackendId> = pool.iter().filter(|b| b.healthy).map(|b| b.id).collect();
        order.sort_by_key(|&id| gale_sdk::active_sessions(id));
        if gale_sdk::log_enabled(Level::Info) {
            gale_sdk::log_with(
                Level::Info,
                "least active first",
                &[
                    ("listener", pool.listener_name(ctx)),
                    ("client", &ctx.client_ip().to_string()),
                ],
            );
        }
        order
    }
}

gale_sdk::export_balancer!(ImportsProbe);
