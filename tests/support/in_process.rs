//! A whole gale (config file, reloads, admin API, shutdown) run in the
//! test's own process through `gale::control`, on a runtime of its own:
//! tests ask the running server for its ports and its reloads instead of
//! reading them from log lines, and stop it when they choose.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gale::control::{Control, Running};
use gale::reload::ReloadEvent;
use tokio_util::sync::CancellationToken;

pub struct InProcess {
    pub running: Running,
    /// The config file it runs, for reload tests to rewrite.
    pub config: PathBuf,
    stop: CancellationToken,
    done: Option<tokio::task::JoinHandle<anyhow::Result<usize>>>,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Write `toml` to a file of its own and start gale on it; returns
    /// once every listener is bound.
    pub fn start(toml: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let control = runtime
            .block_on(Control::start(&config, false))
            .unwrap_or_else(|e| panic!("gale did not start: {e:#}"));
        let running = control.running();
        let stop = CancellationToken::new();
        let done = runtime.spawn(control.run(stop.clone().cancelled_owned()));
        InProcess {
            running,
            config,
            stop,
            done: Some(done),
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> SocketAddr {
        self.running
            .server
            .address(name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// Where the admin API answers now.
    pub fn admin_address(&self) -> SocketAddr {
        self.running.admin_address().expect("no admin listener")
    }

    /// The generation new sessions start on.
    pub fn generation(&self) -> u64 {
        self.running.server.current.load().id
    }

    /// Replace the config file the way editors and deploy tools do: write
    /// a new file beside it, then rename it over the old one.
    pub fn rewrite_config(&self, toml: &str) {
        let next = self.config.with_extension("toml.new");
        std::fs::write(&next, toml).unwrap();
        std::fs::rename(&next, &self.config).unwrap();
    }

    /// Reloads and rollbacks so far, oldest first.
    pub fn reloads(&self) -> Vec<ReloadEvent> {
        let mut events = self.running.history.report().events;
        events.reverse();
        events
    }

    /// Wait for a reload or rollback that `wanted` accepts; returns it.
    pub fn wait_reload(
        &self,
        wanted: impl Fn(&ReloadEvent) -> bool,
        limit: Duration,
    ) -> ReloadEvent {
        let deadline = Instant::now() + limit;
        loop {
            let events = self.reloads();
            if let Some(event) = events.iter().find(|e| wanted(e)) {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such reload within {limit:?}: {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until generation `id` serves new sessions.
    pub fn wait_generation(&self, id: u64, limit: Duration) {
        self.wait_reload(|e| e.kind == "reload" && e.ok && e.generation == id, limit);
        assert_eq!(self.generation(), id);
    }

    /// Stop accepting and drain; how many sessions the drain cut.
    pub fn stop(mut self) -> usize {
        self.stop.cancel();
        let done = self.done.take().unwrap();
        self.runtime
            .as_ref()
            .unwrap()
            .block_on(done)
            .unwrap()
            .unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
