//! What a plugin's store holds, and the host side of the imported
//! interfaces (`host`, `pool-state`), one impl block per interface.
//!
//! A plugin reaches nothing but these: its WASI context has no preopened
//! directories, no environment, no arguments, no stdio and no sockets; it
//! exists only because language runtimes link WASI for their own start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::queue::Slot;

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, ResourceLimiter, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Level;
use super::bindings::balancer::gale::plugin::{host, pool_state, types};
use super::bindings::health::gale::plugin::health_detail;
use super::watchdog::Watchdog;

/// Longest log message a plugin may write; the rest is cut.
const MAX_LOG_BYTES: usize = 1024;
/// Largest `get-random-bytes` (and insecure) answer: generating and
/// copying 64 MiB, wasmtime-wasi's default, takes longer than a deadline.
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// Live per-backend numbers a balancer may read through `pool-state`.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// One per backend: its sessions and the sessions queued for it.
    /// Shared with the generation before when the backend is the same, so
    /// sessions still running there count against `max_sessions` here
    /// too, and their end is seen (and wakes a queued session) here.
    slots: Vec<Arc<Slot>>,
}

impl LiveCounters {
    /// Slots given one by one, some of them shared.
    pub fn from_slots(slots: Vec<Arc<Slot>>) -> Self {
        Self { slots }
    }

    /// Backend `id`'s slot, to share with a later generation or to queue on.
    pub fn slot(&self, id: usize) -> Option<&Arc<Slot>> {
        self.slots.get(id)
    }

    pub fn active(&self, id: usize) -> u32 {
        self.slots.get(id).map_or(0, |s| s.active())
    }

    /// Count a session on `id` (see [`Slot::try_enter`]).
    pub fn try_enter(&self, id: usize, queued: bool) -> bool {
        self.slots.get(id).is_some_and(|s| s.try_enter(queued))
    }

    pub fn leave(&self, id: usize) {
        if let Some(s) = self.slots.get(id) {
            s.leave();
        }
    }

    /// The backends' `max_sessions`, in order, from now on: their
    /// generation became current (sessions queued for a backend whose
    /// limit rose look again).
    pub fn set_limits(&self, limits: impl Iterator<Item = u32>) {
        for (slot, max) in self.slots.iter().zip(limits) {
            slot.set_max(max);
        }
    }
}

/// Store data of one plugin instance.
pub struct PluginState {
    /// For log lines: "<pool>/<hook>" or the file name.
    pub plugin: Arc<str>,
    /// Health plugins: the `health-detail` of the `evaluate` call in
    /// progress (empty between calls).
    pub health_detail: super::HealthDetail,
    pub live: Arc<LiveCounters>,
    pub limiter: MemoryCap,
    /// Watchdog tick after which host calls trap (set when a call is armed).
    pub stop_after: u64,
    watchdog: Arc<Watchdog>,
    /// Fuel burnt per microsecond of guest code: time in the host is
    /// charged at this rate.
    fuel_per_us: u64,
    /// When the guest last called into the host.
    host_since: Option<Instant>,
    log: Arc<LogLimit>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub fn new(
        plugin: Arc<str>,
        memory_bytes: usize,
        live: Arc<LiveCounters>,
        watchdog: Arc<Watchdog>,
        fuel_per_us: u64,
        log: Arc<LogLimit>,
    ) -> Self {
        Self {
            plugin,
            health_detail: Default::default(),
            live,
            limiter: MemoryCap::new(memory_bytes),
            stop_after: 0,
            watchdog,
            fuel_per_us,
            host_since: None,
            log,
            wasi: WasiCtx::builder()
                .wall_clock(Epoch)
                .max_random_size(MAX_RANDOM_BYTES)
                .build(),
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

    /// `wasi:random`'s state, with gale's size cap.
    pub fn random(&mut self) -> &mut wasmtime_wasi::random::WasiRandomCtx {
        self.wasi.random()
    }
}

/// The store's call hook: the deadline covers time spent in the host too,
/// for every import alike (gale's own, WASI's, and the stand-ins).
///
/// Fuel counts only guest instructions, so a guest looping over a costly
/// import (`get-random-bytes`, a 1 MiB log line) would spend its time in
/// the host for a few fuel a turn. Each return from the host is charged
/// the fuel that much guest time would have burnt, and runs out like any
/// other fuel; each entry first checks the watchdog's wall-clock backstop,
/// which also catches time the OS held the call back.
pub fn charge_host_time(
    mut store: StoreContextMut<'_, PluginState>,
    hook: CallHook,
) -> wasmtime::Result<()> {
    match hook {
        CallHook::CallingHost => {
            let state = store.data_mut();
            state.on_time()?;
            state.host_since = Some(Instant::now());
        }
        CallHook::ReturningFromHost => {
            let state = store.data_mut();
            let Some(since) = state.host_since.take() else {
                return Ok(());
            };
            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let spent = nanos.saturating_mul(state.fuel_per_us) / 1000;
            let left = store.get_fuel()?;
            if spent >= left {
                return Err(wasmtime::Trap::OutOfFuel.into());
            }
            store.set_fuel(left - spent)?;
        }
        CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
    }
    Ok(())
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

/// A plugin's words made safe for one log line: control characters
/// (newlines, ANSI escape sequences) and the Unicode controls that reorder
/// or hide text are written as escapes, so a plugin cannot start a forged
/// line, recolour or clear a terminal, or make text read backwards; and
/// the result is cut to about `max` bytes. A backslash is doubled, so an
/// escape in the output always means a character the plugin wrote.
pub fn escape_for_log(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 3);
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}');
        if c.is_control() || hidden || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines one plugin may log at once, and per second after that.
const LOG_BURST: u32 = 100;
const LOG_PER_SECOND: u32 = 20;

/// The log budget of one plugin, shared by all its instances: a token
/// bucket, and the lines it refused since the last one let through.
#[derive(Default)]
pub struct LogLimit {
    inner: parking_lot::Mutex<Bucket>,
}

#[derive(Default)]
struct Bucket {
    tokens: u32,
    refilled: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line may be written now; if so, how many were refused
    /// since the last one.
    pub fn admit(&self) -> Option<u64> {
        let mut b = self.inner.lock();
        let now = Instant::now();
        match b.refilled {
            None => {
                b.tokens = LOG_BURST;
                b.refilled = Some(now);
            }
            Some(at) => {
                let earned = (now.duration_since(at).as_millis() as u64 * u64::from(LOG_PER_SECOND)
                    / 1000) as u32;
                if earned > 0 {
                    b.tokens = b.tokens.saturating_add(earned).min(LOG_BURST);
                    b.refilled = Some(now);
                }
            }
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
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

/// `text` escaped for a log line and in double quotes, with its own
/// quotes escaped: a plugin cannot make one field look like two.
fn quoted(out: &mut String, text: &str, max: usize) {
    out.push('"');
    out.push_str(&escape_for_log(text, max).replace('"', "\\\""));
    out.push('"');
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "gale::plugin", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "gale::plugin", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "gale::plugin", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "gale::plugin", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "gale::plugin", tracing::Level::ERROR),
    }
}

// Every import is bounded in time by `charge_host_time`, not here.
impl host::Host for PluginState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if !enabled(level) {
            return Ok(());
        }
        let Some(suppressed) = self.log.admit() else {
            return Ok(());
        };
        // Field names are the plugin's, so they cannot become tracing's
        // static field names; they travel as one `fields` value.
        let mut fields_text = String::new();
        for (k, v) in &fields {
            if fields_text.len() >= MAX_LOG_BYTES {
                break;
            }
            if !fields_text.is_empty() {
                fields_text.push(' ');
            }
            quoted(&mut fields_text, k, 128);
            fields_text.push('=');
            let room = MAX_LOG_BYTES.saturating_sub(fields_text.len()).max(16);
            quoted(&mut fields_text, v, room);
        }
        let message = escape_for_log(&message, MAX_LOG_BYTES);
        // Already escaped and quoted: written as it is, not quoted again.
        let fields = tracing::field::display(fields_text);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => {
                tracing::trace!(target: "gale::plugin", plugin, fields, suppressed, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "gale::plugin", plugin, fields, suppressed, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "gale::plugin", plugin, fields, suppressed, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "gale::plugin", plugin, fields, suppressed, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "gale::plugin", plugin, fields, suppressed, "{message}")
            }
        }
        Ok(())
    }

    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(origin().elapsed().as_nanos() as u64)
    }

    fn log_enabled(&mut self, level: Level) -> wasmtime::Result<bool> {
        Ok(enabled(level))
    }
}

/// The `health-detail` functions read a field: their time is not charged
/// to the call (`host_since` cleared), so that a thread preempted inside
/// one (a busy CI machine) cannot fail the default health plugin's call,
/// nor its self-check at start.
impl health_detail::Host for PluginState {
    fn per_client(&mut self, index: u32) -> wasmtime::Result<bool> {
        self.host_since = None;
        let flags = &self.health_detail.per_client;
        Ok(flags.get(index as usize).copied().unwrap_or(false))
    }

    fn load(&mut self) -> wasmtime::Result<Option<health_detail::LoadReport>> {
        self.host_since = None;
        use crate::health::AgentState;
        use health_detail::AgentState as Wit;
        Ok(self.health_detail.load.map(|r| health_detail::LoadReport {
            state: r.state.map(|s| match s {
                AgentState::Up => Wit::Up,
                AgentState::Down => Wit::Down,
                AgentState::Drain => Wit::Drain,
            }),
            weight_percent: r.weight_percent,
        }))
    }
}

impl pool_state::Host for PluginState {
    fn active_sessions(&mut self, backend: u32) -> wasmtime::Result<u32> {
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
    fn plugin_text_in_logs_has_no_line_breaks_escapes_or_reordering() {
        let forged = escape_for_log(
            "ok\n2026 INFO gale: admin token accepted\x1b[2J\u{202e}",
            1024,
        );
        assert_eq!(
            forged,
            "ok\\n2026 INFO gale: admin token accepted\\u{1b}[2J\\u{202e}"
        );
        assert!(escape_for_log(&"é".repeat(2000), 1024).len() <= 1024 + 4);
        // A backslash of the plugin's cannot pass for an escape of gale's.
        assert_eq!(escape_for_log("a\\nb", 64), "a\\\\nb");
    }

    #[test]
    fn a_plugin_logs_a_burst_then_a_trickle_and_learns_what_was_suppressed() {
        let limit = LogLimit::default();
        for _ in 0..LOG_BURST {
            assert_eq!(limit.admit(), Some(0));
        }
        for _ in 0..10_000 {
            assert_eq!(limit.admit(), None);
        }
        // A tick later one line is let through, carrying the count.
        limit.inner.lock().refilled = Some(Instant::now() - std::time::Duration::from_secs(1));
        assert_eq!(limit.admit(), Some(10_000));
    }

    #[test]
    fn table_elements_are_counted_across_tables() {
        let mut cap = MemoryCap::new(64 << 20);
        assert!(cap.table_growing(0, 60_000, None).unwrap());
        assert!(!cap.table_growing(0, 60_000, None).unwrap());
        assert!(cap.table_growing(0, 40_000, None).unwrap());
    }
}
