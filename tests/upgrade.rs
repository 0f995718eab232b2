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
use support::process::{Gale, Nginx, SmtpSink, free_port, require, scrape, swaks_from, value};

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

fn dns_address(gale: &Gale) -> SocketAddr {
    let line = gale.wait_log("dns server listening", Duration::from_secs(10));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
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
    let dns = dns_address(&old);
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
    let took = new.wait_log("took over", Duration::from_secs(10));
    eprintln!("took over in {:?}: {took}", started.elapsed());
    assert!(took.contains(&format!("pid={}", old.child.id())), "{took}");
    // The new gale serves on the same addresses, the sockets it was given.
    assert_eq!(new.address("in"), smtp);
    assert_eq!(new.address("web"), web);
    assert_eq!(new.admin_address(), admin);
    assert_eq!(dns_address(&new), dns);
    assert!(
        new.log_lines("passed by the gale upgraded from").len() >= 3,
        "{:?}",
        new.log_lines("listening")
    );
    old.wait_log("upgraded: the new gale serves", Duration::from_secs(5));
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

#[test]
fn a_new_gale_that_cannot_start_leaves_the_old_one_serving() {
    let sinks = [SmtpSink::start(free_port())];
    let nginx = Nginx::start(free_port(), "www");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    let old = Gale::start_upgradable(&config(&[&sinks[0]], &nginx), &socket);
    let smtp = old.address("in");

    // A second gale on the same socket without --upgrade is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_gale"))
        .args(["run", "--config"])
        .arg(&old.config)
        .arg("--upgrade-socket")
        .arg(&socket)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("start with --upgrade"),
        "{said}"
    );

    let binary = new_binary(dir.path());
    // A config the new binary does not accept: it exits, the old serves on.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[listeners.in]\nadress = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(&binary)
        .args(["run", "--config"])
        .arg(&broken)
        .arg("--upgrade-socket")
        .arg(&socket)
        .arg("--upgrade")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("broken.toml:2"),
        "{said}"
    );
    let why = old.wait_log("binary upgrade not done", Duration::from_secs(5));
    assert!(why.contains("ended before serving"), "{why}");
    // The check that a gale answers (the second start above) was no
    // request: only the failed upgrade was logged.
    assert_eq!(old.log_lines("binary upgrade not done").len(), 1);
    let (ok, said) = swaks_from("127.0.0.1", smtp, "b@example.test");
    assert!(ok, "{said}");

    // Someone of another uid, even with the file opened to all.
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
        .arg("--upgrade-socket")
        .arg(&socket)
        .arg("--upgrade")
        .env("GALE_CACHE_DIR", dir.path().join("nobody-cache"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("may not upgrade"),
        "{said}"
    );
    old.wait_log("refused a request from uid 65534", Duration::from_secs(5));

    // And the upgrade socket still hands over to a gale that starts.
    let new = old.take_over(old.take_over_command(&binary, &socket));
    new.wait_log("took over", Duration::from_secs(10));
    let (ok, said) = swaks_from("127.0.0.1", smtp, "b@example.test");
    assert!(ok, "{said}");
}
