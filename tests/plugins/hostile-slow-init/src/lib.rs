//! Expensive to set up and useless once set up: `init` spins for about
//! 600 ms of its 1 s setup deadline (as a language runtime's start-up or a
//! hostile plugin might), and every selection traps. Calls after a trap
//! must not wait for the next instance's `init`. It answers the host's
//! self-check (sample client 192.0.2.1) honestly, so it loads.
use gale_sdk::{BackendId, Balancer, IpAddress, Pool, RequestContext, Settings};

struct SlowInit;

impl Balancer for SlowInit {
    fn new(settings: &Settings) -> Result<Self, String> {
        let spin_ms: u64 = settings.parse_or("spin_ms", 600)?;
        let started = gale_sdk::monotonic_now();
        let mut n: u64 = 0;
        while gale_sdk::monotonic_now().saturating_sub(started) < spin_ms * 1_000_000 {
            for _ in 0..10_000 {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(SlowInit)
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        if matches!(ctx.client_ip, IpAddress::V4(0xc000_0201)) {
            return pool.iter().map(|b| b.id).collect();
        }
        panic!("every selection traps")
    }
}

gale_sdk::export_balancer!(SlowInit);
