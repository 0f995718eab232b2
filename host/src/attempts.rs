//! Trying backends in the balancer's order: the one request policy that
//! SMTP sessions, HTTP/1 and HTTP/2 requests share.
//!
//! The protocol code makes each attempt (connect, greet, send, read) and
//! says how it ended; this module does everything around it that must not
//! differ between protocols: at most `max_attempts` backends, a backend at
//! `max_sessions` is skipped (and counted as `full`), attempts after the
//! first count as retries, every failed attempt is counted with one typed
//! [`FailureReason`] and reported to the pool's health rules, a success
//! ends the backend's failure run, and the `tried=` log line says what
//! happened at each backend.
//!
//! An SMTP client has received nothing until a backend greets, so every
//! failure moves on. For HTTP, [`HttpTries`] holds the rules both engines
//! follow: what moves a request on (the pool's `retry_on`; a request that
//! may have been acted on is never replayed) and what the client gets
//! when no backend answered.

use std::fmt::Write as _;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{BackendConfig, RetryOn};
use crate::generation::ListenerCounters;
use crate::plugin::LiveCounters;
use crate::pool::{Depth, Pool};
use crate::queue::Place;

/// Why an attempt at a backend failed: the `reason` label of
/// `gale_backend_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// At its `max_sessions`: not tried.
    Full,
    /// No connection (refused, unreachable, reset while connecting).
    Connect,
    /// No connection, greeting or response in time.
    Timeout,
    /// SMTP: a greeting other than 220, or not SMTP at all.
    Greeting,
    /// HTTP: the exchange failed before a response.
    Exchange,
    /// HTTP: a gateway error (502, 503, 504) from the backend.
    Status,
    /// SMTP: greeted 220, then deferred a transaction for its own reasons
    /// (a `4.3` reply to MAIL FROM or DATA, a `421`).
    Deferred,
    /// A `tls = true` backend: no TLS session (a handshake that failed or
    /// timed out, a certificate refused).
    Tls,
}

impl FailureReason {
    pub const ALL: [FailureReason; 8] = [
        FailureReason::Connect,
        FailureReason::Timeout,
        FailureReason::Greeting,
        FailureReason::Full,
        FailureReason::Exchange,
        FailureReason::Status,
        FailureReason::Deferred,
        FailureReason::Tls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Full => "full",
            FailureReason::Connect => "connect",
            FailureReason::Timeout => "timeout",
            FailureReason::Greeting => "greeting",
            FailureReason::Exchange => "exchange",
            FailureReason::Status => "status",
            FailureReason::Deferred => "deferred",
            FailureReason::Tls => "tls",
        }
    }
}

/// How one attempt failed, as the protocol saw it.
#[derive(Debug)]
pub struct Failure {
    pub reason: FailureReason,
    /// The reply code read, if any (an SMTP greeting's code).
    pub code: Option<u16>,
    /// For the `tried=` log and the backend's timeline.
    pub detail: String,
    /// The client this failure is about, when the backend knew who the
    /// client was and refused it (a greeting refusal behind PROXY): such
    /// a failure counts once per client in a failure run.
    pub about_client: Option<IpAddr>,
}

impl Failure {
    /// An HTTP response that says the backend is failing (502, 503, 504:
    /// the backend or what stands behind it), if `status` is one.
    pub fn of_status(status: u16) -> Option<Failure> {
        (502..=504).contains(&status).then(|| Failure {
            reason: FailureReason::Status,
            code: Some(status),
            detail: format!("answered {status}"),
            about_client: None,
        })
    }

    /// No connection was made, refused or timed out: `connect` whichever
    /// protocol asked. Not `timeout`, which is a backend that took too
    /// long after it was connected: a connect that timed out reached
    /// nothing, so even a POST goes on to the next backend.
    pub fn of_connect(error: &crate::connect::ConnectError) -> Failure {
        Failure::new(FailureReason::Connect, format!("connect: {error}"))
    }

    /// A session's connection that was not made: `connect` (a PROXY
    /// header the backend would not take reached nothing either).
    pub fn of_session_connect(error: &crate::connect::SessionConnectError) -> Failure {
        match error {
            crate::connect::SessionConnectError::Connect(e) => Failure::of_connect(e),
            crate::connect::SessionConnectError::ProxyHeader(e) => {
                Failure::new(FailureReason::Connect, format!("PROXY header: {e}"))
            }
            crate::connect::SessionConnectError::Tls(e) => {
                Failure::new(FailureReason::Tls, e.to_string())
            }
        }
    }

    /// An HTTP exchange that failed before a response: `reached`, the
    /// backend may have acted on the request (`exchange`); otherwise it
    /// cannot have (`connect`: the head did not go out whole).
    pub fn before_response(detail: String, reached: bool) -> Failure {
        let reason = if reached {
            FailureReason::Exchange
        } else {
            FailureReason::Connect
        };
        Failure::new(reason, detail)
    }

    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            code: None,
            detail: detail.into(),
            about_client: None,
        }
    }
}

/// Whether an HTTP request goes on to the next backend after `failure`,
/// by the pool's `retry_on`. `replayable`: the method is idempotent and
/// no byte of the body was sent, so the backend cannot have acted on a
/// part of it. A timeout is never retried: the backend may still act.
fn http_retries(retry_on: &RetryOn, failure: &Failure, replayable: bool) -> bool {
    match failure.reason {
        FailureReason::Connect => retry_on.connect,
        FailureReason::Exchange => retry_on.error && replayable,
        FailureReason::Status => {
            replayable && failure.code.is_some_and(|code| retry_on.status(code))
        }
        // Not HTTP failures, or (a timeout) never retried.
        FailureReason::Full
        | FailureReason::Timeout
        | FailureReason::Greeting
        | FailureReason::Deferred
        | FailureReason::Tls => false,
    }
}

/// A reply gale writes itself to an HTTP request no backend answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub text: &'static str,
    /// Ask the client to come back (`Retry-After`).
    pub retry_after: bool,
}

/// What to do after an HTTP attempt failed.
#[derive(Debug)]
pub enum HttpStep {
    /// Try the next backend.
    Next,
    /// Try no other: answer with [`HttpTries::reply`].
    Stop,
    /// The backend may have acted on the request: answer this, now.
    Reply(HttpReply),
}

/// One HTTP request's tries so far, whichever engine makes them.
#[derive(Debug, Default)]
pub struct HttpTries {
    /// Some backend may have seen the request.
    reached: bool,
    /// The gateway error of a response dropped to try another backend.
    dropped: Option<u16>,
}

impl HttpTries {
    /// Whether a response with `status` is dropped to try the next
    /// backend (one is left to try).
    pub fn drops(retry_on: &RetryOn, status: u16, replayable: bool, more: bool) -> bool {
        more && Failure::of_status(status).is_some_and(|f| http_retries(retry_on, &f, replayable))
    }

    /// A response with gateway error `status` was dropped.
    pub fn dropped(&mut self, status: u16) {
        self.reached = true;
        self.dropped = Some(status);
    }

    /// An attempt failed before any response: what next.
    pub fn failed(&mut self, retry_on: &RetryOn, failure: &Failure, replayable: bool) -> HttpStep {
        let reached = failure.reason != FailureReason::Connect;
        self.reached |= reached;
        if http_retries(retry_on, failure, replayable) {
            return HttpStep::Next;
        }
        if !reached {
            return HttpStep::Stop;
        }
        HttpStep::Reply(if failure.reason == FailureReason::Timeout {
            HttpReply {
                status: 504,
                text: "the backend did not answer in time\n",
                retry_after: false,
            }
        } else {
            HttpReply {
                status: 502,
                text: "the backend failed before responding\n",
                retry_after: false,
            }
        })
    }

    /// The reply once no backend is left to try.
    pub fn reply(&self) -> HttpReply {
        match self.dropped {
            Some(503) => HttpReply {
                status: 503,
                text: "the backends are unavailable, try again later\n",
                retry_after: true,
            },
            Some(504) => HttpReply {
                status: 504,
                text: "the backends did not answer in time\n",
                retry_after: false,
            },
            Some(_) => HttpReply {
                status: 502,
                text: "every backend tried failed\n",
                retry_after: false,
            },
            None if self.reached => HttpReply {
                status: 502,
                text: "every backend tried failed before responding\n",
                retry_after: false,
            },
            None => HttpReply {
                status: 503,
                text: "no backend can take the request, try again later\n",
                retry_after: true,
            },
        }
    }
}

/// A session or request counted on a backend (for `max_sessions` and the
/// balancers' `active-sessions`) until dropped; it may outlive the
/// attempt, in a response body still streaming.
pub struct InFlight {
    live: Arc<LiveCounters>,
    id: usize,
}

impl InFlight {
    /// Count a session on backend `id`, unless it has its `max_sessions`
    /// or (`queued` false) its freed slots are kept for queued sessions.
    pub fn enter(live: &Arc<LiveCounters>, id: usize, queued: bool) -> Option<InFlight> {
        live.try_enter(id, queued).then(|| InFlight {
            live: live.clone(),
            id,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.live.leave(self.id);
    }
}

/// One backend being tried.
pub struct Turn<'p> {
    pub id: usize,
    pub backend: &'p BackendConfig,
    pub in_flight: InFlight,
    started: Instant,
}

/// The backends of one session or request, tried in the balancer's order:
/// `while let Some(turn) = attempts.next()`, then [`Attempts::failed`] or
/// [`Attempts::succeeded`] with the turn.
pub struct Attempts<'p> {
    pool: &'p Pool,
    order: &'p [u32],
    next: usize,
    counters: &'p ListenerCounters,
    tried: String,
    /// Some backend was tried (not only skipped as full).
    tried_one: bool,
    /// When every backend was first found full, if it was.
    queued_at: Option<Instant>,
    /// The session's place in the queue, from its first wait until a
    /// backend takes it or it gives up.
    place: Option<Place>,
    /// Walking the order again after a wait: skips are not counted again.
    rewalk: bool,
}

/// What a session does after walking its order without a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStep {
    /// A slot freed: walk the order again.
    Again,
    /// Refuse the client (421, 503, a close).
    Refuse,
    /// The client left while queued: nothing to answer.
    Gone,
}

/// The longest wait in a queue, whatever `queue_timeout` says (the config
/// refuses more; a session must not wait past what `Instant` can hold).
pub const MAX_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

impl<'p> Attempts<'p> {
    /// At most `max_attempts` of `order`, for a session or request of the
    /// listener with `counters` (attempts after the first count on its
    /// `retries`; its queue holds the session when every backend is full).
    pub fn new(
        pool: &'p Pool,
        order: &'p [u32],
        max_attempts: u32,
        counters: &'p ListenerCounters,
    ) -> Self {
        let order = &order[..order.len().min(max_attempts as usize)];
        Attempts {
            pool,
            order,
            next: 0,
            counters,
            tried: String::new(),
            tried_one: false,
            queued_at: None,
            place: None,
            rewalk: false,
        }
    }

    /// The order was walked without a backend: when every backend of it
    /// was at its `max_sessions` (none tried), wait in the listener's
    /// queue for one of them to free a slot (see [`crate::queue`]), unless
    /// `gone` (the client left) comes first. [`QueueStep::Refuse`]: a backend
    /// was tried and failed, no backend is in the order (an outage, not a
    /// full pool), the queue is full or `queue_timeout` passed since the
    /// first wait.
    pub async fn queue_unless(&mut self, gone: impl Future<Output = ()>) -> QueueStep {
        if self.tried_one || self.order.is_empty() {
            self.place = None;
            return QueueStep::Refuse;
        }
        let queue = &self.counters.queue;
        let since = *self.queued_at.get_or_insert_with(Instant::now);
        if self.place.is_none() {
            let live = self.pool.live();
            let slots = self
                .order
                .iter()
                .filter_map(|&id| live.slot(id as usize).cloned())
                .collect();
            match queue.enter(slots) {
                Some(place) => self.place = Some(place),
                None => {
                    queue.full.inc();
                    self.tried.push_str("queue full; ");
                    return QueueStep::Refuse;
                }
            }
        }
        let place = self.place.as_ref().expect("entered above");
        // A timeout past what Instant can hold waits as long as it can.
        let deadline = since
            .checked_add(queue.timeout)
            .unwrap_or(since + MAX_QUEUE_WAIT);
        // The client's departure first: a slot freed at the same moment
        // goes to a session that still has a client. Both futures on the
        // heap, for the rare session that waits: inline, their timer and
        // readiness would be reserved in every session's task.
        let waited = tokio::select! {
            biased;
            () = Box::pin(gone) => None,
            room = Box::pin(place.wait(deadline)) => Some(room),
        };
        match waited {
            Some(true) => {
                self.next = 0;
                self.rewalk = true;
                QueueStep::Again
            }
            Some(false) => {
                queue.timed_out.inc();
                let _ = write!(
                    self.tried,
                    "queued {}ms: queue_timeout; ",
                    since.elapsed().as_millis()
                );
                self.place = None;
                QueueStep::Refuse
            }
            None => {
                self.client_left();
                QueueStep::Gone
            }
        }
    }

    /// The client left (an HTTP/2 stream reset, a closed connection): if
    /// it was queued, it leaves the queue, counted as `gone`.
    pub fn client_left(&mut self) {
        if self.place.take().is_some() {
            self.counters.queue.gone.inc();
        }
    }

    /// A backend's slot was handed to the session after it waited in the
    /// queue: it leaves the queue (passing on wake-ups it did not use),
    /// counted as `served`, and the wait is noted for the log.
    fn leave_queue(&mut self) {
        if self.place.take().is_some() {
            self.counters.queue.served.inc();
            if let Some(since) = self.queued_at {
                let _ = write!(self.tried, "queued {}ms; ", since.elapsed().as_millis());
            }
        }
    }

    /// `turn`'s backend failed: count it, report it to the pool's health
    /// and note it for the log.
    pub fn failed(&mut self, turn: Turn<'p>, failure: Failure) {
        let latency = self.note(&turn, &failure);
        self.pool.traffic_failure(turn.id, latency, &failure);
    }

    /// Note `failure` at `turn`'s backend for the log; how long it took.
    fn note(&mut self, turn: &Turn<'p>, failure: &Failure) -> std::time::Duration {
        let latency = turn.started.elapsed();
        let _ = write!(
            self.tried,
            "{}: {} in {}ms; ",
            turn.backend.name,
            failure.detail,
            latency.as_millis()
        );
        latency
    }

    /// `turn`'s backend refused the client, and it vouches for that
    /// refusal (it greets others): a verdict on the client, counted in
    /// the metrics and the log but no evidence against the backend.
    pub fn refused_client(&mut self, turn: Turn<'p>, failure: Failure) {
        self.note(&turn, &failure);
        self.pool.count_failure(turn.id, failure.reason);
    }

    /// `turn`'s backend answered, with a failure (a 503): it took the
    /// request, and the failure counts; the answer may still go to the
    /// client.
    pub fn answered_but_failed(&mut self, turn: &Turn<'p>, failure: Failure) {
        let latency = self.note(turn, &failure);
        self.pool.count_session(turn.id);
        self.pool.traffic_failure(turn.id, latency, &failure);
    }

    /// Whether a backend is left to try after this one.
    pub fn remaining(&self) -> bool {
        self.next < self.order.len()
    }

    /// `turn`'s backend took the session or request: it counts a session
    /// and ends the backend's failure run. Nothing is written for the log
    /// (an HTTP request logs only its failures: formatting on every
    /// request cost 5 % of its CPU); see [`Attempts::succeeded_noted`].
    pub fn succeeded(&mut self, turn: &Turn<'p>) {
        self.pool.count_session(turn.id);
        self.pool
            .record_traffic_success(turn.id, turn.started, Depth::Session);
    }

    /// [`Attempts::succeeded`], noted for the log (`what`: "220").
    pub fn succeeded_noted(&mut self, turn: &Turn<'p>, what: std::fmt::Arguments<'_>) {
        let _ = write!(
            self.tried,
            "{}: {what} in {}ms",
            turn.backend.name,
            turn.started.elapsed().as_millis()
        );
        self.succeeded(turn);
    }

    /// What happened at each backend tried, for the session's log line.
    pub fn tried(&self) -> &str {
        self.tried.trim_end_matches("; ")
    }
}

impl<'p> Iterator for Attempts<'p> {
    type Item = Turn<'p>;

    /// The next backend to try, skipping (and counting, once) those at
    /// their `max_sessions` or whose freed slots are kept for sessions
    /// queued for them; `None` once `max_attempts` were made.
    fn next(&mut self) -> Option<Turn<'p>> {
        while let Some(&id) = self.order.get(self.next) {
            let id = id as usize;
            if self.next > 0 && !self.rewalk {
                self.counters.retries.inc();
            }
            self.next += 1;
            let backend = self.pool.backend(id);
            let queued = self.place.is_some();
            match InFlight::enter(self.pool.live(), id, queued) {
                Some(in_flight) => {
                    // It waits no more: an attempt that fails from here
                    // is an outage, not a full pool.
                    if queued {
                        self.leave_queue();
                    }
                    self.tried_one = true;
                    return Some(Turn {
                        id,
                        backend,
                        in_flight,
                        started: Instant::now(),
                    });
                }
                None if self.rewalk => {}
                None => {
                    let _ = write!(self.tried, "{}: at max_sessions; ", backend.name);
                    self.pool.count_failure(id, FailureReason::Full);
                }
            }
        }
        None
    }
}
