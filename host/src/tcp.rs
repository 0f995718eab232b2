//! `protocol = "tcp"` listeners, for whatever is not plaintext SMTP or
//! HTTP: implicit TLS (SMTPS on 465, IMAPS) passed through to backends
//! that terminate it themselves, LMTP, custom protocols.
//!
//! gale reads nothing of the conversation. Backends are tried in the
//! balancer's order at connect level: a connection refused or timed out
//! (or a PROXY header that could not be written) moves on to the next
//! backend while the client waits, sent nothing yet; the first backend
//! that takes the connection gets the client's bytes as they come, after
//! a PROXY header when it wants one, and half-closes pass on both ways.
//! When no backend can take it the client's connection is closed (there
//! is no protocol to say why in). Everything else is shared with the
//! other listeners: pools, plugins, probes, `max_sessions`, the queue,
//! drain, metrics (`gale_sessions_total`, `gale_bytes_total`).
//!
//! Balancer plugins see a tcp session as `smtp`: one decision per
//! connection, no HTTP fields. The contract's `protocol` enum cannot gain
//! a case within its 0.1 track (rule 2 in `wit/types.wit`: a plugin built
//! against two cases could not read a third), and `listener` tells tcp
//! listeners apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};

use crate::access;
use crate::attempts::{Attempts, Failure, QueueStep, Took};
use crate::buffers::Charge;
use crate::config::ListenerConfig;
use crate::generation::{Generation, ip_address};
use crate::listener::Accept;
use crate::plugin::types::{Protocol, RequestContext};
use crate::relay;

/// Accept connections on `listener` until `accept.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, accept: Accept) {
    crate::listener::serve_sessions(listener, accept, run).await;
}

/// Serve one client of the generation's listener number `listener`
/// (`None`: a listener the generation no longer has).
async fn run(
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
    let pool = &generation.pools[l.pool];
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
    // Over the order again after a wait in the queue (every backend was
    // at its max_sessions).
    loop {
        while let Some(turn) = attempts.next() {
            let backend = turn.backend;
            let connected = crate::connect::connect_for_session(
                backend,
                l.connect_timeout,
                &client,
                peer,
                None,
            )
            .await;
            match connected {
                Ok(mut upstream) => {
                    attempts.succeeded_noted(&turn, Took::Connected);
                    counters.relayed.inc();
                    let outcome = relay::relay(
                        (&mut client, &mut upstream),
                        relay::Ending::BothClosed,
                        l.idle_timeout,
                        &mut charge,
                        &mut relay::Blind,
                    )
                    .await;
                    counters.bytes_up.inc_by(outcome.up);
                    counters.bytes_down.inc_by(outcome.down);
                    let end = outcome.error.as_deref().unwrap_or("closed");
                    if access::json() {
                        let line = access::Common {
                            backend: Some(&backend.name),
                            bytes_up: outcome.up,
                            bytes_down: outcome.down,
                            ..record(&l.name, &generation, peer, &attempts, started, end)
                        };
                        access::emit(
                            tracing::Level::INFO,
                            "tcp session",
                            &access::Tcp { common: line },
                        );
                        return;
                    }
                    tracing::info!(
                        listener = %l.name,
                        generation = generation.id,
                        client = %peer,
                        backend = %backend.name,
                        tried = %attempts.tried(),
                        bytes_up = outcome.up,
                        bytes_down = outcome.down,
                        duration_ms = started.elapsed().as_millis() as u64,
                        end = %end,
                        "tcp session"
                    );
                    return;
                }
                Err(e) => attempts.failed(turn, Failure::of_session_connect(&e)),
            }
        }
        match attempts
            .queue_unless(crate::listener::hung_up(&client, false))
            .await
        {
            QueueStep::Again => continue,
            QueueStep::Refuse => break,
            QueueStep::Gone => {
                let tried = attempts.tried();
                crate::listener::log_left_queue("tcp", &l.name, peer, tried, started);
                if access::json() {
                    let end = "left while queued";
                    let line = record(&l.name, &generation, peer, &attempts, started, end);
                    let message = "the client left while queued";
                    access::emit(tracing::Level::INFO, message, &access::Tcp { common: line });
                }
                return;
            }
        }
    }
    counters.deferred.inc();
    // Not `closed`, which says a relayed session ended as it should.
    let end = "no backend, closed";
    if access::json() {
        let line = record(&l.name, &generation, peer, &attempts, started, end);
        let message = "tcp session: no backend could take it";
        return access::emit(tracing::Level::WARN, message, &access::Tcp { common: line });
    }
    tracing::warn!(
        listener = %l.name,
        generation = generation.id,
        client = %peer,
        tried = %attempts.tried(),
        duration_ms = started.elapsed().as_millis() as u64,
        end,
        "tcp session: no backend could take it"
    );
}

/// A tcp session's access record, as if no backend took it.
fn record<'a>(
    listener: &'a str,
    generation: &Generation,
    peer: SocketAddr,
    attempts: &'a Attempts<'a>,
    started: Instant,
    end: &'a str,
) -> access::Common<'a> {
    access::Common {
        kind: access::Kind::Tcp,
        client: peer,
        listener,
        generation: generation.id,
        backend: None,
        attempts: attempts.tried(),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        end,
    }
}
