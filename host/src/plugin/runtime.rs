//! The shared wasmtime engine: compilation (cached on disk), linking, the
//! budgets that enforce CPU deadlines (fuel, with an epoch backstop), and
//! stores with memory caps.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

use super::bindings;
use super::cache::Cache;
use super::fuel::FuelRate;
use super::state::{LiveCounters, LogLimit, PluginState};
use super::watchdog::Watchdog;
use super::{PluginError, World};
use crate::config::PluginSource;

/// The part of WASI plugins get: clocks, random numbers, and the `cli`
/// interfaces that standard libraries touch at start-up. Not streams,
/// polling, files or sockets: in wasmtime-wasi's synchronous bindings
/// those block on a Tokio runtime, which panics on the async worker a
/// decision runs on (a Rust plugin's panic message alone did it). Imports
/// left out become traps when a plugin is loaded, so a plugin that prints
/// fails that call, falls back and is counted, like any other trap; plugins
/// log through `gale:plugin/host`. `imports::WASI_LINKED` lists these.
fn link_wasi(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::WasiRandom;
    type S = PluginState;
    clocks::wall_clock::add_to_linker::<S, WasiClocks>(linker, S::clocks)?;
    clocks::monotonic_clock::add_to_linker::<S, WasiClocks>(linker, S::clocks)?;
    random::random::add_to_linker::<S, WasiRandom>(linker, S::random)?;
    random::insecure::add_to_linker::<S, WasiRandom>(linker, S::random)?;
    random::insecure_seed::add_to_linker::<S, WasiRandom>(linker, S::random)?;
    cli::exit::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::environment::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::stdin::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::stdout::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::stderr::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::terminal_input::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::terminal_output::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::terminal_stdin::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::terminal_stdout::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    cli::terminal_stderr::add_to_linker::<S, WasiCli>(linker, S::cli)?;
    super::imports::link_wasi_io(linker)?;
    Ok(())
}

/// What one entry into a guest may spend: fuel for its own instructions,
/// watchdog ticks of wall-clock time before a host call traps.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    fuel: u64,
    ticks: u64,
}

impl Budget {
    /// `n` calls' worth.
    pub fn times(self, n: u64) -> Budget {
        Budget {
            fuel: self.fuel.saturating_mul(n),
            ticks: self.ticks.saturating_mul(n),
        }
    }
}

/// One engine for every plugin of the process; cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    fuel: FuelRate,
    watchdog: Arc<Watchdog>,
    engine: Engine,
    linker: Linker<PluginState>,
    cache: Option<Cache>,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

impl PluginRuntime {
    /// Build the engine and calibrate its fuel rate. `cache_dir` keeps
    /// compiled components across restarts (`None`: compile every time);
    /// one others could write is not used (see `cache.rs`).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.consume_fuel(true);
        // Plugins are synchronous and short; no async machinery on the path.
        config.concurrency_support(false);
        config.max_wasm_stack(512 * 1024);
        let engine = Engine::new(&config).map_err(|e| PluginError::engine(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        link_wasi(&mut linker).map_err(|e| PluginError::engine(e.to_string()))?;
        bindings::balancer::Balancer::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::engine(e.to_string()))?;
        // The health world's own import (the rest is shared with the
        // balancer world's, linked above).
        bindings::health::gale::plugin::health_detail::add_to_linker::<
            _,
            wasmtime::component::HasSelf<_>,
        >(&mut linker, |s| s)
        .map_err(|e| PluginError::engine(e.to_string()))?;

        let fuel = FuelRate::calibrate(&engine)
            .map_err(|e| PluginError::engine(format!("calibrating fuel: {e:#}")))?;
        let watchdog = Watchdog::spawn();
        let cache = cache_dir.and_then(|dir| match Cache::open(&dir, &engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(
                    "compile cache {} refused, every plugin is compiled: {e}",
                    dir.display()
                );
                None
            }
        });
        tracing::debug!(
            fuel_per_us = fuel.per_microsecond(),
            "plugin CPU deadlines calibrated"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                fuel,
                watchdog,
                engine,
                linker,
                cache,
                compiled: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
            }),
        })
    }

    /// (components compiled, components loaded from the cache) so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.compiled.load(Ordering::Relaxed),
            self.inner.cache_hits.load(Ordering::Relaxed),
        )
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn linker(&self) -> &Linker<PluginState> {
        &self.inner.linker
    }

    /// The budget of a call that may run for `deadline`.
    pub fn budget(&self, deadline: Duration) -> Budget {
        Budget {
            fuel: self.inner.fuel.budget(deadline),
            ticks: Watchdog::ticks(deadline),
        }
    }

    /// Give the next entry into the guest `budget`, and tell the watchdog
    /// calls are being made.
    pub fn arm(&self, store: &mut Store<PluginState>, budget: Budget) {
        self.inner.watchdog.call();
        // Fails only when the engine does not consume fuel, and ours does.
        let _ = store.set_fuel(budget.fuel);
        store.data_mut().stop_after = self.inner.watchdog.now() + budget.ticks;
    }

    /// A store for one instance, with its memory cap, time in the host
    /// charged to its deadline, and the plugin's log budget (and no fuel:
    /// every entry into the guest is armed with its budget first).
    pub fn new_store(
        &self,
        plugin: Arc<str>,
        memory_mb: u32,
        live: Arc<LiveCounters>,
        log: Arc<LogLimit>,
    ) -> Store<PluginState> {
        let bytes = (memory_mb as usize).saturating_mul(1 << 20);
        let state = PluginState::new(
            plugin,
            bytes,
            live,
            self.inner.watchdog.clone(),
            self.inner.fuel.per_microsecond(),
            log,
        );
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.call_hook(super::state::charge_host_time);
        store
    }

    /// Read and compile a component, from the cache when it was compiled
    /// before; with the SHA-256 of its bytes (hex). Blocking: call it off
    /// the async workers.
    pub fn compile(&self, source: &PluginSource) -> Result<(Component, String), PluginError> {
        let name = source.to_string();
        let bytes: std::borrow::Cow<'static, [u8]> = match source {
            PluginSource::Builtin(b) => super::builtin::bytes(b)
                .ok_or_else(|| PluginError::NotFound {
                    plugin: name.clone(),
                })?
                .into(),
            PluginSource::File(path) => std::fs::read(path)
                .map_err(|e| PluginError::Read {
                    plugin: name.clone(),
                    reason: e.to_string(),
                })?
                .into(),
        };
        let engine = &self.inner.engine;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let cache = self.inner.cache.as_ref();
        if let Some(cache) = cache {
            let entry = || cache.entry_path(&digest).display().to_string();
            match cache.load(engine, &digest) {
                Ok(Some(c)) => {
                    self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(plugin = %name, cache = %entry(), "loaded compiled plugin from cache");
                    return Ok((c, sha256));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(plugin = %name, cache = %entry(), "cache entry rejected: {e}");
                }
            }
        }
        let started = std::time::Instant::now();
        let component = Component::new(engine, &bytes).map_err(|e| PluginError::Compile {
            plugin: name.clone(),
            reason: format!("{e:#}"),
        })?;
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(plugin = %name, elapsed_ms = started.elapsed().as_millis() as u64, "compiled plugin");
        if let Some(Err(e)) = cache.map(|c| c.store(&digest, &component)) {
            tracing::warn!(plugin = %name, "cannot cache compiled plugin: {e}");
        }
        Ok((component, sha256))
    }

    /// Check that `component` exports the interface of `world`, built
    /// against a contract this host runs; the export found.
    pub fn check_world(
        &self,
        plugin: &str,
        component: &Component,
        world: World,
    ) -> Result<super::contract::Export, PluginError> {
        super::contract::check(plugin, &self.inner.engine, component, world)
    }
}
