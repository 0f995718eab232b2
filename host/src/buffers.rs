//! What a listener's connections hold in buffers (request heads, bodies
//! and responses in flight, an SMTP relay's backlog to a slow reader, an
//! HTTP/2 connection's frame buffers), counted against the listener's
//! `max_buffer_mb`.
//!
//! Past the limit the listener stops accepting (clients wait in the
//! kernel's backlog, as past `max_sessions`), HTTP/1 connections are not
//! kept alive, and an HTTP/1 request that needs more room is answered
//! `503`, so the memory a listener's connections hold stays near its
//! limit whatever its clients do. What a connection costs besides its
//! buffers (its task and socket, at most 4 KiB while it is idle: see
//! `tests/idle_memory.rs`) is bounded by `max_sessions`.
//!
//! The count is exported as `gale_listener_buffer_bytes`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// One listener's buffer count and limit, shared by its accept loop and
/// its connections.
#[derive(Clone)]
pub struct Buffers(Arc<Shared>);

struct Shared {
    held: Gauge,
    limit: AtomicI64,
    freed: Notify,
}

impl Buffers {
    /// Counting into `held` (the listener's series of the gauge), with no
    /// limit until [`Buffers::set_limit`].
    pub fn new(held: Gauge) -> Self {
        Buffers(Arc::new(Shared {
            held,
            limit: AtomicI64::new(i64::MAX),
            freed: Notify::new(),
        }))
    }

    /// The listener's `max_buffer_mb` in bytes (`None`: no limit).
    pub fn set_limit(&self, bytes: Option<u64>) {
        let limit = bytes.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        if self.0.limit.swap(limit, Ordering::Relaxed) < limit {
            self.0.freed.notify_waiters();
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> i64 {
        self.0.held.get()
    }

    /// Whether the listener's connections hold more than its limit.
    pub fn over(&self) -> bool {
        self.0.held.get() > self.0.limit.load(Ordering::Relaxed)
    }

    /// Whether `more` bytes fit under the limit.
    pub fn has_room(&self, more: usize) -> bool {
        let more = i64::try_from(more).unwrap_or(i64::MAX);
        self.0.held.get().saturating_add(more) <= self.0.limit.load(Ordering::Relaxed)
    }

    /// Notified when a release takes the listener back under its limit.
    pub fn freed(&self) -> &Notify {
        &self.0.freed
    }

    /// A connection's share, empty for now.
    pub fn charge(&self) -> Charge {
        Charge {
            buffers: self.clone(),
            bytes: 0,
        }
    }
}

/// What one connection holds, counted in its listener's [`Buffers`] until
/// dropped.
pub struct Charge {
    buffers: Buffers,
    bytes: usize,
}

impl Charge {
    /// The connection now holds `bytes` in buffers.
    pub fn set(&mut self, bytes: usize) {
        if bytes == self.bytes {
            return;
        }
        let shared = &self.buffers.0;
        if bytes > self.bytes {
            shared.held.inc_by((bytes - self.bytes) as i64);
        } else {
            let less = (self.bytes - bytes) as i64;
            // The decrement that crosses the line wakes the accept loop
            // (judged on the value it replaced, not on a second read that
            // other connections may have moved).
            let before = shared.held.dec_by(less);
            let limit = shared.limit.load(Ordering::Relaxed);
            if before > limit && before - less <= limit {
                shared.freed.notify_waiters();
            }
        }
        self.bytes = bytes;
    }

    /// The listener this connection belongs to.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_count_until_dropped_and_the_limit_is_a_line() {
        let buffers = Buffers::new(Gauge::default());
        buffers.set_limit(Some(100));
        let mut a = buffers.charge();
        a.set(60);
        let mut b = buffers.charge();
        b.set(40);
        assert_eq!(buffers.held(), 100);
        assert!(!buffers.over(), "at the limit is not over it");
        assert!(!buffers.has_room(1));
        b.set(41);
        assert!(buffers.over());
        drop(a);
        assert_eq!(buffers.held(), 41);
        assert!(buffers.has_room(59));
        buffers.set_limit(None);
        assert!(buffers.has_room(usize::MAX));
        drop(b);
        assert_eq!(buffers.held(), 0);
    }
}
