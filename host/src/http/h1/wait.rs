//! The wait for a request head: the part of a client connection that
//! sits in every idle connection's task, so it is kept small (see
//! `an_idle_http1_connection_keeps_a_small_future`): one timer for the
//! whole head, the shutdown signal, the scan position, and no buffer
//! until the first bytes arrive.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};

use super::head::{self, Refusal};
use super::{Client, ClientStream, READ_SIZE};
use crate::http::MAX_HEADER_BYTES;

/// Read size for the first bytes of a request, read into the stack (see
/// `Client::poll_first`): a typical head, cookies and all, in one read.
const FIRST_READ_SIZE: usize = 4096;
/// How long an idle kept-alive connection stays open once gale drains,
/// for a request the client sent before it could see the close.
const DRAIN_IDLE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<IO: AsyncRead + AsyncWrite + ClientStream + Unpin> Client<IO> {
    /// Read until a whole request head is in the buffer (or the HTTP/2
    /// preface, or the end). One timer for the whole head; a connection
    /// waiting for its next request also ends on shutdown.
    ///
    /// A future of its own ([`ReadHead`]) rather than `select!`s over
    /// read futures in an `async fn`: it sits in every idle connection's
    /// task, and keeps just the timer and the scan position (measured:
    /// 232 bytes down to 136).
    pub(super) fn read_head<'a>(
        &'a mut self,
        cancelled: Pin<&'a mut Cancelled>,
    ) -> ReadHead<'a, IO> {
        ReadHead {
            timeout: tokio::time::sleep(self.header_timeout),
            client: self,
            cancelled,
            scanned: 0,
        }
    }

    fn poll_head(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut timeout: Pin<&mut tokio::time::Sleep>,
        cancelled: &mut Pin<&mut Cancelled>,
        scanned: &mut usize,
    ) -> Poll<Result<Next, Refusal>> {
        loop {
            if self.h2c {
                let n = self.buf.len().min(H2_PREFACE.len());
                if self.buf[..n] != H2_PREFACE[..n] {
                    self.h2c = false;
                    // Not scanned for lines while it looked like HTTP/2.
                    *scanned = 0;
                } else if n == H2_PREFACE.len() {
                    return Poll::Ready(Ok(Next::Http2));
                }
            }
            // Empty lines before a request line are ignored (RFC 9112
            // §2.2); dropped here, so that a client sending nothing but
            // line ends does not make each parse go over all of them
            // again (64 KiB of them, one per read, was ~2·10⁹ steps).
            if !self.h2c {
                let blank = self.buf.iter().take_while(|&&b| b == b'\r' || b == b'\n');
                let blank = blank.count();
                if blank > 0 {
                    self.buf.advance(blank);
                    *scanned = scanned.saturating_sub(blank);
                }
            }
            // Parse again only when a line ended since the last try: a
            // head trickled in byte by byte costs one parse per line, not
            // one per byte.
            if !self.h2c
                && self.buf[*scanned..].contains(&b'\n')
                && head::parse_request(&self.buf, &mut self.work.req)?
            {
                return Poll::Ready(Ok(Next::Request));
            }
            if self.buf.len() >= MAX_HEADER_BYTES {
                return Poll::Ready(Err(Refusal::TooLarge));
            }
            *scanned = self.buf.len();
            if self.buf.is_empty() {
                // Waiting for a request: no buffer until bytes come. The
                // end, an error, an idle kept-alive connection past its
                // time or a shutdown: it just closes.
                match self.poll_first(cx) {
                    Poll::Ready(Ok(true)) => continue,
                    Poll::Ready(Ok(false)) => return Poll::Ready(Err(Refusal::Overloaded)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Ok(Next::Closed)),
                    Poll::Pending => {}
                }
                if timeout.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(Next::Closed));
                }
                if cancelled.as_mut().poll(cx).is_ready() {
                    // Draining (shutdown, or a binary upgrade): the client
                    // cannot know, and may have sent its next request
                    // already; closing now would lose it, as a reset.
                    // It gets DRAIN_IDLE_GRACE to come, and its answer
                    // says `Connection: close`.
                    let grace = tokio::time::Instant::now() + DRAIN_IDLE_GRACE;
                    if timeout.deadline() > grace {
                        timeout.as_mut().reset(grace);
                        if timeout.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Ok(Next::Closed));
                        }
                    }
                }
                return Poll::Pending;
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE {
                if !self.charge.buffers().has_room(READ_SIZE) {
                    return Poll::Ready(Err(Refusal::Overloaded));
                }
                self.buf.reserve(READ_SIZE);
                self.charge.set(self.held());
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(n)) if n > 0 => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(Next::Closed)),
                Poll::Pending => {}
            }
            if timeout.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Refusal::TimedOut));
            }
            return Poll::Pending;
        }
    }

    /// Read the first bytes of a request into the (empty) buffer:
    /// `Ok(true)`, or `Ok(false)` when the listener has no room for them
    /// (`max_buffer_mb`); an error at the end of the connection. They are
    /// read into the stack and copied: no buffer is held while the
    /// connection waits, and tokio reports a socket it has just
    /// registered as readable before anything has arrived, so a buffer
    /// reserved on that word sat in every connection that sends nothing.
    fn poll_first(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut stack = [0u8; FIRST_READ_SIZE];
        let mut read = tokio::io::ReadBuf::new(&mut stack);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let first = read.filled();
        if first.is_empty() {
            return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !self.charge.buffers().has_room(first.len()) {
            return Poll::Ready(Ok(false));
        }
        self.buf.extend_from_slice(first);
        self.charge.set(self.held());
        Poll::Ready(Ok(true))
    }
}

pub(super) type Cancelled = tokio_util::sync::WaitForCancellationFutureOwned;

pin_project_lite::pin_project! {
    /// [`Client::read_head`]'s future: the head's timer, the shutdown
    /// signal, and how far the buffer was scanned for line ends.
    pub(super) struct ReadHead<'a, IO> {
        client: &'a mut Client<IO>,
        cancelled: Pin<&'a mut Cancelled>,
        #[pin]
        timeout: tokio::time::Sleep,
        scanned: usize,
    }
}

impl<IO: AsyncRead + AsyncWrite + ClientStream + Unpin> Future for ReadHead<'_, IO> {
    type Output = Result<Next, Refusal>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        (this.client).poll_head(cx, this.timeout, this.cancelled, this.scanned)
    }
}

pub(super) enum Next {
    Request,
    Closed,
    Http2,
}
