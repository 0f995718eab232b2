//! What decides when a plugin cannot: a native weighted round-robin (the
//! same code as the default plugin, from `gale-sdk`), aware of standby
//! tiers so a failing failover plugin does not spill onto standbys.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gale_sdk::wrr::SmoothWrr;

use crate::plugin::CallFailure;
use crate::plugin::PushedPool;
use crate::plugin::types::Backend;

#[derive(Default)]
pub struct FallbackBalancer {
    /// The round-robin and the pool version its weights came from.
    wrr: Mutex<(u64, SmoothWrr)>,
}

impl FallbackBalancer {
    /// Smooth WRR over the eligible backends of the best tier, then the
    /// eligible backends of later tiers, best tier first.
    pub fn order(&self, pool: &PushedPool) -> Vec<u32> {
        let eligible = |b: &Backend| b.healthy && !b.draining && b.weight > 0;
        let Some(best) = pool
            .backends
            .iter()
            .filter(|b| eligible(b))
            .map(|b| b.priority)
            .min()
        else {
            return Vec::new();
        };
        let mut order = Vec::with_capacity(pool.backends.len());
        {
            let mut guard = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
            let (version, wrr) = &mut *guard;
            if *version != pool.version {
                let weights: Vec<u32> = pool
                    .backends
                    .iter()
                    .map(|b| {
                        if eligible(b) && b.priority == best {
                            b.weight
                        } else {
                            0
                        }
                    })
                    .collect();
                wrr.set_weights(&weights);
                *version = pool.version;
            }
            wrr.order(&mut order);
        }
        let mut rest: Vec<&Backend> = pool
            .backends
            .iter()
            .filter(|b| eligible(b) && b.priority != best)
            .collect();
        rest.sort_by_key(|b| b.priority);
        order.extend(rest.into_iter().map(|b| b.id));
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
