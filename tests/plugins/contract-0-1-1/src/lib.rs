//! A health plugin built straight from the previous contract's WIT, kept
//! unchanged in `wit/previous/0.1.1`, without the SDK (which follows the
//! current contract): its world has no `health-detail` import. It must
//! keep loading in a host of a later 0.1.x. Its verdict is recognisable:
//! the newest result's `ok`, at weight 7.

wit_bindgen::generate!({
    path: "../../../wit/previous/0.1.1",
    world: "gale:plugin/health@0.1.1",
});

use exports::gale::plugin::evaluator::Guest;
use gale::plugin::types::{Backend, HealthVerdict, ProbeResult};

struct Previous;

impl Guest for Previous {
    fn init(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(
        _backend: Backend,
        currently_healthy: bool,
        recent: Vec<ProbeResult>,
    ) -> HealthVerdict {
        HealthVerdict {
            healthy: recent.last().map_or(currently_healthy, |r| r.ok),
            weight: Some(7),
        }
    }
}

export!(Previous);
