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

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
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
    let accept = crate::listener::Accept {
        name: name.clone(),
        current: current.clone(),
        sessions,
        shutdown,
    };
    accept
        .run(listener, move |client, peer| {
            let _ = client.set_nodelay(true);
            let generation = current.load_full();
            let index = generation
                .config
                .listeners
                .iter()
                .position(|l| l.name == name);
            async move {
                // A listener the generation no longer has is being retired.
                if let Some(index) = index {
                    session::run(client, peer, generation, index).await;
                }
            }
        })
        .await;
}
