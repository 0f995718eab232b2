//! A balancer built straight from the previous contract's WIT, kept
//! unchanged in `wit/previous/0.1.2`, without the SDK (which follows the
//! current contract). It must keep loading in a host of a later 0.1.x.
//! Its order is recognisable: eligible backends in id order, rotated by
//! one (the first goes last).

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../wit/previous/0.1.2",
    world: "gale:plugin/balancer@0.1.2",
});

use exports::gale::plugin::selector::Guest;
use gale::plugin::types::{Backend, RequestContext};

thread_local! {
    static POOL: RefCell<Vec<Backend>> = const { RefCell::new(Vec::new()) };
}

struct Previous;

impl Guest for Previous {
    fn init(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn set_pool(pool: Vec<Backend>, _listeners: Vec<String>) {
        POOL.with(|p| *p.borrow_mut() = pool);
    }

    fn select(_ctx: RequestContext) -> Vec<u32> {
        POOL.with(|p| {
            let mut order: Vec<u32> = p
                .borrow()
                .iter()
                .filter(|b| b.healthy && !b.draining && b.weight > 0)
                .map(|b| b.id)
                .collect();
            if !order.is_empty() {
                order.rotate_left(1);
            }
            order
        })
    }
}

export!(Previous);
