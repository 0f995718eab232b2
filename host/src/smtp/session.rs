//! One SMTP session: find a backend that greets with 220 while the client
//! waits (it has received nothing yet), then join the two streams.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::reply::{ReplyError, read_reply};
use super::{pregreet, proxy_header, refusal, relay};
use crate::buffers::Charge;
use crate::config::{ListenerConfig, Pregreet};
use crate::generation::{Generation, ip_address};
use crate::listener::canonical;
use crate::plugin::LiveCounters;
use crate::plugin::types::{Protocol, RequestContext};
use crate::pool::Pool;

/// Why a backend could not take the session.
#[derive(Debug)]
enum Attempt {
    Full,
    Connect(String),
    ConnectTimeout,
    BannerTimeout,
    Greeting(ReplyError),
    Refused(u16, String),
}

impl Attempt {
    fn describe(&self) -> String {
        match self {
            Attempt::Full => "at max_sessions".into(),
            Attempt::Connect(e) => format!("connect: {e}"),
            Attempt::ConnectTimeout => "connect timeout".into(),
            Attempt::BannerTimeout => "no greeting (timeout)".into(),
            Attempt::Greeting(e) => format!("greeting: {e}"),
            Attempt::Refused(_, line) => format!("greeted {line:?}"),
        }
    }

    /// The `reason` label of `gale_backend_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            Attempt::Full => "full",
            Attempt::Connect(_) => "connect",
            Attempt::ConnectTimeout | Attempt::BannerTimeout => "timeout",
            Attempt::Greeting(_) | Attempt::Refused(..) => "greeting",
        }
    }

    fn code(&self) -> Option<u16> {
        match self {
            Attempt::Refused(code, _) => Some(*code),
            _ => None,
        }
    }
}

/// A session counted on a backend (for `max_sessions` and the balancers'
/// `active-sessions`) until dropped.
struct Counted<'a>(&'a LiveCounters, usize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Serve one client of the generation's listener number `listener`
/// (`None`: a listener the generation no longer has, being retired).
pub async fn run(
    mut client: TcpStream,
    peer: SocketAddr,
    generation: Arc<Generation>,
    listener: Option<usize>,
    mut charge: Charge,
) {
    let Some(listener) = listener else {
        return;
    };
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
    let mut tried = String::new();
    for (n, &id) in decision
        .order
        .iter()
        .take(l.max_attempts as usize)
        .enumerate()
    {
        let id = id as usize;
        let backend = pool.backend(id);
        if n > 0 {
            counters.retries.inc();
        }
        if !pool.live().try_enter(id, backend.max_sessions) {
            let _ = write!(tried, "{}: {}; ", backend.name, Attempt::Full.describe());
            pool.count_failure(id, Attempt::Full.reason());
            continue;
        }
        // Leaves on every path, a cancelled session included.
        let _counted = Counted(pool.live(), id);
        let attempt_started = Instant::now();
        // Where the client connected to: only PROXY headers need it, and it
        // costs a syscall.
        let local = match backend.proxy_protocol {
            crate::config::ProxyProtocol::None => peer,
            _ => canonical(client.local_addr().unwrap_or(peer)),
        };
        match connect_and_greet(l, backend.address, backend.proxy_protocol, peer, local).await {
            Ok((mut upstream, greeting)) => {
                let greet_ms = attempt_started.elapsed().as_millis();
                let _ = write!(tried, "{}: 220 in {greet_ms}ms", backend.name);
                if let Some(early) = pregreet::spoke_early(&client).await {
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
                        refusal::refuse(client, &refusal::pregreet_reply(&l.hostname)).await;
                        return;
                    }
                    log("passed to the backend");
                }
                counters.relayed.inc();
                pool.count_session(id);
                let outcome = join(
                    (&mut client, &mut upstream),
                    greeting,
                    l.idle_timeout,
                    &mut charge,
                )
                .await;
                counters.bytes_up.inc_by(outcome.up);
                counters.bytes_down.inc_by(outcome.down);
                let end = outcome.error.as_deref().unwrap_or("closed");
                tracing::info!(
                    listener = %l.name,
                    generation = generation.id,
                    client = %peer,
                    backend = %backend.name,
                    tried = %tried,
                    bytes_up = outcome.up,
                    bytes_down = outcome.down,
                    duration_ms = started.elapsed().as_millis() as u64,
                    end = %end,
                    "smtp session"
                );
                return;
            }
            Err(failure) => {
                let latency = attempt_started.elapsed();
                let _ = write!(
                    tried,
                    "{}: {} in {}ms; ",
                    backend.name,
                    failure.describe(),
                    latency.as_millis()
                );
                pool.count_failure(id, failure.reason());
                pool.record_traffic_failure(id, latency, failure.code(), failure.describe());
            }
        }
    }
    counters.deferred.inc();
    counters.replied_421.inc();
    let sent = refusal::refuse(client, &refusal::unavailable_reply(&l.hostname)).await;
    tracing::warn!(
        listener = %l.name,
        generation = generation.id,
        client = %peer,
        tried = %tried,
        duration_ms = started.elapsed().as_millis() as u64,
        end = if sent { "deferred with 421" } else { "421 not delivered" },
        "smtp session: no backend could take it"
    );
}

async fn connect_and_greet(
    l: &ListenerConfig,
    address: SocketAddr,
    proxy: crate::config::ProxyProtocol,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<(TcpStream, super::reply::Reply), Attempt> {
    let mut upstream = connect(address, l.connect_timeout).await?;
    let header = proxy_header::for_client(proxy, peer, local);
    if !header.is_empty() {
        upstream
            .write_all(&header)
            .await
            .map_err(|e| Attempt::Connect(e.to_string()))?;
    }
    let greeting = match timeout(l.banner_timeout, read_reply(&mut upstream)).await {
        Err(_) => return Err(Attempt::BannerTimeout),
        Ok(Err(e)) => return Err(Attempt::Greeting(e)),
        Ok(Ok(r)) => r,
    };
    if greeting.code != 220 {
        return Err(Attempt::Refused(greeting.code, greeting.first_line()));
    }
    Ok((upstream, greeting))
}

/// Connect without the syscalls a generic connect spends: no-delay is set
/// before connecting, and success is not confirmed with `SO_ERROR` (that
/// is read only when the connection failed); the greeting read that comes
/// next reports anything else.
async fn connect(address: SocketAddr, limit: Duration) -> Result<TcpStream, Attempt> {
    let failed = |e: std::io::Error| Attempt::Connect(e.kind().to_string());
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking(),
        None,
    )
    .map_err(failed)?;
    socket.set_tcp_nodelay(true).map_err(failed)?;
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(failed)?;
    match timeout(limit, stream.ready(Interest::WRITABLE)).await {
        Err(_) => Err(Attempt::ConnectTimeout),
        Ok(Err(e)) => Err(failed(e)),
        Ok(Ok(ready)) if ready.is_error() || ready.is_write_closed() => {
            let e = stream.take_error().ok().flatten();
            Err(failed(e.unwrap_or_else(|| {
                std::io::ErrorKind::ConnectionRefused.into()
            })))
        }
        Ok(Ok(_)) => Ok(stream),
    }
}

/// Forward the greeting, then relay both ways until both sides close or
/// nothing moves for `idle`.
async fn join(
    (client, upstream): (&mut TcpStream, &mut TcpStream),
    greeting: super::reply::Reply,
    idle: Duration,
    charge: &mut Charge,
) -> relay::Outcome {
    let greeted = async {
        send(client, &greeting.raw, idle, "client").await?;
        send(client, &greeting.rest, idle, "client").await
    };
    if let Err(e) = greeted.await {
        return relay::Outcome {
            up: 0,
            down: 0,
            error: Some(e),
        };
    }
    let sent = (greeting.raw.len() + greeting.rest.len()) as u64;
    // Not kept for a session that may stay open for minutes.
    drop(greeting);
    let mut outcome = relay::relay(client, upstream, idle, charge).await;
    outcome.down += sent;
    outcome
}

/// Write all of `data` to `peer`. A peer that stops reading must not hold
/// the session past the idle timeout either.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    idle: Duration,
    peer: &str,
) -> Result<(), String> {
    match timeout(idle, w.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{peer} write: {e}")),
        Err(_) => Err(format!("{peer} stopped reading (idle timeout)")),
    }
}
