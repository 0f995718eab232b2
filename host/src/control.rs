//! The control loop: everything `gale run` does around the server. It
//! loads the config and its plugins, starts the server and the admin API,
//! drops root, then reloads on SIGHUP, on a change to any file the config
//! names and on `POST /reload`, rolls back a generation that fails its
//! probation, and on shutdown drains. Under systemd it tells the service
//! manager each of those steps (`crate::systemd`). It lives in the library
//! so tests can run a whole gale in their own process and stop it when
//! they choose.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, ReloadRequest};
use crate::config::{AdminConfig, Config};
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::plugin::PluginRuntime;
use crate::reload::{self, FileWatcher, Reloader};
use crate::server::Server;
use crate::systemd::{Notifier, PassedSockets, notify};
use crate::upgrade;

/// How often a generation on probation is checked for rollback.
const PROBATION_TICK: Duration = Duration::from_millis(250);

/// A started gale, before its loop runs: every socket bound, probes
/// running, privileges dropped.
pub struct Control {
    path: PathBuf,
    running: Running,
    reloader: Reloader,
    admin: Arc<Admin>,
    admin_listener: Option<admin::Handle>,
    reload_requests: mpsc::Receiver<ReloadRequest>,
    watcher: Option<FileWatcher>,
    /// Installed before "gale is ready": a SIGHUP sent once that line is
    /// out must reload, not kill (SIGHUP's default action).
    hangup: tokio::signal::unix::Signal,
    /// Stops the demo backends (`gale demo`) after the drain.
    demo_stop: CancellationToken,
    /// Tells systemd about readiness, reloads and the drain.
    notifier: Notifier,
    /// How the last reload or rollback went, for the status line.
    last_change: Option<String>,
    /// Requests of the task answering binary upgrades, when it runs.
    upgrades: Option<mpsc::Receiver<upgrade::Ask>>,
}

/// What the outside may look at while the loop runs: the server (its
/// generations and listener addresses), the reloads so far and where the
/// admin API answers, which a reload can move.
#[derive(Clone)]
pub struct Running {
    pub server: Arc<Server>,
    pub history: Arc<reload::History>,
    admin_address: Arc<Mutex<Option<SocketAddr>>>,
}

impl Running {
    /// The admin listener's bound address now, if there is one.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        *self.admin_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_admin(&self, handle: Option<&admin::Handle>) {
        *self.admin_address.lock().unwrap_or_else(|p| p.into_inner()) = handle.map(|h| h.address);
    }
}

impl Control {
    /// Load `path` and start serving it; with `demo`, the demo backends
    /// the shipped config names are started in this process first.
    pub async fn start(path: &Path, demo: bool) -> anyhow::Result<Control> {
        Control::start_with(path, demo, PassedSockets::none()).await
    }

    /// Like [`Control::start`], with the sockets the service manager
    /// passed (`gale run` under socket activation).
    pub async fn start_with(
        path: &Path,
        demo: bool,
        sockets: PassedSockets,
    ) -> anyhow::Result<Control> {
        // First: systemd's watchdog runs from the moment gale is started,
        // and compiling plugins may take seconds (off the workers, so the
        // pings go on meanwhile).
        let notifier = Notifier::from_env();
        notifier.spawn_watchdog();
        let path = path.to_path_buf();
        // Compiling plugins is CPU work: keep it off the async workers.
        let (runtime, generation, metrics) = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path)).await??
        };
        let (id, pools) = (generation.id, generation.pools.len());
        let demo_stop = CancellationToken::new();
        if demo {
            let config = generation.config.clone();
            let stop = demo_stop.clone();
            tokio::spawn(async move { crate::demo::run_backends(&config, stop).await });
        }
        let files = reload::files_of(&path, &generation.config);
        let reloader = Reloader::new(&path, runtime, metrics.clone(), id);
        let server = Arc::new(Server::start_with(generation, Arc::new(sockets)).await?);
        let (reload_tx, reload_requests) = mpsc::channel(8);
        let admin = Arc::new(Admin::new(
            server.clone(),
            reloader.history(),
            metrics,
            reload_tx,
        ));
        let config = server.current.load_full().config.clone();
        let admin_listener = match &config.admin {
            Some(a) => Some(admin::start(a, admin.clone()).await?),
            None => None,
        };
        // Every socket of the first generation is bound: root is no
        // longer needed. (A reload that binds a port below 1024 then
        // fails, and the running generation stays.)
        if let Some(run_as) = &config.run_as {
            crate::privileges::drop_to(run_as).map_err(anyhow::Error::msg)?;
            tracing::info!(user = %crate::privileges::current_user(), uid = run_as.uid, gid = run_as.gid, "running without root");
        }
        let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let watcher = FileWatcher::new(&files)
            .inspect_err(|e| tracing::warn!("config and plugin files are not watched: {e}"))
            .ok();
        let running = Running {
            server,
            history: reloader.history(),
            admin_address: Arc::default(),
        };
        running.set_admin(admin_listener.as_ref());
        tracing::info!(generation = id, pools, listeners = ?running.server.addresses(), "gale is ready");
        notifier.ready(&notify::serving(&running.server, None));
        Ok(Control {
            path,
            running,
            reloader,
            admin,
            admin_listener,
            reload_requests,
            watcher,
            hangup,
            demo_stop,
            notifier,
            last_change: None,
            upgrades: None,
        })
    }

    /// The server and the admin address, for whoever watches the loop.
    pub fn running(&self) -> Running {
        self.running.clone()
    }

    /// Answer binary upgrades on `listener` (`crate::upgrade`): a new
    /// gale that takes the sockets over and serves makes this one stop
    /// accepting and drain, as on SIGTERM.
    pub fn serve_upgrades(&mut self, listener: std::os::unix::net::UnixListener) {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(upgrade::serve(listener, tx));
        self.upgrades = Some(rx);
    }

    /// Start accepting, after a binary upgrade's take-over (see
    /// `Server::open`); nothing else opens a server that is not open.
    pub fn open(&self) {
        self.running.server.open();
    }

    /// Duplicates of every socket this gale serves on, for a new gale.
    fn offer(&self) -> std::io::Result<upgrade::Offered> {
        let server = &self.running.server;
        let mut sockets = server.listening()?;
        if let Some(admin) = &self.admin_listener {
            sockets.push((upgrade::Role::Admin, admin.socket()?));
        }
        Ok(upgrade::Offered {
            generation: server.current.load().id,
            sockets,
        })
    }

    /// Reload and roll back until `shutdown` completes, then stop
    /// accepting and drain. Returns how many sessions the drain deadline
    /// cut.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<usize> {
        tokio::pin!(shutdown);
        let mut probation = tokio::time::interval(PROBATION_TICK);
        // READY=1 carried the first status line.
        let mut status = tokio::time::interval_at(
            tokio::time::Instant::now() + notify::STATUS_EVERY,
            notify::STATUS_EVERY,
        );
        let mut handed_over = None;
        loop {
            let (trigger, reply) = tokio::select! {
                _ = &mut shutdown => break,
                Some(ask) = asked(self.upgrades.as_mut()) => match ask {
                    upgrade::Ask::Sockets(reply) => {
                        let _ = reply.send(self.offer());
                        continue;
                    }
                    upgrade::Ask::HandOver { to, stream } => {
                        handed_over = Some((to, stream));
                        break;
                    }
                },
                _ = status.tick(), if self.notifier.enabled() => {
                    self.notifier.status(&self.status_line());
                    continue;
                }
                _ = self.hangup.recv() => ("SIGHUP", None),
                _ = changed(self.watcher.as_mut()) => ("file change", None),
                Some(reply) = self.reload_requests.recv() => ("admin", Some(reply)),
                _ = probation.tick() => {
                    if let Some(restored) = self.reloader.check_rollback(&self.running.server).await {
                        // The admin listener follows the restored config:
                        // its address and its token, together.
                        self.follow_admin(restored.config.admin.as_ref()).await;
                        self.last_change = Some(format!("rolled back to generation {} (see the log)", restored.id));
                        self.notifier.status(&self.status_line());
                    }
                    continue;
                }
            };
            self.notifier.reloading();
            let result = self.reloader.reload(&self.running.server, trigger).await;
            // Ready again either way: a failed reload leaves the running
            // generation serving.
            self.last_change = Some(match &result {
                Ok(id) => format!("reload to generation {id} ({trigger}) ok"),
                Err(e) => format!("reload ({trigger}) failed: {}", notify::failure(e)),
            });
            self.notifier.ready(&self.status_line());
            if result.is_ok() {
                let config = self.running.server.current.load_full().config.clone();
                if let Some(w) = self.watcher.as_mut() {
                    w.watch(&reload::files_of(&self.path, &config));
                }
                self.follow_admin(config.admin.as_ref()).await;
            }
            if let Some(reply) = reply {
                let _ = reply.send(result.map_err(|e| format!("{e:#}")));
            }
        }
        // A gale asking for the sockets from now on is refused.
        self.upgrades = None;
        // Its descriptor closes too: during the drain the admin address
        // refuses connections (or, after an upgrade, the new gale answers).
        if let Some(admin) = self.admin_listener.take() {
            admin.stop();
        }
        let server = &self.running.server;
        server.stop_accepting();
        match handed_over {
            Some((to, stream)) => {
                let sessions = server.sessions_in_flight();
                tracing::info!(
                    pid = to,
                    sessions,
                    "upgraded: the new gale takes over; this one accepts nothing more and drains"
                );
                // The new gale starts accepting on this word.
                if let Err(e) = upgrade::Ask::draining(stream, sessions).await {
                    tracing::warn!(pid = to, "telling the new gale it may accept: {e}");
                }
            }
            None => tracing::info!("shutting down: no new sessions"),
        }
        self.notifier.stopping(&format!(
            "draining: {} in flight (generation {})",
            notify::sessions(server.sessions_in_flight()),
            server.current.load().id
        ));
        let cut = self
            .notifier
            .while_draining(server, server.shutdown())
            .await;
        self.demo_stop.cancel();
        self.notifier.status(&format!(
            "stopped; {} cut by the drain deadline",
            notify::sessions(cut)
        ));
        self.notifier.flush().await;
        Ok(cut)
    }

    /// What `systemctl status` shows while gale serves.
    fn status_line(&self) -> String {
        notify::serving(&self.running.server, self.last_change.as_deref())
    }

    async fn follow_admin(&mut self, wanted: Option<&AdminConfig>) {
        self.admin_listener = move_admin(self.admin_listener.take(), wanted, &self.admin).await;
        self.running.set_admin(self.admin_listener.as_ref());
    }
}

/// The next upgrade request; never, when upgrades are not served.
async fn asked(upgrades: Option<&mut mpsc::Receiver<upgrade::Ask>>) -> Option<upgrade::Ask> {
    match upgrades {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A change to a watched file; never, when nothing is watched.
async fn changed(watcher: Option<&mut FileWatcher>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// The config at `path`, a plugin runtime caching where the config says,
/// and the first generation built from them.
pub fn load(path: &Path) -> anyhow::Result<(PluginRuntime, Generation, Arc<Metrics>)> {
    let config = Config::load(path)?;
    let cache = config
        .plugins
        .cache_dir
        .clone()
        .or_else(crate::plugin::default_cache_dir);
    let runtime = PluginRuntime::new(cache)?;
    let metrics = Arc::new(Metrics::new());
    let generation = Generation::build(1, &runtime, config, &metrics)?;
    Ok((runtime, generation, metrics))
}

/// Follow a new generation's `[admin]`: bind the new address before
/// closing the old one, and check the new token. If the new address cannot
/// be bound, the old listener stays, checking the new token (or, when the
/// new config has none, the token it had): an address is never left with
/// less protection than either config gave it.
async fn move_admin(
    running: Option<admin::Handle>,
    wanted: Option<&AdminConfig>,
    admin: &Arc<Admin>,
) -> Option<admin::Handle> {
    match (running, wanted) {
        (None, None) => None,
        (Some(old), None) => {
            old.stop();
            None
        }
        (Some(old), Some(new)) if old.configured == new.address => {
            old.set_token(new.token.clone());
            Some(old)
        }
        (running, Some(new)) => match admin::start(new, admin.clone()).await {
            Ok(handle) => {
                if let Some(old) = running {
                    old.stop();
                }
                Some(handle)
            }
            Err(e) => {
                tracing::error!("{e:#}; the admin API stays where it was");
                if let Some(old) = &running {
                    old.set_token(new.token.clone().or_else(|| old.token()));
                }
                running
            }
        },
    }
}
