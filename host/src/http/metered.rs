//! A client connection that counts the bytes it carries, for
//! `gale_http_bytes_total`. Counted on the wire (TLS records included),
//! added to the shared counters every 64 KiB and when the connection
//! ends, so a read or write costs a local addition, not an atomic one.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back before they are added to the counters.
const FLUSH_AT: u64 = 64 * 1024;

pub struct Metered<IO> {
    inner: IO,
    up: (u64, Counter),
    down: (u64, Counter),
}

impl<IO> Metered<IO> {
    /// `up`: bytes read from the client; `down`: written to it.
    pub fn new(inner: IO, up: Counter, down: Counter) -> Self {
        Metered {
            inner,
            up: (0, up),
            down: (0, down),
        }
    }
}

impl<IO> Metered<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }
}

fn add(held: &mut (u64, Counter), n: usize) {
    held.0 += n as u64;
    if held.0 >= FLUSH_AT {
        held.1.inc_by(held.0);
        held.0 = 0;
    }
}

impl<IO> Drop for Metered<IO> {
    fn drop(&mut self) {
        self.up.1.inc_by(self.up.0);
        self.down.1.inc_by(self.down.0);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        add(&mut this.up, buf.filled().len() - before);
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            add(&mut this.down, n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            add(&mut this.down, n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
