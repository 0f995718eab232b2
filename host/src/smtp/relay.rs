//! Joining a client and a backend: copy both ways until both sides have
//! closed, pass each half-close on, and end a session that moves nothing
//! for the idle timeout.
//!
//! One hand-written poll loop instead of `select!` over per-direction
//! futures: no future, timer or clock read per forwarded command. An SMTP
//! session is a long series of tiny reads and writes, so the per-step
//! overhead is what the proxy's CPU per message is made of.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How a relay ended, with the bytes moved each way.
pub struct Outcome {
    /// Client to backend.
    pub up: u64,
    /// Backend to client.
    pub down: u64,
    /// `None` when both sides closed; otherwise why the relay gave up (the
    /// first write that failed, or the idle timeout).
    pub error: Option<String>,
}

/// The idle timer checks for progress this many times per idle timeout, so
/// a quiet session ends between `idle` and `idle * (CHECKS + 1) / CHECKS`
/// after its last byte, and a busy one costs no timer work per byte.
const CHECKS: u32 = 8;

/// Copy `client` <-> `upstream` with `buffer` bytes per direction.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    buffer: usize,
    idle: Duration,
) -> Outcome {
    let mut up = Direction::new(buffer, "backend");
    let mut down = Direction::new(buffer, "client");
    // Timers have millisecond resolution.
    let check_every = (idle / CHECKS).max(Duration::from_millis(1));
    let timer = tokio::time::sleep(check_every);
    tokio::pin!(timer);
    let mut quiet_checks = 0u32;
    let mut first_error: Option<String> = None;
    let mut backend_first = false;
    let error = poll_fn(|cx| {
        let mut moved = false;
        // Alternate which side goes first, so a client streaming a large
        // DATA cannot spend the task's whole I/O budget on every poll
        // while the backend's replies wait.
        backend_first = !backend_first;
        let mut step = |d: &mut Direction, from: &mut TcpStream, to: &mut TcpStream| {
            match d.poll(cx, from, to, &mut moved) {
                // The side written to is gone. The other direction still
                // runs: the backend's last reply (a 421 or 554 before it
                // hung up) must reach the client.
                Poll::Ready(Err(e)) => {
                    first_error.get_or_insert(e);
                    d.finished = true;
                    true
                }
                p => p.is_ready(),
            }
        };
        let (up_done, down_done) = if backend_first {
            let down_done = step(&mut down, upstream, client);
            (step(&mut up, client, upstream), down_done)
        } else {
            let up_done = step(&mut up, client, upstream);
            (up_done, step(&mut down, upstream, client))
        };
        if up_done && down_done {
            return Poll::Ready(first_error.take());
        }
        if moved {
            quiet_checks = 0;
        }
        while timer.as_mut().poll(cx).is_ready() {
            quiet_checks += 1;
            if quiet_checks > CHECKS {
                if let Some(e) = first_error.take() {
                    return Poll::Ready(Some(e));
                }
                let stuck = [&up, &down].into_iter().find(|d| d.has_pending());
                return Poll::Ready(Some(match stuck {
                    Some(d) => format!("{} stopped reading (idle timeout)", d.writer),
                    None => "idle timeout".to_string(),
                }));
            }
            let next = tokio::time::Instant::now() + check_every;
            timer.as_mut().reset(next);
        }
        Poll::Pending
    })
    .await;
    Outcome {
        up: up.bytes,
        down: down.bytes,
        error,
    }
}

/// One direction of the relay.
struct Direction {
    buf: Box<[u8]>,
    /// `buf[pos..cap]` has been read and not yet written.
    pos: usize,
    cap: usize,
    read_done: bool,
    /// The close has been passed on: nothing more to do.
    finished: bool,
    bytes: u64,
    /// The side written to, for error messages.
    writer: &'static str,
}

impl Direction {
    fn new(size: usize, writer: &'static str) -> Self {
        Direction {
            buf: vec![0; size].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            finished: false,
            bytes: 0,
            writer,
        }
    }

    fn has_pending(&self) -> bool {
        self.pos < self.cap
    }

    /// Move everything `from` has to offer into `to`. Ready(Ok) once `from`
    /// has closed (or failed: a reset reads as a close) and the close has
    /// been passed on; Ready(Err) when writing to `to` fails.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        moved: &mut bool,
    ) -> Poll<Result<(), String>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.has_pending() {
                let chunk = &self.buf[self.pos..self.cap];
                match ready!(Pin::new(&mut *to).poll_write(cx, chunk)) {
                    Ok(0) => {
                        return Poll::Ready(Err(format!("{} write: wrote 0 bytes", self.writer)));
                    }
                    Ok(n) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        *moved = true;
                    }
                    Err(e) => return Poll::Ready(Err(format!("{} write: {e}", self.writer))),
                }
            }
            if self.read_done {
                // The other side reads nothing more once this one closed;
                // if it has gone already, there is nothing to tell it.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            match ready!(Pin::new(&mut *from).poll_read(cx, &mut rb)) {
                Ok(()) if rb.filled().is_empty() => self.read_done = true,
                Ok(()) => {
                    self.cap = rb.filled().len();
                    self.pos = 0;
                }
                Err(_) => self.read_done = true,
            }
        }
    }
}
