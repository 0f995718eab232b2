//! Binary upgrade: a second gale binary (a copy of the one under test)
//! takes over the running gale's sockets through `--upgrade-socket` and
//! `--upgrade`, under smtp-source and wrk load, and the old one drains
//! and exits; a new gale that cannot start leaves the old one serving;
//! the upgrade socket refuses strangers.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::named::dig;
use support::process::{
    Gale, Nginx, SmtpSink, free_port, require, scrape, swaks_from, value, wait_exit,
};

/// SMTP listener `in` on pool `mta` (two smtp-sinks), HTTP listener
/// `web` on pool `www` (nginx), the admin API and the embedded DNS
/// server publishing `mta`: every kind of socket gale hands over.
fn config(sinks: &[&SmtpSink], nginx: &Nginx) -> String {
    let mut conf = Conf::new()
        .smtp("in", "mta")
        .http("web", "www")
        .admin()
        .probe("mta", "tcp", "200ms", "200ms")
        .backend("www", "nginx", nginx.address)
        .set("dns.provider", "embedded")
        .set("dns.embedded.address", "127.0.0.1:0")
        .set("dns.embedded.rate_limit", 0)
        .set("dns.zone", "example.test.")
        .set("dns.name", "mx.example.test.")
        .set("dns.pool", "mta")
        .set("server.drain_timeout", "20s");
    for (i, sink) in sinks.iter().enumerate() {
        conf = conf.backend("mta", &format!("sink{i}"), sink.address);
    }
    conf.to_string()
}

/// A copy of the gale binary: the "new version" an upgrade installs.
fn new_binary(dir: &Path) -> PathBuf {
    let copy = dir.join("gale-new");
    std::fs::copy(env!("CARGO_BIN_EXE_gale"), &copy).unwrap();
    copy
}

/// An SMTP session opened through gale and left waiting after EHLO.
struct HeldSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HeldSession {
    fn open(address: SocketAddr) -> HeldSession {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        let mut session = HeldSession {
            reader: BufReader::new(stream),
            writer,
        };
        assert!(session.reply().starts_with("220"));
        session.say("EHLO held.test");
        assert!(session.reply().starts_with("250"));
        session
    }

    fn say(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    /// The last line of a (multi-line) reply.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    /// Send a message and quit; the reply to the message's end.
    fn finish(mut self) -> String {
        for (line, want) in [
            ("MAIL FROM:<held@client.test>", "250"),
            ("RCPT TO:<b@example.test>", "250"),
            ("DATA", "354"),
        ] {
            self.say(line);
            let reply = self.reply();
            assert!(reply.starts_with(want), "{line}: {reply}");
        }
        self.say("Subject: held\r\n\r\nsent after the upgrade\r\n.");
        let queued = self.reply();
        self.say("QUIT");
        queued
    }
}

fn smtp_source(address: SocketAddr, messages: usize) -> Child {
    Command::new(require("smtp-source"))
        .args(["-s", "8", "-m", &messages.to_string()])
        .args(["-f", "a@client.test", "-t", "b@example.test"])
        .arg(address.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wrk(address: SocketAddr, seconds: u32) -> Child {
    Command::new(require("wrk"))
        .args(["-t", "1", "-c", "16", "-d", &format!("{seconds}s")])
        .arg(format!("http://{address}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child` (bounded by its own arguments), with a limit.
fn finished(mut child: Child, what: &str, limit: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{what} still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Wait until `gale`'s metric `metric` for `listener` reaches `n`.
fn wait_metric(gale: &Gale, metric: &str, listener: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = value(&scrape(gale), metric, &[("listener", listener)]);
        if v >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}{{listener={listener}}} is {v}, not {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upgrade_under_load_refuses_nothing_and_the_old_gale_drains_then_exits() {
    let sinks = [SmtpSink::start(free_port()), SmtpSink::start(free_port())];
    let nginx = Nginx::start(free_port(), "www");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let mut old = Gale::start_upgradable(&config(&[&sinks[0], &sinks[1]], &nginx), &socket);
    let (smtp, web, admin) = (old.address("in"), old.address("web"), old.admin_address());
    let dns = old.dns_address();
    // Private: only gale's uid and root may ask it for its sockets.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // A session the old gale must carry to its end after handing over.
    let held = HeldSession::open(smtp);
    let messages = 4000;
    let source = smtp_source(smtp, messages);
    let load = wrk(web, 6);
    // Under way on the old gale before the upgrade starts.
    wait_metric(&old, "gale_sessions_total", "in", 200.0);
    wait_metric(&old, "gale_http_requests_total", "web", 200.0);

    let binary = new_binary(dir.path());
    let started = Instant::now();
    let new = old.take_over(old.take_over_command(&binary, &socket));
    let took = new.wait_log("took over: the old gale stopped", Duration::from_secs(10));
    eprintln!("took over in {:?}: {took}", started.elapsed());
    assert!(took.contains(&format!("pid={}", old.child.id())), "{took}");
    // The new gale serves on the same addresses, the sockets it was given.
    assert_eq!(new.address("in"), smtp);
    assert_eq!(new.address("web"), web);
    assert_eq!(new.admin_address(), admin);
    assert_eq!(new.dns_address(), dns);
    assert!(
        new.log_lines("passed by the gale upgraded from").len() >= 3,
        "{:?}",
        new.log_lines("listening")
    );
    old.wait_log("upgraded: the new gale takes over", Duration::from_secs(5));
    // Both loads were still running: the upgrade happened under them.
    assert!(
        running(&source) && running(&load),
        "the load ended before the upgrade; make it longer"
    );

    let (ok, _, errors) = finished(source, "smtp-source", Duration::from_secs(60));
    assert!(
        ok && errors.trim().is_empty(),
        "smtp-source saw errors:\n{errors}"
    );
    let (ok, report, errors) = finished(load, "wrk", Duration::from_secs(30));
    assert!(ok, "wrk: {errors}");
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "wrk saw failures:\n{report}"
    );
    eprintln!("smtp-source: {messages} messages, no error; wrk:\n{report}");
    // The new gale took part of both loads, and the embedded DNS server
    // answers from the socket it was given.
    wait_metric(&new, "gale_sessions_total", "in", 1.0);
    wait_metric(&new, "gale_http_requests_total", "web", 1.0);
    let answer = dig(dns, &["+short", "mx.example.test", "A"]);
    assert!(answer.contains("127.0.0.1"), "{answer}");

    // The old gale waits for its last session, then exits by itself.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old gale left a session behind"
    );
    let queued = held.finish();
    assert!(queued.starts_with("250"), "{queued}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the old gale did not exit after its last session"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the old gale exited with {status}");
    // Nothing was cut by its drain.
    assert!(old.log_lines("drain deadline passed").is_empty());

    // The new gale answers the next upgrade on the same socket.
    let newer = new.take_over(new.take_over_command(&binary, &socket));
    newer.wait_log("took over", Duration::from_secs(10));
    let (ok, said) = swaks_from("127.0.0.1", smtp, "b@example.test");
    assert!(ok, "{said}");
}

/// `child` has not exited (its /proc entry is there, not a zombie),
/// without reaping it.
fn running(child: &Child) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// `gale run` with `args` after the config, as `binary`, with `cache`
/// for its plugins: its stderr, and whether it succeeded.
fn gale_run(
    binary: &Path,
    config: &Path,
    cache: &Path,
    args: &[&std::ffi::OsStr],
) -> (bool, String) {
    let out = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args(args)
        .env("GALE_CACHE_DIR", cache)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_new_gale_that_cannot_start_leaves_the_old_one_serving_and_refuses_nothing() {
    let sinks = [SmtpSink::start(free_port())];
    let nginx = Nginx::start(free_port(), "www");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let toml = config(&[&sinks[0]], &nginx);
    let old = Gale::start_upgradable(&toml, &socket);
    let smtp = old.address("in");
    let binary = new_binary(dir.path());
    // The old gale's plugin cache: the new ones start in milliseconds.
    let cache = old.config.parent().unwrap().join("cache");
    let upgrade = [socket.as_os_str(), "--upgrade".as_ref()];
    let upgrade = [&["--upgrade-socket".as_ref()][..], &upgrade[..]].concat();

    // A second gale on the same socket without --upgrade is refused, and
    // --upgrade-socket never removes a file that is not a socket.
    let (ok, said) = gale_run(
        &binary,
        &old.config,
        &cache,
        &["--upgrade-socket".as_ref(), socket.as_os_str()],
    );
    assert!(!ok && said.contains("start with --upgrade"), "{said}");
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep").unwrap();
    let (ok, said) = gale_run(
        &binary,
        &old.config,
        &cache,
        &["--upgrade-socket".as_ref(), precious.as_os_str()],
    );
    assert!(!ok && said.contains("not a socket"), "{said}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");

    // Under load, new gales that fail: one whose config does not load,
    // and three that fail late, after binding the listeners (their
    // [admin] is elsewhere): none accepted a connection it then dropped.
    let source = smtp_source(smtp, 6000);
    wait_metric(&old, "gale_sessions_total", "in", 50.0);
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[listeners.in]\nadress = \"127.0.0.1:1\"\n").unwrap();
    let (ok, said) = gale_run(&binary, &broken, &cache, &upgrade);
    assert!(!ok && said.contains("broken.toml:2"), "{said}");
    // [admin] at another address than the socket handed over for it:
    // found when the admin listener starts, after the listeners.
    let elsewhere = free_port();
    let late = dir.path().join("late.toml");
    std::fs::write(
        &late,
        toml.replace(
            "[admin]\naddress = \"127.0.0.1:0\"",
            &format!("[admin]\naddress = \"127.0.0.1:{elsewhere}\""),
        ),
    )
    .unwrap();
    assert_ne!(
        std::fs::read_to_string(&late).unwrap(),
        toml,
        "the admin address was not replaced"
    );
    for _ in 0..3 {
        let (ok, said) = gale_run(&binary, &late, &cache, &upgrade);
        assert!(!ok && said.contains("listener [admin]"), "{said}");
    }
    assert!(
        running(&source),
        "the load ended before the failed upgrades; make it longer"
    );
    let (ok, _, errors) = finished(source, "smtp-source", Duration::from_secs(60));
    assert!(
        ok && errors.trim().is_empty(),
        "smtp-source saw errors:\n{errors}"
    );
    let failed = old.wait_count("binary upgrade not done", 4, Duration::from_secs(5));
    assert!(
        failed.iter().all(|l| l.contains("ended before serving")),
        "{failed:?}"
    );
    // The check that a gale answers (the second start above) was no
    // request: only the failed upgrades were logged.
    assert_eq!(old.log_lines("binary upgrade not done").len(), 4);

    // Strangers: a request from another uid, even with the socket file
    // opened to all, and a process of this uid that sends a byte and
    // waits (it holds upgrades for 5 s, not longer).
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(require("setpriv"))
        .args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_gale"))
        .args(["run", "--config"])
        .arg(&old.config)
        .args(&upgrade)
        .env("GALE_CACHE_DIR", dir.path().join("nobody-cache"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("may not upgrade"),
        "{said}"
    );
    old.wait_log("refused a request from uid 65534", Duration::from_secs(5));
    let mut trickle = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    trickle.write_all(b"G").unwrap();

    // And the upgrade socket still hands over to a gale that starts.
    let started = Instant::now();
    let new = old.take_over(old.take_over_command(&binary, &socket));
    new.wait_log("took over: the old gale stopped", Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    old.wait_log("no request line within 5s", Duration::from_secs(1));
    let (ok, said) = swaks_from("127.0.0.1", smtp, "b@example.test");
    assert!(ok, "{said}");
    drop(trickle);
}

#[test]
fn idle_gales_upgrade_again_and_again_and_the_last_reloads_like_any_gale() {
    let sinks = [SmtpSink::start(free_port())];
    let nginx = Nginx::start(free_port(), "www");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let binary = new_binary(dir.path());
    // Every gale runs the first one's config and plugin cache, which
    // lives as long as the first `Gale`.
    let mut first = Gale::start_upgradable(&config(&[&sinks[0]], &nginx), &socket);
    let smtp = first.address("in");
    // No session to drain: each old gale exits at once, and must still
    // have told its successor, which answers the next upgrade.
    let mut gale = first.take_over(first.take_over_command(&binary, &socket));
    let status = wait_exit(&mut first.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    for round in 0..5 {
        let took = gale.wait_log("took over", Duration::from_secs(10));
        assert!(
            took.contains("took over: the old gale stopped"),
            "round {round}: {took}"
        );
        let mut old = std::mem::replace(
            &mut gale,
            first.take_over(first.take_over_command(&binary, &socket)),
        );
        let status = wait_exit(&mut old.child, Duration::from_secs(10));
        assert!(status.success(), "round {round}: {status}");
    }
    gale.wait_log("took over: the old gale stopped", Duration::from_secs(10));
    let (ok, said) = swaks_from("127.0.0.1", smtp, "b@example.test");
    assert!(ok, "{said}");

    // Its listeners are its own now: a reload moves one and removes
    // another, whose port then refuses connections.
    let web = gale.address("web");
    let moved = free_port();
    let mut table: toml::Table = std::fs::read_to_string(&gale.config)
        .unwrap()
        .parse()
        .unwrap();
    let listeners = table["listeners"].as_table_mut().unwrap();
    listeners.remove("web").unwrap();
    listeners["in"]
        .as_table_mut()
        .unwrap()
        .insert("address".to_string(), format!("127.0.0.1:{moved}").into());
    let next = table.to_string();
    gale.rewrite_config(&next);
    gale.wait_log("reloaded", Duration::from_secs(20));
    let moved: SocketAddr = format!("127.0.0.1:{moved}").parse().unwrap();
    let (ok, said) = swaks_from("127.0.0.1", moved, "b@example.test");
    assert!(ok, "{said}");
    for gone in [smtp, web] {
        let refused = TcpStream::connect_timeout(&gone, Duration::from_secs(2));
        assert!(refused.is_err(), "{gone} still accepts after the reload");
    }
}
