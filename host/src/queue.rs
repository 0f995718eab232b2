//! A short queue instead of an instant refusal: when every backend a
//! session or request may use is at its `max_sessions`, it waits (the
//! client has received nothing) until a slot frees or the listener's
//! `queue_timeout` passes, as HAProxy's `timeout queue` holds a request.
//! A burst that would have got `421` at once is served a few milliseconds
//! later instead.
//!
//! Two halves: [`Slots`], one per pool and shared with the same pool of
//! later generations (like the backends' session counters, so a session
//! of an old generation that ends wakes a session queued on the new
//! one), says when a slot frees; [`Queue`], one per listener, holds the
//! listener's settings, its count of waiting sessions (`queue_size` caps
//! it) and the metrics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Where sessions of one pool wait for a backend slot.
#[derive(Debug, Default)]
pub struct Slots {
    /// Sessions waiting now: a slot that frees with none waiting costs
    /// one atomic load, no wake-up.
    waiting: AtomicU32,
    freed: Notify,
}

impl Slots {
    /// A backend slot was given back: wake the longest waiting session.
    /// (A woken session that finds the slot taken by a new arrival waits
    /// again; one that gives up first passes the wake-up on: tokio's
    /// `Notify` forwards a `notify_one` its dropped waiter did not use.)
    pub fn freed(&self) {
        // SeqCst with the waiter's increment and its check for room: either
        // this sees the waiter, or the waiter sees the freed slot.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }
}

/// How a wait in the queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// A slot may be free: try the backends again.
    Freed,
    /// `queue_timeout` passed since the session was first queued.
    TimedOut,
    /// `queue_size` sessions were waiting already: not queued.
    Full,
}

/// One listener's queue: its settings, how many wait now, and how waits
/// ended (`gale_queued_total{outcome}`).
pub struct Queue {
    /// 0: no queue, a session that finds every backend full is refused.
    pub size: u32,
    pub timeout: Duration,
    /// `gale_queued_sessions`: shared by the listener's generations (the
    /// same series), so `queue_size` holds across a reload.
    pub waiting: Gauge,
    /// `gale_queue_outcomes_total`: sessions that waited and then went to
    /// a backend (counted by [`crate::attempts::Attempts`]), that waited
    /// `queue_timeout` in vain, that found `queue_size` waiting already,
    /// and whose client left while waiting (counted by the protocol).
    pub served: Counter,
    pub timed_out: Counter,
    pub full: Counter,
    pub gone: Counter,
}

impl Queue {
    /// Wait for a slot of `slots` until `deadline` (the first time this
    /// session was queued plus `queue_timeout`). `has_room`: whether a
    /// backend the session may use has a free slot now, asked after
    /// registering for the wake-up, so a slot freed in between is seen.
    pub async fn wait(
        &self,
        slots: &Slots,
        deadline: Instant,
        has_room: impl Fn() -> bool,
    ) -> Waited {
        if self.size == 0 {
            return Waited::Full;
        }
        if self.waiting.inc() >= i64::from(self.size) {
            self.waiting.dec();
            self.full.inc();
            return Waited::Full;
        }
        let _waiting = Leave(&self.waiting);
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        let _slots = LeaveSlots(slots);
        let notified = slots.freed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if has_room() {
            return Waited::Freed;
        }
        match tokio::time::timeout_at(deadline.into(), notified).await {
            Ok(()) => Waited::Freed,
            Err(_) => {
                self.timed_out.inc();
                Waited::TimedOut
            }
        }
    }
}

/// Takes a session off the listener's count when its wait ends, however
/// it ends (a client that leaves drops the wait).
struct Leave<'a>(&'a Gauge);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct LeaveSlots<'a>(&'a Slots);

impl Drop for LeaveSlots<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    fn queue(size: u32) -> Queue {
        Queue {
            size,
            timeout: Duration::from_secs(5),
            waiting: Gauge::default(),
            served: Counter::default(),
            timed_out: Counter::default(),
            full: Counter::default(),
            gone: Counter::default(),
        }
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_the_waiting_session() {
        let slots = Arc::new(Slots::default());
        let room = Arc::new(AtomicBool::new(false));
        let q = Arc::new(queue(10));
        let waiter = {
            let (slots, room, q) = (slots.clone(), room.clone(), q.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                q.wait(&slots, deadline, || room.load(Ordering::SeqCst))
                    .await
            })
        };
        // Until the waiter is registered: only then does a freed slot wake it.
        while slots.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.waiting.get(), 1);
        room.store(true, Ordering::SeqCst);
        slots.freed();
        assert_eq!(waiter.await.unwrap(), Waited::Freed);
        assert_eq!(q.waiting.get(), 0);
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_deadline_and_a_full_queue_refuses() {
        let slots = Slots::default();
        let q = queue(1);
        let deadline = Instant::now() + Duration::from_millis(50);
        let started = Instant::now();
        assert_eq!(q.wait(&slots, deadline, || false).await, Waited::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(45));
        // One waits; a second finds the queue full at once.
        let far = Instant::now() + Duration::from_secs(30);
        let first = q.wait(&slots, far, || false);
        tokio::pin!(first);
        assert!(futures_util::poll!(first.as_mut()).is_pending());
        assert_eq!(q.wait(&slots, far, || false).await, Waited::Full);
        assert_eq!(q.full.get(), 1);
        // No queue at all.
        assert_eq!(queue(0).wait(&slots, far, || true).await, Waited::Full);
    }

    #[tokio::test]
    async fn room_seen_on_registering_ends_the_wait_at_once() {
        let slots = Slots::default();
        let q = queue(4);
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(q.wait(&slots, far, || true).await, Waited::Freed);
        assert_eq!(q.waiting.get(), 0);
    }
}
