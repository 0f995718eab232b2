//! CPU deadlines as fuel.
//!
//! Every plugin call gets a fuel budget; the guest traps when it is spent.
//! Fuel counts guest instructions, so a deadline has to be converted: at
//! start-up the engine times a short calibration loop of ordinary integer
//! code and learns how much fuel this machine burns per microsecond.
//!
//! Why fuel and not epoch interruption: epochs need a thread that ticks at
//! the deadline's resolution (2 kHz for the 1 ms default) for as long as
//! plugins are being called, and on a proxy's busy core each tick is a
//! pair of context switches in the middle of the traffic (measured: about
//! 20 µs more SMTP session set-up latency at p50 on this project's 2-core
//! VM). Fuel costs a counter update per basic block instead, no thread,
//! and no wall-clock noise: a call descheduled by the OS is not charged.

use std::time::{Duration, Instant};

use wasmtime::{Engine, Instance, Module, Store, Trap};

/// A core module exporting `spin(n: i32) -> i32`: a loop of cheap,
/// mostly independent integer operations on locals, 13 fuel per iteration.
/// Code like this burns fuel fastest per microsecond, so budgets measured
/// on it let any ordinary plugin run at least its deadline; a loop with
/// fewer instructions per branch runs somewhat longer before it is stopped
/// (measured: a busy loop of one add stops after 2.4x its deadline).
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

/// Fuel burnt per calibration run: a fraction of a millisecond.
const RUN_FUEL: u64 = 2_000_000;
const RUNS: usize = 5;

/// Fuel this machine burns per microsecond of ordinary guest code.
#[derive(Debug, Clone, Copy)]
pub struct FuelRate(u64);

impl FuelRate {
    /// Time the calibration loop on `engine` (which must consume fuel).
    /// The fastest of a few runs counts: a run slowed down by the OS would
    /// otherwise shrink every budget and stop honest plugins early.
    pub fn calibrate(engine: &Engine) -> wasmtime::Result<Self> {
        let module = Module::new(engine, CALIBRATION_WASM)?;
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, &module, &[])?;
        let spin = instance.get_typed_func::<i32, i32>(&mut store, "spin")?;
        let mut best = Duration::MAX;
        for _ in 0..RUNS {
            store.set_fuel(RUN_FUEL)?;
            let started = Instant::now();
            let result = spin.call(&mut store, i32::MAX);
            let took = started.elapsed();
            match result {
                Err(e) if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) => {}
                other => wasmtime::bail!("calibration loop did not run out of fuel: {other:?}"),
            }
            best = best.min(took);
        }
        let per_us = (RUN_FUEL as f64 / best.as_secs_f64().max(1e-9) / 1e6) as u64;
        Ok(FuelRate(per_us.max(1)))
    }

    /// The budget for a call that may run `deadline`.
    pub fn budget(self, deadline: Duration) -> u64 {
        (deadline.as_micros() as u64).max(1).saturating_mul(self.0)
    }

    /// Fuel per microsecond, for logs.
    pub fn per_microsecond(self) -> u64 {
        self.0
    }
}
