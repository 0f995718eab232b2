//! A short queue instead of an instant refusal: when every backend a
//! session or request may use is at its `max_sessions`, it waits (the
//! client has received nothing) until one of those backends frees a slot
//! or the listener's `queue_timeout` passes, as HAProxy's `timeout queue`
//! holds a request. A burst that would have got `421` at once is served a
//! few milliseconds later instead.
//!
//! Two halves:
//! - [`Slot`], one per backend and shared with the generations that have
//!   the same backend (a session of an old generation that ends wakes a
//!   session queued on the new one): its sessions, the sessions queued
//!   for it, and the wake-up. A freed slot wakes the longest-waiting
//!   session queued for that backend, which may use it by construction
//!   (it queued on the backends of its own order). While sessions are
//!   queued for a backend, a newcomer does not take its freed slots: the
//!   queue goes first. The backend's `max_sessions` lives here too, set
//!   by the generation that is current, so a reload that raises it lets
//!   sessions queued on an older generation in.
//! - [`Queue`], one per listener: `queue_size` places, `queue_timeout`,
//!   and the metrics. A session keeps its [`Place`] from its first wait
//!   until a backend's slot is handed to it or it gives up. A place that
//!   goes passes on what it was woken for and did not use: a backend of
//!   its order with room and sessions queued for it wakes one of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// One backend's sessions, its limit, and the sessions queued for it.
#[derive(Debug)]
pub struct Slot {
    active: AtomicU32,
    /// `max_sessions` of the backend in the current generation.
    max: AtomicU32,
    /// Sessions queued with this backend in their order: a slot that
    /// frees with none waiting costs one atomic load, no wake-up.
    waiting: AtomicU32,
    freed: Notify,
}

impl Default for Slot {
    /// No limit until a generation sets one.
    fn default() -> Self {
        Slot::new(u32::MAX)
    }
}

impl Slot {
    pub fn new(max: u32) -> Slot {
        Slot {
            active: AtomicU32::new(0),
            max: AtomicU32::new(max),
            waiting: AtomicU32::new(0),
            freed: Notify::new(),
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// The backend's `max_sessions` from now on (a generation became
    /// current); sessions queued for it look again.
    pub fn set_max(&self, max: u32) {
        if self.max.swap(max, Ordering::SeqCst) != max {
            self.freed.notify_waiters();
        }
    }

    /// Count a session unless `max_sessions` are counted, or sessions are
    /// queued for this backend and this one (`queued` false) is not among
    /// them.
    pub fn try_enter(&self, queued: bool) -> bool {
        // SeqCst here and in `leave`, `has_room` and `Place::wait`: either
        // a waiter sees the freed slot, or the leaver sees the waiter.
        if !queued && self.waiting.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let max = self.max.load(Ordering::SeqCst);
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A session ended: wake the longest-waiting session queued for this
    /// backend.
    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.wake_one_if_room();
    }

    /// Wake one queued session if this backend has room for it.
    fn wake_one_if_room(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 && self.has_room() {
            self.freed.notify_one();
        }
    }

    fn has_room(&self) -> bool {
        self.active.load(Ordering::SeqCst) < self.max.load(Ordering::SeqCst)
    }
}

/// One listener's queue: its settings, how many wait now, and how waits
/// ended.
pub struct Queue {
    /// 0: no queue, a session that finds every backend full is refused.
    pub size: u32,
    pub timeout: Duration,
    /// `gale_queued_sessions`: shared by the listener's generations (the
    /// same series), so `queue_size` holds across a reload.
    pub waiting: Gauge,
    /// `gale_queue_outcomes_total`: sessions that waited and then went to
    /// a backend, that waited `queue_timeout` in vain, that found
    /// `queue_size` waiting already (or no queue), and whose client left
    /// while waiting. Counted by [`crate::attempts::Attempts`].
    pub served: Counter,
    pub timed_out: Counter,
    pub full: Counter,
    pub gone: Counter,
}

impl Queue {
    /// A place in this queue and in the queues of `slots` (the backends
    /// the session may use), or `None` when `queue_size` sessions wait
    /// already.
    pub fn enter(&self, slots: Vec<Arc<Slot>>) -> Option<Place> {
        if self.waiting.inc() >= i64::from(self.size) {
            self.waiting.dec();
            return None;
        }
        for slot in &slots {
            slot.waiting.fetch_add(1, Ordering::SeqCst);
        }
        Some(Place {
            listener: self.waiting.clone(),
            slots,
        })
    }
}

/// A session's place in the queue, held until it has a backend or gives
/// up; dropping it leaves every queue it was in.
pub struct Place {
    listener: Gauge,
    slots: Vec<Arc<Slot>>,
}

impl Place {
    /// Until one of the place's backends has room (true) or `deadline`
    /// passes (false).
    pub async fn wait(&self, deadline: Instant) -> bool {
        loop {
            // Registered before looking, so a slot freed in between wakes
            // this session.
            let mut wakeups: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = self
                .slots
                .iter()
                .map(|slot| Box::pin(slot.freed.notified()))
                .collect();
            for w in &mut wakeups {
                w.as_mut().enable();
            }
            if self.has_room() {
                return true;
            }
            let woken = tokio::time::timeout_at(deadline.into(), AnyOf(&mut wakeups)).await;
            if woken.is_err() {
                return false;
            }
            // Another queued session took it first: wait again (at the
            // back of the backends' wait lists).
        }
    }

    fn has_room(&self) -> bool {
        self.slots.iter().any(|slot| slot.has_room())
    }
}

impl Drop for Place {
    /// Leaves every queue, and passes on a wake-up this session may have
    /// used up without taking that backend's slot (it took another, or it
    /// gave up): a backend of its order with room and sessions queued
    /// for it wakes one of them.
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        for slot in &self.slots {
            slot.wake_one_if_room();
        }
        self.listener.dec();
    }
}

/// Ready when any of the futures is (they stay where they are: the ones
/// not ready pass their wake-up on when dropped).
struct AnyOf<'a, F>(&'a mut Vec<Pin<Box<F>>>);

impl<F: Future> Future for AnyOf<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.get_mut();
        if this.0.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_a_session_queued_for_that_backend_only() {
        let (x, y) = (Arc::new(Slot::new(1)), Arc::new(Slot::new(1)));
        for s in [&x, &y] {
            assert!(s.try_enter(false));
        }
        let q = Arc::new(queue(10));
        // One session may use x only, the other y only (their orders).
        let on_x = q.enter(vec![x.clone()]).unwrap();
        let on_y = q.enter(vec![y.clone()]).unwrap();
        assert_eq!(q.waiting.get(), 2);
        let waiter_x = tokio::spawn(async move { on_x.wait(far()).await });
        let waiter_y = tokio::spawn(async move { on_y.wait(far()).await });
        tokio::task::yield_now().await;
        // A newcomer does not take y's freed slot: the queue goes first.
        y.leave();
        assert!(!y.try_enter(false));
        assert!(waiter_y.await.unwrap());
        assert!(y.try_enter(true));
        assert!(!waiter_x.is_finished());
        x.leave();
        assert!(waiter_x.await.unwrap());
        assert_eq!(q.waiting.get(), 0);
        assert_eq!(x.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_wait_ends_at_the_deadline_and_a_full_queue_refuses() {
        let x = Arc::new(Slot::new(1));
        assert!(x.try_enter(false));
        let q = queue(1);
        let place = q.enter(vec![x.clone()]).unwrap();
        let started = Instant::now();
        assert!(!place.wait(started + Duration::from_millis(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(45));
        assert!(q.enter(vec![x.clone()]).is_none(), "queue_size 1");
        drop(place);
        assert!(queue(0).enter(vec![x.clone()]).is_none(), "no queue");
        assert_eq!(q.waiting.get(), 0);
    }

    #[tokio::test]
    async fn room_seen_on_registering_ends_the_wait_at_once() {
        let x = Arc::new(Slot::new(2));
        let q = queue(4);
        let place = q.enter(vec![x]).unwrap();
        assert!(place.wait(far()).await);
    }

    #[tokio::test]
    async fn a_wake_up_used_for_another_backend_is_passed_on() {
        // w1 may use x or y, w2 only y; both full; w1 waits longest.
        let (x, y) = (Arc::new(Slot::new(1)), Arc::new(Slot::new(1)));
        assert!(x.try_enter(false) && y.try_enter(false));
        let q = queue(10);
        let w1 = Arc::new(q.enter(vec![x.clone(), y.clone()]).unwrap());
        let w2 = Arc::new(q.enter(vec![y.clone()]).unwrap());
        let waiter1 = {
            let w1 = w1.clone();
            tokio::spawn(async move { w1.wait(far()).await })
        };
        tokio::task::yield_now().await;
        let waiter2 = {
            let w2 = w2.clone();
            tokio::spawn(async move { w2.wait(far()).await })
        };
        tokio::task::yield_now().await;
        // y frees: its wake-up goes to w1, the longest waiting...
        y.leave();
        assert!(waiter1.await.unwrap());
        // ...which takes x, freed meanwhile, instead.
        x.leave();
        assert!(x.try_enter(true));
        drop(w1);
        // Leaving the queue, w1 passes y's wake-up on to w2.
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter2).await;
        assert!(woken.expect("w2 was never woken").unwrap());
        assert!(y.try_enter(true));
    }

    #[tokio::test]
    async fn a_raised_limit_lets_queued_sessions_in() {
        let x = Arc::new(Slot::new(1));
        assert!(x.try_enter(false));
        let q = queue(10);
        let place = Arc::new(q.enter(vec![x.clone()]).unwrap());
        let waiter = {
            let place = place.clone();
            tokio::spawn(async move { place.wait(far()).await })
        };
        tokio::task::yield_now().await;
        x.set_max(2);
        assert!(waiter.await.unwrap());
        assert!(x.try_enter(true));
    }
}
