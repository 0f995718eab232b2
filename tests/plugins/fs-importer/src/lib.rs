//! Links Rust's `std::fs`, so the component imports `wasi:filesystem`,
//! which gale does not grant. It must still load (the import traps only
//! when called), and it calls it for client port 1 only.
use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct FsImporter;

impl Balancer for FsImporter {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(FsImporter)
    }
    fn select(&mut self, pool: &Pool, ctx: &RequestContext) -> Vec<BackendId> {
        if ctx.client_port == 1 && std::fs::metadata("/etc").is_err() {
            return Vec::new();
        }
        pool.iter().filter(|b| b.healthy).map(|b| b.id).collect()
    }
}

gale_sdk::export_balancer!(FsImporter);
