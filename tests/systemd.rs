//! gale under a service manager, with systemd's own tools where there are
//! some: the notify messages a `NOTIFY_SOCKET` receives across start,
//! reload, drain and the watchdog (recorded by a Unix datagram socket of
//! the test's), and sockets passed by `systemd-socket-activate` (from
//! Debian's systemd package), which binds port 25 as root while gale
//! serves on it as `nobody`.

mod support;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::client::{Session, greeting_time, send_mail};
use support::conf::Conf;
use support::process::{Gale, SmtpSink, free_port, require, signal, wait_exit};

/// The messages gale sent to a notify socket, one datagram (its lines)
/// at a time, as a service manager receives them.
struct NotifySocket {
    path: PathBuf,
    datagrams: mpsc::Receiver<(Instant, Vec<String>)>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // Bounded: the thread ends once the test has dropped the receiver
        // and the next read times out.
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (tx, datagrams) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        let lines = text.lines().map(str::to_string).collect();
                        if tx.send((Instant::now(), lines)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // A timeout: stop if nobody listens any more.
                        if tx.send((Instant::now(), Vec::new())).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        NotifySocket {
            path,
            datagrams,
            _dir: dir,
        }
    }

    /// Let a gale that is not root write to it.
    fn open_to_everyone(&self) {
        let dir = self.path.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next datagram that changes the state (not a watchdog ping nor
    /// a status line alone), within `limit`.
    fn next(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (_, lines) = self
                .datagrams
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no notify message within {limit:?}"));
            let background = lines
                .iter()
                .all(|l| l == "WATCHDOG=1" || l.starts_with("STATUS="));
            if !background {
                return lines;
            }
        }
    }

    /// Skip datagrams until one has every line starting with one of
    /// `wanted`; fail with what came instead after `limit`.
    fn until(&self, wanted: &[&str], limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((_, lines)) = self.datagrams.recv_timeout(left) else {
                panic!("no notify message with {wanted:?} within {limit:?}; got {seen:#?}");
            };
            if wanted
                .iter()
                .all(|w| lines.iter().any(|l| l.starts_with(w)))
            {
                return lines;
            }
            if !lines.is_empty() && lines != ["WATCHDOG=1"] {
                seen.push(lines);
            }
        }
    }

    /// When each watchdog ping arrived during `window`.
    fn pings_during(&self, window: Duration) -> Vec<Instant> {
        let end = Instant::now() + window;
        let mut pings = Vec::new();
        while let Ok((at, lines)) = self
            .datagrams
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            if lines == ["WATCHDOG=1"] && at < end {
                pings.push(at);
            }
            if at >= end {
                break;
            }
        }
        pings
    }

    /// Forget what arrived so far.
    fn drain(&self) {
        while self.datagrams.try_recv().is_ok() {}
    }
}

/// The line of `datagram` starting with `key`, without it.
fn field<'a>(datagram: &'a [String], key: &str) -> &'a str {
    datagram
        .iter()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {datagram:?}"))
}

fn monotonic_usec() -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    i128::from(now.tv_sec) * 1_000_000 + i128::from(now.tv_nsec) / 1_000
}

fn smtp_conf(backend: SocketAddr) -> Conf {
    Conf::new()
        .smtp("in", "mta")
        .backend("mta", "a", backend)
        .set("server.drain_timeout", "20s")
}

#[test]
fn the_service_manager_hears_of_readiness_reloads_and_the_drain() {
    let sink = SmtpSink::start(free_port());
    let notify = NotifySocket::new();
    let gale = Gale::start_with_env(
        &smtp_conf(sink.address).to_string(),
        &[("NOTIFY_SOCKET", notify.path())],
    );

    // Nothing before READY=1, which comes once "gale is ready" is logged.
    let ready = notify.next(Duration::from_secs(10));
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert!(
        field(&ready, "STATUS=").starts_with("serving generation 1, 0 sessions in flight"),
        "{ready:?}"
    );

    // A reload by SIGHUP: RELOADING=1 stamped with the monotonic clock
    // at its start, then READY=1 saying how it went.
    let before = monotonic_usec();
    signal(gale.child.id(), "HUP");
    let reloading = notify.next(Duration::from_secs(10));
    let after = monotonic_usec();
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let stamp: i128 = field(&reloading, "MONOTONIC_USEC=").parse().unwrap();
    assert!(
        (before..=after).contains(&stamp),
        "{before} <= {stamp} <= {after}"
    );
    let reloaded = notify.next(Duration::from_secs(20));
    assert_eq!(reloaded[0], "READY=1", "{reloaded:?}");
    let status = field(&reloaded, "STATUS=");
    assert!(
        status.starts_with("serving generation 2,")
            && status.contains("reload to generation 2 (SIGHUP) ok"),
        "{status}"
    );

    // A reload that fails (a file change this time) ends ready too, on
    // the generation that still serves, and the status says why.
    gale.rewrite_config("[listeners.in\n");
    let reloading = notify.next(Duration::from_secs(20));
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let failed = notify.next(Duration::from_secs(20));
    assert_eq!(failed[0], "READY=1", "{failed:?}");
    let status = field(&failed, "STATUS=");
    assert!(
        status.starts_with("serving generation 2,")
            && status.contains("(file change) failed: ")
            && status.contains("gale.toml:1:"),
        "{status}"
    );

    // SIGTERM with a session open: STOPPING=1, then the count each second
    // until the session ends, then the process.
    let mut open = Session::open(gale.address("in"));
    open.command("EHLO client.test\r\n", "250");
    notify.drain();
    signal(gale.child.id(), "TERM");
    let stopping = notify.until(&["STOPPING=1"], Duration::from_secs(10));
    assert!(
        field(&stopping, "STATUS=").starts_with("draining: 1 session in flight (generation 2)"),
        "{stopping:?}"
    );
    let draining = notify.until(&["STATUS=draining"], Duration::from_secs(5));
    assert!(
        field(&draining, "STATUS=").contains("1 session in flight")
            && field(&draining, "STATUS=").contains("s left"),
        "{draining:?}"
    );
    open.send_mail();
    let stopped = notify.until(&["STATUS=stopped"], Duration::from_secs(10));
    assert_eq!(
        field(&stopped, "STATUS="),
        "stopped; 0 sessions cut by the drain deadline"
    );
    let mut gale = gale;
    let status = wait_exit(&mut gale.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_watchdog_pings_at_half_its_interval_and_stops_with_the_process() {
    let sink = SmtpSink::start(free_port());
    let notify = NotifySocket::new();
    let gale = Gale::start_with_env(
        &smtp_conf(sink.address).to_string(),
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    gale.wait_log("systemd watchdog: pinging", Duration::from_secs(5));
    let _ = notify.until(&["READY=1"], Duration::from_secs(10));

    // 200 ms: a ping every 100 ms, about 20 in 2 s (a busy machine may
    // delay some; a burst after a delay is not wanted either).
    let pings = notify.pings_during(Duration::from_secs(2));
    assert!(
        (12..=22).contains(&pings.len()),
        "{} pings in 2 s",
        pings.len()
    );
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_millis(200),
        "{longest:?} between pings"
    );

    // A gale that does not run (stopped, as a hung one would be) sends
    // none, and pings again when it runs.
    signal(gale.child.id(), "STOP");
    notify.drain();
    let while_stopped = notify.pings_during(Duration::from_millis(600));
    signal(gale.child.id(), "CONT");
    assert!(
        while_stopped.len() <= 1,
        "{} pings while stopped",
        while_stopped.len()
    );
    let _ = notify.until(&["WATCHDOG=1"], Duration::from_secs(2));
    send_mail(gale.address("in"));
}

/// A loopback address of its own with port 25, so that tests running at
/// once (or a local MTA on 127.0.0.1:25) do not collide.
fn port_25() -> SocketAddr {
    let pid = std::process::id();
    let address = format!(
        "127.{}.{}.{}:25",
        (pid >> 16) as u8 | 1,
        (pid >> 8) as u8,
        fastrand::u8(1..255)
    );
    address.parse().unwrap()
}

/// `systemd-socket-activate` listening on `address` and passing it to
/// what follows, with `options` (`--fdname=NAME`, `--datagram`, ...) and
/// these variables in the launched process's environment (it passes no
/// others).
fn socket_activate(address: SocketAddr, options: &[&str], env: &[(&str, &Path)]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        require("systemd-socket-activate").into(),
        "-l".into(),
        address.to_string().into(),
    ];
    args.extend(options.iter().map(OsString::from));
    for (name, value) in env {
        let mut pair = OsString::from(format!("{name}="));
        pair.push(value);
        args.extend(["-E".into(), pair]);
    }
    args.extend(["-E".into(), "RUST_LOG=info".into()]);
    args
}

/// Connect to `address` once something listens there (the connection
/// that makes `systemd-socket-activate` start gale).
fn connect_when_listening(address: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(stream) => return stream,
            Err(e) => assert!(Instant::now() < deadline, "{address}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A line of /proc/PID/status (`Uid:`, `CapEff:`), its fields.
fn proc_status(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn gale_serves_port_25_passed_by_systemd_as_nobody_and_keeps_it_across_reloads() {
    // SAFETY: geteuid takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "binding port 25 and becoming nobody need root (tests/run runs as root in CI)"
    );
    let sink = SmtpSink::start(free_port());
    let address = port_25();
    // Everything gale reads or writes belongs to nobody, as under a
    // unit's User=: the config and the plugin cache.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    std::fs::write(
        &config,
        smtp_conf(sink.address)
            .set("listeners.in.address", address.to_string())
            .to_string(),
    )
    .unwrap();
    for path in [dir.path(), config.as_path()] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let notify = NotifySocket::new();
    notify.open_to_everyone();

    let mut wrapper = socket_activate(
        address,
        &["--fdname=in"],
        &[
            ("GALE_CACHE_DIR", &dir.path().join("cache")),
            ("NOTIFY_SOCKET", &notify.path),
        ],
    );
    // setpriv execs (runuser would fork): gale keeps the pid that
    // LISTEN_PID names.
    wrapper.extend(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
        ]
        .map(OsString::from),
    );
    let mut first = None;
    let gale = Gale::start_via(&wrapper, config, dir, || {
        first = Some(connect_when_listening(address));
    });

    let pid = gale.child.id();
    assert_eq!(
        proc_status(pid, "Uid:"),
        ["65534"; 4],
        "gale runs as nobody"
    );
    assert_eq!(proc_status(pid, "CapEff:"), ["0000000000000000"]);
    gale.wait_line(
        &["socket passed by the service manager", "name=in", "fd=3"],
        Duration::from_secs(1),
    );
    let listening = gale.wait_line(&[" listening", "listener=in"], Duration::from_secs(1));
    assert!(
        listening.contains("socket=\"passed by the service manager\""),
        "{listening}"
    );
    assert_eq!(gale.address("in"), address);
    let ready = notify.until(&["READY=1"], Duration::from_secs(10));
    assert!(
        field(&ready, "STATUS=").starts_with("serving generation 1"),
        "{ready:?}"
    );

    // The connection that started gale is served, and so are new ones.
    let mut session = Session::greeted(first.take().unwrap());
    session.expect("220").unwrap();
    session.send_mail();
    send_mail(address);

    // A reload keeps the socket (gale could not bind port 25 again).
    signal(pid, "HUP");
    gale.wait_line(
        &["reloaded generation=2", "SIGHUP"],
        Duration::from_secs(20),
    );
    let _ = notify.until(&["READY=1"], Duration::from_secs(10));
    send_mail(address);
    let sessions = gale.wait_count("smtp session", 3, Duration::from_secs(10));
    assert!(
        sessions.iter().all(|l| l.contains("backend=a ")),
        "{sessions:#?}"
    );
    assert!(gale.log_lines("reload failed").is_empty());
    assert!(gale.log_lines("cannot bind").is_empty());
}

/// Start gale through `systemd-socket-activate` with `options` on a
/// config whose listener `in` is at `listener`; it must fail. Returns what
/// it wrote.
fn failing_start(options: &[&str], socket: SocketAddr, listener: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    let sink: SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(
        &config,
        smtp_conf(sink)
            .set("listeners.in.address", listener)
            .to_string(),
    )
    .unwrap();
    let args = socket_activate(
        socket,
        options,
        &[("GALE_CACHE_DIR", &dir.path().join("cache"))],
    );
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .arg(env!("CARGO_BIN_EXE_gale"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let output = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    // What starts gale: a connection, or for a UDP socket a datagram
    // (one sent before the socket is bound is lost: sent until gale ends).
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trigger = {
        let (started, datagram) = (started.clone(), options.contains(&"--datagram"));
        std::thread::spawn(move || {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !started.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if datagram {
                    let _ = udp.send_to(b"x", socket);
                } else if TcpStream::connect(socket).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    started.store(true, std::sync::atomic::Ordering::Relaxed);
    trigger.join().unwrap();
    let text = output.join().unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    text
}

#[test]
fn socket_activation_variables_meant_for_another_process_are_ignored() {
    // A wrapper that forked instead of exec'ing leaves its own LISTEN_*
    // (systemd always sets LISTEN_FDNAMES): gale takes nothing, starts,
    // and binds its listener itself.
    let sink = SmtpSink::start(free_port());
    let gale = Gale::start_with_env(
        &smtp_conf(sink.address).to_string(),
        &[
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "in"),
        ],
    );
    assert!(gale.log_lines("passed by").is_empty());
    send_mail(gale.address("in"));
}

#[test]
fn sockets_gale_cannot_use_stop_its_start_naming_them() {
    let at = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };

    // A name no listener has (a typo in FileDescriptorName=).
    let port = free_port();
    let text = failing_start(&["--fdname=smtp"], at(port), &format!("127.0.0.1:{port}"));
    assert!(
        text.contains(&format!(
            "gale: no listener takes `smtp` (127.0.0.1:{port}, fd 3) passed by the service manager (listeners: `in`)"
        )),
        "{text}"
    );

    // The right name, bound elsewhere than the config says.
    let port = free_port();
    let text = failing_start(&["--fdname=in"], at(port), "127.0.0.1:2");
    assert!(
        text.contains(&format!(
            "listener in: the service manager passed its socket bound to 127.0.0.1:{port}, but the config says address = \"127.0.0.1:2\""
        )),
        "{text}"
    );

    // No name at all.
    let port = free_port();
    let text = failing_start(&[], at(port), &format!("127.0.0.1:{port}"));
    assert!(
        text.contains("gale: the service manager passed 1 socket(s) without names"),
        "{text}"
    );

    // Not a TCP socket.
    let port = free_port();
    let text = failing_start(
        &["--fdname=in", "--datagram"],
        at(port),
        &format!("127.0.0.1:{port}"),
    );
    assert!(
        text.contains("gale: socket `in` passed by the service manager (fd 3) is a UDP socket"),
        "{text}"
    );
}

#[test]
fn passed_sockets_stay_with_gale_through_reloads_that_drop_change_or_restore_their_listener() {
    let sink = SmtpSink::start(free_port());
    let in_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let with_in = |protocol: &str, address: SocketAddr| {
        smtp_conf(sink.address)
            .set("listeners.in.protocol", protocol)
            .set("listeners.in.address", address.to_string())
            .set("admin.address", admin_address.to_string())
            .to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    std::fs::write(&config, with_in("smtp", in_address)).unwrap();
    let mut wrapper = socket_activate(
        in_address,
        &["--fdname=in:admin"],
        &[("GALE_CACHE_DIR", &dir.path().join("cache"))],
    );
    wrapper.splice(3..3, ["-l".into(), admin_address.to_string().into()]);
    let gale = Gale::start_via(&wrapper, config, dir, || {
        drop(connect_when_listening(in_address));
    });

    // [admin] took the socket named admin.
    let admin = gale.wait_log("admin listening", Duration::from_secs(5));
    assert!(
        admin.contains(&format!("address={admin_address}"))
            && admin.contains("socket=\"passed by the service manager\""),
        "{admin}"
    );
    let (code, _) = support::process::curl(&["-s", &format!("http://{admin_address}/status")]);
    assert_eq!(code, 200);
    send_mail(in_address);

    // A reload without listener `in`: its socket stays open, unused, and
    // the log says so.
    gale.rewrite_config(
        &smtp_conf(sink.address)
            .set("admin.address", admin_address.to_string())
            .to_string()
            .replace("[listeners.in]", "[listeners.other]"),
    );
    gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    gale.wait_line(
        &["socket `in` (", "is taken by no listener now"],
        Duration::from_secs(1),
    );

    // `in` back, as a tcp listener: the same socket again (gale could not
    // bind the address itself while the socket is open).
    gale.rewrite_config(&with_in("tcp", in_address));
    gale.wait_log("reloaded generation=3", Duration::from_secs(20));
    send_mail(in_address);
    gale.wait_line(&["tcp session", "listener=in"], Duration::from_secs(10));

    // And smtp again, through a protocol change on a kept socket.
    gale.rewrite_config(&with_in("smtp", in_address));
    gale.wait_log("reloaded generation=4", Duration::from_secs(20));
    send_mail(in_address);

    // `in` renamed at its address: the new name keeps the socket, still
    // the service manager's, and nothing is said to be left unused.
    gale.rewrite_config(
        &with_in("smtp", in_address).replace("[listeners.in]", "[listeners.renamed]"),
    );
    gale.wait_log("reloaded generation=5", Duration::from_secs(20));
    gale.wait_line(
        &[
            "listening",
            "listener=renamed",
            "passed by the service manager",
        ],
        Duration::from_secs(1),
    );
    send_mail(in_address);
    assert_eq!(gale.log_lines("is taken by no listener now").len(), 1);

    // A reload that moves `in` elsewhere than its socket fails, and the
    // running generation goes on serving on the socket.
    let elsewhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    gale.rewrite_config(&with_in("smtp", elsewhere));
    let failed = gale.wait_log("reload failed", Duration::from_secs(20));
    assert!(
        failed.contains(&format!(
            "listener in: the service manager passed its socket bound to {in_address}, but the config says address = \"{elsewhere}\""
        )),
        "{failed}"
    );
    send_mail(in_address);
    assert!(gale.log_lines("cannot bind").is_empty());

    // A protocol change that fails (another listener on a port in use)
    // leaves the passed socket's options as they were: an HTTP
    // listener's deferred accept would hold each SMTP client a second.
    // (As `in`, the name the service manager gave the socket, the HTTP
    // listener takes it as passed, not as `renamed`'s duplicate.)
    let in_use = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failing = format!(
        "{}\n[listeners.zz]\nprotocol = \"tcp\"\naddress = \"{}\"\npool = \"mta\"\n",
        with_in("http", in_address),
        in_use.local_addr().unwrap()
    );
    gale.rewrite_config(&failing);
    let failed = gale.wait_count("reload failed", 2, Duration::from_secs(20));
    assert_eq!(failed.len(), 2, "{:#?}", gale.log_lines(""));
    assert!(failed[1].contains("Address already in use"), "{failed:#?}");
    let fastest = (0..3).map(|_| greeting_time(in_address)).min().unwrap();
    assert!(
        fastest < Duration::from_millis(800),
        "greeted in {fastest:?} after a failed reload"
    );
}

#[test]
fn a_service_manager_that_stops_reading_stalls_no_session() {
    let sink = SmtpSink::start(free_port());
    // A notify socket nobody reads, and a ping every millisecond: its
    // queue is full within a second, and gale's sends would block.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let _unread = UnixDatagram::bind(&path).unwrap();
    let gale = Gale::start_with_env(
        &smtp_conf(sink.address).to_string(),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000"),
        ],
    );
    gale.wait_log(
        "the service manager is not reading notify messages; dropping them",
        Duration::from_secs(10),
    );
    let started = Instant::now();
    for _ in 0..20 {
        send_mail(gale.address("in"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "20 sessions took {:?}",
        started.elapsed()
    );
    // A reload and its notifications go through too (dropped, not waited for).
    signal(gale.child.id(), "HUP");
    gale.wait_line(
        &["reloaded generation=2", "SIGHUP"],
        Duration::from_secs(20),
    );
    send_mail(gale.address("in"));
}
