//! Host-side bindings of the `gale:plugin` worlds. The shared `types` and
//! `host` interfaces are generated once (with the balancer world) and
//! reused by the others.

pub mod balancer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/balancer@0.1.0",
        additional_derives: [PartialEq],
        // Host calls may trap: the watchdog ends a call that spends its
        // time in them (fuel only counts the guest's own instructions).
        imports: { default: trappable },
    });
}

pub mod health {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/health@0.1.0",
        with: {
            "gale:plugin/types@0.1.0": super::balancer::gale::plugin::types,
            "gale:plugin/host@0.1.0": super::balancer::gale::plugin::host,
        },
    });
}

pub mod dns {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/dns@0.1.0",
        with: {
            "gale:plugin/types@0.1.0": super::balancer::gale::plugin::types,
            "gale:plugin/host@0.1.0": super::balancer::gale::plugin::host,
        },
    });
}

pub use balancer::gale::plugin::host::Level;
pub use balancer::gale::plugin::types;

/// Export interface each world must provide, and the world's short name.
pub const WORLDS: [(&str, &str); 3] = [
    ("balancer", "gale:plugin/selector@0.1.0"),
    ("health", "gale:plugin/evaluator@0.1.0"),
    ("dns", "gale:plugin/publisher@0.1.0"),
];
