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

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

use super::upstream::Lease;
use crate::attempts::InFlight;

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

/// A backend's response body on its way to the client. Its connection
/// goes back to the pool once the body was read to the end; a body cut
/// short closes it.
pub struct UpstreamBody {
    body: Idle,
    lease: Option<Lease>,
    _in_flight: InFlight,
}

impl UpstreamBody {
    pub fn new(body: Idle, lease: Lease, in_flight: InFlight) -> Self {
        UpstreamBody {
            body,
            lease: Some(lease),
            _in_flight: in_flight,
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
    Local(LocalBody),
}

/// A short text gale wrote itself, to a request whose body may still be
/// arriving. Dropping that body early makes HTTP/2 reset the stream: with
/// `CANCEL` before the response has ended, which discards the response,
/// and with `NO_ERROR` after it (RFC 9113 §8.1), which some clients
/// (curl 7.88) still report as a stream error. So the body is kept until
/// the text has been sent, then read and discarded, as nginx discards an
/// unread request body, up to [`DRAIN_LIMIT`] bytes within [`DRAIN_TIME`]
/// (in a task of its own, which shutdown does not wait for: it ends by
/// itself within that time).
pub struct LocalBody {
    text: Option<Bytes>,
    request: Option<UnsyncBoxBody<Bytes, BoxError>>,
}

/// How much of a refused request's body is read so the client can finish
/// sending it; a longer one is reset (`NO_ERROR`) after the reply.
const DRAIN_LIMIT: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

impl LocalBody {
    pub fn new(text: &'static str) -> Self {
        LocalBody {
            text: Some(Bytes::from_static(text.as_bytes())),
            request: None,
        }
    }

    /// Keep the request's body until this is dropped, then drain it.
    pub fn draining<B>(mut self, request: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.request = Some(UnsyncBoxBody::new(request.map_err(Into::into)));
        self
    }
}

impl Drop for LocalBody {
    fn drop(&mut self) {
        let Some(mut request) = self.request.take() else {
            return;
        };
        if request.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut left = DRAIN_LIMIT;
                while let Some(Ok(frame)) = request.frame().await {
                    let read = frame.data_ref().map_or(0, Bytes::len);
                    left = left.saturating_sub(read);
                    if left == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
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
            ProxyBody::Local(local) => Poll::Ready(local.text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
            ProxyBody::Local(local) => local.text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(up) => up.body.size_hint(),
            ProxyBody::Local(local) => {
                SizeHint::with_exact(local.text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}
