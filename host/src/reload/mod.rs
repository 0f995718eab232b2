//! Reloading: build the next generation from the config file and the
//! plugins it names, then swap it in whole, or keep the running one and
//! say why. Triggered by SIGHUP and by changes to those files.

pub mod history;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use history::{History, ReloadEvent};
pub use watch::{FileWatcher, files_of};

use crate::config::Config;
use crate::generation::Generation;
use crate::metrics::{Metrics, ReloadLabels};
use crate::plugin::PluginRuntime;
use crate::server::Server;

/// Decisions a new generation's pool must have made before its failure
/// share can roll it back: a couple of early traps prove nothing.
const MIN_DECISIONS: u64 = 20;

pub struct Reloader {
    path: PathBuf,
    runtime: PluginRuntime,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// One reload at a time; a trigger during a reload waits its turn.
    busy: tokio::sync::Mutex<()>,
    /// The generation on probation since the last reload.
    probation: Mutex<Option<Probation>>,
    history: Arc<History>,
}

/// A freshly swapped-in generation and the one it replaced.
struct Probation {
    generation: Arc<Generation>,
    previous: Arc<Generation>,
    until: Instant,
}

impl Reloader {
    /// Reload `path`; the running generation is `current_id`.
    pub fn new(
        path: &Path,
        runtime: PluginRuntime,
        metrics: Arc<Metrics>,
        current_id: u64,
    ) -> Self {
        metrics.generation.set(current_id as i64);
        Reloader {
            path: path.to_path_buf(),
            runtime,
            metrics,
            next_id: AtomicU64::new(current_id + 1),
            busy: tokio::sync::Mutex::new(()),
            probation: Mutex::new(None),
            history: Arc::default(),
        }
    }

    /// Reloads and rollbacks so far, shared with the admin API.
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }

    /// Build, check and swap in a new generation. On any error the running
    /// generation stays, and the error says which file, line and key, or
    /// which plugin, is at fault.
    pub async fn reload(&self, server: &Server, trigger: &str) -> anyhow::Result<u64> {
        let _one = self.busy.lock().await;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let (path, runtime, metrics) = (
            self.path.clone(),
            self.runtime.clone(),
            self.metrics.clone(),
        );
        let before = server.current.load_full();
        let result = async {
            // Parsing and compiling are blocking CPU work: off the workers.
            let generation = tokio::task::spawn_blocking(move || -> anyhow::Result<Generation> {
                let config = Config::load(&path)?;
                let previous = Some(&*before);
                Ok(Generation::build_after(
                    id, &runtime, config, &metrics, previous,
                )?)
            })
            .await??;
            server.swap(generation).await
        }
        .await;
        let running = server.current.load().id;
        let mut event = ReloadEvent::now("reload", trigger, id, running);
        event.took_ms = started.elapsed().as_millis() as u64;
        event.ok = result.is_ok();
        event.error = result.as_ref().err().map(|e| format!("{e:#}"));
        self.history.record(event);
        let label = |result: &str| ReloadLabels {
            result: result.to_string(),
        };
        match result {
            Ok(previous) => {
                let generation = server.current.load_full();
                let format = generation.config.log.format;
                let until = Instant::now() + generation.config.plugins.rollback_window;
                *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = Some(Probation {
                    generation,
                    previous,
                    until,
                });
                self.metrics.reloads.get_or_create(&label("ok")).inc();
                self.metrics.generation.set(id as i64);
                tracing::info!(
                    generation = id,
                    trigger,
                    took_ms = started.elapsed().as_millis() as u64,
                    "reloaded"
                );
                // Every thread writes through the subscriber installed at
                // start: a new format waits for the next one.
                if format != crate::logging::running() {
                    tracing::warn!(
                        wanted = ?format,
                        running = ?crate::logging::running(),
                        "log.format changed: it takes effect when gale restarts"
                    );
                }
                Ok(id)
            }
            Err(e) => {
                self.metrics.reloads.get_or_create(&label("failed")).inc();
                tracing::warn!(
                    generation = running,
                    trigger,
                    "reload failed, still serving generation {running}: {e:#}"
                );
                Err(e)
            }
        }
    }
}

/// A DNS plugin must have failed this many plans before its failure
/// share can roll a generation back (plans come only on changes, retried
/// every second while one fails).
const MIN_FAILED_PLANS: u64 = 3;

/// Why a generation on probation is failing: which plugin, and the count.
struct Failing {
    what: String,
    plugin: String,
    failed: u64,
    calls: u64,
}

/// The first plugin of `generation` that failed more than `share` of its
/// calls: a pool's balancer, or the DNS plugin.
fn failing(generation: &Generation, share: f64) -> Option<Failing> {
    let over = |calls: u64, failed: u64| failed as f64 > share * calls as f64;
    let pool = generation.pools.iter().find_map(|pool| {
        let (decisions, failed) = pool.decision_counts();
        (decisions >= MIN_DECISIONS && over(decisions, failed)).then(|| Failing {
            what: format!("pool {}", pool.name),
            plugin: pool.balancer_name().to_string(),
            failed,
            calls: decisions,
        })
    });
    pool.or_else(|| {
        let dns = generation.dns.as_ref()?;
        let (plans, failed) = dns.plan_counts();
        (failed >= MIN_FAILED_PLANS && over(plans, failed)).then(|| Failing {
            what: "dns".to_string(),
            plugin: dns.name().to_string(),
            failed,
            calls: plans,
        })
    })
}

impl Reloader {
    /// Roll the last reload back if, within its window, a pool's balancer
    /// (or the DNS plugin) failed more than the configured share of its
    /// calls: trapped, ran out of time or memory, answered something the
    /// host rejects, or had no instance. Each of those calls fell back, so
    /// no session failed. Call it now and then; cheap when nothing is on
    /// probation. Returns the restored generation if it rolled back.
    pub async fn check_rollback(&self, server: &Server) -> Option<Arc<Generation>> {
        let (generation, previous) = {
            let mut probation = self.probation.lock().unwrap_or_else(|p| p.into_inner());
            let on = probation.as_ref()?;
            if server.current.load().id != on.generation.id || Instant::now() > on.until {
                *probation = None;
                return None;
            }
            (on.generation.clone(), on.previous.clone())
        };
        let Failing {
            what,
            plugin,
            failed,
            calls,
        } = failing(&generation, generation.config.plugins.rollback_share)?;
        *self.probation.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match server.restore(previous.clone()).await {
            Ok(_) => {
                let mut event = ReloadEvent::now("rollback", &what, previous.id, previous.id);
                let why = format!(
                    "{plugin} (generation {}) failed {failed} of {calls} calls (trapped, out of time or memory, answered garbage, or no instance)",
                    generation.id
                );
                event.error = Some(why.clone());
                self.history.record(event);
                self.metrics.rollbacks.inc();
                self.metrics.generation.set(previous.id as i64);
                tracing::warn!(
                    generation = generation.id,
                    "rolled back ({what}): {why}; serving generation {} again",
                    previous.id
                );
                Some(previous)
            }
            Err(e) => {
                tracing::error!(
                    generation = generation.id,
                    "rollback to generation {} failed: {e:#}",
                    previous.id
                );
                None
            }
        }
    }
}
