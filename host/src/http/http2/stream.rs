//! One HTTP/2 stream, proxied to an HTTP/1.1 backend by the HTTP/1
//! engine's backend side: its pooled connections, head parser, chunked
//! decoder and retry rules ([`crate::attempts::HttpTries`]). A request
//! that never reached a backend goes to the next one; a request whose
//! body a backend may have acted on is never sent twice; once the
//! response head went to the client nothing is retried.
//!
//! The client may reset its stream at any moment: the exchange is then
//! dropped (its backend connection closed) rather than left to run, so
//! resetting streams cannot pile up work behind a connection's stream
//! limit (the "rapid reset" attack).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, EXPECT, RETRY_AFTER};
use http::{HeaderValue, Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::WriteHalf;

use super::message::{self, RequestBody};
use crate::access;
use crate::attempts::{
    Attempts, Failure, FailureReason, HttpReply, HttpStep, HttpTries, InFlight, QueueStep, Took,
};
use crate::config::Protocol as ListenerProtocol;
use crate::config::{BackendConfig, ListenerConfig};
use crate::generation::ip_address;
use crate::http::h1::chunked::Chunked;
use crate::http::h1::head::{self, Framing};
use crate::http::h1::{
    BodyAndHead, BodyError, body_and_head, read_body, read_response_head, timeout_unless_ready,
};
use crate::http::headers::ClientOrigin;
use crate::http::proxy::{Line, Proxy, RETRY_AFTER_SECS, is_idempotent, listener_removed};
use crate::plugin::types::{HttpRequest, Protocol, RequestContext};

/// Serve one stream until its response has been sent, or the client
/// reset it.
pub(super) async fn serve(
    proxy: Arc<Proxy>,
    origin: ClientOrigin,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    room: bool,
) {
    let started = Instant::now();
    // A stream reset in the same read as its headers (a "rapid reset"
    // flood) costs no decision and no backend request.
    if poll_fn(|cx| Poll::Ready(respond.poll_reset(cx).is_ready())).await {
        return;
    }
    // Per request, not per connection: a kept-alive connection follows
    // reloads.
    let generation = proxy.current.load_full();
    let log = &generation.config.log;
    let Some((l, counters)) = generation.listener(&proxy.name, ListenerProtocol::Http) else {
        let reply = listener_removed(&proxy.name, &generation, origin.addr, started);
        local_reply(&mut respond, reply);
        return drain(request.into_body()).await;
    };
    let (head, recv) = request.into_parts();
    let ended = recv.is_end_stream();
    if let Some(refused) = message::refusal(&head, ended, room) {
        counters.status(refused.status);
        counters.error_reply(refused.status);
        if access::json() {
            let mut line = Line::new(&l.name, generation.id, origin.addr, started);
            line.method = Some(head.method.as_str());
            let host = String::from_utf8_lossy(message::host(&head));
            line.host = Some(&host);
            line.path = head.uri.path_and_query().map(|p| p.as_str());
            line.status = Some(refused.status);
            line.down = refused.text.len() as u64;
            line.end = refused.text.trim_end();
            line.json(access::http_level(log, true), "http request refused");
        }
        local_reply(&mut respond, refused);
        return drain(recv).await;
    }
    if !ended
        && head
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // gale reads the body only to send it on: it may come now. (The
        // HTTP/1 engine says so once a backend has the head; here the
        // stream's handle to answer it is not in the tries. A request no
        // backend takes has its body read and dropped.)
        let mut proceed = http::Response::new(());
        *proceed.status_mut() = StatusCode::CONTINUE;
        let _ = respond.send_informational(proceed);
    }
    let pool = &generation.pools[l.pool];
    let pool_config = generation.config.pool_of(l);
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let host = String::from_utf8_lossy(message::host(&head)).into_owned();
    let ctx = RequestContext {
        protocol: Protocol::Http,
        listener: l.index_in_pool,
        client_ip: ip_address(origin.addr.ip()),
        client_port: origin.addr.port(),
        http: Some(HttpRequest {
            method: head.method.as_str().to_string(),
            host,
            path: target.to_string(),
        }),
    };
    let decision = pool.select(&ctx);
    let Some(HttpRequest { method, host, path }) = ctx.http else {
        unreachable!("set above")
    };
    let mut exchange = Exchange {
        proxy: &proxy,
        origin,
        body: message::request_body(&head, ended),
        head,
        target: path,
        host,
        recv,
        touched: false,
        sent_whole: ended,
        out: Vec::new(),
        up: 0,
    };
    let mut attempts = Attempts::new(pool, &decision.order, l.max_attempts, counters);
    let tries = exchange.tries(
        &mut attempts,
        l,
        pool_config.keepalive_timeout,
        &pool_config.retry_on,
    );
    let decided = tokio::select! {
        biased;
        _ = poll_fn(|cx| respond.poll_reset(cx)) => None,
        decided = tries => Some(decided),
    };
    let line = |exchange| request_line(l, &generation, &method, exchange, started);
    let Some(decided) = decided else {
        attempts.client_left();
        tracing::debug!(listener = %l.name, client = %origin.addr, "http/2 stream reset by the client");
        let mut line = line(&exchange);
        line.attempts = attempts.tried();
        line.end = "reset by the client";
        line.json(access::http_level(log, false), "http request");
        return;
    };
    let body_read = match decided {
        Decided::Answer(answer) => {
            let (status, backend) = (answer.resp.code, answer.backend);
            let (answer_id, turn_started) = (answer.id, answer.started);
            counters.status(status);
            let mut down = 0;
            let relayed = answer
                .relay(&mut respond, &proxy, exchange.sent_whole, &mut down)
                .await;
            let level = access::http_level(log, status >= 500);
            // Noted only for a JSON line (see `Attempts::succeeded`); a
            // gateway error was noted as a failure.
            if access::json() && access::enabled(level) && Failure::of_status(status).is_none() {
                attempts.note_took(answer_id, turn_started, Took::Answered(status));
            }
            let end = relayed
                .err()
                .map(|why| format!("response cut short: {why}"));
            let mut line = line(&exchange);
            line.attempts = attempts.tried();
            line.down = down;
            line.answered(
                &backend.name,
                status,
                end.as_deref().unwrap_or("done"),
                level,
            );
            exchange.sent_whole
        }
        Decided::Reply(reply) => {
            let mut line = line(&exchange);
            line.attempts = attempts.tried();
            line.failed(reply);
            counters.status(reply.status);
            counters.error_reply(reply.status);
            local_reply(&mut respond, reply);
            exchange.sent_whole
        }
        Decided::ClientFailed(reply, backend) => {
            let mut line = line(&exchange);
            line.attempts = attempts.tried();
            let answered = Some((reply.status, reply.text));
            line.client_failed(&backend.name, answered, "stalled sending its body");
            counters.status(reply.status);
            counters.error_reply(reply.status);
            local_reply(&mut respond, reply);
            true
        }
        Decided::Gone => {
            let mut line = line(&exchange);
            line.attempts = attempts.tried();
            line.end = "reset by the client";
            line.json(access::http_level(log, false), "http request");
            true
        }
    };
    if !body_read {
        drain(exchange.recv).await;
    }
}

/// The access line of `exchange`, a request of listener `l` begun
/// `started`, with its body bytes so far; what happened is for the caller
/// to add.
fn request_line<'a>(
    l: &'a ListenerConfig,
    generation: &crate::generation::Generation,
    method: &'a str,
    exchange: &'a Exchange<'_>,
    started: Instant,
) -> Line<'a> {
    let mut line = Line::new(&l.name, generation.id, exchange.origin.addr, started);
    line.method = Some(method);
    line.host = Some(&exchange.host);
    line.path = Some(&exchange.target);
    line.up = exchange.up;
    line
}

/// How much of a request body no backend took is read after the answer
/// so the client can finish sending it, and for how long; a longer one
/// is reset (`NO_ERROR`) after the answer.
const DRAIN_LIMIT: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Read and drop what is left of a request's body, as nginx discards an
/// unread body. Dropping it unread makes h2 reset the stream (`NO_ERROR`
/// once the answer has ended, RFC 9113 §8.1), which some clients (curl
/// 7.88) report as a stream error instead of the answer.
async fn drain(mut recv: RecvStream) {
    let drain = async {
        let mut left = DRAIN_LIMIT;
        while let Some(Ok(data)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(data.len());
            left = left.saturating_sub(data.len());
            if left == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// What the tries of one request came to.
enum Decided<'p> {
    /// A backend's response head, to go to the client.
    Answer(Answer<'p>),
    /// No backend answered: gale answers this.
    Reply(HttpReply),
    /// The client's body stalled on its way to this backend: gale answers
    /// this.
    ClientFailed(HttpReply, &'p BackendConfig),
    /// The client broke its stream off: nothing goes to it.
    Gone,
}

/// One request's state across its attempts.
struct Exchange<'a> {
    proxy: &'a Proxy,
    origin: ClientOrigin,
    head: http::request::Parts,
    /// Origin form.
    target: String,
    host: String,
    body: RequestBody,
    recv: RecvStream,
    /// The body started toward a backend: the request cannot go to
    /// another.
    touched: bool,
    /// The body went whole to the backend, or there was none.
    sent_whole: bool,
    /// The request head being written.
    out: Vec<u8>,
    /// Body bytes sent on to a backend, for the access line.
    up: u64,
}

/// How one attempt at a backend ended.
enum Attempt {
    /// Its response head, and the connection it came on.
    Answered(TcpStream, BytesMut, head::Response),
    /// Nothing reached the client.
    Failed(Failure),
    /// The client's body stalled or broke: answer this (or nothing, for
    /// a client that reset its stream).
    ClientFailed(Option<HttpReply>),
}

impl<'a> Exchange<'a> {
    /// Try backends in the balancer's order until one answers.
    async fn tries<'p>(
        &mut self,
        attempts: &mut Attempts<'p>,
        l: &ListenerConfig,
        keepalive: Duration,
        retry_on: &crate::config::RetryOn,
    ) -> Decided<'p> {
        let replayable = is_idempotent(self.head.method.as_str());
        let mut tries = HttpTries::default();
        // Over the order again after a wait in the queue (every backend
        // was full).
        loop {
            while let Some(turn) = attempts.next() {
                let more = attempts.remaining();
                let addr = turn.backend.address;
                let failure = match self.attempt(addr, l, keepalive).await {
                    Attempt::Answered(backend, rbuf, resp) => {
                        let status = resp.code;
                        match Failure::of_status(status) {
                            None => attempts.succeeded(&turn),
                            Some(failure) => {
                                let unsent = replayable && !self.touched;
                                attempts.answered_but_failed(&turn, failure);
                                if HttpTries::drops(retry_on, status, unsent, more) {
                                    // Dropped unread: its connection closes.
                                    tries.dropped(status);
                                    continue;
                                }
                            }
                        }
                        return Decided::Answer(Answer {
                            backend: turn.backend,
                            id: turn.id,
                            started: turn.started,
                            connection: backend,
                            keepalive,
                            idle: l.idle_timeout,
                            rbuf,
                            resp,
                            _in_flight: turn.in_flight,
                        });
                    }
                    // A reset is the client's word (debug, as resets are); a
                    // stalled body is worth a warning (`serve` writes it).
                    Attempt::ClientFailed(None) => return Decided::Gone,
                    Attempt::ClientFailed(Some(reply)) => {
                        return Decided::ClientFailed(reply, turn.backend);
                    }
                    Attempt::Failed(failure) => failure,
                };
                let step = tries.failed(retry_on, &failure, replayable && !self.touched);
                attempts.failed(turn, failure);
                match step {
                    HttpStep::Next => continue,
                    HttpStep::Stop => break,
                    // The backend may have acted on it: never send it again.
                    HttpStep::Reply(reply) => return Decided::Reply(reply),
                }
            }
            // A reset while queued ends the stream's future (see `serve`).
            if attempts.queue_unless(std::future::pending()).await != QueueStep::Again {
                break;
            }
        }
        Decided::Reply(tries.reply())
    }

    /// One try at the backend at `addr`.
    async fn attempt(
        &mut self,
        addr: SocketAddr,
        l: &ListenerConfig,
        keepalive: Duration,
    ) -> Attempt {
        let mut backend = match self.proxy.idle.checkout(addr, keepalive) {
            Some(stream) => stream,
            None => match crate::connect::connect(addr, l.connect_timeout).await {
                Ok(stream) => stream,
                Err(e) => return Attempt::Failed(Failure::of_connect(&e)),
            },
        };
        let fallback;
        let host = if self.host.is_empty() {
            fallback = addr.to_string();
            fallback.as_bytes()
        } else {
            self.host.as_bytes()
        };
        message::write_request(
            &mut self.out,
            &self.head,
            &self.target,
            host,
            self.body,
            &self.origin,
        );
        let idle = l.idle_timeout;
        let (mut from_backend, mut to_backend) = backend.split();
        // A head cut short cannot be acted on: the next backend may have it.
        match timeout_unless_ready(idle, to_backend.write_all(&self.out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(format!("sending the request: {e}"), false),
            Err(_) => return failed(format!("sending the request: stuck for {idle:?}"), false),
        }
        let mut rbuf = BytesMut::new();
        let mut resp = head::Response::default();
        let asked = (self.head.method == Method::HEAD, false);
        let response = if self.sent_whole {
            let recv = read_response_head(&mut from_backend, &mut rbuf, &mut resp, asked);
            tokio::time::timeout(l.response_timeout, recv).await
        } else {
            self.touched = true;
            let send = send_body(
                &mut self.recv,
                &mut to_backend,
                self.body,
                idle,
                &mut self.up,
            );
            let recv = read_response_head(&mut from_backend, &mut rbuf, &mut resp, asked);
            match body_and_head(send, recv, l.response_timeout).await {
                BodyAndHead::Head(head, whole) => {
                    self.sent_whole = whole;
                    head
                }
                BodyAndHead::Client(reply) => return Attempt::ClientFailed(reply),
                BodyAndHead::Backend(why) => {
                    return failed(format!("sending the body: {why}"), true);
                }
            }
        };
        match response {
            Ok(Ok(())) => Attempt::Answered(backend, rbuf, resp),
            Ok(Err(why)) => failed(format!("before a response: {why}"), true),
            Err(_) => Attempt::Failed(Failure::new(
                FailureReason::Timeout,
                format!("no response in {:?}", l.response_timeout),
            )),
        }
    }
}

/// `reached`: the backend may have acted on the request.
fn failed(why: String, reached: bool) -> Attempt {
    Attempt::Failed(Failure::before_response(why, reached))
}

/// Stream the client's request body to the backend, framed as `body`
/// says, handing h2 its flow-control window back as the bytes leave.
async fn send_body(
    recv: &mut RecvStream,
    to_backend: &mut WriteHalf<'_>,
    body: RequestBody,
    idle: Duration,
    sent: &mut u64,
) -> Result<(), BodyError<Option<HttpReply>>> {
    let chunked = body == RequestBody::Chunked;
    loop {
        let data = match tokio::time::timeout(idle, recv.data()).await {
            Ok(Some(Ok(data))) => data,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!("http/2 request body: {e}");
                return Err(BodyError::Client(None));
            }
            Err(_) => {
                return Err(BodyError::Client(Some(HttpReply {
                    status: 408,
                    text: "request body not received in time\n",
                    retry_after: false,
                })));
            }
        };
        if data.is_empty() {
            continue;
        }
        let len = data.len();
        let write = async {
            if chunked {
                let size = format!("{len:x}\r\n");
                to_backend.write_all(size.as_bytes()).await?;
                to_backend.write_all(&data).await?;
                to_backend.write_all(b"\r\n").await
            } else {
                to_backend.write_all(&data).await
            }
        };
        match timeout_unless_ready(idle, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BodyError::Backend(e.to_string())),
            Err(_) => return Err(BodyError::Backend(format!("stuck for {idle:?}"))),
        }
        let _ = recv.flow_control().release_capacity(len);
        *sent += len as u64;
    }
    if chunked {
        match timeout_unless_ready(idle, to_backend.write_all(b"0\r\n\r\n")).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(BodyError::Backend(e.to_string())),
            Err(_) => return Err(BodyError::Backend(format!("stuck for {idle:?}"))),
        }
    }
    Ok(())
}

/// A backend's response head on its way to the client, with what
/// streaming its body needs.
struct Answer<'p> {
    backend: &'p BackendConfig,
    /// The backend's index in the pool, and when its attempt began.
    id: usize,
    started: Instant,
    connection: TcpStream,
    keepalive: Duration,
    idle: Duration,
    /// The head, then whatever of the body came with it.
    rbuf: BytesMut,
    resp: head::Response,
    /// Counts against the backend's `max_sessions` until the body is done.
    _in_flight: InFlight,
}

impl Answer<'_> {
    /// Send the response head, then its body as it comes from the
    /// backend; the backend connection goes back to the pool if the
    /// exchange ended cleanly on it (`sent_whole`: the request's body
    /// went whole). The body's bytes are counted in `sent`.
    async fn relay(
        mut self,
        respond: &mut SendResponse<Bytes>,
        proxy: &Proxy,
        sent_whole: bool,
        sent: &mut u64,
    ) -> Result<(), String> {
        let head = self.rbuf.split_to(self.resp.len).freeze();
        let response = message::response(&head, &self.resp);
        drop(head);
        let ended = self.resp.body == Framing::Empty;
        let mut send = respond
            .send_response(response, ended)
            .map_err(|e| format!("sending the head: {e}"))?;
        // Bytes past the end of a response: the connection is out of step.
        let clean = if ended {
            self.rbuf.is_empty()
        } else {
            let (backend, rbuf) = (&mut self.connection, &mut self.rbuf);
            relay_body(&mut send, backend, rbuf, (self.resp.body, self.idle), sent).await?
        };
        if clean && sent_whole && self.resp.reusable {
            let addr = self.backend.address;
            proxy.idle.release(addr, self.connection, self.keepalive);
        }
        Ok(())
    }
}

/// Stream a response body from the backend (what is already in `rbuf`
/// first) to the client's stream. `Ok(true)`: the body ended cleanly
/// and the backend connection can take another request.
async fn relay_body(
    send: &mut SendStream<Bytes>,
    backend: &mut TcpStream,
    rbuf: &mut BytesMut,
    (framing, idle): (Framing, Duration),
    sent: &mut u64,
) -> Result<bool, String> {
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::default();
    loop {
        let (data, done) = match framing {
            Framing::Empty => (Bytes::new(), true),
            Framing::Length(_) => {
                let n = left.min(rbuf.len() as u64) as usize;
                left -= n as u64;
                (taken(rbuf, n), left == 0)
            }
            Framing::Chunked => {
                let mut data = BytesMut::new();
                let input = &rbuf[..];
                let n = chunks
                    .scan(input, |r| data.extend_from_slice(&input[r]))
                    .map_err(|e| format!("from the backend: {e}"))?;
                rbuf.advance(n);
                (data.freeze(), chunks.done())
            }
            Framing::Close => (taken(rbuf, rbuf.len()), false),
        };
        let len = data.len() as u64;
        send_data(send, data, done, idle).await?;
        *sent += len;
        if done {
            // Bytes past the end of the response: the connection is out
            // of step.
            return Ok(rbuf.is_empty());
        }
        let more = tokio::select! {
            biased;
            more = read_body(backend, rbuf, framing, idle) => more?,
            _ = poll_fn(|cx| send.poll_reset(cx)) => return Err("the client reset the stream".into()),
        };
        if !more {
            send_data(send, Bytes::new(), true, idle).await?;
            return Ok(false);
        }
    }
}

/// The first `n` bytes of `rbuf`, copied out: a slice of it would keep
/// the whole read buffer alive while h2 queues the slice for a client
/// that does not read (a backend writing small pieces would then pin a
/// buffer per piece), and the copy lets the buffer be reused.
fn taken(rbuf: &mut BytesMut, n: usize) -> Bytes {
    let data = Bytes::copy_from_slice(&rbuf[..n]);
    rbuf.advance(n);
    data
}

/// Send `data` on the stream (ending it if `end`), as the client's flow
/// control window allows: h2 queues what it is handed, so waiting for
/// window here is what keeps a client that reads slowly from making gale
/// hold a fast backend's whole body.
async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    idle: Duration,
) -> Result<(), String> {
    let sent = |r: Result<(), h2::Error>| r.map_err(|e| format!("writing to the client: {e}"));
    if data.is_empty() {
        return if end {
            sent(send.send_data(data, true))
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let room = match send.capacity() {
            0 => match tokio::time::timeout(idle, poll_fn(|cx| send.poll_capacity(cx))).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(format!("writing to the client: {e}")),
                Ok(None) => return Err("the client's stream closed".into()),
                Err(_) => return Err(format!("the client took no data for {idle:?}")),
            },
            room => room,
        };
        let chunk = data.split_to(room.min(data.len()));
        sent(send.send_data(chunk, end && data.is_empty()))?;
    }
    Ok(())
}

/// Answer with a short text of gale's own.
fn local_reply(respond: &mut SendResponse<Bytes>, reply: HttpReply) {
    let mut response = http::Response::new(());
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let fields = response.headers_mut();
    fields.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    fields.insert(CONTENT_LENGTH, HeaderValue::from(reply.text.len()));
    if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
    {
        fields.insert(DATE, date);
    }
    if reply.retry_after {
        fields.insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    // A few dozen bytes: h2 queues them whatever the client's window.
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from_static(reply.text.as_bytes()), true);
    }
}
