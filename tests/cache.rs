//! The compile cache cannot become a way to run code as gale: cached
//! native code is used only from a directory no one but gale's user can
//! write, and only when its MAC shows this install wrote it for that very
//! component. Plugins run in-process through the real runtime; what the
//! runtime logs is read from a subscriber on the test's own thread.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gale::metrics::Metrics;
use gale::plugin::PluginRuntime;
use gale::pool::Pool;
use sha2::{Digest, Sha256};
use support::conf::Conf;
use support::{first_choices, parse};

/// Two pools over the same two backends: `wrr`'s weighted round-robin
/// sends half the sessions to each, `first`'s test balancer every one to
/// the first while it is up.
fn two_pools() -> Conf {
    let first_listed = support::plugin("first-listed");
    let mut conf = Conf::new()
        .set("pools.wrr.balancer.builtin", "weighted-round-robin")
        .set(
            "pools.first.balancer.path",
            first_listed.display().to_string(),
        );
    for pool in ["wrr", "first"] {
        conf = conf
            .backend(pool, "a", "127.0.0.1:30000".parse().unwrap())
            .backend(pool, "b", "127.0.0.1:30001".parse().unwrap());
    }
    conf
}

/// The pools of `conf` by name, built on a runtime caching into `cache`;
/// with the runtime's (compiled, cache hits) and what it logged at warn
/// level.
fn start(cache: &Path, conf: &Conf) -> (BTreeMap<String, Pool>, (u64, u64), String) {
    let ((pools, stats), log) = logged(|| {
        let runtime = PluginRuntime::new(Some(cache.to_path_buf())).unwrap();
        let metrics = Arc::new(Metrics::new());
        let pools = parse(conf)
            .pools
            .iter()
            .map(|p| (p.name.clone(), Pool::build(&runtime, p, &metrics).unwrap()))
            .collect();
        (pools, runtime.stats())
    });
    (pools, stats, log)
}

/// The cache entry of plugin `name` (built in, or the file of a test
/// plugin): its file name starts with the hex SHA-256 of the component's
/// bytes.
fn entry(cache: &Path, name: &str) -> PathBuf {
    let bytes = gale::plugin::builtin::bytes(name)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| std::fs::read(support::plugin(name)).unwrap());
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy();
            file.starts_with(&hex[..32]) && file.ends_with(".cwasm")
        })
        .collect();
    assert_eq!(found.len(), 1, "one entry for {name} in {found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn an_entry_copied_over_another_plugins_is_rejected_and_the_right_plugin_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (pools, stats, _) = start(&cache, &two_pools());
    assert_eq!(
        stats,
        (3, 1),
        "(compiled, cache hits): the health plugin twice"
    );
    assert_eq!(first_choices(&pools["wrr"], 100), vec![50, 50], "wrr");
    assert_eq!(
        first_choices(&pools["first"], 100),
        vec![100, 0],
        "first-listed"
    );
    drop(pools);

    std::fs::copy(
        entry(&cache, "weighted-round-robin"),
        entry(&cache, "first-listed"),
    )
    .unwrap();
    let (pools, stats, log) = start(&cache, &two_pools());
    assert_eq!(
        first_choices(&pools["first"], 100),
        vec![100, 0],
        "the first pool runs first-listed, not the code cached for another plugin"
    );
    assert_eq!(first_choices(&pools["wrr"], 100), vec![50, 50]);
    assert_eq!(stats, (1, 3), "only the rejected entry is recompiled");
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cache entry rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{log}");
    assert!(rejected[0].contains("first_listed.wasm"), "{log}");

    let (_, stats, log) = start(&cache, &two_pools());
    assert_eq!(stats, (0, 4), "the rejected entry was rewritten: {log}");
}

/// Ways the cache directory, or what is in it, can be open to others.
enum Exposure {
    /// The directory is mode 0777.
    WorldWritable,
    /// The directory belongs to `nobody`.
    OwnedByNobody,
    /// The configured path is a symlink to a good cache directory.
    Symlink,
    /// The MAC key can be read by everyone.
    KeyReadable,
}

#[test]
fn a_cache_directory_others_could_write_is_refused_and_plugins_compile_fresh() {
    for exposure in [
        Exposure::WorldWritable,
        Exposure::OwnedByNobody,
        Exposure::Symlink,
        Exposure::KeyReadable,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = dir.path().join("cache");
        let (_, stats, _) = start(&cache, &two_pools());
        assert_eq!(stats, (3, 1), "a cold cache");
        let reason = match exposure {
            Exposure::WorldWritable => {
                chmod(&cache, 0o777);
                "writable by group or others"
            }
            Exposure::OwnedByNobody => {
                std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
                "owned by uid 65534"
            }
            Exposure::Symlink => {
                let link = dir.path().join("link");
                std::os::unix::fs::symlink(&cache, &link).unwrap();
                cache = link;
                "is a symlink"
            }
            Exposure::KeyReadable => {
                chmod(&cache.join("key"), 0o644);
                "readable or writable by group or others"
            }
        };
        let (pools, stats, log) = start(&cache, &two_pools());
        assert_eq!(stats, (4, 0), "every plugin compiled, none loaded: {log}");
        assert_eq!(first_choices(&pools["first"], 100), vec![100, 0]);
        let refused: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
        assert_eq!(refused.len(), 1, "one warning per runtime: {log}");
        assert!(refused[0].contains(&cache.display().to_string()), "{log}");
        assert!(refused[0].contains(reason), "{log}");
    }
}

#[test]
fn an_entry_others_could_write_is_rejected_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let _ = start(&cache, &two_pools());
    chmod(&entry(&cache, "first-listed"), 0o666);
    let (_, stats, log) = start(&cache, &two_pools());
    assert_eq!(stats, (1, 3), "{log}");
    assert!(
        log.lines().any(|l| l.contains("cache entry rejected")
            && l.contains("first_listed.wasm")
            && l.contains("writable by group or others")),
        "{log}"
    );
    let mode = std::fs::metadata(entry(&cache, "first-listed"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "rewritten for gale's user only");
}

#[test]
fn a_new_cache_directory_and_its_key_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("new").join("cache");
    let _ = start(&cache, &two_pools());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("key")), 0o600);
    assert_eq!(std::fs::metadata(cache.join("key")).unwrap().len(), 32);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Run `f` with a subscriber on this thread that keeps every warning;
/// what `f` returned and the warnings, one per line.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let log = Log::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    (out, text)
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}
