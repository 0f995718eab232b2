//! Tries to flood and forge gale's log: 10,000 warnings per selection,
//! each with a line break followed by a fake gale log line, ANSI escape
//! sequences (colour, clear screen) and a right-to-left override, in the
//! message and in a field. Then answers honestly.
use gale_sdk::{BackendId, Balancer, Level, Pool, RequestContext, Settings};

struct Flood;

const FORGED: &str =
    "flood\n2026-01-01T00:00:00Z  INFO gale::admin: FORGED token accepted\x1b[2J\x1b[31m\u{202e}";

impl Balancer for Flood {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Flood)
    }
    fn select(&mut self, pool: &Pool, _: &RequestContext) -> Vec<BackendId> {
        for _ in 0..10_000 {
            gale_sdk::log_with(Level::Warn, FORGED, &[("k\nFORGED", FORGED)]);
        }
        pool.iter().filter(|b| b.healthy).map(|b| b.id).collect()
    }
}

gale_sdk::export_balancer!(Flood);
