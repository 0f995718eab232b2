//! Never returns from a selection, and spends its time in the host: each
//! turn of the loop logs a large message, a few instructions of its own.
//! Fuel alone would let it run for minutes; the epoch backstop stops it.
use gale_sdk::{BackendId, Balancer, Level, Pool, RequestContext, Settings};

struct Chatty {
    message: String,
}

impl Balancer for Chatty {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Chatty {
            message: "x".repeat(1 << 20),
        })
    }
    fn select(&mut self, _: &Pool, _: &RequestContext) -> Vec<BackendId> {
        loop {
            gale_sdk::log(Level::Trace, &self.message);
        }
    }
}

gale_sdk::export_balancer!(Chatty);
