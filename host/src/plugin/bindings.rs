//! Host-side bindings of the `gale:plugin` worlds. The shared `types` and
//! `host` interfaces are generated once (with the balancer world) and
//! reused by the others.

pub mod balancer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/balancer@0.1.3",
        additional_derives: [PartialEq],
        // Host calls may trap: the watchdog ends a call that spends its
        // time in them (fuel only counts the guest's own instructions).
        imports: { default: trappable },
    });
}

pub mod health {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/health@0.1.3",
        imports: { default: trappable },
        with: {
            "gale:plugin/types@0.1.3": super::balancer::gale::plugin::types,
            "gale:plugin/host@0.1.3": super::balancer::gale::plugin::host,
        },
    });
}

pub mod dns {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/dns@0.1.3",
        with: {
            "gale:plugin/types@0.1.3": super::balancer::gale::plugin::types,
            "gale:plugin/host@0.1.3": super::balancer::gale::plugin::host,
        },
    });
}

pub mod admission {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "gale:plugin/admission@0.1.3",
        additional_derives: [PartialEq],
        with: {
            "gale:plugin/types@0.1.3": super::balancer::gale::plugin::types,
            "gale:plugin/host@0.1.3": super::balancer::gale::plugin::host,
        },
    });
}

pub use balancer::gale::plugin::host::Level;
pub use balancer::gale::plugin::types;

/// The contract this host speaks (`wit/`). Plugins built against an
/// earlier 0.1.x load too: see rule 1 at the top of `wit/types.wit`.
pub const CONTRACT: &str = "0.1.3";

/// Export interface each world must provide, and the world's short name.
pub const WORLDS: [(&str, &str); 4] = [
    ("balancer", "gale:plugin/selector@0.1.3"),
    ("health", "gale:plugin/evaluator@0.1.3"),
    ("dns", "gale:plugin/publisher@0.1.3"),
    ("admission", "gale:plugin/admitter@0.1.3"),
];

impl types::RecordType {
    /// The type as DNS and the Route 53 API write it.
    pub fn name(self) -> &'static str {
        match self {
            types::RecordType::A => "A",
            types::RecordType::Aaaa => "AAAA",
            types::RecordType::Cname => "CNAME",
            types::RecordType::Txt => "TXT",
        }
    }
}
