//! HTTP/1.x from clients, proxied by gale itself: one task per client
//! connection reads a request head, asks the pool's balancer for an
//! order, writes the request on a pooled backend connection and relays
//! the response, bytes in and bytes out, with no task, channel or header
//! map per request. (Going through hyper's server and client cost about
//! 1.5x HAProxy's CPU per request; bench/http.sh measures both.)
//! HTTP/2 streams are proxied through this engine's backend side too
//! (`super::http2`).
//!
//! Retry rules are [`crate::attempts::HttpTries`]'s, as for HTTP/2: a
//! connection that could not be made, or a request head that could not
//! be written, moves on; other failures before the response head move on
//! only for an idempotent method whose body was not sent; nothing is
//! retried once the client has seen a byte of the response.
//!
//! A WebSocket handshake (GET, `Upgrade: websocket`) is tried like any
//! request; when a backend answers `101` the attempt ends as
//! `Outcome::Switched` and `serve` joins the two connections both ways
//! (`Client::join`, the relay SMTP uses) once the exchange is over.

pub mod chunked;
pub mod head;
mod transfer;
mod wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use head::{Framing, Refusal};
pub(in crate::http) use transfer::{
    BodyAndHead, BodyError, body_and_head, read_body, read_response_head, timeout_unless_ready,
};
use transfer::{relay_body, send_body};
use wait::Next;

use super::headers::ClientOrigin;
use super::metered::Metered;
use super::proxy::{Line, Proxy, RETRY_AFTER_SECS, is_idempotent, listener_removed, loggable};
use crate::access;
use crate::attempts::{
    Attempts, Failure, FailureReason, HttpReply, HttpStep, HttpTries, QueueStep, Took,
};
use crate::buffers::Charge;
use crate::config::ListenerConfig;
use crate::config::Protocol as ListenerProtocol;
use crate::generation::ip_address;
use crate::plugin::types::{HttpRequest, Protocol, RequestContext};

/// Read size for client heads and bodies.
const READ_SIZE: usize = 16 * 1024;
/// Read size for backend responses: a head and a 16 KiB body arrive in
/// one read.
pub(crate) const BACKEND_READ_SIZE: usize = 32 * 1024;
/// After a reply that leaves request bytes unread, gale keeps reading
/// (and discarding) this long before it closes, so the close does not
/// reset the connection under the reply.
const LINGER: Duration = Duration::from_secs(1);

/// How a client connection ended.
pub enum Served {
    Closed,
    /// The client opened with the HTTP/2 preface: [`Client::into_http2`]
    /// hands the connection over.
    Http2,
}

/// A connection that opened with the HTTP/2 preface, handed over whole:
/// the task does not keep a second copy of what serving it needs.
pub struct Handover<IO> {
    pub io: IO,
    /// Bytes read so far, the preface among them.
    pub read: BytesMut,
    pub origin: ClientOrigin,
    pub proxy: Arc<Proxy>,
    pub header_timeout: Duration,
    pub shutdown: CancellationToken,
    pub buffers: crate::buffers::Buffers,
}

/// What the engine needs to know of a client stream besides reading and
/// writing it.
pub trait ClientStream {
    /// Whether the stream's protocol says goodbye in a message of its own
    /// (TLS's close_notify) that a close must send. Plain TCP's goodbye is
    /// the FIN that closing the socket sends: no `shutdown` call needed.
    const SENDS_CLOSE_NOTIFY: bool;
    /// The socket underneath (to see the client close while it waits).
    fn tcp(&self) -> &TcpStream;
}

impl ClientStream for Metered<TcpStream> {
    const SENDS_CLOSE_NOTIFY: bool = false;
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<Metered<TcpStream>> {
    const SENDS_CLOSE_NOTIFY: bool = true;
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }
}

/// One client connection speaking HTTP/1.x.
pub struct Client<IO> {
    io: IO,
    origin: ClientOrigin,
    proxy: Arc<Proxy>,
    header_timeout: Duration,
    shutdown: CancellationToken,
    /// Whether an HTTP/2 preface may open the connection (plain TCP).
    h2c: bool,
    /// Bytes from the client not used yet: a request head, its body, or
    /// the next (pipelined) request.
    buf: BytesMut,
    /// The exchange's heads and buffers, while there is one.
    work: OnDemand,
    /// Whether the current request's head is still at the start of `buf`.
    head_in_buf: bool,
    /// Whether the current request has body bytes gale has not read.
    unread_body: bool,
    /// Whether unread request bytes may remain when the connection closes.
    linger: bool,
    /// The buffers above, counted against the listener's `max_buffer_mb`.
    charge: Charge,
    /// Set by an exchange whose backend switched protocols.
    switched: Option<Box<Switch>>,
}

/// What one exchange works with: the request and response heads, the
/// backend's bytes and the head being written.
#[derive(Default)]
struct Work {
    req: head::Request,
    resp: head::Response,
    /// Bytes from the backend.
    rbuf: BytesMut,
    /// The head being written.
    out: Vec<u8>,
    /// Body bytes read from the client and sent on, and sent to it, for
    /// the access line.
    up: u64,
    down: u64,
}

/// A [`Work`] made at its first mutable use (the first parse of a
/// request head, or an answer gale writes) and dropped between requests:
/// an idle connection's task holds a pointer, not the 264 bytes of a
/// `Work` (see `an_idle_http1_connection_keeps_a_small_future`). Read
/// while absent (only `held` does: it counts no buffers), it is an empty
/// `Work`.
#[derive(Default)]
struct OnDemand(Option<Box<Work>>);

static NO_WORK: std::sync::LazyLock<Work> = std::sync::LazyLock::new(Work::default);

impl std::ops::Deref for OnDemand {
    type Target = Work;
    fn deref(&self) -> &Work {
        self.0.as_deref().unwrap_or_else(|| &NO_WORK)
    }
}

impl std::ops::DerefMut for OnDemand {
    fn deref_mut(&mut self) -> &mut Work {
        self.0.get_or_insert_default()
    }
}

/// A connection a backend switched to another protocol, waiting to be
/// joined (see `Client::join`).
struct Switch {
    backend: TcpStream,
    _in_flight: crate::attempts::InFlight,
    _open: crate::generation::UpgradedGuard,
    listener: String,
    name: String,
    idle: Duration,
    started: std::time::Instant,
}

/// How one attempt at a backend ended.
enum Outcome {
    /// A response went to the client: whether its connection stays open,
    /// and why the response was cut short, if it was.
    Answered { keep: bool, cut: Option<String> },
    /// The backend switched protocols as the client asked (`101`):
    /// nothing of its answer was sent yet.
    Switched(TcpStream),
    /// The backend answered with this gateway error, dropped to try the
    /// next backend instead of reaching the client.
    Dropped(u16),
    /// Nothing reached the client.
    Failed(Failure),
    /// The client's body stalled, broke its framing or ended early.
    ClientFailed(Option<Refusal>, String),
}

impl<IO: AsyncRead + AsyncWrite + ClientStream + Unpin> Client<IO> {
    pub fn new(
        io: IO,
        origin: ClientOrigin,
        proxy: Arc<Proxy>,
        header_timeout: Duration,
        shutdown: CancellationToken,
        h2c: bool,
        charge: Charge,
    ) -> Self {
        Client {
            io,
            origin,
            proxy,
            header_timeout,
            shutdown,
            h2c,
            // Allocated as bytes come (see `go_idle`).
            buf: BytesMut::new(),
            work: OnDemand::default(),
            head_in_buf: false,
            unread_body: false,
            linger: false,
            charge,
            switched: None,
        }
    }

    /// Serve requests until the client closes, an error closes the
    /// connection, or shutdown (after the request in flight). By
    /// reference: a future that owned the client would hold it twice, as
    /// its argument and as its local.
    pub async fn serve(&mut self) -> Served {
        let cancelled = self.shutdown.clone().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            // For the access line of a head refused as it came.
            let waiting = std::time::Instant::now();
            match self.read_head(cancelled.as_mut()).await {
                Ok(Next::Request) => {}
                Ok(Next::Closed) => break,
                Ok(Next::Http2) => return Served::Http2,
                Err(refusal) => {
                    Box::pin(self.refuse(refusal, "", waiting)).await;
                    break;
                }
            }
            self.head_in_buf = true;
            self.unread_body = self.work.req.body != Framing::Empty;
            // The response head and body will need a buffer: counted now,
            // the exact figure once the exchange is over.
            if !self.charge.buffers().has_room(BACKEND_READ_SIZE) {
                Box::pin(self.refuse(Refusal::Overloaded, "", waiting)).await;
                break;
            }
            self.charge.set(self.held() + BACKEND_READ_SIZE);
            // Boxed: the exchange's state (backend connection, body copy)
            // is large, and would otherwise sit in every idle
            // connection's task while it waits for its next request.
            let keep = Box::pin(self.exchange()).await;
            if let Some(switch) = self.switched.take() {
                Box::pin(self.join(*switch)).await;
                break;
            }
            if self.head_in_buf {
                self.buf.advance(self.work.req.len);
                self.head_in_buf = false;
            }
            // `keep` is false when the answer's head said the connection
            // closes (gale shutting down, the listener over
            // `max_buffer_mb`, ...). One that said keep-alive is kept
            // even if gale began to drain since: the client may be
            // sending its next request already, which then gets the
            // close (see `DRAIN_IDLE_GRACE`).
            if !keep {
                break;
            }
            self.go_idle();
            self.charge.set(self.held());
        }
        // Boxed, as the answers above: what they keep while they wait
        // would otherwise be reserved in every idle connection's task.
        if self.close_takes_more_than_a_drop() {
            Box::pin(self.close()).await;
        }
        Served::Closed
    }

    /// Whether the connection closes after this answer, whoever writes it:
    /// the client asked to, a body left unread would be taken for the next
    /// request, gale is shutting down, or the listener is over
    /// `max_buffer_mb`.
    fn must_close(&self) -> bool {
        !self.work.req.keep_alive
            || self.unread_body
            || self.shutdown.is_cancelled()
            || self.charge.buffers().over()
    }

    /// Bytes in this connection's buffers.
    fn held(&self) -> usize {
        self.buf.capacity() + self.work.rbuf.capacity() + self.work.out.capacity()
    }

    /// After [`Served::Http2`]: the connection, the bytes read from it,
    /// and what serving it needs.
    pub fn into_http2(self) -> Handover<IO> {
        Handover {
            io: self.io,
            read: self.buf,
            origin: self.origin,
            proxy: self.proxy,
            header_timeout: self.header_timeout,
            shutdown: self.shutdown,
            buffers: self.charge.buffers().clone(),
        }
    }

    /// Between requests: give back the buffers of the last exchange, so a
    /// connection kept alive by a browser holds no buffer while it waits,
    /// not the ~50 KiB its exchanges used. The next request allocates them
    /// again (a few allocator calls per request).
    fn go_idle(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        self.work = OnDemand::default();
    }

    /// Proxy the request whose head was just read; whether the client
    /// connection stays open.
    async fn exchange(&mut self) -> bool {
        let started = std::time::Instant::now();
        // Per request, not per connection: a kept-alive connection
        // follows reloads.
        let generation = self.proxy.current.load_full();
        let Some((l, counters)) = generation.listener(&self.proxy.name, ListenerProtocol::Http)
        else {
            let reply = listener_removed(&self.proxy.name, &generation, self.origin.addr, started);
            return self.reply(reply).await;
        };
        let pool = &generation.pools[l.pool];
        let pool_config = generation.config.pool_of(l);
        let (keepalive, retry_on) = (pool_config.keepalive_timeout, pool_config.retry_on);
        let text =
            |r: &std::ops::Range<usize>| String::from_utf8_lossy(&self.buf[r.clone()]).into_owned();
        let ctx = RequestContext {
            protocol: Protocol::Http,
            listener: l.index_in_pool,
            client_ip: ip_address(self.origin.addr.ip()),
            client_port: self.origin.addr.port(),
            http: Some(HttpRequest {
                method: text(&self.work.req.method),
                host: self.work.req.host.as_ref().map(text).unwrap_or_default(),
                path: match text(&self.work.req.target) {
                    t if t.is_empty() => "/".to_string(),
                    t => t,
                },
            }),
        };
        let decision = pool.select(&ctx);
        let Some(HttpRequest { method, host, path }) = ctx.http else {
            unreachable!("set above")
        };
        let request = (method.as_str(), host.as_str(), path.as_str());
        let log = &generation.config.log;
        let replayable = is_idempotent(&method);
        let mut attempts = Attempts::new(pool, &decision.order, l.max_attempts, counters);
        let mut tries = HttpTries::default();
        let reply = 'tried: {
            // Over the order again after a wait in the queue (every
            // backend was full).
            loop {
                while let Some(turn) = attempts.next() {
                    let backend = turn.backend;
                    // A gateway error that another backend may answer better is
                    // not passed on while one is left.
                    let more = attempts.remaining();
                    let drops = |status| HttpTries::drops(&retry_on, status, replayable, more);
                    let failure = match self.attempt(backend.address, l, keepalive, drops).await {
                        Outcome::Answered { keep, cut } => {
                            let status = self.work.resp.code;
                            match Failure::of_status(status) {
                                None => attempts.succeeded(&turn),
                                Some(failure) => attempts.answered_but_failed(&turn, failure),
                            }
                            counters.status(status);
                            let level = access::http_level(log, status >= 500);
                            // Noted only for a JSON line (see
                            // `Attempts::succeeded`); a gateway error was
                            // noted as a failure.
                            if access::json()
                                && access::enabled(level)
                                && Failure::of_status(status).is_none()
                            {
                                attempts.note_success(&turn, Took::Answered(status));
                            }
                            let mut line = self.line(l, &generation, request, started);
                            line.attempts = attempts.tried();
                            let end = cut.as_deref().unwrap_or("done");
                            line.answered(&backend.name, status, end, level);
                            return keep;
                        }
                        Outcome::Switched(stream) => {
                            attempts.succeeded(&turn);
                            counters.status(101);
                            let level = access::http_level(log, false);
                            if access::json() && access::enabled(level) {
                                attempts.note_success(&turn, Took::Answered(101));
                                let mut line = self.line(l, &generation, request, started);
                                line.backend = Some(&backend.name);
                                line.attempts = attempts.tried();
                                line.status = Some(101);
                                line.end = "switched protocols";
                                line.json(level, "http request");
                            }
                            // Joined by `serve` once this exchange's state (the
                            // generation, the head's strings) is gone: an
                            // upgraded connection may stay open for hours.
                            self.switched = Some(Box::new(Switch {
                                backend: stream,
                                // Counts against the backend's `max_sessions`
                                // while the connection is open.
                                _in_flight: turn.in_flight,
                                _open: counters.upgraded(),
                                listener: l.name.clone(),
                                name: backend.name.clone(),
                                idle: l.idle_timeout,
                                started,
                            }));
                            return false;
                        }
                        Outcome::ClientFailed(refusal, why) => {
                            let mut line = self.line(l, &generation, request, started);
                            line.attempts = attempts.tried();
                            let reply = refusal.map(|r| (r.status().0, r.text()));
                            line.client_failed(&backend.name, reply, &why);
                            if let Some(refusal) = refusal {
                                self.refuse(refusal, &why, started).await;
                            }
                            return false;
                        }
                        Outcome::Dropped(status) => {
                            let failure =
                                Failure::of_status(status).expect("only gateway errors drop");
                            attempts.answered_but_failed(&turn, failure);
                            tries.dropped(status);
                            continue;
                        }
                        Outcome::Failed(failure) => failure,
                    };
                    let step = tries.failed(&retry_on, &failure, replayable && self.head_in_buf);
                    attempts.failed(turn, failure);
                    match step {
                        HttpStep::Next => continue,
                        HttpStep::Stop => break,
                        // The backend may have acted on it: never send it again.
                        HttpStep::Reply(reply) => break 'tried reply,
                    }
                }
                match attempts
                    .queue_unless(crate::listener::hung_up(self.io.tcp(), true))
                    .await
                {
                    QueueStep::Again => {}
                    QueueStep::Refuse => break,
                    QueueStep::Gone => {
                        tracing::debug!(
                            listener = %l.name, client = %self.origin.addr,
                            method, path = loggable(&path), "http request: the client left while queued"
                        );
                        let mut line = self.line(l, &generation, request, started);
                        line.attempts = attempts.tried();
                        line.end = "left while queued";
                        line.json(access::http_level(log, false), "http request");
                        return false;
                    }
                }
            }
            tries.reply()
        };
        let mut line = self.line(l, &generation, request, started);
        line.attempts = attempts.tried();
        line.failed(reply);
        self.reply(reply).await
    }

    /// The access line of the request (`method`, `host`, `path`) begun
    /// `started` on listener `l`, with the body bytes moved so far.
    fn line<'a>(
        &self,
        l: &'a ListenerConfig,
        generation: &crate::generation::Generation,
        (method, host, path): (&'a str, &'a str, &'a str),
        started: std::time::Instant,
    ) -> Line<'a> {
        let mut line = Line::new(&l.name, generation.id, self.origin.addr, started);
        line.method = Some(method);
        line.host = Some(host);
        line.path = Some(path);
        line.up = self.work.up;
        line.down = self.work.down;
        line
    }

    /// One try at the backend at `addr`.
    async fn attempt(
        &mut self,
        addr: SocketAddr,
        l: &ListenerConfig,
        keepalive: Duration,
        drops: impl Fn(u16) -> bool,
    ) -> Outcome {
        let mut backend = match self.proxy.idle.checkout(addr, keepalive) {
            Some(stream) => stream,
            None => match crate::connect::connect(addr, l.connect_timeout).await {
                Ok(stream) => stream,
                Err(e) => return Outcome::Failed(Failure::of_connect(&e)),
            },
        };
        let w = &mut *self.work;
        head::write_request(&mut w.out, &self.buf, &w.req, &self.origin, addr);
        let head_request = &self.buf[self.work.req.method.clone()] == b"HEAD";
        let asked = (head_request, self.work.req.upgrade.is_some());
        let idle = l.idle_timeout;
        let (mut from_backend, mut to_backend) = backend.split();
        // A head cut short cannot be acted on: the next backend may have it.
        match timeout_unless_ready(idle, to_backend.write_all(&self.work.out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(format!("sending the request: {e}"), false),
            Err(_) => return failed(format!("sending the request: stuck for {idle:?}"), false),
        }

        let response = if self.work.req.body == Framing::Empty {
            let w = &mut *self.work;
            let recv = read_response_head(&mut from_backend, &mut w.rbuf, &mut w.resp, asked);
            tokio::time::timeout(l.response_timeout, recv).await
        } else {
            // From here on the request cannot go to another backend.
            self.buf.advance(self.work.req.len);
            self.head_in_buf = false;
            let w = &mut *self.work;
            let send = send_body(
                &mut self.io,
                &mut self.buf,
                &mut to_backend,
                (w.req.body, w.req.expect_continue),
                idle,
                &mut w.up,
            );
            let recv = read_response_head(&mut from_backend, &mut w.rbuf, &mut w.resp, asked);
            // An early answer goes to the client, which is then closed.
            match body_and_head(send, recv, l.response_timeout).await {
                BodyAndHead::Head(head, whole) => {
                    self.unread_body = !whole;
                    head
                }
                BodyAndHead::Client((refusal, why)) => return Outcome::ClientFailed(refusal, why),
                BodyAndHead::Backend(why) => {
                    return failed(format!("sending the body: {why}"), true);
                }
            }
        };
        match response {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return failed(format!("before a response: {why}"), true),
            Err(_) => {
                return Outcome::Failed(Failure::new(
                    FailureReason::Timeout,
                    format!("no response in {:?}", l.response_timeout),
                ));
            }
        }
        if self.work.resp.code == 101 {
            return Outcome::Switched(backend);
        }
        if self.head_in_buf && drops(self.work.resp.code) {
            // Nothing of it reached the client; its connection, holding
            // the unread body, closes.
            return Outcome::Dropped(self.work.resp.code);
        }

        // An HTTP/1.0 client cannot read chunks: it gets the data, and the
        // end of the connection marks the end of the body.
        let dechunk = self.work.req.http10 && self.work.resp.body == Framing::Chunked;
        let close = self.must_close() || dechunk || self.work.resp.body == Framing::Close;
        let w = &mut *self.work;
        head::write_response(&mut w.out, &w.rbuf, &w.resp, close, w.req.http10, dechunk);
        w.rbuf.advance(w.resp.len);
        let relayed = relay_body(
            &mut self.io,
            &mut from_backend,
            (&mut w.rbuf, &w.out),
            (w.resp.body, dechunk),
            idle,
            &mut w.down,
        )
        .await;
        match relayed {
            Ok(clean) => {
                if clean && !self.unread_body && self.work.resp.reusable {
                    self.proxy.idle.release(addr, backend, keepalive);
                }
                Outcome::Answered {
                    keep: !close,
                    cut: None,
                }
            }
            // The request's line says so (`Line::answered`).
            Err(why) => Outcome::Answered {
                keep: false,
                cut: Some(format!("response cut short: {why}")),
            },
        }
    }

    /// The backend switched protocols (a WebSocket): pass its `101` on,
    /// then join the two connections both ways (the relay SMTP sessions
    /// use, half-closes passed on) until both close or nothing moves for
    /// the listener's idle timeout. It stays on the generation it started
    /// on through reloads; a shutdown lets it run up to the drain deadline.
    async fn join(&mut self, switch: Switch) {
        let Switch {
            mut backend,
            listener,
            name,
            idle,
            started,
            ..
        } = switch;
        let w = &mut *self.work;
        head::write_response(&mut w.out, &w.rbuf, &w.resp, false, false, false);
        // What either side sent after its head is the new protocol's.
        w.out.extend_from_slice(&w.rbuf[w.resp.len..]);
        let request = std::mem::take(&mut self.buf);
        let early = &request[self.work.req.len..];
        let early_len = early.len() as u64;
        let greeted = tokio::time::timeout(idle, async {
            self.io.write_all(&self.work.out).await?;
            self.io.flush().await?;
            backend.write_all(early).await
        })
        .await;
        // Nothing of the request is kept for a connection that may stay
        // open for hours; the relay holds buffers only while a side lags.
        drop(request);
        self.head_in_buf = false;
        self.work = OnDemand::default();
        self.charge.set(0);
        if !matches!(greeted, Ok(Ok(()))) {
            return;
        }
        let outcome = crate::relay::relay(
            (&mut self.io, &mut backend),
            crate::relay::Ending::BothClosed,
            idle,
            &mut self.charge,
            &mut crate::relay::Blind,
        )
        .await;
        tracing::info!(
            listener, client = %self.origin.addr, backend = name,
            up = outcome.up + early_len, down = outcome.down,
            ms = started.elapsed().as_millis() as u64,
            end = outcome.error.as_deref().unwrap_or("closed"),
            "http upgraded connection"
        );
    }

    /// Answer with a short text of gale's own; whether the connection
    /// stays open.
    async fn reply(&mut self, reply: HttpReply) -> bool {
        self.count_status(reply.status);
        let close = self.must_close();
        let phrase = hyper::StatusCode::from_u16(reply.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let http10 = self.work.req.http10;
        head::write_local(
            &mut self.work.out,
            (reply.status, phrase),
            reply.text,
            (close, http10),
            reply.retry_after.then_some(RETRY_AFTER_SECS),
        );
        let written = self.write_out().await;
        written && !close
    }

    /// Answer a request gale cannot take, then close. `why` is empty when
    /// nothing was logged about it yet (its head was refused, after gale
    /// began `waiting` for it).
    async fn refuse(&mut self, refusal: Refusal, why: &str, waiting: std::time::Instant) {
        if why.is_empty() {
            tracing::debug!(client = %self.origin.addr, "refused: {}", refusal.text().trim_end());
            if access::json() {
                // Refused as its head came: no method or path to trust;
                // its duration is the wait for the head.
                let generation = self.proxy.current.load();
                let client = self.origin.addr;
                let mut line = Line::new(&self.proxy.name, generation.id, client, waiting);
                line.status = Some(refusal.status().0);
                line.down = refusal.text().len() as u64;
                line.end = refusal.text().trim_end();
                line.json(
                    access::http_level(&generation.config.log, true),
                    "http request refused",
                );
            }
        }
        self.linger = true;
        self.count_status(refusal.status().0);
        head::write_local(
            &mut self.work.out,
            refusal.status(),
            refusal.text(),
            (true, false),
            None,
        );
        self.write_out().await;
    }

    /// Count an error response gale wrote itself (rare: the listener's counters
    /// are looked up each time).
    fn count_status(&self, status: u16) {
        if let Some((_, counters)) = self
            .proxy
            .current
            .load()
            .listener(&self.proxy.name, ListenerProtocol::Http)
        {
            counters.status(status);
            counters.error_reply(status);
        }
    }

    async fn write_out(&mut self) -> bool {
        let write = async {
            self.io.write_all(&self.work.out).await?;
            self.io.flush().await
        };
        matches!(
            tokio::time::timeout(self.header_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Whether the client may still be sending when the connection closes.
    fn lingers(&self) -> bool {
        self.linger || self.unread_body
    }

    /// Whether closing needs more than dropping the socket (whose FIN is
    /// the goodbye of plain TCP): a TLS close_notify, or lingering.
    fn close_takes_more_than_a_drop(&self) -> bool {
        IO::SENDS_CLOSE_NOTIFY || self.lingers()
    }

    /// Close the connection; if the client may still be sending, read
    /// and drop what comes for a moment first, so that the close does not
    /// reset the connection before the client has read the answer.
    async fn close(&mut self) {
        // Lingering, the FIN goes first so the client stops sending while
        // its last bytes are drained; otherwise dropping the socket sends
        // it (one syscall less per `Connection: close` request).
        if self.close_takes_more_than_a_drop() {
            let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
        }
        if self.lingers() {
            let drain = async {
                loop {
                    self.buf.clear();
                    self.buf.reserve(READ_SIZE);
                    if !matches!(self.io.read_buf(&mut self.buf).await, Ok(n) if n > 0) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
    }
}

/// `reached`: the backend may have acted on the request.
fn failed(why: String, reached: bool) -> Outcome {
    Outcome::Failed(Failure::before_response(why, reached))
}
