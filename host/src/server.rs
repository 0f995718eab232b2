//! The running server: binds every listener of a generation, starts the
//! health probes, and on shutdown stops accepting, lets sessions finish up
//! to the drain deadline, then ends the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::generation::Generation;

pub struct Server {
    pub current: Arc<ArcSwap<Generation>>,
    /// (listener name, bound address): with port 0 in the config, the
    /// address the kernel chose.
    pub addresses: Vec<(String, SocketAddr)>,
    sessions: TaskTracker,
    background: TaskTracker,
    stop_accepting: CancellationToken,
    stop_background: CancellationToken,
}

impl Server {
    /// Bind every listener and start serving `generation`.
    pub async fn start(generation: Generation) -> anyhow::Result<Server> {
        let generation = Arc::new(generation);
        let current = Arc::new(ArcSwap::new(generation.clone()));
        let sessions = TaskTracker::new();
        let background = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let mut addresses = Vec::new();
        for l in &generation.config.listeners {
            if l.protocol == Protocol::Http {
                // The HTTP proxy is not built yet: leave the port closed
                // rather than accept connections nobody answers.
                tracing::warn!(listener = %l.name, "HTTP listeners are not served yet; not binding");
                continue;
            }
            let socket = TcpListener::bind(l.address)
                .await
                .with_context(|| format!("listener {}: cannot bind {}", l.name, l.address))?;
            let bound = socket.local_addr()?;
            // Logged before "gale is ready": tests and scripts read the port
            // the kernel chose from this line.
            tracing::info!(listener = %l.name, address = %bound, protocol = ?l.protocol, "listening");
            addresses.push((l.name.clone(), bound));
            background.spawn(crate::smtp::serve(
                socket,
                l.name.clone(),
                current.clone(),
                sessions.clone(),
                stop_accepting.clone(),
            ));
        }
        crate::health::spawn_probes(&generation, &background, &stop_background);
        Ok(Server {
            current,
            addresses,
            sessions,
            background,
            stop_accepting,
            stop_background,
        })
    }

    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stop accepting, wait up to the config's drain timeout for sessions
    /// in flight, then stop everything. Returns how many sessions were cut.
    pub async fn shutdown(self) -> usize {
        let drain = self.current.load().config.drain_timeout;
        self.stop_accepting.cancel();
        self.sessions.close();
        let open = self.sessions.len();
        if open > 0 {
            tracing::info!(sessions = open, drain_timeout = ?drain, "draining sessions");
        }
        let cut = match tokio::time::timeout(drain, self.sessions.wait()).await {
            Ok(()) => 0,
            Err(_) => self.sessions.len(),
        };
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
        if cut > 0 {
            tracing::warn!(
                sessions = cut,
                "drain deadline passed; closing the sessions left"
            );
        }
        cut
    }
}
