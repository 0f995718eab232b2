//! Allocates 1 MiB blocks and keeps them until memory runs out.
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Hog(Vec<Vec<u8>>);

impl Balancer for Hog {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Hog(Vec::new()))
    }
    fn select(&mut self, _: &Pool, _: &RequestContext) -> Vec<BackendId> {
        loop {
            self.0.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

gale_sdk::export_balancer!(Hog);
