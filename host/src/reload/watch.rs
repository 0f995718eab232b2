//! Watching the config file and the plugins it names for changes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::{Config, PluginSource};

/// Quiet time after a file event before reloading: an editor's save is
/// several events (write, rename, chmod), and a copy of a large plugin
/// arrives in pieces.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The files a config depends on: itself and every plugin file it names.
pub fn files_of(path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    // A renewed certificate is picked up like any other change.
    for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        files.extend(tls.files.iter().cloned());
    }
    // And a backend's renewed CA.
    let backends = config.pools.iter().flat_map(|p| &p.backends);
    files.extend(backends.filter_map(|b| b.tls.as_ref()?.ca.clone()));
    for pool in &config.pools {
        let candidate = pool.candidate.as_ref().map(|c| &c.plugin);
        for spec in [Some(&pool.balancer), Some(&pool.health), candidate]
            .into_iter()
            .flatten()
        {
            if let PluginSource::File(file) = &spec.source {
                files.push(file.clone());
            }
        }
    }
    if let Some(PluginSource::File(file)) = config.dns.as_ref().map(|d| &d.plugin.source) {
        files.push(file.clone());
    }
    for spec in config
        .listeners
        .iter()
        .filter_map(|l| l.admission.plugin.as_ref())
    {
        if let PluginSource::File(file) = &spec.source {
            files.push(file.clone());
        }
    }
    files
}

/// Watches files for changes. Their folders are watched rather than the
/// files: editors and deploy tools replace a file by renaming a new one
/// over it, which a watch on the old file would never see.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    folders: HashSet<PathBuf>,
    files: Arc<Mutex<HashSet<PathBuf>>>,
    /// One pending "something changed" is all a reload needs: a capacity
    /// of one, so a file rewritten in a loop queues nothing.
    events: mpsc::Receiver<()>,
    /// When the latest change not yet reported was seen. Kept here, not in
    /// `changed`'s future, so a `select!` that drops that future loses
    /// nothing.
    last_change: Option<tokio::time::Instant>,
}

impl FileWatcher {
    pub fn new(files: &[PathBuf]) -> notify::Result<Self> {
        let watched: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let (tx, events) = mpsc::channel(1);
        let filter = watched.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reads (ours included, when reloading) are not changes.
            let change = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Modify(_)
                    | EventKind::Remove(_)
                    | EventKind::Access(AccessKind::Close(AccessMode::Write))
            );
            let files = filter.lock().unwrap_or_else(|p| p.into_inner());
            if change && event.paths.iter().any(|p| files.contains(p)) {
                let _ = tx.try_send(());
            }
        })?;
        let mut w = FileWatcher {
            watcher,
            folders: HashSet::new(),
            files: watched,
            events,
            last_change: None,
        };
        w.watch(files);
        Ok(w)
    }

    /// Watch exactly `files` from now on (a reload may name new plugins).
    pub fn watch(&mut self, files: &[PathBuf]) {
        let files: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| std::path::absolute(f).ok())
            .collect();
        let folders: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.folders.difference(&folders) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in folders.difference(&self.folders) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(folder = %new.display(), "cannot watch for changes: {e}");
            }
        }
        self.folders = folders;
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// Wait for a change, then for the files to be quiet for [`DEBOUNCE`].
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        loop {
            let event = match self.last_change {
                None => self.events.recv().await,
                Some(at) => {
                    match tokio::time::timeout_at(at + DEBOUNCE, self.events.recv()).await {
                        Ok(event) => event,
                        Err(_) => {
                            self.last_change = None;
                            return;
                        }
                    }
                }
            };
            if event.is_none() {
                // The watcher is gone: nothing will change any more.
                return std::future::pending().await;
            }
            self.last_change = Some(tokio::time::Instant::now());
        }
    }
}
