//! What decides when a plugin cannot: a native weighted round-robin in
//! tiers (the same code as the default plugin, from `gale-sdk`), so a
//! failing plugin does not spill sessions onto standbys.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gale_sdk::wrr::TieredWrr;

use crate::plugin::CallFailure;
use crate::plugin::PushedPool;
use crate::plugin::types::Backend;

#[derive(Default)]
pub struct FallbackBalancer {
    /// The tiers and the pool version their weights came from.
    tiers: Mutex<(u64, TieredWrr)>,
}

impl FallbackBalancer {
    /// Smooth WRR over the eligible backends of the best tier, then the
    /// eligible backends of later tiers, best tier first: what the default
    /// plugin decides.
    pub fn order(&self, pool: &PushedPool) -> Vec<u32> {
        let mut guard = self.tiers.lock().unwrap_or_else(|p| p.into_inner());
        let (version, tiers) = &mut *guard;
        if *version != pool.version {
            let eligible = |b: &Backend| b.healthy && !b.draining;
            let backends: Vec<(u32, u32)> = pool
                .backends
                .iter()
                .map(|b| (b.priority, if eligible(b) { b.weight } else { 0 }))
                .collect();
            *tiers = TieredWrr::new(&backends);
            *version = pool.version;
        }
        let mut order = Vec::with_capacity(tiers.eligible());
        tiers.order(&mut order, true);
        order
    }
}

/// Warn about plugin failures at most once a second, with a count of the
/// ones in between: a plugin that traps on every call must not flood logs.
#[derive(Default)]
pub struct RateLimitedLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Offset by a second so the very first failure is always logged.
    (ORIGIN.get_or_init(Instant::now).elapsed() + Duration::from_secs(1)).as_millis() as u64
}

impl RateLimitedLog {
    pub fn warn(&self, pool: &str, hook: &str, plugin: &str, failure: &CallFailure) {
        let now = now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            pool,
            hook,
            plugin,
            reason = failure.reason(),
            suppressed,
            "plugin call failed, built-in fallback decided: {failure}"
        );
    }
}
