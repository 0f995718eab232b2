//! HTTP/2 from clients (h2c: a plain connection the HTTP/1 engine hands
//! over when it opens with the HTTP/2 preface; or TLS with ALPN `h2`): frames by h2 (vendored, see
//! `vendor/h2/GALE-PATCH.md`), each stream proxied by [`stream`] to an
//! HTTP/1.1 backend through the HTTP/1 engine's backend side.
//!
//! The connection's streams run in the connection's own task, polled
//! beside h2's connection, not as a task each: the same work costs no
//! spawn, no scheduling and no cross-task wake-up per request. (hyper's
//! HTTP/2 server with its HTTP/1 client, the path before this one, cost
//! ~19 µs of CPU per request under h2load where HAProxy spends ~10.)

mod message;
mod stream;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::headers::ClientOrigin;
use super::proxy::Proxy;
use crate::buffers::Buffers;

/// Requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 100;
/// Response bytes queued per stream for a client that reads slowly.
const SEND_BUFFER: usize = 64 * 1024;
/// Request body bytes a client may send on one stream, and on the whole
/// connection, before gale has passed them on (HAProxy's default stream
/// window; hyper's was 1 MiB for each, which let one connection queue
/// megabytes that nothing counted).
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// What an HTTP/2 connection is counted for in `max_buffer_mb`, for its
/// whole life: the frame write (16 KiB) and read (8 KiB) buffers and the
/// HPACK scratch (4 KiB) it takes while it works (the vendored `h2` frees
/// them when it waits), and 4 KiB for its streams' state.
const CONNECTION_BUFFERS: usize = 32 * 1024;
/// And for each stream in flight: its backend read buffer, as an HTTP/1
/// exchange is counted.
const STREAM_BUFFERS: usize = crate::http::h1::BACKEND_READ_SIZE;

/// What serving an HTTP/2 connection needs besides the connection.
pub struct Setup {
    pub proxy: Arc<Proxy>,
    pub origin: ClientOrigin,
    /// How long a connection may go without a request (and how long the
    /// handshake may take).
    pub header_timeout: Duration,
    pub shutdown: CancellationToken,
    pub buffers: Buffers,
}

type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serve HTTP/2 on `io` until the client closes, the connection goes
/// `header_timeout` without a request, or shutdown (after the streams in
/// flight). Not an `async fn`: the settings are moved into the future
/// once, not kept beside their parts.
pub fn serve<IO>(io: IO, setup: Setup) -> impl Future<Output = ()> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Setup {
        proxy,
        origin,
        header_timeout,
        shutdown,
        buffers,
    } = setup;
    let mut charge = buffers.charge();
    charge.set(CONNECTION_BUFFERS);
    let handshake = h2::server::Builder::new()
        .max_header_list_size(super::MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(SEND_BUFFER)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io);
    // Boxed: the future would otherwise keep room for the handshake
    // (1.2 KB) beside the connection it makes, for the connection's life.
    let handshake = Box::pin(handshake);
    async move {
        // Counted until the connection ends.
        let mut charge = charge;
        let peer = origin.addr;
        let mut conn = match tokio::time::timeout(header_timeout, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return tracing::debug!(client = %peer, "http/2 handshake: {e}"),
            Err(_) => return tracing::debug!(client = %peer, "http/2 handshake timed out"),
        };
        // Boxed: the set keeps a node for its own use the size of one
        // of its futures, for the connection's life.
        let mut streams = FuturesUnordered::<StreamTask>::new();
        let cancelled = shutdown.cancelled_owned();
        tokio::pin!(cancelled);
        // Looked at while no stream is open; a connection that goes a
        // whole `header_timeout` without one is closed (a client that
        // answers pings would otherwise hold it, and its slot of
        // `max_sessions`, for ever).
        let idle = tokio::time::sleep(header_timeout);
        tokio::pin!(idle);
        // Closed gracefully (GOAWAY sent) once idle or shutting down; from
        // then on a connection that goes `header_timeout` without a stream
        // is dropped, whether or not the client took the GOAWAY.
        let mut closing = false;
        // A stream was opened since the idle timer was last armed.
        let mut started = false;
        poll_fn(|cx| {
            loop {
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
                charge.set(CONNECTION_BUFFERS + streams.len() * STREAM_BUFFERS);
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        // Over `max_buffer_mb`, the stream is answered 503.
                        let room = charge.buffers().has_room(STREAM_BUFFERS);
                        let serve = stream::serve(proxy.clone(), origin, request, respond, room);
                        streams.push(Box::pin(serve));
                        started = true;
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(client = %peer, "http/2 connection: {e}");
                        return Poll::Ready(());
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
                if !closing && cancelled.as_mut().poll(cx).is_ready() {
                    closing = true;
                    conn.graceful_shutdown();
                    continue;
                }
                if !streams.is_empty() || idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if !std::mem::take(&mut started) {
                    if closing {
                        return Poll::Ready(());
                    }
                    tracing::debug!(client = %peer, "closing an idle http/2 connection");
                    closing = true;
                    conn.graceful_shutdown();
                }
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + header_timeout);
            }
        })
        .await;
    }
}
