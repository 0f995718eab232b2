//! Shared test harness: builds the guest components from source (default
//! plugins in `plugins/`, hostile ones in `tests/plugins/`) and builds
//! pools from configs (built with [`conf::Conf`]) the way gale does.
#![allow(dead_code)]

pub mod browser;
pub mod client;
pub mod conf;
pub mod http;
pub mod in_process;
pub mod named;
pub mod process;
pub mod route53;
pub mod smtp;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use gale::config::Config;
use gale::generation::sample_context;
use gale::metrics::Metrics;
use gale::plugin::PluginRuntime;
use gale::pool::Pool;

use conf::Conf;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Build every guest crate of the workspace for wasm32-wasip2, once per
/// test process, into the same `target/wasm` that `host/build.rs` uses.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace();
        let target = root.join("target").join("wasm");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target)
            .args(["--workspace", "--exclude", "gale", "--exclude", "gale-sdk"])
            // Host code: the fuzz targets link gale itself.
            .args(["--exclude", "gale-fuzz"])
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .expect("running cargo to build the test plugins");
        assert!(status.success(), "building the wasm test plugins failed");
        target.join("wasm32-wasip2").join("release")
    })
}

/// A plugin of `plugins/NAME/` written in another language, built by its
/// own `build.sh` into `target/plugins/NAME.wasm` (which installs its
/// toolchain if missing and does nothing when the component is up to
/// date; `tests/run` builds them all first).
pub fn foreign_plugin(name: &str) -> PathBuf {
    // One build at a time: the toolchains are shared, and parallel tests
    // may want the same plugin.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let out = workspace()
        .join("target")
        .join("plugins")
        .join(format!("{name}.wasm"));
    let script = workspace().join("plugins").join(name).join("build.sh");
    let status = Command::new(&script)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
    out
}

/// Path of a guest component by crate name, e.g. "hostile-trap".
pub fn plugin(name: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A runtime with a private compile cache.
pub fn runtime() -> (PluginRuntime, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(Some(cache.path().to_path_buf())).unwrap();
    (runtime, cache)
}

/// Parse a config built with [`Conf`]; relative paths resolve against
/// the workspace root.
///
/// Plugin deadlines count the guest's own instructions (fuel), so a test
/// machine busy with parallel tests cannot push an honest call over its
/// deadline: tests run with the default.
pub fn parse(conf: &Conf) -> Config {
    Config::parse(&workspace().join("test.toml"), &conf.to_string())
        .unwrap_or_else(|e| panic!("test config is invalid: {e}"))
}

/// Build the first pool of `conf`.
pub fn pool(runtime: &PluginRuntime, conf: &Conf) -> (Pool, Arc<Metrics>) {
    let config = parse(conf);
    let metrics = Arc::new(Metrics::new());
    let pool = Pool::build(runtime, &config.pools[0], &metrics)
        .unwrap_or_else(|e| panic!("pool did not build: {e}"));
    (pool, metrics)
}

/// `n` decisions, counting how often each backend came first.
pub fn first_choices(pool: &Pool, n: usize) -> Vec<usize> {
    let ctx = sample_context();
    let mut counts = vec![0; pool.len()];
    for _ in 0..n {
        let decision = pool.select(&ctx);
        assert_eq!(
            decision.decider,
            gale::pool::Decider::Plugin,
            "plugin failed: {decision:?}"
        );
        counts[decision.order[0] as usize] += 1;
    }
    counts
}

/// Value of a counter in Prometheus text, parsed (not string-matched) with
/// the label set given.
pub fn counter(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics.encode();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k, v.trim_matches('"'))
            })
            .collect();
        if labels.iter().all(|l| pairs.contains(l)) {
            return value.parse().unwrap();
        }
    }
    0.0
}

/// Poll `cond` every 20 ms until it holds; fail naming `what` after `limit`.
pub async fn wait_until(mut cond: impl FnMut() -> bool, limit: std::time::Duration, what: &str) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Wait until connections to `addr` are refused (the listener is closed):
/// stopping to accept happens on the server's own schedule after the
/// shutdown starts.
pub async fn wait_refused(addr: std::net::SocketAddr, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} still accepts {limit:?} after shutdown"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
