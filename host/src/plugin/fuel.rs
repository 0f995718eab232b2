//! CPU deadlines as fuel.
//!
//! Every plugin call gets a fuel budget; the guest traps when it is spent.
//! Fuel counts guest instructions, so a deadline has to be converted: once
//! per process the engine times a short loop of ordinary integer code and
//! learns how much fuel this machine burns per microsecond. The conversion
//! is approximate: code that does more or less per instruction than the
//! loop, or a core that runs faster or slower than during calibration (an
//! SMT sibling busy or not), moves the stop. Measured here: a bare busy
//! loop with a 5 ms deadline stops after 2.4-17 ms.
//!
//! Why fuel and not epoch interruption alone: epochs need a thread that
//! ticks at the deadline's resolution (2 kHz for the 1 ms default) for as
//! long as plugins are being called, and on a proxy's busy core each tick
//! is a pair of context switches in the middle of the traffic (measured:
//! about 20 µs more SMTP session set-up latency at p50 on this project's
//! 2-core VM). Wall-clock epochs also charge a call for time the OS had it
//! descheduled, so an overloaded host turned honest decisions into
//! fallbacks. Fuel costs a counter update per basic block instead. A
//! coarse wall-clock backstop in the host imports ([`super::watchdog`])
//! catches what fuel cannot see: time spent in host calls.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Instance, Module, Store};

/// A core module exporting `spin(n: i32) -> i32`: a loop of cheap,
/// mostly independent integer operations on locals, 13 fuel per iteration.
///
/// ```wat
/// (func (export "spin") (param i32) (result i32) (local i32 i32)
///   (loop
///     (local.set 1 (i32.add (local.get 1) (local.get 0)))
///     (local.set 2 (i32.xor (local.get 2) (local.get 0)))
///     (br_if 0 (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))
///   (i32.add (local.get 1) (local.get 2)))
/// ```
const CALIBRATION_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // type: (i32) -> i32
    0x03, 0x02, 0x01, 0x00, // one function of type 0
    0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export "spin"
    0x0a, 0x25, 0x01, 0x23, // code: one body of 35 bytes
    0x01, 0x02, 0x7f, // two i32 locals
    0x03, 0x40, // loop
    0x20, 0x01, 0x20, 0x00, 0x6a, 0x21,
    0x01, // local.get 1, local.get 0, i32.add, local.set 1
    0x20, 0x02, 0x20, 0x00, 0x73, 0x21,
    0x02, // local.get 2, local.get 0, i32.xor, local.set 2
    0x20, 0x00, 0x41, 0x01, 0x6b, // local.get 0, i32.const 1, i32.sub
    0x22, 0x00, 0x0d, 0x00, // local.tee 0, br_if 0
    0x0b, // end loop
    0x20, 0x01, 0x20, 0x02, 0x6a, 0x0b, // local.get 1, local.get 2, i32.add, end
];

/// Loop turns per calibration run (13 fuel each): some 50 µs, short enough
/// that some of the runs go uninterrupted on a busy machine.
const ITERATIONS: i32 = 40_000;
const RUNS: usize = 25;

/// Fuel this machine burns per microsecond of ordinary guest code.
#[derive(Debug, Clone, Copy)]
pub struct FuelRate(u64);

impl FuelRate {
    /// Time the calibration loop on `engine` (which must consume fuel),
    /// once per process. The fastest of many short runs counts: a run
    /// slowed down by the OS would otherwise shrink every budget and stop
    /// honest plugins early.
    pub fn calibrate(engine: &Engine) -> wasmtime::Result<Self> {
        static RATE: OnceLock<FuelRate> = OnceLock::new();
        if let Some(rate) = RATE.get() {
            return Ok(*rate);
        }
        let rate = Self::measure(engine)?;
        Ok(*RATE.get_or_init(|| rate))
    }

    fn measure(engine: &Engine) -> wasmtime::Result<Self> {
        let module = Module::new(engine, CALIBRATION_WASM)?;
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, &module, &[])?;
        let spin = instance.get_typed_func::<i32, i32>(&mut store, "spin")?;
        // Runs that end by themselves: an out-of-fuel trap would add the
        // cost of unwinding and capturing a backtrace to the timing.
        let mut best = f64::MAX;
        for _ in 0..RUNS {
            store.set_fuel(u64::MAX / 2)?;
            let started = Instant::now();
            spin.call(&mut store, ITERATIONS)?;
            let took = started.elapsed().as_secs_f64();
            let spent = (u64::MAX / 2 - store.get_fuel()?) as f64;
            best = best.min(took / spent.max(1.0));
        }
        let per_us = (1.0 / best.max(1e-15) / 1e6) as u64;
        Ok(FuelRate(per_us.max(1)))
    }

    /// The budget for a call that may run `deadline`.
    pub fn budget(self, deadline: Duration) -> u64 {
        u64::try_from(deadline.as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
            .saturating_mul(self.0)
    }

    /// Fuel per microsecond, for logs.
    pub fn per_microsecond(self) -> u64 {
        self.0
    }
}
