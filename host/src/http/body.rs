//! Bodies that cross the proxy: the client's request body, shared between
//! attempts so a request that never reached a backend can go to the next
//! one, and the response body, which keeps its backend's session counted
//! until it has been streamed to the end. Both give up after the
//! listener's idle timeout without a byte, so a stalled peer cannot hold
//! a connection forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use super::upstream::Lease;
use crate::plugin::LiveCounters;

/// The client's request body, streamed (never buffered whole). Every
/// attempt gets a handle on the same stream; once any handle has been
/// read from, the body is spent and the request cannot be replayed.
#[derive(Clone)]
pub struct SharedBody {
    inner: Arc<Mutex<Idle>>,
    touched: Arc<AtomicBool>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl SharedBody {
    pub fn new(body: Incoming, idle: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Idle::new(body, idle))),
            touched: Arc::default(),
        }
    }

    /// Whether any of it was read, i.e. sent toward a backend.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Body for SharedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.touched.store(true, Ordering::Release);
        Pin::new(&mut *self.lock()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().body.size_hint()
    }
}

/// A streamed body that fails after `limit` without a frame.
pub struct Idle {
    body: Incoming,
    limit: Duration,
    last_frame: Instant,
    /// Armed on the first wait and moved only when it fires, so streaming
    /// costs a clock read per frame, not a timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    pub fn new(body: Incoming, limit: Duration) -> Self {
        Idle {
            body,
            limit,
            last_frame: Instant::now(),
            timer: None,
        }
    }
}

impl Body for Idle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.last_frame = Instant::now();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.last_frame + this.limit;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(Some(Err(format!(
                    "no body bytes for {:?} (idle_timeout)",
                    this.limit
                )
                .into())));
            }
            // Frames came since the timer was set: wait from the last one.
            timer.as_mut().reset(deadline);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A session counted on a backend (`pool-state` active sessions, and
/// `max_sessions`) until dropped.
pub struct Active {
    live: Arc<LiveCounters>,
    id: usize,
}

impl Active {
    /// Count a session on backend `id`, unless it already has `max`.
    pub fn enter(live: &Arc<LiveCounters>, id: usize, max: u32) -> Option<Active> {
        live.try_enter(id, max).then(|| Active {
            live: live.clone(),
            id,
        })
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.live.leave(self.id);
    }
}

/// A backend's response body on its way to the client. Its connection
/// goes back to the pool once the body was read to the end; a body cut
/// short closes it.
pub struct UpstreamBody {
    body: Idle,
    lease: Option<Lease>,
    _active: Active,
}

impl UpstreamBody {
    pub fn new(body: Idle, lease: Lease, active: Active) -> Self {
        UpstreamBody {
            body,
            lease: Some(lease),
            _active: active,
        }
    }

    fn finished(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body it knows to be empty.
        if self.body.is_end_stream() {
            self.finished();
        }
    }
}

/// What gale sends back: a backend's response body, or a short text gale
/// wrote itself (errors).
pub enum ProxyBody {
    Upstream(UpstreamBody),
    Local(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(up) => {
                let frame = Pin::new(&mut up.body).poll_frame(cx);
                if let Poll::Ready(None) = frame {
                    up.finished();
                }
                frame
            }
            ProxyBody::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
            ProxyBody::Local(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Local(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
