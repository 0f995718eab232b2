//! The epoch ticker that enforces plugin CPU deadlines.
//!
//! A thread advances the engine's epoch every [`TICK`] while plugin code
//! may be running, and parks when no call has been in flight for a while:
//! an always-on ticker costs a context switch every tick on the core that
//! also serves traffic (measured: ~3 % of a pinned core under SMTP load
//! at 4 kHz, hence also the 2 kHz rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// Epoch tick period. A deadline of `d` is armed as `ceil(d / TICK) + 1`
/// ticks, so a call is stopped after between `d` and `d + TICK` of CPU:
/// never before its deadline, at most half a millisecond after.
pub const TICK: Duration = Duration::from_micros(500);

/// Ticks without any call in flight before the ticker parks (10 ms).
const IDLE_TICKS: u32 = 20;

pub struct Ticker {
    in_flight: AtomicU64,
    parked: AtomicBool,
    thread: std::thread::Thread,
}

/// Held while guest code may run; keeps the ticker awake.
pub struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Ticker {
    /// Start ticking `engine`; the thread ends once the engine is dropped.
    pub fn spawn(engine: &Engine) -> Arc<Ticker> {
        let weak = engine.weak();
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Ticker>>();
        let handle = std::thread::Builder::new()
            .name("gale-epoch".into())
            .spawn(move || {
                let ticker = rx.recv().expect("ticker handed over");
                let mut idle = 0u32;
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    if ticker.in_flight.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                    } else {
                        idle += 1;
                    }
                    if idle < IDLE_TICKS {
                        std::thread::sleep(TICK);
                        continue;
                    }
                    // Announce the park, then look again: a call that began
                    // in between either sees `parked` and unparks us, or is
                    // seen here (both sides use SeqCst).
                    ticker.parked.store(true, Ordering::SeqCst);
                    if ticker.in_flight.load(Ordering::SeqCst) == 0 {
                        // Wake now and then to notice the engine is gone.
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                    ticker.parked.store(false, Ordering::SeqCst);
                    idle = 0;
                }
            })
            .expect("spawning the epoch ticker thread");
        let ticker = Arc::new(Ticker {
            in_flight: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            thread: handle.thread().clone(),
        });
        tx.send(ticker.clone()).expect("ticker thread alive");
        ticker
    }

    /// Mark a guest call as running until the guard drops.
    #[inline]
    pub fn running(&self) -> Running<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Running(self)
    }
}
