//! One loaded plugin: its pre-instantiated component, the live instance
//! that calls reuse, and the rules every call runs under (deadline, memory
//! cap, re-instantiation after a trap). Generic over the world's bindings.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::{balancer, dns, health};
use super::runtime::{Budget, PluginRuntime};
use super::state::{LiveCounters, PluginState};
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

/// A running instance and its store.
pub(super) struct Live<E> {
    pub store: Store<PluginState>,
    pub exports: E,
}

impl<E> Live<E> {}

/// The instance slot: empty until first use and after a failed call.
pub(super) struct Slot<E> {
    pub live: Option<Live<E>>,
    /// Version of the pool last pushed into `live` (0: none yet).
    pub pushed: u64,
}

pub(super) struct Guest<E: Exports> {
    pub name: Arc<str>,
    pub info: super::PluginInfo,
    /// What one call may spend.
    pub budget: Budget,
    runtime: PluginRuntime,
    pre: E::Pre,
    settings: Vec<(String, String)>,
    memory_mb: u32,
    live: Arc<LiveCounters>,
    slot: Mutex<Slot<E>>,
}

impl<E: Exports> Guest<E> {
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
        let guest = Guest {
            name: name.into(),
            info: super::PluginInfo {
                source: spec.source.to_string(),
                contract: export.name,
                sha256,
                deadline_us: spec.deadline.as_micros() as u64,
                memory_mb: spec.memory_mb,
            },
            budget: runtime.budget(spec.deadline),
            runtime: runtime.clone(),
            pre,
            settings: spec.settings.clone(),
            memory_mb: spec.memory_mb,
            live,
            slot: Mutex::new(Slot {
                live: None,
                pushed: 0,
            }),
        };
        let first = guest.instantiate().map_err(|e| match e {
            Setup::Init(reason) => PluginError::Init {
                plugin: name.to_string(),
                reason,
            },
            Setup::Failed(f) => PluginError::Instantiate {
                plugin: name.to_string(),
                reason: f.to_string(),
            },
        })?;
        guest.lock().live = Some(first);
        Ok(guest)
    }

    fn lock(&self) -> MutexGuard<'_, Slot<E>> {
        // A panic while holding the lock cannot leave the slot half-written
        // in a way later calls could trust less than a fresh instance.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn instantiate(&self) -> Result<Live<E>, Setup> {
        let mut store =
            self.runtime
                .new_store(self.name.clone(), self.memory_mb, self.live.clone());
        self.runtime
            .arm(&mut store, self.runtime.budget(SETUP_DEADLINE));
        let exports = E::instantiate(&self.pre, &mut store).map_err(|e| {
            Setup::Failed(CallFailure::from_call(e, store.data().limiter.take_hit()))
        })?;
        match exports.init(&mut store, &self.settings) {
            Ok(Ok(())) => Ok(Live { store, exports }),
            // The plugin's words go into logs and `/status`: bounded.
            Ok(Err(reason)) => Err(Setup::Init(reason.chars().take(1024).collect())),
            Err(e) => Err(Setup::Failed(CallFailure::from_call(
                e,
                store.data().limiter.take_hit(),
            ))),
        }
    }

    /// Run `f` against the live instance (starting one if needed). A failed
    /// call drops the instance: after a trap the component model forbids
    /// re-entering it, and a fresh one is cheap from the pre-instance.
    pub fn call<R>(
        &self,
        f: impl FnOnce(&PluginRuntime, &mut Live<E>, &mut u64) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let mut slot = self.lock();
        let slot = &mut *slot;
        if slot.live.is_none() {
            slot.pushed = 0;
            slot.live = Some(self.instantiate().map_err(|e| match e {
                Setup::Init(reason) => CallFailure::Unavailable(format!("init: {reason}")),
                Setup::Failed(f) => CallFailure::Unavailable(f.to_string()),
            })?);
        }
        let live = slot.live.as_mut().expect("just filled");
        let result = f(&self.runtime, live, &mut slot.pushed);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                let hit = live.store.data().limiter.take_hit();
                slot.live = None;
                slot.pushed = 0;
                Err(CallFailure::from_call(e, hit))
            }
        }
    }
}

enum Setup {
    Init(String),
    Failed(CallFailure),
}
