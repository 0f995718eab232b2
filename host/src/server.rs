//! The running server: binds every listener of a generation, starts the
//! health probes, swaps in new generations on reload, and on shutdown
//! stops accepting, lets sessions finish up to the drain deadline, then
//! ends the rest.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Protocol};
use crate::generation::Generation;
use crate::systemd::PassedSockets;
use crate::systemd::sockets::Source;

pub struct Server {
    /// The generation new sessions start on.
    pub current: Arc<ArcSwap<Generation>>,
    listeners: Mutex<Vec<Bound>>,
    /// Stops the current generation's probes when it is replaced.
    probes: Mutex<CancellationToken>,
    sessions: TaskTracker,
    background: TaskTracker,
    stop_accepting: CancellationToken,
    stop_background: CancellationToken,
    /// Wanted and published DNS records (`[dns]`).
    pub dns: Arc<crate::dns::DnsState>,
    /// Where the embedded DNS server answers (UDP and TCP), if it runs.
    dns_address: Option<SocketAddr>,
    /// Its sockets, duplicated, for a binary upgrade to hand over.
    dns_sockets: Option<(OwnedFd, OwnedFd)>,
    /// Sockets the service manager passed (or a gale being upgraded),
    /// which listeners of their names take instead of binding.
    sockets: Mutex<Arc<PassedSockets>>,
    /// Cancelled once listeners may accept: at once, except after a
    /// binary upgrade's take-over (see [`Server::open`]).
    open: CancellationToken,
}

/// A listener socket and its accept loop.
struct Bound {
    name: String,
    protocol: Protocol,
    /// The address in the config (port 0 stays 0 here).
    configured: SocketAddr,
    /// The address the kernel gave.
    address: SocketAddr,
    /// The socket came from the service manager or an upgraded gale.
    passed: bool,
    /// The listening socket, duplicated, for a binary upgrade to hand
    /// over; `None` once accepting has stopped.
    socket: Option<OwnedFd>,
    /// The client socket options to set at [`Server::open`]: a socket
    /// taken over from a gale that still accepts on it is left as it is
    /// until then (the options are the socket's, shared by both).
    deferred: Option<crate::listener::ClientSockets>,
    stop: CancellationToken,
}

/// A socket a binary upgrade hands over, and what it is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The TCP listener of this name.
    Listener(String),
    /// `[admin]`'s TCP listener.
    Admin,
    /// The embedded DNS server's UDP socket.
    DnsUdp,
    /// The embedded DNS server's TCP listener.
    DnsTcp,
    /// The Unix socket upgrades are asked for on.
    Upgrade,
}

/// Sockets bound for a generation that is not swapped in yet.
struct Pending {
    /// Each with the client socket options to set once the reload is
    /// committed (on a socket gale did not bind, outside an upgrade: see
    /// [`Server::bind_new`]).
    bound: Vec<(Bound, TcpListener, Option<crate::listener::ClientSockets>)>,
}

impl Server {
    /// Bind every listener and start serving `generation`.
    pub async fn start(generation: Generation) -> anyhow::Result<Server> {
        Server::start_with(generation, Arc::new(PassedSockets::none())).await
    }

    /// Like [`Server::start`], with the sockets the service manager
    /// passed: each must be taken by a listener (or `[admin]`). With
    /// sockets a gale being upgraded handed over, nothing is accepted
    /// until [`Server::open`].
    pub async fn start_with(
        generation: Generation,
        sockets: Arc<PassedSockets>,
    ) -> anyhow::Result<Server> {
        sockets.check_all_claimed(&generation.config)?;
        let open = CancellationToken::new();
        if !matches!(sockets.source(), Source::Upgrade { .. }) {
            open.cancel();
        }
        let mut server = Server {
            current: Arc::new(ArcSwap::new(Arc::new(generation))),
            listeners: Mutex::new(Vec::new()),
            probes: Mutex::new(CancellationToken::new()),
            sessions: TaskTracker::new(),
            background: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            stop_background: CancellationToken::new(),
            dns: Arc::default(),
            dns_address: None,
            dns_sockets: None,
            sockets: Mutex::new(sockets),
            open,
        };
        let generation = server.current.load_full();
        server.start_dns(&generation).await?;
        let pending = server.bind_new(&generation.config).await?;
        server.serve(pending);
        let probes = server.stop_background.child_token();
        crate::health::spawn_probes(&generation, &server.background, &probes);
        *server.probes.lock().unwrap_or_else(|p| p.into_inner()) = probes;
        Ok(server)
    }

    /// Publish `[dns]` records, and answer for the zone when the provider
    /// is the embedded server. Started once: a reload changes the records
    /// and the zone, not the address the server answers on.
    async fn start_dns(&mut self, generation: &Generation) -> anyhow::Result<()> {
        let Some(config) = &generation.config.dns else {
            return Ok(());
        };
        let stop = self.stop_background.child_token();
        match &config.provider {
            crate::config::DnsProvider::Embedded { address, .. } => {
                let (udp, tcp) = match self.sockets().for_dns(*address)? {
                    Some((udp, tcp)) => crate::dns::embedded::adopt(udp, tcp)?,
                    None => crate::dns::embedded::bind(*address)
                        .await
                        .with_context(|| format!("dns: cannot bind {address} (UDP and TCP)"))?,
                };
                let bound = udp.local_addr()?;
                self.dns_address = Some(bound);
                self.dns_sockets = Some((
                    udp.as_fd().try_clone_to_owned()?,
                    tcp.as_fd().try_clone_to_owned()?,
                ));
                tracing::info!(address = %bound, zone = %config.zone, name = %config.name, "dns server listening");
                let serve = crate::dns::embedded::serve(
                    udp,
                    tcp,
                    self.current.clone(),
                    self.dns.clone(),
                    stop.clone(),
                );
                // Like the listeners: not before `open` (a binary upgrade).
                let (open, stopped) = (self.open.clone(), stop.clone());
                self.background.spawn(async move {
                    tokio::select! {
                        _ = open.cancelled() => serve.await,
                        _ = stopped.cancelled() => {}
                    }
                });
            }
            crate::config::DnsProvider::Route53(r) => {
                tracing::info!(hosted_zone = %r.hosted_zone_id, zone = %config.zone, name = %config.name, owner = %r.owner, "dns records go to route53");
                self.background.spawn(crate::dns::route53::run(
                    self.current.clone(),
                    self.dns.clone(),
                    stop.clone(),
                ));
            }
            crate::config::DnsProvider::Rfc2136(r) => {
                tracing::info!(server = %r.server, zone = %config.zone, name = %config.name, key = %r.key_name, "dns updates go to a server");
                self.background.spawn(crate::dns::rfc2136::run(
                    self.current.clone(),
                    self.dns.clone(),
                    stop.clone(),
                ));
            }
        }
        self.background.spawn(crate::dns::run(
            self.current.clone(),
            self.dns.clone(),
            stop,
        ));
        Ok(())
    }

    /// Make `generation` current: listeners whose address did not change
    /// keep their sockets, new or moved ones are bound first (a failure
    /// leaves everything as it was), the new generation's probes start
    /// from the health state it inherited, and the old generation stays
    /// alive until its last session ends. Returns the old generation.
    pub async fn swap(&self, generation: Generation) -> anyhow::Result<Arc<Generation>> {
        self.install(Arc::new(generation)).await
    }

    /// Make an earlier generation current again (a rollback).
    pub async fn restore(&self, generation: Arc<Generation>) -> anyhow::Result<Arc<Generation>> {
        self.install(generation).await
    }

    async fn install(&self, generation: Arc<Generation>) -> anyhow::Result<Arc<Generation>> {
        let sockets = self.sockets();
        // A listener renamed at the address of a passed socket keeps it.
        let config = &generation.config;
        let held = |at: SocketAddr| {
            config
                .listeners
                .iter()
                .any(|l| l.address == at && at.port() != 0)
        };
        let unclaimed = sockets.unclaimed_but(config, held)?;
        let pending = self.bind_new(config).await?;
        // Stopped before the swap, so that what the old loop of a listener
        // that goes (or changes name or protocol) accepts in its last
        // moments is most likely served by the generation that has it: a
        // connection accepted just as the loop stops, or let through by an
        // admission plugin after a tarpit, finds its listener gone and is
        // closed (as when a reload removes a listener). A socket that
        // changes hands starts with fresh counts for `max_sessions` and
        // the per-client limits: the old loop's sessions are not in them.
        self.retire_listeners(config);
        // Before anyone can see it, and again right after the swap for
        // results recorded in between: no window where a backend known
        // dead looks healthy.
        generation.inherit(&self.current.load());
        let old = self.current.swap(generation.clone());
        generation.inherit(&old);
        // Its limits hold from now on (sessions queued for a backend whose
        // max_sessions rose look again).
        for pool in &generation.pools {
            pool.apply_limits();
        }
        self.serve(pending);
        // A passed socket left unused stays open (gale could not get it
        // back once closed), so its clients wait in the backlog: say so.
        for socket in unclaimed {
            tracing::warn!(
                "socket {socket} passed by {} is taken by no listener now; connections to it wait unanswered",
                sockets.source()
            );
        }
        let probes = self.stop_background.child_token();
        crate::health::spawn_probes(&generation, &self.background, &probes);
        let previous = std::mem::replace(
            &mut *self.probes.lock().unwrap_or_else(|p| p.into_inner()),
            probes,
        );
        previous.cancel();
        Ok(old)
    }

    /// Bind the listeners of `config` that are not bound already at
    /// the same address. One whose address another listener has now (a
    /// listener whose protocol or name changed, or two that swapped
    /// addresses) takes a duplicate of that socket: binding it again
    /// would fail, and closing it first would refuse connections. Its
    /// options change only in [`Server::serve`], once the reload cannot
    /// fail: the other listener serves on it until then.
    async fn bind_new(&self, config: &Config) -> anyhow::Result<Pending> {
        let passed = self.sockets();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let taken = {
                let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
                let kept = listeners.iter().any(|b| {
                    b.name == l.name && b.configured == l.address && b.protocol == l.protocol
                });
                if kept {
                    continue;
                }
                // Port 0 asks the kernel for a new port each time.
                listeners
                    .iter()
                    .find(|b| b.configured == l.address && l.address.port() != 0)
                    .and_then(|b| Some((b.socket.as_ref()?.try_clone(), b.passed)))
            };
            let sockets = match l.protocol {
                Protocol::Http => crate::listener::ClientSockets {
                    user_timeout: Some(crate::http::DEAD_PEER_TIMEOUT),
                    client_speaks_first: true,
                },
                // gale greets first; behind a tcp listener the backend may
                // (LMTP), and a deferred accept would stall its greeting.
                Protocol::Smtp | Protocol::Tcp => crate::listener::ClientSockets {
                    user_timeout: None,
                    client_speaks_first: false,
                },
            };
            // A socket gale did not bind here gets its options later: set
            // now they would change a socket that a gale being upgraded
            // still accepts on (they are set at `open`), or that a listener
            // of the running generation accepts on while this reload may
            // still fail (they are set in `serve`).
            let upgrading = matches!(passed.source(), Source::Upgrade { .. });
            let (socket, passed, bound_here) =
                match (passed.for_listener(&l.name, l.address)?, taken) {
                    (Some(passed), _) => {
                        let socket = crate::listener::adopt(passed).with_context(|| {
                            format!("listener {}: the socket passed for it", l.name)
                        })?;
                        (socket, true, false)
                    }
                    (None, Some((socket, passed))) => {
                        let socket = socket.with_context(|| {
                            format!(
                                "listener {}: duplicating the socket at {}",
                                l.name, l.address
                            )
                        })?;
                        let socket = crate::listener::adopt(socket.into()).with_context(|| {
                            format!("listener {}: the socket at {}", l.name, l.address)
                        })?;
                        (socket, passed, false)
                    }
                    (None, None) => {
                        let socket =
                            crate::listener::bind(l.address, sockets).with_context(|| {
                                format!("listener {}: cannot bind {}", l.name, l.address)
                            })?;
                        (socket, false, true)
                    }
                };
            let later = (!bound_here && !upgrading).then_some(sockets);
            let address = socket.local_addr()?;
            let stop = self.stop_accepting.child_token();
            let b = Bound {
                name: l.name.clone(),
                protocol: l.protocol,
                configured: l.address,
                address,
                passed,
                socket: Some(socket.as_fd().try_clone_to_owned()?),
                deferred: (!bound_here && upgrading).then_some(sockets),
                stop,
            };
            bound.push((b, socket, later));
        }
        Ok(Pending { bound })
    }

    /// Start accepting on the sockets [`Server::bind_new`] got.
    fn serve(&self, pending: Pending) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (b, socket, options) in pending.bound {
            if let Some(options) = options {
                let socket = socket2::SockRef::from(&socket);
                if let Err(e) = crate::listener::set_client_options(&socket, b.address, options) {
                    tracing::warn!(listener = %b.name, "setting the socket's options: {e}");
                }
            }
            // Logged before "gale is ready": tests and scripts read the port
            // the kernel chose from this line.
            if b.passed {
                let from = self.sockets().source();
                tracing::info!(listener = %b.name, address = %b.address, socket = ?format!("passed by {from}"), "listening");
            } else {
                tracing::info!(listener = %b.name, address = %b.address, "listening");
            }
            let accept = crate::listener::Accept {
                name: b.name.clone(),
                protocol: b.protocol,
                current: self.current.clone(),
                sessions: self.sessions.clone(),
                shutdown: b.stop.clone(),
                open: self.open.clone(),
                buffers: crate::buffers::Buffers::new(
                    self.current
                        .load()
                        .metrics
                        .listener_buffers
                        .get_or_create(&crate::metrics::ListenerLabels {
                            listener: b.name.clone(),
                        })
                        .clone(),
                ),
            };
            match b.protocol {
                Protocol::Smtp => self.background.spawn(crate::smtp::serve(socket, accept)),
                Protocol::Http => self.background.spawn(crate::http::serve(socket, accept)),
                Protocol::Tcp => self.background.spawn(crate::tcp::serve(socket, accept)),
            };
            // A listener that moved: the old socket stopped in
            // retire_listeners.
            listeners.push(b);
        }
    }

    /// Stop accepting on listeners `config` (the one being installed) no
    /// longer has at their address with their protocol; their sessions
    /// carry on.
    fn retire_listeners(&self, config: &Config) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|b| {
            let wanted = config
                .listeners
                .iter()
                .any(|l| l.name == b.name && l.address == b.configured && l.protocol == b.protocol);
            if !wanted {
                tracing::info!(listener = %b.name, address = %b.address, "listener removed by reload");
                b.stop.cancel();
            }
            wanted
        });
    }

    /// (listener name, bound address) of every listener accepting now:
    /// with port 0 in the config, the address the kernel chose.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|b| (b.name.clone(), b.address))
            .collect()
    }

    /// The sockets the service manager passed (none outside systemd),
    /// or a gale being upgraded handed over until [`Server::open`].
    pub fn sockets(&self) -> Arc<PassedSockets> {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Start accepting after a binary upgrade's take-over, once the old
    /// gale has stopped (clients wait in the backlog meanwhile), and let
    /// go of the handed-over sockets no listener took: from now on this
    /// gale binds and closes its listeners' sockets as if it had always
    /// run (a reload may move one; a removed one closes).
    pub fn open(&self) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let upgraded = matches!(sockets.source(), Source::Upgrade { .. });
        if upgraded {
            *sockets = Arc::new(PassedSockets::none());
        }
        drop(sockets);
        for b in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            // Its own now (a reload that renames the listener must not
            // say "passed by the service manager").
            if upgraded {
                b.passed = false;
            }
            if let (Some(options), Some(socket)) = (b.deferred.take(), &b.socket) {
                let socket = socket2::SockRef::from(socket);
                if let Err(e) = crate::listener::set_client_options(&socket, b.address, options) {
                    tracing::warn!(listener = %b.name, "setting the socket's options: {e}");
                }
            }
        }
        self.open.cancel();
    }

    /// Resolves once listeners may accept (see [`Server::open`]).
    pub async fn opened(&self) {
        self.open.cancelled().await
    }

    /// Sessions (and refusals being written) not ended yet, on every
    /// generation.
    pub fn sessions_in_flight(&self) -> usize {
        self.sessions.len()
    }

    /// The embedded DNS server's bound address (UDP and TCP).
    pub fn dns_address(&self) -> Option<SocketAddr> {
        self.dns_address
    }

    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.addresses()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Duplicates of every socket gale serves on now (listeners and the
    /// embedded DNS server's), for a binary upgrade to hand over.
    pub fn listening(&self) -> std::io::Result<Vec<(Role, OwnedFd)>> {
        let mut sockets = Vec::new();
        for b in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(socket) = &b.socket {
                sockets.push((Role::Listener(b.name.clone()), socket.try_clone()?));
            }
        }
        if let Some((udp, tcp)) = &self.dns_sockets {
            sockets.push((Role::DnsUdp, udp.try_clone()?));
            sockets.push((Role::DnsTcp, tcp.try_clone()?));
        }
        Ok(sockets)
    }

    /// Stop accepting new sessions: the accept loops end and close their
    /// sockets (each closes for good unless another process holds it: a
    /// gale that took over, or the service manager).
    pub fn stop_accepting(&self) {
        self.stop_accepting.cancel();
        for b in self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            b.socket = None;
        }
    }

    /// Stop accepting, wait up to the config's drain timeout for sessions
    /// in flight, then stop everything. Returns how many sessions were cut.
    pub async fn shutdown(&self) -> usize {
        let drain = self.current.load().config.drain_timeout;
        self.stop_accepting();
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
