//! Joining a client and a backend: copy both ways until both sides have
//! closed, pass each half-close on (an SMTP session also ends when the MTA
//! hangs up after the client's QUIT: [`Ending`]), and end a session that
//! moves nothing for the idle timeout. SMTP sessions after the greeting
//! and HTTP/1.1 connections after a `101 Switching Protocols` (WebSocket)
//! both end here.
//!
//! One hand-written poll loop instead of `select!` over per-direction
//! futures: no future, timer or clock read per forwarded command. An SMTP
//! session is a long series of tiny reads and writes, so the per-step
//! overhead is what the proxy's CPU per message is made of.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers::Charge;

/// Sees every byte relayed, as it is read (SMTP's transaction watch).
pub trait Observer {
    /// Whether it still wants bytes; once off, it is never called again.
    fn is_on(&self) -> bool;
    /// Bytes the client sent on to the backend.
    fn client(&mut self, data: &[u8]);
    /// Bytes the backend sent on to the client.
    fn backend(&mut self, data: &[u8]);
    /// Whether the protocol has ended the conversation, so that neither
    /// side will send more (SMTP: the client's QUIT answered `221`).
    fn said_goodbye(&self) -> bool {
        false
    }
}

/// Looks at nothing: a relay of opaque bytes.
pub struct Blind;

impl Observer for Blind {
    fn is_on(&self) -> bool {
        false
    }
    fn client(&mut self, _: &[u8]) {}
    fn backend(&mut self, _: &[u8]) {}
}

/// How a relay ended, with the bytes moved each way.
pub struct Relayed {
    /// Client to backend.
    pub up: u64,
    /// Backend to client.
    pub down: u64,
    /// `None` when the relay ended as its [`Ending`] says; otherwise why it
    /// gave up (the first write that failed, or the idle timeout).
    pub error: Option<String>,
}

/// When a relay is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Each side's close is passed on to the other (a half-close stays a
    /// half-close), and the relay ends once both sides have closed.
    BothClosed,
    /// When the backend hangs up after the observer saw the conversation
    /// end ([`Observer::said_goodbye`]: an SMTP client's QUIT answered),
    /// and all it sent has reached the client, the relay ends and the
    /// client's connection is closed with it: the client sends nothing
    /// after its goodbye, so its own close finds the FIN gale's close sent,
    /// and no reset. That spares the shutdown, the wait for the client's
    /// close and its read: a wake-up and three syscalls per session. Any
    /// other hang-up (a 421, after STARTTLS, while client bytes wait to be
    /// written) is passed on and waited out as with [`Ending::BothClosed`].
    BackendClosed,
}

/// The idle timer checks for progress this many times per idle timeout, so
/// a quiet session ends between `idle` and `idle * (CHECKS + 1) / CHECKS`
/// after its last byte, and a busy one costs no timer work per byte.
const CHECKS: u32 = 8;

/// Copy `client` <-> `upstream` until `ending` says the relay is over, or
/// nothing moved for `idle`; what the relay holds for a side that lags is
/// counted in `charge`. While `observer` is on it sees every byte
/// forwarded.
pub async fn relay<C, U, O>(
    (client, upstream): (&mut C, &mut U),
    ending: Ending,
    idle: Duration,
    charge: &mut Charge,
    observer: &mut O,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    O: Observer,
{
    let mut up = Direction::new("backend", true);
    let mut down = Direction::new("client", false);
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
        // The two directions have their reader and writer types swapped,
        // so one closure cannot step both.
        //
        // A side's close is passed on as a shutdown, unless the side it
        // would go to has closed its own half already (the relay ends once
        // both have, and closing the socket sends the FIN), or, ending with
        // the backend, the client's socket is about to be closed after its
        // goodbye. The flags are read just before each direction is
        // stepped.
        macro_rules! step {
            ($direction:ident, $from:expr, $to:expr, $to_closed:expr, $may_close:expr) => {
                $direction.step(
                    cx,
                    ($from, $to),
                    ($to_closed, $may_close),
                    &mut moved,
                    observer,
                    &mut first_error,
                )
            };
        }
        let may_close = |up: &Direction| ending == Ending::BackendClosed && !up.has_pending();
        let (up_done, down_done) = if backend_first {
            let down_done = step!(down, upstream, client, up.read_done, may_close(&up));
            (
                step!(up, client, upstream, down.read_done, false),
                down_done,
            )
        } else {
            let up_done = step!(up, client, upstream, down.read_done, false);
            let down_done = step!(down, upstream, client, up.read_done, may_close(&up));
            (up_done, down_done)
        };
        charge.set(up.pending.capacity() + down.pending.capacity());
        if up_done && down_done {
            return Poll::Ready(first_error.take());
        }
        if ending == Ending::BackendClosed
            && down_done
            && !up.has_pending()
            && observer.said_goodbye()
        {
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
                // Bytes a TLS stream took and could not send count too.
                let stuck = [&up, &down]
                    .into_iter()
                    .find(|d| d.has_pending() || d.unflushed);
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
    Relayed {
        up: up.bytes,
        down: down.bytes,
        error,
    }
}

/// Bytes read at once. Every relay on a worker thread reads into that
/// thread's one scratch buffer and writes at once to the other side; a
/// direction holds a buffer of its own only while that side lags behind.
/// An idle session (and SMTP sessions are idle most of the time, waiting
/// on the client or the MTA) then holds no relay buffer at all.
const READ_SIZE: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// One direction of the relay.
struct Direction {
    /// Read, not yet taken by the writer: `pending[pos..]`. Empty (and
    /// unallocated) unless the last write fell short.
    pending: Vec<u8>,
    pos: usize,
    read_done: bool,
    /// The close has been passed on: nothing more to do.
    finished: bool,
    /// Written since the writer was last flushed. A TLS stream takes bytes
    /// into its own buffer even when the socket is full, and sends them
    /// only when written to again or flushed: without a flush the end of
    /// a message could wait there for the client's next command. (A flush
    /// of a plain socket does nothing.)
    unflushed: bool,
    bytes: u64,
    /// The side written to, for error messages.
    writer: &'static str,
    /// Client to backend (what the observer sees as the client's).
    from_client: bool,
}

impl Direction {
    fn new(writer: &'static str, from_client: bool) -> Self {
        Direction {
            pending: Vec::new(),
            pos: 0,
            read_done: false,
            finished: false,
            unflushed: false,
            bytes: 0,
            writer,
            from_client,
        }
    }

    fn has_pending(&self) -> bool {
        self.pos < self.pending.len()
    }

    /// Write as much of `data` to `to` as it takes now: the count, or the
    /// error that ends this direction.
    fn write_now<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
        data: &[u8],
        moved: &mut bool,
    ) -> Result<usize, String> {
        let mut written = 0;
        while written < data.len() {
            match Pin::new(&mut *to).poll_write(cx, &data[written..]) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => return Err(format!("{} write: wrote 0 bytes", self.writer)),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.bytes += n as u64;
                    self.unflushed = true;
                    *moved = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("{} write: {e}", self.writer)),
            }
        }
        Ok(written)
    }

    /// [`Direction::poll`]: whether this direction is done. When the side
    /// written to is gone, it is done and the error kept; the other
    /// direction still runs: the backend's last reply (a 421 or 554 before
    /// it hung up) must reach the client.
    fn step<R, W, O>(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&mut R, &mut W),
        closing: (bool, bool),
        moved: &mut bool,
        observer: &mut O,
        first_error: &mut Option<String>,
    ) -> bool
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        O: Observer,
    {
        match self.poll(cx, (from, to), closing, moved, observer) {
            Poll::Ready(Err(e)) => {
                first_error.get_or_insert(e);
                self.finished = true;
                true
            }
            p => p.is_ready(),
        }
    }

    /// Move everything `from` has to offer into `to`. Ready(Ok) once `from`
    /// has closed (or failed: a reset reads as a close) and the close has
    /// been passed on: not when `to_closed` (`to` has closed its side
    /// too), nor when `may_close` and the observer saw the goodbye (the
    /// relay ends and `to` is closed); Ready(Err) when writing to `to`
    /// fails.
    fn poll<R, W, O>(
        &mut self,
        cx: &mut Context<'_>,
        (from, to): (&mut R, &mut W),
        (to_closed, may_close): (bool, bool),
        moved: &mut bool,
        observer: &mut O,
    ) -> Poll<Result<(), String>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        O: Observer,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.has_pending() {
                let pending = std::mem::take(&mut self.pending);
                let written = self.write_now(cx, to, &pending[self.pos..], moved);
                self.pending = pending;
                self.pos += written?;
                if self.has_pending() {
                    return Poll::Pending;
                }
                // Caught up: the buffer goes until the writer lags again.
                self.pending = Vec::new();
                self.pos = 0;
            }
            if self.unflushed {
                // Not read further until what was written has gone out.
                match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(format!("{} write: {e}", self.writer)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.read_done {
                // The other side reads nothing more once this one closed;
                // if it has gone already, there is nothing to tell it.
                let left_to_close = to_closed || (may_close && observer.said_goodbye());
                if !left_to_close {
                    let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                }
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            let step: Poll<Result<(), String>> = SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                    Poll::Ready(_) => {
                        self.read_done = true;
                        return Poll::Ready(Ok(()));
                    }
                }
                let read = rb.filled();
                if observer.is_on() {
                    // Seen as read: what is read is forwarded, now or later.
                    if self.from_client {
                        observer.client(read);
                    } else {
                        observer.backend(read);
                    }
                }
                let written = self.write_now(cx, to, read, moved)?;
                if written < read.len() {
                    self.pending = read[written..].to_vec();
                }
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Two connected sockets: (gale's end, the peer's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (accepted, peer) = tokio::join!(
            listener.accept(),
            TcpStream::connect(listener.local_addr().unwrap())
        );
        (accepted.unwrap().0, peer.unwrap())
    }

    /// An observer that has (or has not) seen the conversation end.
    struct Goodbye(bool);

    impl Observer for Goodbye {
        fn is_on(&self) -> bool {
            false
        }
        fn client(&mut self, _: &[u8]) {}
        fn backend(&mut self, _: &[u8]) {}
        fn said_goodbye(&self) -> bool {
            self.0
        }
    }

    /// A backend that says its last words and hangs up, and a client that
    /// has not closed: how the relay ends, what the client reads, and
    /// whether the relay was over before the client closed.
    async fn backend_hangs_up(ending: Ending, goodbye: bool) -> (Relayed, Vec<u8>, bool) {
        let over = std::sync::atomic::AtomicBool::new(false);
        let ((mut client, mut client_peer), (mut upstream, mut backend)) =
            (pair().await, pair().await);
        backend.write_all(b"221 bye\r\n").await.unwrap();
        drop(backend);
        let metrics = prometheus_client::metrics::gauge::Gauge::default();
        let mut charge = crate::buffers::Buffers::new(metrics).charge();
        let mut observer = Goodbye(goodbye);
        let relaying = async {
            let relayed = relay(
                (&mut client, &mut upstream),
                ending,
                Duration::from_secs(5),
                &mut charge,
                &mut observer,
            )
            .await;
            over.store(true, std::sync::atomic::Ordering::SeqCst);
            // As a session does once its relay is over.
            drop((client, upstream));
            relayed
        };
        let reading = async {
            let mut got = Vec::new();
            client_peer.read_to_end(&mut got).await.unwrap();
            let over_first = over.load(std::sync::atomic::Ordering::SeqCst);
            // Only now does the client close its side.
            drop(client_peer);
            (got, over_first)
        };
        let (relayed, (got, over_first)) = tokio::join!(relaying, reading);
        (relayed, got, over_first)
    }

    #[tokio::test]
    async fn an_smtp_relay_ends_when_the_mta_hangs_up_after_the_goodbye() {
        // The client gets the last reply and a clean close (a reset would
        // fail `read_to_end`), without having to close first.
        let (relayed, got, over_first) = backend_hangs_up(Ending::BackendClosed, true).await;
        assert!(over_first);
        assert_eq!(got, b"221 bye\r\n");
        assert_eq!(relayed.error, None);
        assert_eq!((relayed.up, relayed.down), (0, 9));
    }

    #[tokio::test]
    async fn any_other_hang_up_is_passed_on_and_the_client_waited_for() {
        // An MTA that hangs up without the goodbye (a 421, or after
        // STARTTLS): the client may still be sending, so it gets the FIN
        // and the relay waits for its own close, as with both-closed.
        for (ending, goodbye) in [
            (Ending::BackendClosed, false),
            (Ending::BothClosed, false),
            (Ending::BothClosed, true),
        ] {
            let (relayed, got, over_first) = backend_hangs_up(ending, goodbye).await;
            assert!(!over_first, "{ending:?}, goodbye {goodbye}");
            assert_eq!(got, b"221 bye\r\n");
            assert_eq!(relayed.error, None);
        }
    }

    #[tokio::test]
    async fn what_a_buffering_writer_took_is_flushed_without_waiting_for_more() {
        // A TLS stream takes bytes into its own buffer even when its socket
        // is full; a BufWriter stands in for it: without a flush the bytes
        // would wait there until the client wrote again.
        let ((mut client, mut client_peer), (upstream, mut backend)) = (pair().await, pair().await);
        let mut upstream = tokio::io::BufWriter::new(upstream);
        let metrics = prometheus_client::metrics::gauge::Gauge::default();
        let mut charge = crate::buffers::Buffers::new(metrics).charge();
        let mut blind = Blind;
        let relaying = relay(
            (&mut client, &mut upstream),
            Ending::BothClosed,
            Duration::from_secs(30),
            &mut charge,
            &mut blind,
        );
        let talking = async {
            client_peer.write_all(b"DATA\r\n").await.unwrap();
            let mut got = [0u8; 6];
            // The client sends nothing more until it has been answered.
            tokio::time::timeout(Duration::from_secs(5), backend.read_exact(&mut got))
                .await
                .expect("the bytes stayed in the writer's buffer")
                .unwrap();
            drop((client_peer, backend));
            got
        };
        let (_, got) = tokio::join!(relaying, talking);
        assert_eq!(&got, b"DATA\r\n");
    }
}
