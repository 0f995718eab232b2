//! Moving bytes between a client and a backend for one exchange: the
//! request body out, the response head in, the response body back.

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::chunked::Chunked;
use super::head::{self, Framing, Refusal};
use super::{BACKEND_READ_SIZE, READ_SIZE};
use crate::http::MAX_HEADER_BYTES;

/// `tokio::time::timeout`, with the clock read and the timer armed only
/// if `fut` is not done at its first poll: a head written to a socket
/// with room, the usual case, costs neither (two clock reads and two
/// timer entries per kept-alive request were ~2 % of its CPU). The time
/// allowed runs from that first poll, microseconds after the call.
pub(in crate::http) async fn timeout_unless_ready<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await,
    }
}

/// Why a request body could not be sent on: the client's side (what
/// each engine tells it, `C`), or the backend's.
pub(in crate::http) enum BodyError<C> {
    Client(C),
    Backend(String),
}

/// The HTTP/1 engine's client failures: the answer, if any, and why.
pub(super) type ClientBroke = (Option<Refusal>, String);

/// How sending a request body beside waiting for the response head ended.
pub(in crate::http) enum BodyAndHead<C> {
    /// The response head came, failed or timed out; `whole`: the body
    /// had gone whole before.
    Head(
        Result<Result<(), String>, tokio::time::error::Elapsed>,
        bool,
    ),
    /// The client's side of the body failed.
    Client(C),
    /// The body could not be written and no response head followed: the
    /// backend may have acted on part of it.
    Backend(String),
}

/// Send a request body (`send`) while reading the response head (`recv`,
/// within `response_timeout` once the body is sent): the backend may
/// answer before it has the whole body (a 413, say), and that answer goes
/// to the client. Both engines' exchanges with a body go through here.
pub(in crate::http) async fn body_and_head<C>(
    send: impl std::future::Future<Output = Result<(), BodyError<C>>>,
    recv: impl std::future::Future<Output = Result<(), String>>,
    response_timeout: Duration,
) -> BodyAndHead<C> {
    tokio::pin!(send, recv);
    tokio::select! {
        sent = &mut send => match sent {
            Ok(()) => BodyAndHead::Head(tokio::time::timeout(response_timeout, &mut recv).await, true),
            Err(BodyError::Client(c)) => BodyAndHead::Client(c),
            Err(BodyError::Backend(why)) => {
                match tokio::time::timeout(response_timeout, &mut recv).await {
                    answered @ Ok(Ok(())) => BodyAndHead::Head(answered, false),
                    _ => BodyAndHead::Backend(why),
                }
            }
        },
        head = &mut recv => BodyAndHead::Head(Ok(head), false),
    }
}

/// Stream the request body from the client (what is already in `buf`
/// first) to the backend, counting its bytes in `sent` (the data, not
/// the chunk framing); `buf` keeps whatever follows the body.
#[inline]
pub(super) async fn send_body<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    buf: &mut BytesMut,
    backend: &mut WriteHalf<'_>,
    (framing, expect_continue): (Framing, bool),
    idle: Duration,
    sent: &mut u64,
) -> Result<(), BodyError<ClientBroke>> {
    // The client waits for this before it sends the body; gale answers it
    // itself and does not pass `Expect` on.
    if expect_continue && buf.is_empty() {
        let write = async {
            client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            client.flush().await
        };
        if !matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))) {
            return Err(BodyError::Client((
                None,
                "went away before its body".into(),
            )));
        }
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::default();
    loop {
        let (take, done) = match framing {
            Framing::Length(_) => {
                let n = left.min(buf.len() as u64);
                left -= n;
                *sent += n;
                (n as usize, left == 0)
            }
            Framing::Chunked => {
                let n = chunks.scan(buf, |r| *sent += r.len() as u64).map_err(|e| {
                    BodyError::Client((
                        Some(Refusal::Malformed("malformed chunked body\n")),
                        e.to_string(),
                    ))
                })?;
                (n, chunks.done())
            }
            Framing::Empty | Framing::Close => (0, true),
        };
        if take > 0 {
            match tokio::time::timeout(idle, backend.write_all(&buf[..take])).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BodyError::Backend(e.to_string())),
                Err(_) => {
                    return Err(BodyError::Backend(format!(
                        "took no body bytes for {idle:?} (idle_timeout)"
                    )));
                }
            }
            buf.advance(take);
        }
        if done {
            return Ok(());
        }
        buf.reserve(READ_SIZE);
        match tokio::time::timeout(idle, client.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(BodyError::Client((
                    None,
                    "closed the connection inside its body".into(),
                )));
            }
            Ok(Ok(_)) => {}
            Err(_) => {
                return Err(BodyError::Client((
                    Some(Refusal::BodyTimedOut),
                    format!("sent no body bytes for {idle:?} (idle_timeout)"),
                )));
            }
        }
    }
}

/// Read the backend's response head into `rbuf`, passing over interim
/// (1xx) responses.
#[inline]
pub(in crate::http) async fn read_response_head(
    backend: &mut ReadHalf<'_>,
    rbuf: &mut BytesMut,
    resp: &mut head::Response,
    (head_request, upgrading): (bool, bool),
) -> Result<(), String> {
    rbuf.clear();
    let mut scanned = 0;
    loop {
        if rbuf[scanned..].contains(&b'\n') && head::parse_response(rbuf, head_request, resp)? {
            match resp.code {
                101 if upgrading && head::switches_to_websocket(rbuf, resp) => return Ok(()),
                101 if upgrading => {
                    return Err("101 to another protocol than the WebSocket asked for".into());
                }
                101 => return Err("101 Switching Protocols, no upgrade was asked for".into()),
                100..=199 => {
                    rbuf.advance(resp.len);
                    scanned = 0;
                    continue;
                }
                _ => return Ok(()),
            }
        }
        if rbuf.len() >= MAX_HEADER_BYTES {
            return Err("response head over 64 KiB".into());
        }
        scanned = rbuf.len();
        rbuf.reserve(BACKEND_READ_SIZE);
        match backend.read_buf(rbuf).await {
            Ok(0) if rbuf.is_empty() => return Err("connection closed".into()),
            Ok(0) => return Err("connection closed inside the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Write the response head in `head` and stream the body after it from
/// the backend to the client, counting the body's bytes in `sent` (the
/// data, not the chunk framing). `Ok(true)`: the body ended cleanly and
/// the backend connection can take another request.
#[inline]
pub(super) async fn relay_body<C: AsyncWrite + Unpin>(
    client: &mut C,
    backend: &mut ReadHalf<'_>,
    (rbuf, head): (&mut BytesMut, &[u8]),
    (framing, dechunk): (Framing, bool),
    idle: Duration,
    sent: &mut u64,
) -> Result<bool, String> {
    let mut head = head;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::default();
    let mut data = Vec::new();
    loop {
        let input = &rbuf[..];
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(_) => {
                let n = left.min(input.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            Framing::Chunked => {
                let n = chunks
                    .scan(input, |r| {
                        *sent += r.len() as u64;
                        if dechunk {
                            data.extend_from_slice(&input[r]);
                        }
                    })
                    .map_err(|e| format!("from the backend: {e}"))?;
                (n, chunks.done())
            }
            Framing::Close => (input.len(), false),
        };
        let body = if dechunk { &data[..] } else { &input[..take] };
        if framing != Framing::Chunked {
            *sent += body.len() as u64;
        }
        write_two(client, head, body, done, idle)
            .await
            .map_err(|e| format!("writing to the client: {e}"))?;
        head = &[];
        rbuf.advance(take);
        data.clear();
        if done {
            // Bytes past the end of the response: the connection is out
            // of step.
            return Ok(rbuf.is_empty());
        }
        if !read_body(backend, rbuf, framing, idle).await? {
            write_two(client, &[], &[], true, idle)
                .await
                .map_err(|e| format!("writing to the client: {e}"))?;
            return Ok(false);
        }
    }
}

/// Read more of a response body into `rbuf`, for either engine's relay.
/// `Ok(false)`: the backend closed the connection, which ends a body
/// framed by the close (any other body it cuts short: an error).
pub(in crate::http) async fn read_body<R: AsyncRead + Unpin>(
    backend: &mut R,
    rbuf: &mut BytesMut,
    framing: Framing,
    idle: Duration,
) -> Result<bool, String> {
    rbuf.reserve(BACKEND_READ_SIZE);
    match tokio::time::timeout(idle, backend.read_buf(rbuf)).await {
        Ok(Ok(0)) if framing == Framing::Close => Ok(false),
        Ok(Ok(0)) => Err("the backend closed the connection inside the body".into()),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(format!("reading the body from the backend: {e}")),
        Err(_) => Err(format!(
            "no body bytes from the backend for {idle:?} (idle_timeout)"
        )),
    }
}

/// Write `a` then `b`, in one system call when the socket takes them,
/// and `flush` (TLS) at the end of a message: under one timeout.
#[inline]
async fn write_two<W: AsyncWrite + Unpin>(
    w: &mut W,
    a: &[u8],
    b: &[u8],
    flush: bool,
    idle: Duration,
) -> std::io::Result<()> {
    let write = async {
        let mut slices = [IoSlice::new(a), IoSlice::new(b)];
        let mut bufs: &mut [IoSlice<'_>] = &mut slices;
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = w.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        if flush {
            w.flush().await?;
        }
        Ok(())
    };
    timeout_unless_ready(idle, write).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("stuck for {idle:?}"),
        ))
    })
}
