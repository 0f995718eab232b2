//! Response rate limiting for the embedded server's UDP answers, in the
//! spirit of BIND's RRL. Over UDP anyone can put a victim's address on a
//! query, and gale's answers are larger than the queries (up to 28 times,
//! see SECURITY.md), which makes an open UDP server a reflector.
//!
//! Each client prefix (/24 for IPv4, /56 for IPv6: what one site, or one
//! attacker, usually holds) has a token bucket of `rate` responses a
//! second with `burst` saved up ([`crate::rate`], whose table is bounded).
//! Past it, responses alternate between dropped and "slipped": a minimal
//! truncated reply (TC=1, no records, no larger than the query), so a real
//! resolver behind the prefix retries over TCP, which a spoofed source
//! cannot complete, and the victim of a reflection gets half the packets
//! at the size that was asked. TCP is not limited.

use std::net::IpAddr;
use std::time::Instant;

pub use crate::config::dns::RateLimit;
use crate::rate::Buckets;

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

/// The buckets of the prefixes seen lately. Owned by the UDP loop (one
/// task), so it needs no lock.
#[derive(Default)]
pub struct Limiter {
    buckets: Buckets<Prefix>,
}

impl Limiter {
    /// The verdict for one response to `client` at `now`.
    pub fn check(&mut self, limit: RateLimit, client: IpAddr, now: Instant) -> Verdict {
        match self.buckets.take(limit, Prefix::of(client), now) {
            Ok(()) => Verdict::Answer,
            Err(over) if over.is_multiple_of(2) => Verdict::Slip,
            Err(_) => Verdict::Drop,
        }
    }

    /// Prefixes tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
