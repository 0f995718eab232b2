//! The Debian package on this machine, as an operator gets it: built by
//! cargo-deb from the binary under test and its `gale man`, lintian clean
//! at the warning level, installed with dpkg, started as its unit says,
//! mail sent through it with swaks, reloaded and stopped as its unit says,
//! then purged, leaving nothing behind.
//!
//! No systemd runs in this container, so the unit's ExecStartPre,
//! ExecStart and ExecReload lines are run by hand, read from the installed
//! unit file, as its User= and Group= with its Environment= and nothing
//! else; `systemd-analyze verify` checks the unit itself.
//!
//! The test changes the machine (a package, the gale user, /etc/gale): it
//! is one test function, holds a lock on /run/lock against another
//! checkout's suite doing the same, and purges the package on the way out
//! even when an assertion fails. Needs root (it skips, saying so, without).

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{SmtpSink, free_port, require, wait_listening};

const UNIT: &str = "/usr/lib/systemd/system/gale.service";
const CONFIG: &str = "/etc/gale/gale.toml";
const CACHE: &str = "/var/cache/gale";

#[test]
fn the_package_installs_serves_mail_as_its_unit_says_and_purges_clean() {
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the package test installs a package and needs root");
        return;
    }
    for tool in ["dpkg", "lintian", "swaks", "smtp-sink", "systemd-analyze"] {
        require(tool);
    }
    let _lock = MachineLock::take();
    assert!(
        !installed(),
        "a gale package is installed on this machine; the test installs and purges its own: \
         dpkg --purge gale first"
    );
    let mut times = Vec::new();
    let dir = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let deb = build(dir.path());
    times.push(("cargo deb", started.elapsed()));

    let started = Instant::now();
    lintian(&deb);
    times.push(("lintian", started.elapsed()));

    let started = Instant::now();
    let mut package = Package::install(&deb);
    times.push(("dpkg -i", started.elapsed()));
    installed_as_documented();

    let started = Instant::now();
    serve_mail_as_the_unit_says(&mut package, dir.path());
    times.push(("serve", started.elapsed()));

    let started = Instant::now();
    package.purge();
    times.push(("dpkg --purge", started.elapsed()));
    purged_clean();

    eprintln!("package test times: {times:?}");
}

/// `dist/deb/cargo-deb` (installed on first use) packaging the binary
/// under test, without building it again: `cargo test --release` just
/// did, and a cargo build here would wait on this test's own cargo.
fn build(dir: &Path) -> PathBuf {
    let root = support::workspace();
    let page = run(Command::new(env!("CARGO_BIN_EXE_gale")).arg("man"));
    std::fs::create_dir_all(root.join("target/man")).unwrap();
    std::fs::write(root.join("target/man/gale.1"), &page.stdout).unwrap();
    let deb = dir.join("gale.deb");
    run(Command::new(root.join("dist/deb/cargo-deb"))
        .current_dir(&root)
        // xz at its default level takes ~15 s more for the same files.
        .args(["--no-build", "--fast", "-p", "gale", "--output"])
        .arg(&deb));
    deb
}

/// No warning or error; the overrides in the package carry their reasons.
fn lintian(deb: &Path) {
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{text}");
    assert!(out.status.success(), "lintian failed:\n{text}");
    let flagged: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
        .collect();
    assert!(flagged.is_empty(), "lintian: {flagged:#?}");
}

/// Everything the package promises, checked after `dpkg -i`.
fn installed_as_documented() {
    let version = run(Command::new("/usr/bin/gale").arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("gale {}", env!("CARGO_PKG_VERSION"))
    );
    let (uid, gid) = gale::privileges::user_ids("gale").expect("postinst creates the gale user");
    assert!(uid < 1000, "gale is a system user (uid {uid})");
    let cache = std::fs::metadata(CACHE).unwrap();
    assert_eq!((cache.uid(), cache.gid()), (uid, gid), "{CACHE} is gale's");
    assert_eq!(cache.permissions().mode() & 0o777, 0o700, "{CACHE}");
    // Readable by gale's group only: it may hold the admin token.
    let config = std::fs::metadata(CONFIG).unwrap();
    assert_eq!((config.uid(), config.gid()), (0, gid), "{CONFIG}");
    assert_eq!(config.permissions().mode() & 0o777, 0o640, "{CONFIG}");
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "gale"]));
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains(CONFIG),
        "{CONFIG} is a conffile: {conffiles:?}"
    );
    let shipped = std::fs::read_to_string(support::workspace().join("config/gale.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), shipped);
    // The man page, compressed where man looks for it.
    let page = run(Command::new("zcat").arg("/usr/share/man/man1/gale.1.gz"));
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH GALE 1"));
    // dist/deb/changelog follows the version (lintian does not compare).
    let changelog = run(Command::new("zcat").arg("/usr/share/doc/gale/changelog.Debian.gz"));
    let first = String::from_utf8_lossy(&changelog.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.starts_with(&format!("gale ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "dist/deb/changelog needs an entry for this version: {first}"
    );
    // Enabled the way deb-systemd-helper does without a running systemd.
    assert!(Path::new("/etc/systemd/system/multi-user.target.wants/gale.service").exists());
    // The unit, and the socket example beside it, as systemd reads them
    // (the binary and the man page they name are installed now).
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT, "/usr/share/doc/gale/examples/gale.socket"])
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// The unit's lines, run by hand: the shipped config passes ExecStartPre
/// as it is; then, pointed at a test backend and free ports (what an
/// operator's first edit does), ExecStart serves mail, ExecReload reloads
/// it and KillSignal stops it within TimeoutStopSec.
fn serve_mail_as_the_unit_says(package: &mut Package, dir: &Path) {
    let unit = Unit::read(Path::new(UNIT));
    assert_eq!(unit.one("Type"), "notify");
    for check in unit.all("ExecStartPre") {
        unit.run_as_user(&check);
    }

    let dumps = dir.join("mail");
    std::fs::create_dir(&dumps).unwrap();
    // smtp-sink writes as nobody.
    std::fs::set_permissions(&dumps, std::fs::Permissions::from_mode(0o777)).unwrap();
    let template = format!("{}/", dumps.display());
    let sink = SmtpSink::start_with(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &["-d", &template],
    );
    let submission: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    point_config_at(sink.address, submission);

    let start = unit.all("ExecStart").remove(0);
    let gale = package.start(unit.spawn_as_user(&start));
    gale.wait_log(&["gale is ready"]);
    wait_listening(submission, "gale's submission listener");
    send_mail(submission, "first");
    assert!(delivered(&dumps, "first"), "the sink got no mail");

    let pid = gale.child.id().to_string();
    for reload in unit.all("ExecReload") {
        let line: Vec<String> = reload.iter().map(|w| w.replace("$MAINPID", &pid)).collect();
        unit.run_as_user(&line);
    }
    gale.wait_log(&["reloaded", "SIGHUP"]);
    send_mail(submission, "after-reload");
    assert!(delivered(&dumps, "after-reload"));

    // Compiled plugins were cached where the unit points gale, as gale.
    let (uid, _) = gale::privileges::user_ids(&unit.one("User")).unwrap();
    let entries: Vec<_> = std::fs::read_dir(CACHE).unwrap().flatten().collect();
    assert!(
        entries.len() > 1,
        "{CACHE} holds the key and compiled plugins"
    );
    for e in &entries {
        assert_eq!(e.metadata().unwrap().uid(), uid, "{:?}", e.path());
    }

    assert_eq!(unit.one("KillSignal"), "SIGTERM");
    let limit = humantime::parse_duration(&unit.one("TimeoutStopSec")).unwrap();
    let status = package.stop(limit);
    assert!(status.success(), "gale exited with {status} after SIGTERM");
}

/// The installed config, edited as an operator would for this machine:
/// the mail pool's first backend is the test's sink, the others and the
/// web pool's backends are free ports (down: probes and retries move on),
/// and every address gale binds is a free port.
fn point_config_at(sink: SocketAddr, submission: SocketAddr) {
    let mut config: toml::Table = std::fs::read_to_string(CONFIG).unwrap().parse().unwrap();
    let free = || toml::Value::String(format!("127.0.0.1:{}", free_port()));
    table(&mut config, &["listeners", "submission"])
        .insert("address".into(), submission.to_string().into());
    for path in [&["admin"][..], &["listeners", "api"], &["dns", "embedded"]] {
        table(&mut config, path).insert("address".into(), free());
    }
    for (pool, first) in [("mta", Some(sink)), ("web", None)] {
        let backends = table(&mut config, &["pools", pool])
            .get_mut("backends")
            .and_then(|b| b.as_array_mut())
            .unwrap();
        for (i, backend) in backends.iter_mut().enumerate() {
            let address = match first {
                Some(sink) if i == 0 => sink.to_string().into(),
                _ => free(),
            };
            backend
                .as_table_mut()
                .unwrap()
                .insert("address".into(), address);
        }
    }
    // In place: the file keeps its owner and mode.
    std::fs::write(CONFIG, toml::to_string(&config).unwrap()).unwrap();
}

/// The table at `path` (["listeners", "api"]: `[listeners.api]`).
fn table<'a>(config: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut at = config;
    for key in path {
        at = at
            .get_mut(*key)
            .and_then(|v| v.as_table_mut())
            .unwrap_or_else(|| panic!("no [{}] in the shipped config", path.join(".")));
    }
    at
}

fn send_mail(server: SocketAddr, marker: &str) {
    run(Command::new("swaks")
        .args(["--server", &server.to_string()])
        .args(["--from", "sender@example.test", "--to", "rcpt@example.test"])
        .args(["--header", &format!("Subject: package test {marker}")])
        .args(["--body", &format!("marker={marker}")]));
}

/// Whether a message with `marker` reached the sink (it dumps each).
fn delivered(dumps: &Path, marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir(dumps).unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|m| m.contains(&format!("marker={marker}")))
        });
        if found || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After `dpkg --purge`: no package, no config, no cache, no unit, no
/// override, nothing of gale's user left (the user itself stays, as
/// Debian leaves system users: postrm says why).
fn purged_clean() {
    assert!(!installed(), "dpkg still lists gale");
    for gone in [
        "/etc/gale",
        CACHE,
        "/usr/bin/gale",
        UNIT,
        "/etc/systemd/system/multi-user.target.wants/gale.service",
        "/usr/share/man/man1/gale.1.gz",
        "/usr/share/doc/gale",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    let overrides = run(Command::new("dpkg-statoverride").arg("--list"));
    assert!(
        !String::from_utf8_lossy(&overrides.stdout).contains("/etc/gale"),
        "the config's statoverride is left"
    );
    let left = run(Command::new("find")
        .args(["/etc", "/var", "/usr", "/run", "-xdev", "-user", "gale"])
        .stderr(Stdio::null()));
    assert!(
        left.stdout.is_empty(),
        "files of the gale user are left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "gale"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout != b"not-installed")
}

/// dpkg with `args`, waiting while another dpkg or apt holds its lock (up
/// to two minutes): other work on this machine may install packages.
fn dpkg(args: &[&std::ffi::OsStr]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("dpkg").args(args).output().unwrap();
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("lock") && Instant::now() < deadline,
            "dpkg {args:?}: {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Run `cmd` to the end; fail with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The installed package, and the gale started from its unit: stopped and
/// purged when dropped, so a failed assertion leaves the machine as it
/// was.
struct Package {
    gale: Option<Running>,
}

struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Wait until a log line contains every one of `needles`.
    fn wait_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log.lock().unwrap();
            if log.iter().any(|l| needles.iter().all(|n| l.contains(n))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?}; log: {:#?}",
                *log
            );
            drop(log);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Package {
    fn install(deb: &Path) -> Package {
        // Made first: a postinst that fails half-way is purged too.
        let package = Package { gale: None };
        dpkg(&["-i".as_ref(), deb.as_os_str()]);
        package
    }

    fn start(&mut self, mut child: Child) -> &Running {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        self.gale.insert(Running { child, log })
    }

    /// SIGTERM, as systemd's KillSignal= sends it; the exit status once
    /// gale has drained, within `limit`.
    fn stop(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut gale = self.gale.take().expect("gale runs");
        support::process::signal(gale.child.id(), "TERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = gale.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = gale.child.kill();
                panic!(
                    "gale did not exit within {limit:?} of SIGTERM; log: {:#?}",
                    gale.log.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn purge(&mut self) {
        if let Some(mut gale) = self.gale.take() {
            let _ = gale.child.kill();
            let _ = gale.child.wait();
        }
        dpkg(&["--purge".as_ref(), "gale".as_ref()]);
    }
}

impl Drop for Package {
    fn drop(&mut self) {
        if let Some(gale) = &mut self.gale {
            let _ = gale.child.kill();
            let _ = gale.child.wait();
        }
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "gale"]).output();
        }
    }
}

/// The `[Service]` settings of a unit file, in order (a key may repeat).
struct Unit {
    settings: Vec<(String, String)>,
}

impl Unit {
    fn read(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let mut section = "";
        let mut settings = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                section = line;
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "continued lines are not read here: {line}"
            );
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            if section == "[Service]" {
                settings.push((key.to_string(), value.to_string()));
            }
        }
        Unit { settings }
    }

    fn all(&self, key: &str) -> Vec<Vec<String>> {
        self.settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| {
                // Quotes and specifiers would need systemd's own parser.
                assert!(!v.contains(['"', '\'', '%']), "{key}={v}");
                v.split_whitespace().map(String::from).collect()
            })
            .collect()
    }

    fn one(&self, key: &str) -> String {
        let all = self.all(key);
        assert_eq!(all.len(), 1, "one {key}= in the unit");
        all[0].join(" ")
    }

    /// `line` as systemd starts it: as User= and Group=, in /, with only
    /// the unit's Environment= and what systemd itself sets.
    fn command(&self, line: &[String]) -> Command {
        let user = self.one("User");
        let (uid, _) = gale::privileges::user_ids(&user).unwrap();
        let gid = gale::privileges::group_id(&self.one("Group")).unwrap();
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..])
            .current_dir("/")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("USER", &user)
            .env("LOGNAME", &user)
            .env("HOME", CACHE)
            .env("RUST_LOG", "info")
            // std drops the supplementary groups too.
            .uid(uid)
            .gid(gid);
        for assignments in self.all("Environment") {
            for assignment in assignments {
                let (k, v) = assignment.split_once('=').expect("Environment=K=V");
                cmd.env(k, v);
            }
        }
        cmd
    }

    fn run_as_user(&self, line: &[String]) -> Output {
        run(&mut self.command(line))
    }

    fn spawn_as_user(&self, line: &[String]) -> Child {
        self.command(line)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// One package test per machine at a time: another checkout's suite would
/// install and purge the same package under this one. flock, so a killed
/// test leaves no stale lock.
struct MachineLock {
    _held: File,
}

impl MachineLock {
    fn take() -> MachineLock {
        let file = File::create("/run/lock/gale-package-test.lock")
            .or_else(|_| File::create(std::env::temp_dir().join("gale-package-test.lock")))
            .unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the call; flock touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        MachineLock { _held: file }
    }
}
