//! One SMTP session: find a backend that greets with 220 while the client
//! waits (it has received nothing yet), then join the two streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::either::Either;

use super::reply::{Reply, ReplyError, read_reply};
use super::transaction::{Event, Watch, enhanced_class};
use super::{pregreet, refusal};
use crate::access::{self, QueueIds};
use crate::attempts::{Attempts, Failure, FailureReason, QueueStep, Took};
use crate::buffers::Charge;
use crate::config::{BackendConfig, ListenerConfig, Pregreet, ProxyProtocol};
use crate::generation::{Generation, ip_address};
use crate::plugin::types::{Protocol, RequestContext};
use crate::pool::{Depth, Pool};
use crate::relay;
use crate::tls::{BackendStream, ClientStream, Summary};

/// Why a backend could not take the session.
#[derive(Debug)]
enum SetupFailure {
    Connect(crate::connect::SessionConnectError),
    BannerTimeout,
    Greeting(ReplyError),
    /// Greeted 220, but could not be told who the client is.
    Xclient(super::xclient::XclientError),
    /// Greeted with something other than 220: for the client when the
    /// backend was told who it is (PROXY, or XCLIENT's reply).
    Refused(Reply),
    /// A backend to be told the client by XCLIENT greeted gale itself
    /// with something other than 220: nothing about the client.
    RefusedBeforeXclient(Reply),
}

impl SetupFailure {
    /// As the request policy counts it. A refusal is about the client
    /// when the backend knew who the client was (`knows_client`: PROXY or
    /// XCLIENT).
    fn failure(&self, knows_client: Option<IpAddr>) -> Failure {
        let (reason, detail) = match self {
            SetupFailure::Connect(e) => return Failure::of_session_connect(e),
            SetupFailure::BannerTimeout => (FailureReason::Timeout, "no greeting (timeout)".into()),
            SetupFailure::Greeting(e) => (FailureReason::Greeting, format!("greeting: {e}")),
            SetupFailure::Xclient(e) => (FailureReason::Greeting, e.to_string()),
            SetupFailure::Refused(reply) | SetupFailure::RefusedBeforeXclient(reply) => (
                FailureReason::Greeting,
                format!("greeted {:?}", reply.first_line()),
            ),
        };
        Failure {
            reason,
            code: match self {
                SetupFailure::Refused(reply) | SetupFailure::RefusedBeforeXclient(reply) => {
                    Some(reply.code)
                }
                _ => None,
            },
            detail,
            // A refusal is the MTA's word on the client ("554 5.7.1
            // listed", "421 4.7.0 too many connections from you") unless
            // its class is 3, the mail system ("421 4.3.2 all server
            // ports busy", "554 5.3.2 not accepting network messages").
            about_client: match self {
                SetupFailure::Refused(reply) if enhanced_class(&reply.raw) != Some(3) => {
                    knows_client
                }
                _ => None,
            },
        }
    }
}

/// What the backends tried so far said about the client.
enum Verdict {
    /// Nothing tried yet.
    None,
    /// Every backend tried refused this client with a 5xx greeting while
    /// passing its probes and greeting others: the first refusal.
    Refused(Reply),
    /// Some backend could not judge (4xx, timeout, no connection, one
    /// that refuses everyone): an outage, the client gets `421`.
    Outage,
}

impl Verdict {
    /// With one more attempt; `on_client`: it was a 5xx about this client
    /// from a backend that passes its probes and greets others.
    fn and(self, attempt: SetupFailure, on_client: bool) -> Verdict {
        match (self, attempt) {
            (Verdict::None, SetupFailure::Refused(reply)) if on_client => Verdict::Refused(reply),
            (Verdict::Refused(first), SetupFailure::Refused(_)) if on_client => {
                Verdict::Refused(first)
            }
            _ => Verdict::Outage,
        }
    }
}

/// Serve one client of the generation's listener number `listener`
/// (`None`: a listener the generation no longer has, being retired).
pub async fn run(
    client: TcpStream,
    peer: SocketAddr,
    generation: Arc<Generation>,
    listener: Option<usize>,
    charge: Charge,
) {
    let Some(listener) = listener else {
        return;
    };
    let l: &ListenerConfig = &generation.config.listeners[listener];
    let (client, tls) = match &l.tls {
        None => (Either::Left(client), None),
        Some(tls) => match handshake(client, tls, l, peer).await {
            Some((client, summary)) => (Either::Right(client), Some(summary)),
            None => {
                generation.listener_counters[listener].tls_failed();
                return;
            }
        },
    };
    // One await of the session: two would each be kept in this task.
    serve(client, tls, peer, &generation, listener, charge).await
}

/// SMTPS (RFC 8314): the client's handshake, first, before any backend is
/// touched, so that a client that never finishes one costs none. It has
/// the backends' `banner_timeout`: the time a greeting may take.
async fn handshake(
    client: TcpStream,
    tls: &crate::config::TlsConfig,
    l: &ListenerConfig,
    peer: SocketAddr,
) -> Option<(Box<tokio_rustls::server::TlsStream<TcpStream>>, Summary)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    // Boxed: its state (kilobytes) would otherwise be reserved in every
    // session's task, plain ones' too.
    let handshake = Box::pin(timeout(l.banner_timeout, acceptor.accept(client)));
    let mut client = match handshake.await {
        Ok(Ok(client)) => Box::new(client),
        Ok(Err(e)) => {
            tracing::debug!(listener = %l.name, client = %peer, "TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(listener = %l.name, client = %peer, "TLS handshake timed out");
            return None;
        }
    };
    client
        .get_mut()
        .1
        .set_buffer_limit(Some(crate::tls::SEND_BUFFER));
    let summary = Summary::of(client.get_ref().1);
    Some((client, summary))
}

/// Serve a client of listener number `listener`, its TLS (if any)
/// settled as `tls` says.
async fn serve(
    mut client: ClientStream,
    tls: Option<Summary>,
    peer: SocketAddr,
    generation: &Generation,
    listener: usize,
    mut charge: Charge,
) {
    let started = Instant::now();
    let l: &ListenerConfig = &generation.config.listeners[listener];
    let pool: &Arc<Pool> = &generation.pools[l.pool];
    let ctx = RequestContext {
        protocol: Protocol::Smtp,
        listener: l.index_in_pool,
        client_ip: ip_address(peer.ip()),
        client_port: peer.port(),
        http: None,
    };
    let decision = pool.select(&ctx);
    let counters = &generation.listener_counters[listener];
    let mut attempts = Attempts::new(pool, &decision.order, l.max_attempts, counters);
    let mut verdict = Verdict::None;
    // Over the order again after a wait in the queue (every backend was
    // at its max_sessions); the client, greeted by nobody yet, waits too.
    loop {
        while let Some(turn) = attempts.next() {
            let backend = turn.backend;
            match connect_and_greet(l, backend, &client, peer, tls.as_ref()).await {
                Ok((mut upstream, greeting)) => {
                    pool.welcomed(turn.id, started, peer.ip());
                    let early = pregreet::spoke_early(&mut client).await;
                    if let Some(early) = &early {
                        let log = |action: &str| {
                            tracing::info!(
                                listener = %l.name,
                                client = %peer,
                                bytes = early.bytes,
                                sent = %early.preview,
                                after_ms = started.elapsed().as_millis() as u64,
                                action,
                                "smtp client spoke before the greeting"
                            );
                        };
                        counters.pregreet(match l.pregreet {
                            Pregreet::Reject => "rejected",
                            Pregreet::Pass => "passed",
                        });
                        if l.pregreet == Pregreet::Reject {
                            log("rejected with 554");
                            // The backend never hears of this client: it sees
                            // a close after its greeting, as from a probe.
                            drop(upstream);
                            counters.error_reply(554);
                            let reply = refusal::pregreet_reply(&l.hostname);
                            refusal::refuse(client, reply.as_bytes()).await;
                            // In text, the line above says it all.
                            attempts.note_success(&turn, Took::Greeted);
                            let line = Line::new(l, generation, peer, &tls, &attempts, started);
                            let message = "smtp session: the client spoke before the greeting";
                            line.json(tracing::Level::INFO, message, "rejected with 554");
                            return;
                        }
                        log("passed to the backend");
                    }
                    attempts.succeeded_noted(&turn, Took::Greeted);
                    counters.relayed.inc();
                    // What the backend answers to MAIL FROM and DATA is health
                    // evidence too (a full spool greets 220, then defers).
                    let (id, client_ip) = (turn.id, peer.ip());
                    let mut queue_ids = QueueIds::default();
                    let mut report = |event: Event| match event {
                        // The session's start stands in for the message's: no
                        // clock read per message.
                        Event::Accepted { queue_id } => {
                            if let Some(queue_id) = queue_id {
                                queue_ids.push(queue_id);
                            }
                            pool.record_traffic_success(id, started, Depth::Transaction)
                        }
                        Event::Deferred {
                            code,
                            detail,
                            per_client,
                        } => {
                            let failure = Failure {
                                reason: FailureReason::Deferred,
                                code: Some(code),
                                detail,
                                about_client: per_client.then_some(client_ip),
                            };
                            pool.traffic_failure(id, Duration::ZERO, &failure);
                        }
                    };
                    // Bytes read off a TLS client to look for a pregreet,
                    // passed on.
                    let taken = early.map(|e| e.taken).unwrap_or_default();
                    let outcome = join(
                        (&mut client, &mut upstream),
                        (greeting, taken),
                        l.idle_timeout,
                        &mut charge,
                        &mut report,
                    )
                    .await;
                    counters.bytes_up.inc_by(outcome.up);
                    counters.bytes_down.inc_by(outcome.down);
                    let end = outcome.error.as_deref().unwrap_or("closed");
                    let mut line = Line::new(l, generation, peer, &tls, &attempts, started);
                    line.relayed = Some(Relayed {
                        backend: &backend.name,
                        up: outcome.up,
                        down: outcome.down,
                        queue_ids: queue_ids.as_slice(),
                    });
                    line.write(tracing::Level::INFO, "smtp session", end);
                    return;
                }
                Err(attempt) => {
                    let knows_client = (backend.proxy_protocol != ProxyProtocol::None
                        || backend.xclient)
                        .then(|| peer.ip());
                    // Asked before the failure counts: it may take the
                    // backend out.
                    let vouched =
                        knows_client.is_some_and(|ip| pool.vouches_for_refusal(turn.id, ip));
                    let failure = attempt.failure(knows_client);
                    // A 5xx about this client from a backend that greets others.
                    let verdict_on_client = vouched
                        && failure.about_client.is_some()
                        && matches!(&attempt, SetupFailure::Refused(r) if r.code >= 500);
                    if verdict_on_client {
                        // It greets others: a refusal of this one is no
                        // evidence against it (a spam wave of listed senders
                        // must not eject a working MTA).
                        attempts.refused_client(turn, failure);
                    } else {
                        attempts.failed(turn, failure);
                    }
                    verdict = verdict.and(attempt, verdict_on_client);
                }
            }
        }
        match attempts
            .queue_unless(crate::listener::hung_up(crate::tls::socket(&client), true))
            .await
        {
            QueueStep::Again => continue,
            QueueStep::Refuse => break,
            QueueStep::Gone => {
                let tried = attempts.tried();
                crate::listener::log_left_queue("smtp", &l.name, peer, tried, started);
                let line = Line::new(l, generation, peer, &tls, &attempts, started);
                line.json(
                    tracing::Level::INFO,
                    "the client left while queued",
                    "left while queued",
                );
                return;
            }
        }
    }
    if let Verdict::Refused(reply) = verdict {
        // The MTAs agree this client is not welcome (a listed sender, say):
        // their word, so that it stops retrying, not a 421 that invites it
        // back.
        counters.refused.inc();
        let sent = refusal::refuse(client, &reply.raw).await;
        Line::new(l, generation, peer, &tls, &attempts, started).write(
            tracing::Level::INFO,
            "smtp session: the backends refused this client",
            if sent {
                "refused by the backends"
            } else {
                "refusal not delivered"
            },
        );
        return;
    }
    counters.deferred.inc();
    counters.replied_421.inc();
    let sent = refusal::refuse(client, refusal::unavailable_reply(&l.hostname).as_bytes()).await;
    Line::new(l, generation, peer, &tls, &attempts, started).write(
        tracing::Level::WARN,
        "smtp session: no backend could take it",
        if sent {
            "deferred with 421"
        } else {
            "421 not delivered"
        },
    );
}

/// A session's last line: its access record in JSON, in text the line
/// it has always had.
struct Line<'a> {
    l: &'a ListenerConfig,
    generation: u64,
    peer: SocketAddr,
    /// An SMTPS client's TLS version.
    tls: Option<&'static str>,
    attempts: &'a Attempts<'a>,
    started: Instant,
    /// Set when a backend took the session.
    relayed: Option<Relayed<'a>>,
}

/// What a session a backend took adds to its line.
struct Relayed<'a> {
    backend: &'a str,
    up: u64,
    down: u64,
    queue_ids: &'a [Box<str>],
}

impl<'a> Line<'a> {
    fn new(
        l: &'a ListenerConfig,
        generation: &Generation,
        peer: SocketAddr,
        tls: &Option<Summary>,
        attempts: &'a Attempts<'a>,
        started: Instant,
    ) -> Self {
        Line {
            l,
            generation: generation.id,
            peer,
            tls: tls.as_ref().map(|t| t.version),
            attempts,
            started,
            relayed: None,
        }
    }

    /// Write the line, `message` at `level`, the session ended as `end`
    /// says.
    fn write(&self, level: tracing::Level, message: &str, end: &str) {
        if access::json() {
            return self.json(level, message, end);
        }
        let duration_ms = self.started.elapsed().as_millis() as u64;
        match &self.relayed {
            Some(r) => access::event_at!(
                level,
                listener = %self.l.name,
                generation = self.generation,
                client = %self.peer,
                backend = %r.backend,
                tls = %self.tls.unwrap_or("no"),
                tried = %self.attempts.tried(),
                bytes_up = r.up,
                bytes_down = r.down,
                duration_ms,
                end = %end,
                "{message}"
            ),
            // `end` quoted, as these lines always had it.
            None => access::event_at!(
                level,
                listener = %self.l.name,
                generation = self.generation,
                client = %self.peer,
                tried = %self.attempts.tried(),
                duration_ms,
                end,
                "{message}"
            ),
        }
    }

    /// The access record, in JSON only (in text a line of its own says
    /// it).
    fn json(&self, level: tracing::Level, message: &str, end: &str) {
        if !access::json() {
            return;
        }
        let r = self.relayed.as_ref();
        let record = access::Smtp {
            common: access::Common {
                kind: access::Kind::Smtp,
                client: self.peer,
                listener: &self.l.name,
                generation: self.generation,
                backend: r.map(|r| r.backend),
                attempts: self.attempts.tried(),
                bytes_up: r.map_or(0, |r| r.up),
                bytes_down: r.map_or(0, |r| r.down),
                duration_ms: self.started.elapsed().as_millis() as u64,
                end,
            },
            tls: self.tls,
            queue_ids: r.map_or(&[], |r| r.queue_ids),
        };
        access::emit(level, message, &record);
    }
}

/// A connection to `backend` that has greeted client `peer` with 220:
/// the greeting, after the PROXY header or XCLIENT the backend wants.
async fn connect_and_greet(
    l: &ListenerConfig,
    backend: &BackendConfig,
    client: &ClientStream,
    peer: SocketAddr,
    tls: Option<&Summary>,
) -> Result<(BackendStream, Reply), SetupFailure> {
    let mut upstream = crate::connect::connect_for_session(
        backend,
        l.connect_timeout,
        crate::tls::socket(client),
        peer,
        tls,
    )
    .await
    .map_err(SetupFailure::Connect)?;
    let mut greeting = match timeout(l.banner_timeout, read_reply(&mut upstream)).await {
        Err(_) => return Err(SetupFailure::BannerTimeout),
        Ok(Err(e)) => return Err(SetupFailure::Greeting(e)),
        Ok(Ok(r)) => r,
    };
    if backend.xclient {
        if greeting.code != 220 {
            return Err(SetupFailure::RefusedBeforeXclient(greeting));
        }
        greeting = super::xclient::introduce(&mut upstream, &l.hostname, peer, l.banner_timeout)
            .await
            .map_err(SetupFailure::Xclient)?;
    }
    if greeting.code != 220 {
        return Err(SetupFailure::Refused(greeting));
    }
    Ok((upstream, greeting))
}

/// Forward the greeting (and `taken`, what the client sent before it
/// that was read off its TLS, to the backend), then relay both ways until
/// both sides close (or the MTA hangs up after answering the client's
/// QUIT: see `relay::Ending::BackendClosed`) or nothing moves for `idle`.
async fn join(
    (client, upstream): (&mut ClientStream, &mut BackendStream),
    (greeting, taken): (Reply, Vec<u8>),
    idle: Duration,
    charge: &mut Charge,
    report: &mut (dyn FnMut(Event) + Send),
) -> relay::Relayed {
    let greeted = async {
        send(client, &greeting.raw, idle, "client").await?;
        send(client, &greeting.rest, idle, "client").await?;
        send(upstream, &taken, idle, "backend").await
    };
    if let Err(e) = greeted.await {
        return relay::Relayed {
            up: 0,
            down: 0,
            error: Some(e),
        };
    }
    let sent = (greeting.raw.len() + greeting.rest.len()) as u64;
    // Not kept for a session that may stay open for minutes.
    drop(greeting);
    let mut watching = Watching {
        watch: Watch::default(),
        report,
    };
    relay::Observer::client(&mut watching, &taken);
    let taken_bytes = taken.len() as u64;
    // Not kept for the session either.
    drop(taken);
    let mut outcome = relay::relay(
        (client, upstream),
        relay::Ending::BackendClosed,
        idle,
        charge,
        &mut watching,
    )
    .await;
    outcome.down += sent;
    outcome.up += taken_bytes;
    outcome
}

/// The transaction watch over a relay, and where its events go.
struct Watching<'a> {
    watch: Watch,
    report: &'a mut (dyn FnMut(Event) + Send),
}

impl relay::Observer for Watching<'_> {
    fn is_on(&self) -> bool {
        self.watch.is_on()
    }

    fn client(&mut self, data: &[u8]) {
        self.watch.client(data);
    }

    fn backend(&mut self, data: &[u8]) {
        self.watch.backend(data, &mut *self.report);
    }

    fn said_goodbye(&self) -> bool {
        self.watch.said_goodbye()
    }
}

/// Write all of `data` to `peer`. A peer that stops reading must not hold
/// the session past the idle timeout either.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    idle: Duration,
    peer: &str,
) -> Result<(), String> {
    // Flushed: a TLS stream may keep what it took in its own buffer.
    let written = async {
        w.write_all(data).await?;
        w.flush().await
    };
    match timeout(idle, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{peer} write: {e}")),
        Err(_) => Err(format!("{peer} stopped reading (idle timeout)")),
    }
}
