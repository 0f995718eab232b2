//! A balancer of a future, incompatible contract version (0.2.0: a break
//! while the major version is 0). The host must refuse it at load, naming
//! both versions, rather than fail on its first call.

wit_bindgen::generate!({
    inline: r#"
        package gale:plugin@0.2.0;

        interface selector {
            init: func(settings: list<tuple<string, string>>) -> result<_, string>;
            select-any: func() -> list<u32>;
        }

        world balancer {
            export selector;
        }
    "#,
    world: "gale:plugin/balancer@0.2.0",
});

use exports::gale::plugin::selector::Guest;

struct Future;

impl Guest for Future {
    fn init(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn select_any() -> Vec<u32> {
        vec![0]
    }
}

export!(Future);
