//! One loaded plugin: its pre-instantiated component, the live instance
//! that calls reuse, and the rules every call runs under (deadline, memory
//! cap, a bounded wait for the instance, a fresh instance set up off the
//! request path after a failure). Generic over the world's bindings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{admission, balancer, dns, health};
use super::runtime::{Budget, PluginRuntime};
use super::state::{LiveCounters, LogLimit, PluginState};
use super::{CallFailure, PluginError, World};
use crate::config::PluginSpec;

/// CPU allowance for instantiation and `init` (language runtimes such as
/// Python's initialise here).
const SETUP_DEADLINE: Duration = Duration::from_secs(1);

/// The generated bindings of one world, seen uniformly.
pub(super) trait Exports: Sized + Send + 'static {
    type Pre: Send + Sync;
    const WORLD: World;
    fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<PluginState>) -> wasmtime::Result<Self>;
    // The generated `call_init` takes `&Vec`, not a slice.
    #[allow(clippy::ptr_arg)]
    fn init(
        &self,
        store: &mut Store<PluginState>,
        settings: &Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>>;
}

macro_rules! impl_exports {
    ($world:ty, $pre:ty, $variant:expr, $iface:ident) => {
        impl Exports for $world {
            type Pre = $pre;
            const WORLD: World = $variant;
            fn pre(pre: InstancePre<PluginState>) -> wasmtime::Result<Self::Pre> {
                <$pre>::new(pre)
            }
            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<Self> {
                pre.instantiate(store)
            }
            fn init(
                &self,
                store: &mut Store<PluginState>,
                settings: &Vec<(String, String)>,
            ) -> wasmtime::Result<Result<(), String>> {
                self.$iface().call_init(store, settings)
            }
        }
    };
}

impl_exports!(
    balancer::Balancer,
    balancer::BalancerPre<PluginState>,
    World::Balancer,
    gale_plugin_selector
);
impl_exports!(
    health::Health,
    health::HealthPre<PluginState>,
    World::Health,
    gale_plugin_evaluator
);
impl_exports!(
    dns::Dns,
    dns::DnsPre<PluginState>,
    World::Dns,
    gale_plugin_publisher
);
impl_exports!(
    admission::Admission,
    admission::AdmissionPre<PluginState>,
    World::Admission,
    gale_plugin_admitter
);

/// A running instance and its store.
pub(super) struct Live<E> {
    pub store: Store<PluginState>,
    pub exports: E,
}

/// The instance slot. Empty while a fresh instance is being set up in the
/// background (after a failed call) or waiting out its back-off; calls then
/// fall back at once instead of paying for instantiation and `init` on the
/// request path (a Python `init` takes ~100 ms, a hostile one its whole
/// setup deadline).
pub(super) struct InstanceSlot<E> {
    pub live: Option<Live<E>>,
    /// Version of the pool last pushed into `live` (0: none yet).
    pub pushed: u64,
    /// A setup thread is running.
    rebuilding: bool,
    /// Failed calls and setups in a row: each one doubles the wait before
    /// the next setup. Successes reset it only on an instance that has
    /// lived for the longest back-off, so a plugin that answers once and
    /// then fails on every fresh instance still backs off.
    failures: u32,
    /// When `live` was set up.
    live_since: Option<Instant>,
    /// No setup before this.
    retry_at: Option<Instant>,
}

/// What the setup thread needs, shared with it.
struct Shared<E: Exports> {
    name: Arc<str>,
    runtime: PluginRuntime,
    pre: E::Pre,
    settings: Vec<(String, String)>,
    memory_mb: u32,
    live: Arc<LiveCounters>,
    log: Arc<LogLimit>,
    slot: Mutex<InstanceSlot<E>>,
}

pub(super) struct Guest<E: Exports> {
    pub info: super::PluginInfo,
    /// What one call may spend.
    pub budget: Budget,
    /// How long a call waits for the instance another call is using
    /// before it falls back: the deadline, so a worker thread is never
    /// held longer than one call may run.
    wait: Duration,
    shared: Arc<Shared<E>>,
}

/// Back-off before setting up instance number `failures + 1` in a row
/// after failures: none after the first failure (a plugin that trips on
/// one odd input gets a fresh instance at once), then 50 ms doubling up
/// to 10 s, so a plugin that fails every call or every `init` costs one
/// setup per 10 s, not a core.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(50) * 2u32.saturating_pow((n - 2).min(8))).min(MAX_BACKOFF),
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl<E: Exports> Guest<E> {
    /// For log lines: "<pool>/<hook> (<source>)".
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Compile (or load from cache), check the world, pre-instantiate, and
    /// start one instance with its settings. Blocking.
    pub fn load(
        runtime: &PluginRuntime,
        spec: &PluginSpec,
        name: &str,
        live: Arc<LiveCounters>,
    ) -> Result<Self, PluginError> {
        let (component, sha256) = runtime.compile(&spec.source)?;
        let export = runtime.check_world(name, &component, E::WORLD)?;
        let instantiate_err = |e: wasmtime::Error| PluginError::Instantiate {
            plugin: name.to_string(),
            reason: format!("{e:#}"),
        };
        // WASI interfaces gale does not grant trap when called (see
        // `link_wasi`), rather than refusing plugins whose standard library
        // merely imports them.
        let mut linker = runtime.linker().clone();
        super::imports::link(&mut linker, runtime.engine(), &component).map_err(instantiate_err)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(instantiate_err)?;
        let pre = E::pre(pre).map_err(instantiate_err)?;
        let shared = Arc::new(Shared {
            name: name.into(),
            runtime: runtime.clone(),
            pre,
            settings: spec.settings.clone(),
            memory_mb: spec.memory_mb,
            live,
            log: Arc::new(LogLimit::default()),
            slot: Mutex::new(InstanceSlot {
                live: None,
                pushed: 0,
                rebuilding: false,
                failures: 0,
                live_since: None,
                retry_at: None,
            }),
        });
        let first = shared.instantiate().map_err(|e| match e {
            Setup::Init(reason) => PluginError::Init {
                plugin: name.to_string(),
                reason,
            },
            Setup::Failed(f) => PluginError::Instantiate {
                plugin: name.to_string(),
                reason: f.to_string(),
            },
        })?;
        {
            let mut slot = shared.slot.lock();
            slot.live = Some(first);
            slot.live_since = Some(Instant::now());
        }
        Ok(Guest {
            info: super::PluginInfo {
                source: spec.source.to_string(),
                contract: export.name,
                sha256,
                deadline_us: spec.deadline.as_micros() as u64,
                memory_mb: spec.memory_mb,
            },
            budget: runtime.budget(spec.deadline),
            wait: spec.deadline,
            shared,
        })
    }

    /// Run `f` against the live instance, then `check` its answer. A failed
    /// call or a rejected answer drops the instance (after a trap the
    /// component model forbids re-entering it, and an instance that
    /// answered garbage may hold corrupt state) and a fresh one is set up
    /// off the request path; until it is there, calls fall back at once.
    pub fn call<R>(
        &self,
        f: impl FnOnce(&PluginRuntime, &mut Live<E>, &mut u64) -> wasmtime::Result<R>,
        check: impl FnOnce(&mut R) -> Result<(), CallFailure>,
    ) -> Result<R, CallFailure> {
        let Some(mut guard) = self.shared.slot.try_lock_for(self.wait) else {
            return Err(CallFailure::Busy);
        };
        let slot = &mut *guard;
        let Some(live) = slot.live.as_mut() else {
            let failure = CallFailure::Unavailable(if slot.rebuilding {
                "a fresh instance is being set up".into()
            } else {
                "waiting to set up a fresh instance after failures".into()
            });
            Shared::maybe_rebuild(&self.shared, slot);
            return Err(failure);
        };
        let failure = match f(&self.shared.runtime, live, &mut slot.pushed) {
            Ok(mut answer) => match check(&mut answer) {
                Ok(()) => {
                    if slot.failures > 0
                        && slot.live_since.is_some_and(|t| t.elapsed() >= MAX_BACKOFF)
                    {
                        slot.failures = 0;
                    }
                    return Ok(answer);
                }
                Err(failure) => failure,
            },
            Err(e) => CallFailure::from_call(e, live.store.data().limiter.take_hit()),
        };
        slot.live = None;
        slot.pushed = 0;
        slot.failures = slot.failures.saturating_add(1);
        slot.retry_at = Some(Instant::now() + backoff(slot.failures));
        Shared::maybe_rebuild(&self.shared, slot);
        Err(failure)
    }
}

impl<E: Exports> Shared<E> {
    fn instantiate(&self) -> Result<Live<E>, Setup> {
        let mut store = self.runtime.new_store(
            self.name.clone(),
            self.memory_mb,
            self.live.clone(),
            self.log.clone(),
        );
        self.runtime
            .arm(&mut store, self.runtime.budget(SETUP_DEADLINE));
        let exports = E::instantiate(&self.pre, &mut store).map_err(|e| {
            Setup::Failed(CallFailure::from_call(e, store.data().limiter.take_hit()))
        })?;
        match exports.init(&mut store, &self.settings) {
            Ok(Ok(())) => Ok(Live { store, exports }),
            // The plugin's words go into logs and `/status`: escaped and
            // bounded.
            Ok(Err(reason)) => Err(Setup::Init(super::state::escape_for_log(&reason, 1024))),
            Err(e) => Err(Setup::Failed(CallFailure::from_call(
                e,
                store.data().limiter.take_hit(),
            ))),
        }
    }

    /// Start setting up a fresh instance on a thread of its own, unless
    /// one is being set up or the back-off says wait. Called with the slot
    /// locked.
    fn maybe_rebuild(this: &Arc<Self>, slot: &mut InstanceSlot<E>) {
        if slot.rebuilding || slot.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        slot.rebuilding = true;
        let shared = this.clone();
        let spawned = std::thread::Builder::new()
            .name("gale-plugin-setup".into())
            .spawn(move || shared.rebuild());
        if let Err(e) = spawned {
            slot.rebuilding = false;
            tracing::warn!(plugin = %this.name, "cannot start a thread to set up a fresh instance: {e}");
        }
    }

    /// Set up a fresh instance (CPU work under the setup deadline, outside
    /// the slot's lock) and put it in the slot.
    fn rebuild(&self) {
        // A panic in the host while setting up is a failed setup, not a
        // slot left "rebuilding" for ever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.instantiate()))
            .unwrap_or_else(|_| {
                Err(Setup::Failed(CallFailure::Trap(
                    "the host panicked setting up the instance".into(),
                )))
            });
        let mut slot = self.slot.lock();
        slot.rebuilding = false;
        match result {
            Ok(live) => {
                slot.live = Some(live);
                slot.live_since = Some(Instant::now());
                slot.pushed = 0;
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let wait = backoff(slot.failures).max(Duration::from_millis(50));
                slot.retry_at = Some(Instant::now() + wait);
                let reason = match e {
                    Setup::Init(reason) => format!("init: {reason}"),
                    Setup::Failed(f) => f.to_string(),
                };
                tracing::warn!(
                    plugin = %self.name,
                    failures = slot.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "setting up a fresh instance failed: {reason}"
                );
            }
        }
    }
}

enum Setup {
    Init(String),
    Failed(CallFailure),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setups_after_repeated_failures_back_off_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(50));
        assert_eq!(backoff(3), Duration::from_millis(100));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
