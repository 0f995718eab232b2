//! The accept loop shared by SMTP, HTTP and tcp listeners: at most
//! `max_sessions` connections at once and `max_sessions_per_client` from
//! one client IP (read from the current generation, so a reload changes
//! them on a kept socket), back-off on accept errors, and every
//! connection tracked so shutdown can drain it.
//!
//! Client addresses are made canonical here, once for both protocols: a
//! dual-stack listener (`[::]`) sees IPv4 clients as `::ffff:a.b.c.d`,
//! and everything downstream (PROXY headers, `X-Forwarded-For` and
//! `Forwarded`, the balancer's `client-ip`, per-client limits, logs) is to
//! see `a.b.c.d`, as if the listener were IPv4.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffers::Buffers;
use crate::generation::Generation;

mod clients;
mod socket;

pub(crate) use clients::Clients;
pub use clients::canonical;
use clients::{FromClient, client_key};
pub(crate) use socket::set_client_options;
pub use socket::{ClientSockets, adopt, bind};

/// Refused clients being answered at once, per listener (see
/// `Accept::send_refusal`).
const MAX_REFUSING: usize = 256;

pub struct Accept {
    /// The listener's name in the config.
    pub name: String,
    /// Its protocol: a reload that changes it makes another listener.
    pub protocol: crate::config::Protocol,
    pub current: Arc<ArcSwap<Generation>>,
    pub sessions: TaskTracker,
    pub shutdown: CancellationToken,
    /// Accepting starts once this is cancelled (at once, except in a
    /// binary upgrade: once the old gale has stopped accepting).
    pub open: CancellationToken,
    /// What the listener's connections hold in buffers.
    pub buffers: Buffers,
}

impl Accept {
    /// Accept until shutdown; `connection` makes the task that serves one
    /// client (and may name the task that serves the rest: [`Outcome`]).
    pub async fn run<F, Fut>(self, listener: TcpListener, connection: F)
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        // Shared with the tasks of listeners that have an admission
        // plugin: they start the session only once it has decided.
        let connection = Arc::new(connection);
        tokio::select! {
            _ = self.open.cancelled() => {}
            _ = self.shutdown.cancelled() => return,
        }
        let slots = Arc::new(Slots::default());
        let clients = Arc::new(Clients::default());
        let refusing = Arc::new(AtomicUsize::new(0));
        // New sessions per client, for `client_rate`: here, so that a
        // reload keeps what each client has spent.
        let mut rates = crate::rate::Buckets::default();
        // Accept errors come in bursts (out of descriptors, every 100 ms
        // until some are freed): one warning a second says so.
        let mut warned: Option<std::time::Instant> = None;
        let mut suppressed = 0u64;
        loop {
            // Past max_sessions, stop accepting: clients wait in the
            // kernel's backlog instead of being accepted and starved.
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = wait_until(&slots.freed, || {
                    slots.taken.load(Ordering::Acquire) < self.max_sessions()
                }) => {}
            }
            // Past max_buffer_mb too (the connections have most of the
            // listener's memory in hand already).
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = wait_until(self.buffers.freed(), || {
                    self.buffers.set_limit(self.max_buffer());
                    !self.buffers.over()
                }) => {}
            }
            // Stopped first: once a reload hands this socket to another
            // listener (its name or protocol changed), the next accept is
            // that listener's.
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (client, peer) = match accepted {
                Ok((client, peer)) => (client, canonical(peer)),
                Err(e) => {
                    // Out of file descriptors and similar: back off instead
                    // of spinning; connections already open are unaffected.
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(listener = %self.name, suppressed, "accept failed: {e}");
                        warned = Some(std::time::Instant::now());
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let plugin = match self.admit(&mut rates, peer.ip()) {
                Ok(plugin) => plugin,
                Err(refusal) => {
                    self.refuse_admission(&refusing, client, peer, refusal);
                    continue;
                }
            };
            let Some(from_client) = clients.enter(peer.ip(), self.per_client_limit()) else {
                self.refuse(&refusing, client, peer);
                continue;
            };
            let places = Some(Places {
                _slot: slots.take(),
                _client: from_client,
                sessions: self.sessions.clone(),
            });
            let Some(plugin) = plugin else {
                self.sessions.spawn(Admitted {
                    task: connection(client, peer),
                    places,
                });
                continue;
            };
            // Counted without this connection (it holds a place already).
            let counts = Counts {
                listener: slots.taken.load(Ordering::Acquire).saturating_sub(1) as u32,
                client: clients.sessions_of(peer.ip()).saturating_sub(1),
            };
            self.sessions.spawn(Admitted {
                task: gated(
                    plugin,
                    counts,
                    client,
                    peer,
                    connection.clone(),
                    self.shutdown.clone(),
                ),
                places,
            });
        }
        tracing::info!(listener = %self.name, "listener stopped accepting");
    }

    /// The listener's `max_sessions_per_client` in the current generation.
    fn per_client_limit(&self) -> u32 {
        self.current
            .load()
            .listener(&self.name, self.protocol)
            .map_or(u32::MAX, |(l, _)| l.max_sessions_per_client)
    }

    /// A client over its cap: an SMTP client is told to come back later
    /// (its mail is deferred, not lost), an HTTP, SMTPS or tcp connection
    /// is closed.
    fn refuse(&self, refusing: &Arc<AtomicUsize>, client: TcpStream, peer: SocketAddr) {
        let generation = self.current.load();
        let Some((l, counters)) = generation.listener(&self.name, self.protocol) else {
            return;
        };
        tracing::debug!(listener = %self.name, client = %peer, "refused: max_sessions_per_client");
        // Over TLS the reply would first need a handshake.
        if l.protocol != crate::config::Protocol::Smtp || l.tls.is_some() {
            return;
        }
        counters.refused_with(l.protocol, 421);
        let reply = crate::smtp::refusal::too_many_reply(&l.hostname);
        self.send_refusal(refusing, client, reply);
    }

    /// Write `reply` to a refused client and close its connection so that
    /// the reply arrives, in a task of its own; at most
    /// [`MAX_REFUSING`] at once per listener (each may take a few seconds
    /// for a client that does not read), past which the connection is
    /// closed at once: refused clients cannot hold descriptors without
    /// bound.
    fn send_refusal(&self, refusing: &Arc<AtomicUsize>, client: TcpStream, reply: String) {
        if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let refusing = refusing.clone();
        self.sessions.spawn(async move {
            crate::smtp::refusal::refuse(client, reply.as_bytes()).await;
            refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The listener's admission rules in the current generation, on a
    /// client at `ip`; a client they let in is asked about with the
    /// listener's admission plugin, if it has one (returned, to be asked
    /// off the accept loop: see `gated`).
    fn admit(
        &self,
        rates: &mut crate::rate::Buckets<IpAddr>,
        ip: IpAddr,
    ) -> Result<Option<PluginGate>, crate::admission::Refusal> {
        let generation = self.current.load();
        let Some(index) = generation.listener_index(&self.name, self.protocol) else {
            return Ok(None);
        };
        let l = &generation.config.listeners[index];
        crate::admission::check(&l.admission, rates, ip, client_key(ip), Instant::now())?;
        Ok(generation.admission[index].is_some().then(|| PluginGate {
            generation: arc_swap::Guard::into_inner(generation),
            index,
        }))
    }

    /// A client the admission rules refused: its reply (if the protocol
    /// has one) and a close that lets it arrive.
    fn refuse_admission(
        &self,
        refusing: &Arc<AtomicUsize>,
        client: TcpStream,
        peer: SocketAddr,
        refusal: crate::admission::Refusal,
    ) {
        let generation = self.current.load();
        let Some((l, counters)) = generation.listener(&self.name, self.protocol) else {
            return;
        };
        counters.admission_refused(refusal);
        tracing::debug!(listener = %self.name, client = %peer, reason = refusal.label(), "refused on admission");
        let Some((code, reply)) = crate::admission::reply(l, refusal) else {
            return;
        };
        counters.refused_with(l.protocol, code);
        self.send_refusal(refusing, client, reply);
    }

    /// The listener's `max_buffer_mb` in the current generation, in bytes.
    fn max_buffer(&self) -> Option<u64> {
        self.current
            .load()
            .listener(&self.name, self.protocol)
            .and_then(|(l, _)| l.max_buffer)
    }

    /// The listener's `max_sessions` in the current generation.
    fn max_sessions(&self) -> usize {
        self.current
            .load()
            .listener(&self.name, self.protocol)
            .map_or(0, |(l, _)| l.max_sessions as usize)
    }
}

/// A listener's admission plugin to ask about one client: the generation
/// that has it, and the listener's index there.
struct PluginGate {
    generation: Arc<Generation>,
    index: usize,
}

/// Sessions open when a client was accepted, not counting its own.
struct Counts {
    listener: u32,
    client: u32,
}

/// What a connection whose listener has an admission plugin ends with:
/// nothing when the plugin refused it or it left during a tarpit, else
/// its session's outcome.
struct Gated<O>(Option<O>);

impl<O: Outcome> Outcome for Gated<O> {
    type Next = O::Next;
    fn next(self) -> Option<O::Next> {
        self.0.and_then(Outcome::next)
    }
}

/// Ask the listener's admission plugin about `client` from the
/// connection's own task, the call itself on a blocking thread (it may
/// take up to twice the plugin's deadline; the accept loop and the
/// runtime's workers go on meanwhile), and carry out its verdict before
/// the session begins: a refusal (its reply, then a close), a tarpit (the
/// client held without a byte; one that hangs up, or a shutdown, ends the
/// connection there), or the session, started by `connection`.
async fn gated<F, Fut>(
    gate: PluginGate,
    counts: Counts,
    client: TcpStream,
    peer: SocketAddr,
    connection: Arc<F>,
    shutdown: CancellationToken,
) -> Gated<Fut::Output>
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future,
{
    use crate::admission::Verdict;
    let index = gate.index;
    let asked = {
        let generation = &gate.generation;
        let l = &generation.config.listeners[index];
        let Some(plugin) = &generation.admission[index] else {
            return Gated(Some(connection(client, peer).await));
        };
        let queued = u32::try_from(plugin.queued.get()).unwrap_or(0);
        let ctx = crate::admission::context(l, peer, counts.listener, counts.client, queued);
        let wait = l
            .admission
            .plugin
            .as_ref()
            .map_or(Duration::ZERO, |p| p.deadline);
        plugin.call_permit(wait).await.map(|permit| (permit, ctx))
    };
    // On a blocking thread: the call may take up to twice the plugin's
    // deadline (a wait for its instance, then its run), and the runtime's
    // workers serve every listener's sessions meanwhile.
    let verdict = match asked {
        None => Verdict::Admit,
        Some((permit, ctx)) => {
            let generation = gate.generation.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let l = &generation.config.listeners[index];
                let plugin = generation.admission[index].as_ref();
                plugin.map_or(Verdict::Admit, |plugin| plugin.decide(l, &ctx, peer))
            })
            .await
            .unwrap_or_else(|_| {
                if let Some(plugin) = &gate.generation.admission[index] {
                    plugin.panicked();
                }
                Verdict::Admit
            })
        }
    };
    let l = &gate.generation.config.listeners[index];
    if let Verdict::Refuse(Some((code, _))) = &verdict {
        gate.generation.listener_counters[index].refused_with(l.protocol, *code);
    }
    // A tcp client's half-close may be its protocol (see `hung_up`).
    let half_close_is_gone = l.protocol != crate::config::Protocol::Tcp;
    // Not held through a tarpit: a reload may retire it meanwhile.
    drop(gate);
    match verdict {
        Verdict::Admit => {}
        Verdict::Refuse(reply) => {
            if let Some((_, reply)) = reply {
                crate::smtp::refusal::refuse(client, reply.as_bytes()).await;
            }
            return Gated(None);
        }
        Verdict::Tarpit(hold) => {
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = hung_up(&client, half_close_is_gone) => {
                    tracing::info!(client = %peer, "the client left during its tarpit");
                    return Gated(None);
                }
                _ = shutdown.cancelled() => return Gated(None),
            }
        }
    }
    Gated(Some(connection(client, peer).await))
}

/// Accept sessions on `listener` until `accept.shutdown` is cancelled,
/// each served by `session` (SMTP, tcp) on the generation current when it
/// was accepted, with the index of its listener there (`None`: the
/// generation no longer has it) and its charge of the listener's buffers.
pub async fn serve_sessions<F, Fut>(listener: TcpListener, accept: Accept, session: F)
where
    F: Fn(TcpStream, SocketAddr, Arc<Generation>, Option<usize>, crate::buffers::Charge) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (name, protocol) = (accept.name.clone(), accept.protocol);
    let (current, buffers) = (accept.current.clone(), accept.buffers.clone());
    accept
        .run(listener, move |client, peer| {
            let generation = current.load_full();
            let index = generation.listener_index(&name, protocol);
            // The session's future itself, not one wrapped in a block
            // that would hold its arguments a second time.
            session(client, peer, generation, index, buffers.charge())
        })
        .await;
}

/// The text log line of a session whose client left while it was queued.
pub fn log_left_queue(
    protocol: &str,
    listener: &str,
    client: SocketAddr,
    tried: crate::attempts::Steps<'_>,
    started: std::time::Instant,
) {
    // In JSON the session's access line says it.
    if crate::access::json() {
        return;
    }
    tracing::info!(
        protocol,
        listener,
        client = %client,
        tried = tried.to_string().as_str(),
        duration_ms = started.elapsed().as_millis() as u64,
        "the client left while queued"
    );
}

/// Returns once `ready()` holds, looking again each time `freed` is
/// notified and every 250 ms: a limit read from the current generation may
/// be raised by a reload while nothing is freed.
async fn wait_until(freed: &Notify, ready: impl Fn() -> bool) {
    loop {
        let notified = freed.notified();
        if ready() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
    }
}

/// Connections in flight on one listener, against a limit that may change
/// with each reload (a semaphore's fixed permits could not shrink while
/// they are held).
#[derive(Default)]
struct Slots {
    taken: AtomicUsize,
    freed: Notify,
}

/// One connection's place; freed on drop.
struct Slot(Arc<Slots>);

impl Slots {
    fn take(self: &Arc<Self>) -> Slot {
        self.taken.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// What a connection's task ends with: nothing more to serve (`()`), or
/// the future that serves the rest of the connection (`Some`), run as a
/// task of its own that takes over the connection's places. An HTTP/1
/// connection that turns out to speak HTTP/2 hands over this way: a task
/// keeps room for its largest state for its whole life, so awaiting the
/// HTTP/2 connection inside the HTTP/1 task would keep the HTTP/1 engine's
/// room (~1.3 KB) beside it in every HTTP/2 connection.
pub trait Outcome {
    type Next: Future<Output = ()> + Send + 'static;
    fn next(self) -> Option<Self::Next>;
}

impl Outcome for () {
    type Next = std::future::Ready<()>;
    fn next(self) -> Option<Self::Next> {
        None
    }
}

impl<N: Future<Output = ()> + Send + 'static> Outcome for Option<N> {
    type Next = N;
    fn next(self) -> Option<N> {
        self
    }
}

/// A connection's places in the listener's limits, freed on drop, and the
/// tracker a follow-up task (see [`Outcome`]) is spawned on, so that
/// shutdown drains it too.
struct Places {
    _slot: Slot,
    _client: FromClient,
    sessions: TaskTracker,
}

pin_project_lite::pin_project! {
    /// A connection's task, admitted with its places in the listener's
    /// limits, which are freed when the task ends or moved to the task it
    /// hands over to. A struct rather than `async move { task.await;
    /// drop(places) }`: that block holds the connection's future twice
    /// (once captured, once awaited), which doubled what every idle
    /// connection costs.
    struct Admitted<F> {
        #[pin]
        task: F,
        places: Option<Places>,
    }
}

impl<F: Future<Output: Outcome>> Future for Admitted<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        let outcome = std::task::ready!(this.task.poll(cx));
        if let (Some(next), Some(places)) = (outcome.next(), this.places.take()) {
            // Spawned before this task ends: the tracker never looks empty
            // (drained) in between.
            let sessions = places.sessions.clone();
            sessions.spawn(Admitted {
                task: next,
                places: Some(places),
            });
        }
        std::task::Poll::Ready(())
    }
}

/// Until the client of a queued session gives up: its connection reset,
/// or (`half_close_is_gone`: SMTP, whose client has not been greeted, and
/// HTTP, as HAProxy's `abortonclose`) its side closed. A tcp client's
/// half-close may be its protocol (send, then wait for the answer), so
/// there only a reset counts.
///
/// Watched through a duplicate of the socket's descriptor registered on
/// its own: readiness cleared here (bytes the client sent while queued)
/// is not cleared for the session, which reads them later (an SMTP
/// pregreet check, an HTTP body, a TLS ClientHello). One descriptor more
/// per queued session; without it (out of descriptors) the wait ends
/// only with the queue's timeout.
pub async fn hung_up(client: &TcpStream, half_close_is_gone: bool) {
    use std::os::fd::AsFd;
    let Ok(fd) = client.as_fd().try_clone_to_owned() else {
        return std::future::pending().await;
    };
    // SAFETY: the AsyncFd owns `fd`, an open descriptor of its own that
    // stays open and the same until the AsyncFd drops it.
    let watch = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(watch) = watch else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = watch.readable().await else {
            return;
        };
        let ready = guard.ready();
        if ready.is_error()
            || ready.is_write_closed()
            || (half_close_is_gone && ready.is_read_closed())
        {
            return;
        }
        if ready.is_read_closed() {
            // A half-close that does not count. Read-closed stays set, so
            // the registration cannot wait for anything after it: the
            // queue's timeout ends the wait.
            return std::future::pending().await;
        }
        // Bytes: wait for the next event on this registration only.
        guard.clear_ready();
    }
}
