//! Spends its selections in WASI, where fuel does not count: asks
//! `wasi:random` for `bytes` random bytes (a setting; 8 MiB by default)
//! over and over, a few instructions of its own per turn. It answers the
//! host's self-check (sample client 192.0.2.1) honestly, so it loads.
use gale_sdk::{BackendId, Balancer, IpAddress, Pool, RequestContext, Settings};

mod wasi_random {
    // WASI's own interface, as the standard library imports it (the two
    // merge into one import, so it must be whole); the host links it by
    // semver.
    wit_bindgen::generate!({
        inline: "
            package wasi:random@0.2.0;
            interface random {
                get-random-bytes: func(len: u64) -> list<u8>;
                get-random-u64: func() -> u64;
            }
            world rand {
                import random;
            }
        ",
        world: "rand",
    });
}

struct Random {
    bytes: u64,
}

impl Balancer for Random {
    fn new(settings: &Settings) -> Result<Self, String> {
        Ok(Random {
            bytes: settings.parse_or("bytes", 8 << 20)?,
        })
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        if matches!(ctx.client_ip, IpAddress::V4(0xc000_0201)) {
            return pool.iter().map(|b| b.id).collect();
        }
        let mut seen: u64 = 0;
        loop {
            let bytes = wasi_random::wasi::random::random::get_random_bytes(self.bytes);
            seen = std::hint::black_box(seen.wrapping_add(bytes.len() as u64));
            if seen == u64::MAX {
                return (0..pool.len() as u32).collect();
            }
        }
    }
}

gale_sdk::export_balancer!(Random);
