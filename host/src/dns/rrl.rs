//! Response rate limiting for the embedded server's UDP answers, in the
//! spirit of BIND's RRL. Over UDP anyone can put a victim's address on a
//! query, and gale's answers are larger than the queries (up to 28 times,
//! see SECURITY.md), which makes an open UDP server a reflector.
//!
//! Each client prefix (/24 for IPv4, /56 for IPv6: what one site, or one
//! attacker, usually holds) has a token bucket of `rate` responses a
//! second with `burst` saved up. Past it, responses alternate between
//! dropped and "slipped": a minimal truncated reply (TC=1, no records, no
//! larger than the query), so a real resolver behind the prefix retries
//! over TCP, which a spoofed source cannot complete, and the victim of a
//! reflection gets half the packets at the size that was asked. TCP is not
//! limited.
//!
//! The table holds at most [`MAX_PREFIXES`] (about 4 MiB at most). A
//! bucket that has filled up again is the same as none, so when the table
//! is full those are swept out (at most once a second: the sweep walks the
//! table), and if it is still full the prefix that came first is evicted.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::config::dns::RateLimit;

/// Prefixes tracked at once.
pub const MAX_PREFIXES: usize = 65_536;
/// A full table is swept for idle buckets at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Send a minimal truncated reply instead.
    Slip,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Prefix {
    V4([u8; 3]),
    V6([u8; 7]),
}

impl Prefix {
    fn of(ip: IpAddr) -> Prefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Prefix::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6]])
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Responses over the limit since the bucket was last empty of them.
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

/// The buckets of the prefixes seen lately. Owned by the UDP loop (one
/// task), so it needs no lock.
#[derive(Default)]
pub struct Limiter {
    buckets: HashMap<Prefix, Bucket>,
    /// Prefixes in the order they were added, for eviction.
    order: VecDeque<Prefix>,
    swept: Option<Instant>,
}

impl Limiter {
    /// The verdict for one response to `client` at `now`.
    pub fn check(&mut self, limit: RateLimit, client: IpAddr, now: Instant) -> Verdict {
        if limit.per_second == 0 {
            return Verdict::Answer;
        }
        let prefix = Prefix::of(client);
        if !self.buckets.contains_key(&prefix) {
            self.make_room(limit, now);
            self.order.push_back(prefix);
        }
        let bucket = self.buckets.entry(prefix).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
            over: 0,
        });
        bucket.refill(limit, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.over = 0;
            return Verdict::Answer;
        }
        bucket.over = bucket.over.wrapping_add(1);
        if bucket.over.is_multiple_of(2) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Prefixes tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn make_room(&mut self, limit: RateLimit, now: Instant) {
        if self.buckets.len() < MAX_PREFIXES {
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
            self.order.retain(|p| buckets.contains_key(p));
        }
        while self.buckets.len() >= MAX_PREFIXES {
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn past_the_burst_responses_alternate_between_dropped_and_slipped() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let verdicts: Vec<Verdict> = (0..8)
            .map(|_| limiter.check(LIMIT, ip("192.0.2.1"), now))
            .collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Answer, Answer, Answer, Answer, Drop, Slip, Drop, Slip]
        );
        // 10 a second: one more after 100 ms.
        let later = now + Duration::from_millis(100);
        assert_eq!(limiter.check(LIMIT, ip("192.0.2.1"), later), Answer);
        assert_eq!(limiter.check(LIMIT, ip("192.0.2.1"), later), Drop);
    }

    #[test]
    fn a_slash_24_and_a_slash_56_share_one_bucket() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(limiter.check(LIMIT, ip("192.0.2.1"), now), Verdict::Answer);
        }
        assert_eq!(limiter.check(LIMIT, ip("192.0.2.200"), now), Verdict::Drop);
        assert_eq!(
            limiter.check(LIMIT, ip("::ffff:192.0.2.7"), now),
            Verdict::Slip
        );
        assert_eq!(limiter.check(LIMIT, ip("192.0.3.1"), now), Verdict::Answer);

        for _ in 0..4 {
            assert_eq!(
                limiter.check(LIMIT, ip("2001:db8:0:100::1"), now),
                Verdict::Answer
            );
        }
        assert_eq!(
            limiter.check(LIMIT, ip("2001:db8:0:1ff::9"), now),
            Verdict::Drop
        );
        assert_eq!(
            limiter.check(LIMIT, ip("2001:db8:0:200::1"), now),
            Verdict::Answer
        );
    }

    #[test]
    fn no_limit_when_the_rate_is_zero() {
        let mut limiter = Limiter::default();
        let off = RateLimit {
            per_second: 0,
            burst: 1,
        };
        let now = Instant::now();
        assert!((0..1000).all(|_| limiter.check(off, ip("192.0.2.1"), now) == Verdict::Answer));
        assert!(limiter.is_empty());
    }

    #[test]
    fn the_table_never_holds_more_than_max_prefixes() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let client = |i: usize| IpAddr::from([10 + (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]);
        // Every bucket emptied: nothing to sweep, the oldest go.
        for i in 0..MAX_PREFIXES + 100 {
            for _ in 0..LIMIT.burst {
                limiter.check(LIMIT, client(i), now);
            }
        }
        assert_eq!(limiter.len(), MAX_PREFIXES);
        // The first prefix was evicted: it starts with a full burst again.
        assert_eq!(limiter.check(LIMIT, client(0), now), Verdict::Answer);
        // A second later every bucket is full again: the sweep empties
        // the table instead of evicting live ones.
        let later = now + Duration::from_secs(2);
        limiter.check(LIMIT, ip("192.0.2.1"), later);
        assert_eq!(limiter.len(), 1);
    }
}
