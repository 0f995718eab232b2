//! Real processes under test: the `gale` binary (bound ports read from its
//! `listening` log lines), Postfix instances in a temp dir, `smtp-sink`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// `smtp-sink` on 127.0.0.1:`port`.
pub struct SmtpSink {
    pub child: Child,
    pub address: SocketAddr,
}

impl SmtpSink {
    pub fn start(port: u16) -> SmtpSink {
        SmtpSink::start_at(format!("127.0.0.1:{port}").parse().unwrap())
    }

    /// On `address` (any loopback address, so that DNS tests can tell
    /// backends apart).
    pub fn start_at(address: SocketAddr) -> SmtpSink {
        SmtpSink::start_with(address, &[])
    }

    /// With more of `smtp-sink`'s options, e.g. `["-r", "MAIL"]` to answer
    /// MAIL FROM with `450 4.3.0`.
    pub fn start_with(address: SocketAddr, options: &[&str]) -> SmtpSink {
        let child = Command::new(require("smtp-sink"))
            .args(["-u", "nobody"])
            .args(options)
            .args([&address.to_string(), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(address, "smtp-sink");
        SmtpSink { child, address }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An nginx of its own (config, pid, logs in a temp dir; one process, no
/// master) on 127.0.0.1:`port`, answering every request with `200` and
/// `name` as the body.
pub struct Nginx {
    pub child: Child,
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(port: u16, name: &str) -> Nginx {
        Nginx::start_with_status(port, name, 200)
    }

    /// Answering every request with `status` (`name` as the body).
    pub fn start_with_status(port: u16, name: &str, status: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n\
                   client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                   scgi_temp_path {d}/scgi;\n\
                   server {{\n    listen {address};\n\
                     location / {{ return {status} \"{name}\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new(require("nginx"))
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(address, "nginx");
        Nginx {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Nginx {
    /// Requests it answered so far (lines of its access log, written
    /// just after each response went out).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self._dir.path().join("access.log"))
            .map_or(0, |log| log.lines().count())
    }

    /// Wait up to 5 s until it has logged `n` requests; how many it has.
    pub fn wait_requests(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.requests() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.requests()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message by swaks through `server` from the loopback address `from`
/// to `to`: whether swaks succeeded, and its transcript.
pub fn swaks_from(from: &str, server: SocketAddr, to: &str) -> (bool, String) {
    let out = Command::new(require("swaks"))
        .args(["--server", &server.to_string(), "--local-interface", from])
        .args(["--from", "sender@client.test", "--to", to])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One message over SMTPS through `server` from `client_ip`: swaks'
/// transcript, or why it failed.
pub fn swaks_smtps(server: SocketAddr, client_ip: &str, to: &str) -> Result<String, String> {
    let out = Command::new(require("swaks"))
        .args(["--server", &server.to_string(), "--tls-on-connect"])
        .args(["--local-interface", client_ip, "--timeout", "10"])
        .args(["--from", "sender@client.test", "--to", to])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(transcript)
    } else {
        Err(transcript)
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (P-256, one
/// day) written into `dir` by openssl: (cert.pem, key.pem).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new(require("openssl"))
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A certificate for `names` (and 127.0.0.1) with subject `cn`, signed
/// by a CA of its own made beside it in `dir`, as `prefix`*.pem: what a
/// client that verifies (rustls, webpki) accepts once given the CA.
pub struct Signed {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_signed(dir: &Path, prefix: &str, cn: &str, names: &[&str]) -> Signed {
    let file = |suffix: &str| dir.join(format!("{prefix}{suffix}"));
    let (ca_key, ca, key, csr, cert, ext) = (
        file("-ca.key"),
        file("-ca.pem"),
        file("-key.pem"),
        file(".csr"),
        file("-cert.pem"),
        file(".ext"),
    );
    let path = |p: &PathBuf| p.display().to_string();
    let openssl = |args: &[&str]| {
        let made = Command::new(require("openssl"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca_subject = format!("/CN={cn} test CA");
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", &ca_subject];
    args.extend(ec.split(' '));
    let (ca_key_path, ca_path) = (path(&ca_key), path(&ca));
    args.extend(["-keyout", &ca_key_path, "-out", &ca_path]);
    openssl(&args);
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-subj", &subject];
    args.extend(ec.split(' '));
    let (key_path, csr_path) = (path(&key), path(&csr));
    args.extend(["-keyout", &key_path, "-out", &csr_path]);
    openssl(&args);
    let dns: String = names.iter().map(|n| format!(",DNS:{n}")).collect();
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:127.0.0.1{dns}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    let (ext_path, cert_path) = (path(&ext), path(&cert));
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &csr_path,
        "-CA",
        &ca_path,
        "-CAkey",
        &ca_key_path,
        "-CAcreateserial",
        "-extfile",
        &ext_path,
        "-out",
        &cert_path,
    ]);
    Signed { ca, cert, key }
}

/// A Postfix instance of its own (config, queue, log) in a temp dir,
/// listening on 127.0.0.1 with `smtpd_upstream_proxy_protocol = haproxy`,
/// discarding what it accepts.
pub struct Postfix {
    pub address: SocketAddr,
    /// SMTPS: the CA of its certificate (for 127.0.0.1).
    pub ca: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl Postfix {
    pub fn start() -> Postfix {
        Postfix::start_with(false, &[])
    }

    /// Like [`Postfix::start`], speaking SMTPS (implicit TLS, as on port
    /// 465: `smtpd_tls_wrappermode`) after the PROXY header, with a
    /// certificate of its own.
    pub fn start_smtps() -> Postfix {
        Postfix::start_with(true, &[])
    }

    /// Like [`Postfix::start`], without PROXY: it takes the client's
    /// address from XCLIENT, which 127.0.0.1 may send; with more main.cf
    /// `settings`.
    pub fn start_xclient(settings: &[&str]) -> Postfix {
        let mut all = vec![
            "smtpd_upstream_proxy_protocol =",
            "smtpd_authorized_xclient_hosts = 127.0.0.1",
        ];
        all.extend_from_slice(settings);
        Postfix::start_with(false, &all)
    }

    fn start_with(smtps: bool, settings: &[&str]) -> Postfix {
        let postfix = require("postfix");
        let dir = tempfile::Builder::new()
            .prefix("gale-postfix")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let port = free_port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::fs::write(
            d.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {q}\ndata_directory = {data}\n\
                 mail_owner = postfix\nsetgid_group = postdrop\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 myhostname = postfix.test\nmydestination =\nmynetworks = 127.0.0.0/8\n\
                 relay_domains = example.test\n\
                 default_transport = discard\nrelay_transport = discard\nlocal_transport = discard\n\
                 alias_maps =\nalias_database =\n\
                 maillog_file_prefixes = /tmp\nmaillog_file = {log}\n\
                 smtpd_upstream_proxy_protocol = haproxy\nsmtpd_upstream_proxy_timeout = 5s\n",
                q = d.join("queue").display(),
                data = d.join("data").display(),
                log = d.join("maillog").display(),
            ),
        )
        .unwrap();
        if !settings.is_empty() {
            Postfix::write_settings(d, settings);
        }
        let mut smtpd = String::from("smtpd");
        let mut ca = None;
        if smtps {
            let Signed {
                ca: signer,
                cert,
                key,
            } = ca_signed(&d.join("conf"), "smtpd", "postfix.test", &["postfix.test"]);
            ca = Some(signer);
            Postfix::write_settings(
                d,
                &[
                    &format!("smtpd_tls_cert_file = {}", cert.display()),
                    &format!("smtpd_tls_key_file = {}", key.display()),
                ],
            );
            smtpd.push_str(" -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt");
            // smtpd's TLS session cache and entropy.
            smtpd.push_str("\ntlsmgr unix - - n 1000? 1 tlsmgr");
        }
        std::fs::write(
            d.join("conf/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - {smtpd}\n\
                 pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
                 showq unix n - n - - showq\nerror unix - - n - - error\n\
                 retry unix - - n - - error\ndiscard unix - - n - - discard\n\
                 anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let status = Command::new(postfix)
            .arg("-c")
            .arg(d.join("conf"))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let log = std::fs::read_to_string(d.join("maillog")).unwrap_or_default();
        assert!(status.success(), "postfix did not start:\n{log}");
        let postfix = Postfix { address, ca, dir };
        // Not a probe connection: smtpd would log the missing PROXY header.
        postfix.wait_log(&["daemon started"], Duration::from_secs(15));
        postfix
    }

    /// Change one main.cf setting (`postconf -e`), e.g.
    /// `"queue_minfree = 0"`; [`Postfix::reload`] applies it.
    pub fn set(&self, setting: &str) {
        Postfix::write_settings(self.dir.path(), &[setting]);
    }

    fn write_settings(dir: &Path, settings: &[&str]) {
        let status = Command::new(require("postconf"))
            .arg("-c")
            .arg(dir.join("conf"))
            .arg("-e")
            .args(settings)
            .status()
            .unwrap();
        assert!(status.success(), "postconf -e {settings:?}");
    }

    /// Stop and start again with the settings as they are now.
    pub fn restart(&self) {
        for action in ["stop", "start"] {
            let status = Command::new(require("postfix"))
                .arg("-c")
                .arg(self.dir.path().join("conf"))
                .arg(action)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "postfix {action}");
        }
    }

    /// `postfix reload`: new smtpd processes read the changed settings.
    pub fn reload(&self) {
        let status = Command::new(require("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("reload")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "postfix reload");
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Wait until `n` maillog lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.maillog().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} maillog lines with {needle:?}:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for a maillog line containing every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .maillog()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no maillog line with {needles:?}:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(require("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("abort")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
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
