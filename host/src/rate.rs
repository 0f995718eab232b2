//! Token buckets per client, in a table of bounded size: the embedded DNS
//! server's response rate limit (per /24 or /56, `dns::rrl`) and the
//! listeners' new sessions per client (per address or IPv6 /64,
//! `admission`) both count with it.
//!
//! Each key has a bucket of `per_second` tokens a second with `burst`
//! saved up. The table holds at most [`MAX_KEYS`] (a few MiB). A bucket
//! that has filled up again is the same as none, so when the table is full
//! those are swept out (at most once a second: the sweep walks the table),
//! and if it is still full the key that came first is evicted: its next
//! request finds a full burst, which errs on the side of the client.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys tracked at once.
pub const MAX_KEYS: usize = 65_536;
/// A full table is swept for idle buckets at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A rate: `per_second` tokens a second, `burst` saved up at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens a second per key; 0: no limit.
    pub per_second: u32,
    /// Tokens a key may save up.
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Takes refused since the last one granted.
    over: u32,
}

impl Bucket {
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        self.at = now;
    }
}

/// The buckets of the keys seen lately. Owned by one task (the DNS UDP
/// loop, a listener's accept loop), so it needs no lock.
pub struct Buckets<K> {
    buckets: HashMap<K, Bucket>,
    /// Keys in the order they were added, for eviction.
    order: VecDeque<K>,
    swept: Option<Instant>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Self {
        Buckets {
            buckets: HashMap::new(),
            order: VecDeque::new(),
            swept: None,
        }
    }
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    /// Take a token from `key`'s bucket at `now`: `Ok`, or `Err` with the
    /// takes refused in a row, this one included. Always `Ok` when the
    /// rate is 0.
    pub fn take(&mut self, limit: RateLimit, key: K, now: Instant) -> Result<(), u32> {
        if limit.per_second == 0 {
            return Ok(());
        }
        if !self.buckets.contains_key(&key) {
            self.make_room(limit, now);
            self.order.push_back(key);
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
            over: 0,
        });
        bucket.refill(limit, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.over = 0;
            return Ok(());
        }
        bucket.over = bucket.over.wrapping_add(1);
        Err(bucket.over)
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn make_room(&mut self, limit: RateLimit, now: Instant) {
        if self.buckets.len() < MAX_KEYS {
            return;
        }
        if self
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY)
        {
            self.swept = Some(now);
            self.buckets.retain(|_, b| {
                b.refill(limit, now);
                b.tokens < f64::from(limit.burst)
            });
            let buckets = &self.buckets;
            self.order.retain(|k| buckets.contains_key(k));
        }
        while self.buckets.len() >= MAX_KEYS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.buckets.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 10,
        burst: 4,
    };

    #[test]
    fn a_bucket_grants_its_burst_then_its_rate() {
        let mut b = Buckets::default();
        let now = Instant::now();
        let takes: Vec<_> = (0..6).map(|_| b.take(LIMIT, 1u32, now)).collect();
        assert_eq!(takes, [Ok(()), Ok(()), Ok(()), Ok(()), Err(1), Err(2)]);
        // 10 a second: one more after 100 ms.
        let later = now + Duration::from_millis(100);
        assert_eq!(b.take(LIMIT, 1, later), Ok(()));
        assert_eq!(b.take(LIMIT, 1, later), Err(1));
        // Other keys have buckets of their own.
        assert_eq!(b.take(LIMIT, 2, later), Ok(()));
    }

    #[test]
    fn no_limit_when_the_rate_is_zero() {
        let mut b = Buckets::default();
        let off = RateLimit {
            per_second: 0,
            burst: 1,
        };
        let now = Instant::now();
        assert!((0..1000).all(|_| b.take(off, 1u32, now).is_ok()));
        assert!(b.is_empty());
    }

    #[test]
    fn the_table_never_holds_more_than_max_keys() {
        let mut b = Buckets::default();
        let now = Instant::now();
        // Every bucket emptied: nothing to sweep, the oldest go.
        for key in 0..MAX_KEYS + 100 {
            for _ in 0..LIMIT.burst {
                let _ = b.take(LIMIT, key, now);
            }
        }
        assert_eq!(b.len(), MAX_KEYS);
        // The first key was evicted: it starts with a full burst again.
        assert_eq!(b.take(LIMIT, 0, now), Ok(()));
        // A second later every bucket is full again: the sweep empties
        // the table instead of evicting live ones.
        let later = now + Duration::from_secs(2);
        let _ = b.take(LIMIT, usize::MAX, later);
        assert_eq!(b.len(), 1);
    }
}
