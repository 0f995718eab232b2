//! Trying backends in the balancer's order: the one request policy that
//! SMTP sessions, HTTP/1 and HTTP/2 requests share.
//!
//! The protocol code makes each attempt (connect, greet, send, read) and
//! says how it ended; this module does everything around it that must not
//! differ between protocols: at most `max_attempts` backends, a backend at
//! `max_sessions` is skipped (and counted as `full`), attempts after the
//! first count as retries, every failed attempt is counted with one typed
//! [`FailureReason`] and reported to the pool's health rules, a success
//! ends the backend's failure run, and [`Steps`] keep what happened at
//! each backend and in the queue: the `tried=` text of the log lines and
//! the `attempts` array of the JSON access lines ([`crate::access`]).
//!
//! An SMTP client has received nothing until a backend greets, so every
//! failure moves on. For HTTP, [`HttpTries`] holds the rules both engines
//! follow: what moves a request on (the pool's `retry_on`; a request that
//! may have been acted on is never replayed) and what the client gets
//! when no backend answered.

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

/// How one step of a session's or request's way to a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend took it: an SMTP greeting, a tcp connection, an HTTP
    /// response passed on.
    Took(Took),
    /// The attempt failed, or (`Full`) the backend was skipped.
    Failed(FailureReason),
    /// A wait in the listener's queue that ended with a freed slot.
    Queued,
    /// A wait in the queue that reached `queue_timeout`.
    QueueTimeout,
    /// The queue was full (or there is none).
    QueueFull,
}

/// What a backend that took a session or request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Took {
    /// SMTP: it greeted `220`.
    Greeted,
    /// tcp: it accepted the connection.
    Connected,
    /// HTTP: it answered with this status.
    Answered(u16),
}

impl Outcome {
    /// The `outcome` of an entry of the JSON `attempts` array.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Took(_) => "ok",
            Outcome::Failed(reason) => reason.label(),
            Outcome::Queued => "queued",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::QueueFull => "queue_full",
        }
    }
}

/// One step: a backend tried or skipped, or a wait in the queue. 32
/// bytes: an SMTP session keeps its steps while it relays (for its log
/// line at the end), so they are kept small and the text is written only
/// when a line is.
#[derive(Debug)]
struct Step {
    /// Why it failed, as the protocol said (`None`: nothing to add to the
    /// outcome).
    detail: Option<Box<str>>,
    /// The backend's index in the pool; [`QUEUE`] for a wait.
    backend: u32,
    /// How long it took; 0 for a skip.
    ms: u32,
    outcome: Outcome,
}

/// [`Step::backend`] of a wait in the queue.
const QUEUE: u32 = u32::MAX;

/// The steps of one session or request, with the pool that names their
/// backends: `Display` is the `tried=` text of the log lines
/// (`b1: connect: connection refused in 0ms; b2: 220 in 3ms`), `Serialize`
/// the `attempts` array of the access lines.
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    steps: &'a [Step],
    /// `None` only with no steps.
    pool: Option<&'a Pool>,
}

impl Steps<'_> {
    /// Those of a request gale answered before it tried any backend.
    pub const NONE: Steps<'static> = Steps {
        steps: &[],
        pool: None,
    };

    fn backend(&self, step: &Step) -> Option<&str> {
        let pool = self.pool?;
        (step.backend != QUEUE).then(|| pool.backend(step.backend as usize).name.as_str())
    }

    /// The step's text after the backend's name: what `tried=` shows and
    /// the access line's `detail`.
    fn detail(step: &Step) -> std::borrow::Cow<'_, str> {
        match (&step.detail, step.outcome) {
            (Some(detail), _) => detail.as_ref().into(),
            (None, Outcome::Took(Took::Greeted)) => "220".into(),
            (None, Outcome::Took(Took::Connected)) => "connected".into(),
            (None, Outcome::Took(Took::Answered(status))) => format!("answered {status}").into(),
            (None, Outcome::Failed(FailureReason::Full)) => "at max_sessions".into(),
            (None, Outcome::Failed(reason)) => reason.label().into(),
            (None, Outcome::Queued | Outcome::QueueTimeout | Outcome::QueueFull) => "".into(),
        }
    }
}

impl std::fmt::Display for Steps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let ms = step.ms;
            match (self.backend(step), step.outcome) {
                (None, Outcome::QueueFull) => f.write_str("queue full")?,
                (None, Outcome::QueueTimeout) => write!(f, "queued {ms}ms: queue_timeout")?,
                (None, _) => write!(f, "queued {ms}ms")?,
                (Some(name), Outcome::Failed(FailureReason::Full)) => {
                    write!(f, "{name}: at max_sessions")?
                }
                (Some(name), _) => write!(f, "{name}: {} in {ms}ms", Steps::detail(step))?,
            }
        }
        Ok(())
    }
}

impl serde::Serialize for Steps<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.steps.len()))?;
        for step in self.steps {
            struct One<'a>(&'a Steps<'a>, &'a Step);
            impl serde::Serialize for One<'_> {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    let One(steps, step) = self;
                    let backend = steps.backend(step);
                    let mut map = s.serialize_map(None)?;
                    if let Some(name) = backend {
                        map.serialize_entry("backend", name)?;
                    }
                    map.serialize_entry("outcome", step.outcome.label())?;
                    if backend.is_some() {
                        map.serialize_entry("detail", &Steps::detail(step))?;
                    }
                    map.serialize_entry("ms", &step.ms)?;
                    map.end()
                }
            }
            seq.serialize_element(&One(self, step))?;
        }
        seq.end()
    }
}

/// Milliseconds for a step, saturating (a step of 49 days says so).
fn millis(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
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
    pub started: Instant,
}

/// The backends of one session or request, tried in the balancer's order:
/// `while let Some(turn) = attempts.next()`, then [`Attempts::failed`] or
/// [`Attempts::succeeded`] with the turn.
pub struct Attempts<'p> {
    pool: &'p Pool,
    order: &'p [u32],
    next: usize,
    counters: &'p ListenerCounters,
    steps: Vec<Step>,
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
            steps: Vec::new(),
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
                    self.push(QUEUE, Outcome::QueueFull, 0, None);
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
                self.push(QUEUE, Outcome::QueueTimeout, millis(since.elapsed()), None);
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
                self.push(QUEUE, Outcome::Queued, millis(since.elapsed()), None);
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
        let outcome = Outcome::Failed(failure.reason);
        self.push(
            turn.id as u32,
            outcome,
            millis(latency),
            Some(&failure.detail),
        );
        latency
    }

    /// Note a step.
    fn push(&mut self, backend: u32, outcome: Outcome, ms: u32, detail: Option<&str>) {
        // Most sessions have one step, kept while they relay: room for
        // exactly one, not the four a first push would make.
        if self.steps.capacity() == 0 {
            self.steps.reserve_exact(1);
        }
        self.steps.push(Step {
            detail: detail.map(Into::into),
            backend,
            ms,
            outcome,
        });
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

    /// [`Attempts::succeeded`], noted for the log: an SMTP or tcp
    /// session, whose steps are kept while it relays.
    pub fn succeeded_noted(&mut self, turn: &Turn<'p>, took: Took) {
        self.note_success(turn, took);
        // No spare room kept for the session's lifetime.
        self.steps.shrink_to_fit();
        self.succeeded(turn);
    }

    /// Note that `turn`'s backend took the session or request, now, for
    /// a log line about to be written (an HTTP request notes it only
    /// then: see [`Attempts::succeeded`]).
    pub fn note_success(&mut self, turn: &Turn<'p>, took: Took) {
        self.note_took(turn.id, turn.started, took);
    }

    /// [`Attempts::note_success`] for a turn begun `started` at backend
    /// `id`, once the turn itself is gone.
    pub fn note_took(&mut self, id: usize, started: Instant, took: Took) {
        self.push(
            id as u32,
            Outcome::Took(took),
            millis(started.elapsed()),
            None,
        );
    }

    /// What happened at each backend tried and in the queue, for the
    /// session's or request's log line.
    pub fn tried(&self) -> Steps<'_> {
        Steps {
            steps: &self.steps,
            pool: Some(self.pool),
        }
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
                    self.push(id as u32, Outcome::Failed(FailureReason::Full), 0, None);
                    self.pool.count_failure(id, FailureReason::Full);
                }
            }
        }
        None
    }
}
