//! The wall-clock backstop behind fuel.
//!
//! Fuel counts guest instructions only: a guest looping over host calls
//! (a long log message, WASI random bytes) spends its time in the host for
//! a few fuel per call. Epoch interruption catches that: every loop header
//! and function entry in the guest checks the engine's epoch, which this
//! thread advances every [`TICK`]. The tick is coarse on purpose (100 Hz,
//! and 10 Hz once no call has been made for a second): fuel stops ordinary
//! runaway code long before, so the backstop costs next to no wake-ups on
//! the core that serves traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// Epoch period while plugins are being called.
pub const TICK: Duration = Duration::from_millis(10);
/// Period once no call has started for [`IDLE_AFTER`] ticks.
const IDLE_TICK: Duration = Duration::from_millis(100);
const IDLE_AFTER: u32 = 100;

/// Counts calls so the thread can tell a busy engine from an idle one.
pub struct Watchdog {
    calls: AtomicU64,
}

impl Watchdog {
    /// Start advancing `engine`'s epoch; the thread ends with the engine.
    pub fn spawn(engine: &Engine) -> Arc<Watchdog> {
        let watchdog = Arc::new(Watchdog {
            calls: AtomicU64::new(0),
        });
        let weak = engine.weak();
        let seen = watchdog.clone();
        std::thread::Builder::new()
            .name("gale-watchdog".into())
            .spawn(move || {
                let (mut last, mut quiet) = (0, 0u32);
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    let calls = seen.calls.load(Ordering::Relaxed);
                    quiet = if calls == last {
                        quiet.saturating_add(1)
                    } else {
                        0
                    };
                    last = calls;
                    std::thread::sleep(if quiet < IDLE_AFTER { TICK } else { IDLE_TICK });
                }
            })
            .expect("spawning the plugin watchdog thread");
        watchdog
    }

    /// Note that a call is about to start.
    #[inline]
    pub fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Epochs after which a call with CPU `deadline` is stopped even if
    /// its fuel lasts: three deadlines plus two ticks, so fuel decides
    /// whenever the guest's own code is what takes the time.
    pub fn ticks(deadline: Duration) -> u64 {
        let wall = deadline * 3 + TICK * 2;
        wall.as_micros().div_ceil(TICK.as_micros()) as u64 + 1
    }
}
