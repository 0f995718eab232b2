//! The wall-clock backstop behind fuel.
//!
//! Fuel counts guest instructions only: a guest looping over host calls
//! (a long log message each turn) spends its time in the host for a few
//! fuel per call. So every host import first checks a coarse clock kept by
//! this thread, which advances it every [`TICK`] (100 Hz, 10 Hz once no
//! call has been made for a second), and traps once the call has run for
//! three deadlines plus two ticks. Guest code itself pays nothing for this,
//! unlike epoch interruption's check at every loop header, and the core
//! that serves traffic sees next to no wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Clock period while plugins are being called.
pub const TICK: Duration = Duration::from_millis(10);
/// Period once no call has started for [`IDLE_AFTER`] ticks.
const IDLE_TICK: Duration = Duration::from_millis(100);
const IDLE_AFTER: u32 = 100;

/// The backstop's clock, which ticks fast only while plugins are called.
pub struct Watchdog {
    /// Set by calls, cleared by the thread at each tick.
    called: AtomicBool,
    /// Ticks since the start.
    now: AtomicU64,
}

impl Watchdog {
    /// Start the clock; the thread ends once the watchdog is dropped.
    pub fn spawn() -> Arc<Watchdog> {
        let watchdog = Arc::new(Watchdog {
            called: AtomicBool::new(false),
            now: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&watchdog);
        std::thread::Builder::new()
            .name("gale-watchdog".into())
            .spawn(move || {
                let mut quiet = 0u32;
                while let Some(seen) = weak.upgrade() {
                    seen.now.fetch_add(1, Ordering::Relaxed);
                    quiet = if seen.called.swap(false, Ordering::Relaxed) {
                        0
                    } else {
                        quiet.saturating_add(1)
                    };
                    drop(seen);
                    std::thread::sleep(if quiet < IDLE_AFTER { TICK } else { IDLE_TICK });
                }
            })
            .expect("spawning the plugin watchdog thread");
        watchdog
    }

    /// Note that a call is about to start. Reads first: on a busy engine
    /// the flag is already set, and the cache line stays shared between
    /// the cores making calls.
    #[inline]
    pub fn call(&self) {
        if !self.called.load(Ordering::Relaxed) {
            self.called.store(true, Ordering::Relaxed);
        }
    }

    /// The clock, in ticks.
    #[inline]
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Ticks after which a call with CPU `deadline` is stopped at its next
    /// host call even if its fuel lasts: three deadlines plus two ticks, so
    /// fuel decides whenever the guest's own code is what takes the time.
    pub fn ticks(deadline: Duration) -> u64 {
        let wall = deadline * 3 + TICK * 2;
        wall.as_micros().div_ceil(TICK.as_micros()) as u64 + 1
    }
}
