//! Real processes under test: the `gale` binary (bound ports read from its
//! `listening` log lines) and what reads its admin API ([`curl`],
//! [`scrape`]); the peers it is tested against ([`peers`]: Postfix
//! instances in a temp dir, `smtp-sink`, nginx, swaks) and the
//! certificates they use ([`certs`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod certs;
mod peers;

// Each test binary uses some of them, or none.
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use peers::*;

/// Fail with the install hint if a Debian peer is missing.
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run tests/run (it installs postfix, swaks, curl and nginx)");
}

/// A port on 127.0.0.1 that was free a moment ago, for peers (Postfix,
/// smtp-sink) that cannot report the port they bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for `child` to exit, at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// The gale binary running a config.
pub struct Gale {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub listeners: Vec<(String, SocketAddr)>,
    /// The config file it runs, for reload tests to rewrite.
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gale {
    /// Start `gale run` on `toml` and wait until every listener is bound.
    pub fn start(toml: &str) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        Gale::launch("run", config, dir)
    }

    /// Like [`Gale::start`], with at most `nofile` file descriptors.
    pub fn start_with_nofile(toml: &str, nofile: u64) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        Gale::launch_limited("run", config, dir, Some(nofile), &[])
    }

    /// Like [`Gale::start`], with these environment variables set.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        Gale::launch_limited("run", config, dir, None, env)
    }

    /// Like [`Gale::start`], with its plugins compiled beforehand (by
    /// `gale check` into the same cache), so that what compiling them
    /// takes is not part of the running gale's memory.
    pub fn start_warm(toml: &str) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_gale"))
            .args(["check", "--config"])
            .arg(&config)
            .env("GALE_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(check.status.success(), "gale check: {check:?}");
        Gale::launch("run", config, dir)
    }

    /// Start `gale demo` on `config` (demo backends in the process).
    pub fn demo(config: &Path) -> Gale {
        Gale::launch("demo", config.to_path_buf(), tempfile::tempdir().unwrap())
    }

    /// `gale run --config CONFIG` started by `wrapper` (a command line
    /// that runs what follows it, such as `systemd-socket-activate -l
    /// ADDR setpriv ... --`), which must pass gale the environment it
    /// needs (`GALE_CACHE_DIR`, `RUST_LOG`) itself. `trigger` runs once
    /// the wrapper is spawned, before waiting for "gale is ready": under
    /// on-demand socket activation gale starts on the first connection.
    pub fn start_via(
        wrapper: &[std::ffi::OsString],
        config: PathBuf,
        dir: tempfile::TempDir,
        trigger: impl FnOnce(),
    ) -> Gale {
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_gale"))
            .args(["run", "--config"])
            .arg(&config);
        Gale::spawn(cmd, config, dir, trigger)
    }

    /// `gale run` on `toml` answering binary upgrades on `socket`.
    pub fn start_upgradable(toml: &str, socket: &Path) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gale.toml");
        std::fs::write(&config, toml).unwrap();
        let mut cmd = Gale::command(Path::new(env!("CARGO_BIN_EXE_gale")));
        cmd.args(["run", "--config"])
            .arg(&config)
            .arg("--upgrade-socket")
            .arg(socket)
            .env("GALE_CACHE_DIR", dir.path().join("cache"))
            .env("RUST_LOG", "info");
        Gale::spawn(cmd, config, dir, || {})
    }

    /// The command line of a gale (`binary`) taking over from `self`
    /// through `socket`, on `self`'s config and plugin cache.
    pub fn take_over_command(&self, binary: &Path, socket: &Path) -> Command {
        let mut cmd = Gale::command(binary);
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .arg("--upgrade-socket")
            .arg(socket)
            .arg("--upgrade")
            .env("GALE_CACHE_DIR", self._dir.path().join("cache"))
            .env("RUST_LOG", "info");
        cmd
    }

    /// Run `cmd` (see [`Gale::take_over_command`]) and wait until it
    /// serves.
    pub fn take_over(&self, cmd: Command) -> Gale {
        let dir = tempfile::tempdir().unwrap();
        Gale::spawn(cmd, self.config.clone(), dir, || {})
    }

    /// `binary` without the service manager's variables: a test run
    /// under a service manager must not make gale talk to it; only tests
    /// that set them on purpose pass these.
    fn command(binary: &Path) -> Command {
        let mut cmd = Command::new(binary);
        for inherited in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
        ] {
            cmd.env_remove(inherited);
        }
        cmd
    }

    fn launch(command: &str, config: PathBuf, dir: tempfile::TempDir) -> Gale {
        Gale::launch_limited(command, config, dir, None, &[])
    }

    fn launch_limited(
        command: &str,
        config: PathBuf,
        dir: tempfile::TempDir,
        nofile: Option<u64>,
        env: &[(&str, &str)],
    ) -> Gale {
        let mut cmd = Gale::command(Path::new(env!("CARGO_BIN_EXE_gale")));
        cmd.envs(env.iter().copied());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, and the closure
            // touches nothing but its own copy of `n`.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args([command, "--config"])
            .arg(&config)
            .env("GALE_CACHE_DIR", dir.path().join("cache"))
            .env("RUST_LOG", "info");
        Gale::spawn(cmd, config, dir, || {})
    }

    /// Spawn `cmd` (gale, or what starts it), run `trigger`, and wait
    /// until gale says it is ready.
    fn spawn(
        mut cmd: Command,
        config: PathBuf,
        dir: tempfile::TempDir,
        trigger: impl FnOnce(),
    ) -> Gale {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // A start that failed says why in its last line, text
                // or JSON.
                let failed = line.starts_with("gale: ") || line.contains(r#""message":"gale: "#);
                if line.contains("gale is ready") || failed {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
            let _ = tx.send(String::new());
        });
        trigger();
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("gale did not start in 60 s");
        assert!(
            ready.contains("gale is ready"),
            "gale failed to start: {ready}\n{:?}",
            log.lock().unwrap()
        );
        let listeners = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| field(l, "message").as_deref() == Some("listening"))
            .filter_map(|l| {
                let address = field(l, "address")?.parse().unwrap();
                Some((field(l, "listener")?, address))
            })
            .collect();
        Gale {
            child,
            log,
            listeners,
            config,
            _dir: dir,
        }
    }

    pub fn address(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("listener")
    }

    /// The admin listener's bound address.
    /// Where the embedded DNS server answers (from its log line).
    pub fn dns_address(&self) -> SocketAddr {
        let line = self.wait_log("dns server listening", Duration::from_secs(10));
        field(&line, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    pub fn admin_address(&self) -> SocketAddr {
        let line = self.wait_log("admin listening", Duration::from_secs(10));
        field(&line, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// Replace the config file the way editors and deploy tools do: write
    /// a new file beside it, then rename it over the old one.
    pub fn rewrite_config(&self, toml: &str) {
        let next = self.config.with_extension("toml.new");
        std::fs::write(&next, toml).unwrap();
        std::fs::rename(&next, &self.config).unwrap();
    }

    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Wait until `n` log lines contain `needle`; returns them.
    pub fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.log_lines(needle);
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until a log line containing `needle` appears.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_line(&[needle], limit)
    }

    /// Wait until a log line contains every one of `needles`; on timeout
    /// the failure shows the whole log.
    pub fn wait_line(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .log_lines(needles[0])
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {limit:?}; log: {:#?}",
                self.log_lines("")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Field `key` of a log line, text (`key=value`; `message` the text
/// after the target) or JSON (`[log] format = "json"`).
pub fn field(line: &str, key: &str) -> Option<String> {
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return match &value[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        };
    }
    if key == "message" {
        // `  INFO gale::server: listening listener=in ...`
        let (_, rest) = line.split_once(": ")?;
        let words = rest.split_whitespace().take_while(|w| !w.contains('='));
        return Some(words.collect::<Vec<_>>().join(" "));
    }
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(|v| v.trim_matches('"').to_string())
}

impl Drop for Gale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP call with curl: (status, body). `args` are curl's, e.g.
/// `["-X", "POST", "http://127.0.0.1:1234/reload"]`.
pub fn curl(args: &[&str]) -> (u16, String) {
    let mut all = args.to_vec();
    all.extend(["-w", "\n%{http_code}"]);
    let text = curl_output(&all);
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// What curl writes to stdout for `args`; fails the test if curl fails.
pub fn curl_output(args: &[&str]) -> String {
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every sample of `gale`'s `/metrics`, parsed by a Prometheus text parser
/// (its admin API must be on).
pub fn scrape(gale: &Gale) -> Vec<prometheus_parse::Sample> {
    let (code, body) = curl(&[&format!("http://{}/metrics", gale.admin_address())]);
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap().samples
}

/// The sum of `metric` over the series that have `labels` (0 when none).
pub fn value(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric}: not a number: {other:?}"),
        })
        .sum()
}
