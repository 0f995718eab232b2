//! Bodies that cross the proxy: the client's request body, shared between
//! attempts so a request that never reached a backend can go to the next
//! one, and the response body, which keeps its backend's session counted
//! until it has been streamed to the end.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use crate::plugin::LiveCounters;

/// The client's request body, streamed (never buffered whole). Every
/// attempt gets a handle on the same stream; once any handle has been
/// read from, the body is spent and the request cannot be replayed.
#[derive(Clone)]
pub struct SharedBody {
    inner: Arc<Mutex<Incoming>>,
    touched: Arc<AtomicBool>,
}

impl SharedBody {
    pub fn new(body: Incoming) -> Self {
        Self {
            inner: Arc::new(Mutex::new(body)),
            touched: Arc::default(),
        }
    }

    /// Whether any of it was read, i.e. sent toward a backend.
    pub fn touched(&self) -> bool {
        self.touched.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Incoming> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Body for SharedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.touched.store(true, Ordering::Release);
        Pin::new(&mut *self.lock()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().size_hint()
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

/// What gale sends back: a backend's response body, or a short text gale
/// wrote itself (errors).
pub enum ProxyBody {
    Upstream { body: Incoming, _active: Active },
    Local(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(text) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
