//! What a plugin's store holds, and the host side of the imported
//! interfaces (`host`, `pool-state`), one impl block per interface.
//!
//! A plugin reaches nothing but these: its WASI context has no preopened
//! directories, no environment, no arguments, no stdio and no sockets; it
//! exists only because language runtimes link WASI for their own start-up.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::random::WasiRandomCtx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Level;
use super::bindings::balancer::gale::plugin::{host, pool_state, types};
use super::watchdog::Watchdog;

/// Longest log message a plugin may write; the rest is cut.
const MAX_LOG_BYTES: usize = 1024;

/// Live per-backend numbers a balancer may read through `pool-state`.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// One counter per backend. Shared with the generation before when the
    /// backend is the same, so sessions still running there count against
    /// `max_sessions` here too, and their end is seen here.
    active: Vec<Arc<AtomicU32>>,
}

impl LiveCounters {
    /// Counters given one by one, some of them shared.
    pub fn from_counters(active: Vec<Arc<AtomicU32>>) -> Self {
        Self { active }
    }

    /// Backend `id`'s counter, to share with a later generation.
    pub fn counter(&self, id: usize) -> Option<Arc<AtomicU32>> {
        self.active.get(id).cloned()
    }

    pub fn active(&self, id: usize) -> u32 {
        self.active.get(id).map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Count a session on `id` unless it already has `max`.
    pub fn try_enter(&self, id: usize, max: u32) -> bool {
        let Some(a) = self.active.get(id) else {
            return false;
        };
        a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
    }

    pub fn enter(&self, id: usize) {
        if let Some(a) = self.active.get(id) {
            a.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn leave(&self, id: usize) {
        if let Some(a) = self.active.get(id) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Store data of one plugin instance.
pub struct PluginState {
    /// For log lines: "<pool>/<hook>" or the file name.
    pub plugin: Arc<str>,
    pub live: Arc<LiveCounters>,
    pub limiter: MemoryCap,
    /// Watchdog tick after which host calls trap (set when a call is armed).
    pub stop_after: u64,
    watchdog: Arc<Watchdog>,
    wasi: WasiCtx,
    pub random: WasiRandomCtx,
    table: ResourceTable,
}

impl PluginState {
    pub fn new(
        plugin: Arc<str>,
        memory_bytes: usize,
        live: Arc<LiveCounters>,
        watchdog: Arc<Watchdog>,
    ) -> Self {
        Self {
            plugin,
            live,
            limiter: MemoryCap::new(memory_bytes),
            stop_after: 0,
            watchdog,
            wasi: WasiCtx::builder().wall_clock(Epoch).build(),
            random: WasiRandomCtx::default(),
            table: {
                // Handles a plugin may hold at once (streams, pollables);
                // their entries live outside the memory cap.
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_HANDLES);
                table
            },
        }
    }
}

impl PluginState {
    /// The resource table (WASI handles).
    pub fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// The wall clock plugins see: always the UNIX epoch. The contract grants
/// a monotonic clock (`host.monotonic-now`, and WASI's monotonic clock
/// for language runtimes that read it), not the time of day: a policy
/// that decided by the date would decide differently on each gale.
struct Epoch;

impl wasmtime_wasi::HostWallClock for Epoch {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Resource handles one plugin instance may hold at once.
const MAX_HANDLES: usize = 1024;

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory cap of one instance. Growth past the cap fails (the guest sees
/// an allocation failure, which Rust and most runtimes turn into a trap)
/// and `hit` records why, so the host can count it as a memory-limit
/// fallback rather than a generic trap.
///
/// The cap counts every memory of the instance together (a component of
/// several core modules, as Python and JavaScript ones are, has several),
/// and table elements likewise.
pub struct MemoryCap {
    max_bytes: usize,
    /// Bytes of all memories so far (memories never shrink).
    used: usize,
    /// Elements of all tables so far.
    elements: usize,
    hit: AtomicBool,
}

/// Table elements (function references) one instance may have in all.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            used: 0,
            elements: 0,
            hit: AtomicBool::new(false),
        }
    }

    /// Whether the cap refused a growth since the last call.
    pub fn take_hit(&self) -> bool {
        self.hit.swap(false, Ordering::Relaxed)
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.max_bytes {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.elements = total;
        Ok(true)
    }

    // wasmtime allows 10,000 of each by default; components built from
    // several core modules have a handful.
    fn instances(&self) -> usize {
        100
    }

    fn memories(&self) -> usize {
        100
    }

    fn tables(&self) -> usize {
        100
    }
}

/// Cut a plugin-supplied string to [`MAX_LOG_BYTES`].
fn truncate(mut s: String) -> String {
    if s.len() > MAX_LOG_BYTES {
        s.truncate(s.floor_char_boundary(MAX_LOG_BYTES));
        s.push('…');
    }
    s
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl PluginState {
    /// Trap if the call has used up its wall-clock backstop.
    fn on_time(&self) -> wasmtime::Result<()> {
        if self.watchdog.now() > self.stop_after {
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(())
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.on_time()?;
        // Field names are the plugin's, so they cannot become tracing's
        // static field names; they travel as one `fields` value.
        let mut fields_text = String::new();
        for (k, v) in &fields {
            // Cut below anyway: stop before escaping megabytes.
            if fields_text.len() > MAX_LOG_BYTES {
                break;
            }
            if !fields_text.is_empty() {
                fields_text.push(' ');
            }
            let v: String = v.chars().take(MAX_LOG_BYTES).collect();
            let k: String = k.chars().take(MAX_LOG_BYTES).collect();
            fields_text.push_str(&format!("{k}={v:?}"));
        }
        let message = truncate(message);
        let fields = truncate(fields_text);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "gale::plugin", plugin, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "gale::plugin", plugin, fields, "{message}"),
            Level::Info => tracing::info!(target: "gale::plugin", plugin, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "gale::plugin", plugin, fields, "{message}"),
            Level::Error => tracing::error!(target: "gale::plugin", plugin, fields, "{message}"),
        }
        Ok(())
    }

    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        self.on_time()?;
        Ok(origin().elapsed().as_nanos() as u64)
    }

    fn log_enabled(&mut self, level: Level) -> wasmtime::Result<bool> {
        self.on_time()?;
        Ok(match level {
            Level::Trace => tracing::enabled!(target: "gale::plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "gale::plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "gale::plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "gale::plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "gale::plugin", tracing::Level::ERROR),
        })
    }
}

impl pool_state::Host for PluginState {
    fn active_sessions(&mut self, backend: u32) -> wasmtime::Result<u32> {
        self.on_time()?;
        Ok(self.live.active(backend as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_of_an_instance() {
        let mut cap = MemoryCap::new(64 << 20);
        // Two core modules with 40 MiB each: the second is refused.
        assert!(cap.memory_growing(0, 40 << 20, None).unwrap());
        assert!(!cap.memory_growing(0, 40 << 20, None).unwrap());
        assert!(cap.take_hit());
        // Growing the first by 24 MiB still fits; one byte more does not.
        assert!(cap.memory_growing(40 << 20, 64 << 20, None).unwrap());
        assert!(!cap.memory_growing(0, 1, None).unwrap());
    }

    #[test]
    fn table_elements_are_counted_across_tables() {
        let mut cap = MemoryCap::new(64 << 20);
        assert!(cap.table_growing(0, 60_000, None).unwrap());
        assert!(!cap.table_growing(0, 60_000, None).unwrap());
        assert!(cap.table_growing(0, 40_000, None).unwrap());
    }
}
