//! {{name}}: a gale balancer. gale asks `select` once per SMTP session or
//! HTTP request for the backends to try, best first; it tries them in that
//! order without asking again.

use gale_sdk::{BackendId, Balancer, Pool, RequestContext, Settings};

struct Plugin;

impl Balancer for Plugin {
    /// Called once with the `settings` of the config; an error refuses the
    /// plugin at load (the running generation stays).
    fn new(_settings: &Settings) -> Result<Self, String> {
        Ok(Plugin)
    }

    /// Every backend that may take the session (healthy, not drained,
    /// weight above 0): the lowest priority tier first (standbys after
    /// primaries), heavier backends first within a tier.
    fn select(&mut self, pool: &Pool, _ctx: &RequestContext) -> Vec<BackendId> {
        let mut eligible: Vec<_> = pool
            .iter()
            .filter(|b| b.healthy && !b.draining && b.weight > 0)
            .collect();
        eligible.sort_by_key(|b| (b.priority, std::cmp::Reverse(b.weight)));
        eligible.into_iter().map(|b| b.id).collect()
    }
}

gale_sdk::export_balancer!(Plugin);
