//! The plugin runtime: loads WebAssembly components that implement the
//! `gale:plugin` worlds and calls them under a CPU deadline and a memory
//! cap.
//!
//! Owns: the wasmtime engine, compilation and its disk cache, instances
//! and their stores, the host side of the imported interfaces, and the
//! classification of every way a call can fail. Does not touch: pools,
//! health state or sockets; callers decide what a failed call falls back
//! to (the pool uses the built-in weighted round-robin).

mod admission;
mod balancer;
mod bindings;
pub mod builtin;
mod cache;
pub mod check;
pub mod contract;
mod dns;
mod fuel;
mod health;
mod imports;
mod instance;
mod runtime;
mod state;
mod watchdog;

pub use admission::{
    AdmissionContext, AdmissionPlugin, Decision as AdmissionDecision, MAX_REPLY_TEXT, Rejection,
    Service,
};
pub use balancer::{BalancerPlugin, PushedPool};
pub use bindings::types;
pub use cache::default_dir as default_cache_dir;
pub use dns::DnsPlugin;
pub use health::{HealthDetail, HealthPlugin};
pub use runtime::PluginRuntime;
pub use state::LiveCounters;

/// The hook a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    Balancer,
    Health,
    Dns,
    /// Since contract 0.1.3.
    Admission,
}

impl World {
    /// The world of a short name: `balancer`, `health`, `dns` or
    /// `admission`.
    pub fn named(name: &str) -> Option<World> {
        [World::Balancer, World::Health, World::Dns, World::Admission]
            .into_iter()
            .find(|w| w.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            World::Balancer => "balancer",
            World::Health => "health",
            World::Dns => "dns",
            World::Admission => "admission",
        }
    }

    /// The interface a component of this world exports.
    pub fn export(self) -> &'static str {
        bindings::WORLDS
            .iter()
            .find(|(w, _)| *w == self.name())
            .map(|(_, e)| *e)
            .expect("every world is listed")
    }
}

/// A loaded plugin as `/status` shows it: which build of which component
/// runs under which limits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    /// `builtin:NAME` or the component file's path.
    pub source: String,
    /// The interface it exports, with the contract version it was built
    /// against (an earlier 0.1.x than this host's loads too).
    pub contract: String,
    /// SHA-256 of the component's bytes (hex).
    pub sha256: String,
    pub deadline_us: u64,
    pub memory_mb: u32,
}

/// A plugin that could not be loaded. Loading errors keep whatever was
/// running before (see the reload path); they never take gale down.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin runtime: {0}")]
    Engine(String),
    #[error("{plugin}: no such built-in plugin (built-in: {})", builtin::names())]
    NotFound { plugin: String },
    #[error("{plugin}: cannot read: {reason}")]
    Read { plugin: String, reason: String },
    #[error("{plugin}: not a valid WebAssembly component: {reason}")]
    Compile { plugin: String, reason: String },
    #[error("{plugin}: {message}")]
    WrongWorld { plugin: String, message: String },
    #[error("{plugin}: cannot be instantiated: {reason}")]
    Instantiate { plugin: String, reason: String },
    #[error("{plugin}: rejected its settings: {reason}")]
    Init { plugin: String, reason: String },
    #[error("{plugin}: self-check failed: {failure}")]
    SelfCheck {
        plugin: String,
        failure: CallFailure,
    },
}

impl PluginError {
    fn engine(reason: String) -> Self {
        PluginError::Engine(reason)
    }
}

/// Why one plugin call produced no usable answer. The caller falls back
/// for that decision only and counts the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its CPU deadline")]
    Deadline,
    #[error("exceeded its memory cap")]
    MemoryLimit,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("no instance: {0}")]
    Unavailable(String),
    /// Another call held the instance for longer than this call may run.
    #[error("instance busy for longer than the deadline")]
    Busy,
}

impl CallFailure {
    /// Metric label value.
    pub fn reason(&self) -> &'static str {
        match self {
            CallFailure::Trap(_) => "trap",
            CallFailure::Deadline => "deadline",
            CallFailure::MemoryLimit => "memory",
            CallFailure::Malformed(_) => "malformed",
            CallFailure::Unavailable(_) => "unavailable",
            CallFailure::Busy => "busy",
        }
    }

    /// Whether the failure is the plugin's own doing, and so counts
    /// towards rolling back the generation that loaded it. A call that
    /// found the instance busy is not: under a burst of sessions an honest
    /// plugin's instance is busy too (a plugin slow on every call is
    /// counted by its own deadline failures, not by these).
    pub fn is_plugins_fault(&self) -> bool {
        !matches!(self, CallFailure::Busy)
    }

    /// Classify an error returned by a call into the guest.
    fn from_call(err: wasmtime::Error, memory_cap_hit: bool) -> Self {
        if memory_cap_hit {
            return CallFailure::MemoryLimit;
        }
        match err.downcast_ref::<wasmtime::Trap>() {
            // Interrupt: the watchdog, from a host call.
            Some(wasmtime::Trap::OutOfFuel | wasmtime::Trap::Interrupt) => CallFailure::Deadline,
            // A backtrace names the guest's functions, which the plugin
            // chose: escaped like its log lines.
            Some(trap) => CallFailure::Trap(state::escape_for_log(&trap.to_string(), 1024)),
            None => CallFailure::Trap(state::escape_for_log(&format!("{err:#}"), 1024)),
        }
    }
}
