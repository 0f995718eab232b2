//! A balancer built straight from the previous contract's WIT, kept
//! unchanged in `wit/previous/0.1.0`, without the SDK (which follows the
//! current contract). It must keep loading in a host of a later 0.1.x.
//! Its order is recognisable: healthy backends, highest id first.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../wit/previous/0.1.0",
    world: "gale:plugin/balancer@0.1.0",
});

use exports::gale::plugin::selector::Guest;
use gale::plugin::host::{Level, log};
use gale::plugin::types::{Backend, RequestContext};

thread_local! {
    static POOL: RefCell<Vec<Backend>> = const { RefCell::new(Vec::new()) };
}

struct Previous;

impl Guest for Previous {
    fn init(_settings: Vec<(String, String)>) -> Result<(), String> {
        log(Level::Info, "built against gale:plugin@0.1.0", &[]);
        Ok(())
    }

    fn set_pool(pool: Vec<Backend>, _listeners: Vec<String>) {
        POOL.with(|p| *p.borrow_mut() = pool);
    }

    fn select(_ctx: RequestContext) -> Vec<u32> {
        POOL.with(|p| {
            p.borrow()
                .iter()
                .rev()
                .filter(|b| b.healthy && !b.draining && b.weight > 0)
                .map(|b| b.id)
                .collect()
        })
    }
}

export!(Previous);
