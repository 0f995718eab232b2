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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
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
    let slots = Arc::new(Slots::default());
    loop {
        // Past max_sessions, stop accepting: clients wait in the kernel's
        // backlog instead of being accepted and starved. The limit is read
        // from the current generation, so a reload changes it on a socket
        // that is kept.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slots.wait_below(|| max_sessions(&current, &name)) => {}
        }
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
        let slot = slots.take();
        sessions.spawn(async move {
            session::run(client, peer, generation, index).await;
            drop(slot);
        });
    }
    tracing::info!(listener = %name, "smtp listener stopped accepting");
}

/// The listener's `max_sessions` in the current generation.
fn max_sessions(current: &ArcSwap<Generation>, name: &str) -> usize {
    current
        .load()
        .config
        .listeners
        .iter()
        .find(|l| l.name == name)
        .map_or(0, |l| l.max_sessions as usize)
}

/// Sessions in flight on one listener, against a limit that may change
/// with each reload (a semaphore's fixed permits could not shrink while
/// they are held).
#[derive(Default)]
struct Slots {
    taken: AtomicUsize,
    freed: Notify,
}

/// One session's place; freed on drop.
struct Slot(Arc<Slots>);

impl Slots {
    /// Wait until fewer than `limit()` sessions are in flight.
    async fn wait_below(&self, limit: impl Fn() -> usize) {
        loop {
            let freed = self.freed.notified();
            if self.taken.load(Ordering::Acquire) < limit() {
                return;
            }
            // A reload may raise the limit while nothing ends: look again
            // now and then, not only when a session ends.
            let _ = tokio::time::timeout(Duration::from_millis(250), freed).await;
        }
    }

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
