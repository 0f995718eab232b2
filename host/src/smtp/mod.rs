//! SMTP listeners: accept a client, hold it while backends are tried in
//! the balancer's order until one greets with 220, then join the streams;
//! when none can, answer `421 4.3.2` so the sender defers the mail.
//!
//! Owns: client sockets, backend connections, greetings, PROXY headers.
//! Does not touch: health verdicts (it reports failures to the pool) or
//! the choice of backend (the pool's balancer makes it).

pub mod proxy_header;
mod relay;
pub mod reply;
mod session;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use session::unavailable_reply;

use crate::generation::Generation;

/// Accept sessions on `listener` for the listener named `name` until
/// `shutdown` is cancelled. Each session runs on the generation current
/// when it was accepted; sessions are tracked by `sessions` so shutdown
/// can wait for them.
pub async fn serve(
    listener: TcpListener,
    name: String,
    current: Arc<ArcSwap<Generation>>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    let max = {
        let g = current.load();
        g.config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(1, |l| l.max_sessions as usize)
    };
    let slots = Arc::new(Semaphore::new(max));
    loop {
        // Past max_sessions, stop accepting: clients wait in the kernel's
        // backlog instead of being accepted and starved.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of
                // spinning; sessions already running are unaffected.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let generation = current.load_full();
        let Some(index) = generation
            .config
            .listeners
            .iter()
            .position(|l| l.name == name)
        else {
            break;
        };
        sessions.spawn(async move {
            session::run(client, peer, generation, index).await;
            drop(permit);
        });
    }
    tracing::info!(listener = %name, "smtp listener stopped accepting");
}
