//! The short queue (`queue_size`, `queue_timeout`): a session that finds
//! every backend at its `max_sessions` waits, silent, for a slot instead
//! of getting `421` (or `503`) at once; smtp-source and smtp-sink as the
//! SMTP peers, curl and an in-test backend for HTTP/1.1 and HTTP/2, the
//! gale binary between them.

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::http::{Behaviour, HttpBackend, web};
use support::process::{Gale, SmtpSink, curl, free_port, require, scrape, signal, value};

/// Listener `in` before two smtp-sinks of two slots each (`max_sessions =
/// 2`), with an admin listener. Probes every minute: the first one, at
/// start, finds both sinks up, and none judges them during a test.
fn config(sinks: &[&SmtpSink]) -> Conf {
    let mut conf = Conf::new()
        .admin()
        .smtp("in", "mta")
        .set("listeners.in.hostname", "gale.test")
        .probe("mta", "smtp", "60s", "1s");
    for (i, sink) in sinks.iter().enumerate() {
        let name = format!("s{i}");
        conf = conf
            .backend("mta", &name, sink.address)
            .set(&format!("pools.mta.backends.{name}.max_sessions"), 2);
    }
    conf
}

/// Until the first probe is done and its connection gone from the sinks'
/// `ports` (it would be counted as a session; the second sink's first
/// probe comes half an interval later, 30 s, after the test).
fn await_first_probes(gale: &Gale, ports: &HashSet<u16>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(gale), "gale_probes_total", &[]) < 1.0 || established_to(ports) > 0 {
        assert!(Instant::now() < deadline, "no probe results");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connections established to any of `ports` now, counted at the
/// server's end (`/proc/net/tcp`, state 01).
fn established_to(ports: &HashSet<u16>) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().unwrap();
            fields[3] == "01" && ports.contains(&u16::from_str_radix(local_port, 16).unwrap())
        })
        .count()
}

#[test]
fn a_burst_waits_for_slots_instead_of_getting_421() {
    // Each DATA is answered after a second: sessions hold their slot long
    // enough for the burst to queue behind them.
    let a = SmtpSink::start_with(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &["-w", "1"],
    );
    let b = SmtpSink::start_with(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &["-w", "1"],
    );
    let gale = Gale::start(
        &config(&[&a, &b])
            .set("listeners.in.queue_timeout", "20s")
            .to_string(),
    );
    let ports: HashSet<u16> = [a.address.port(), b.address.port()].into();
    await_first_probes(&gale, &ports);
    // Sessions at the sinks, sampled while smtp-source runs.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            // A scan of /proc/net/tcp is no snapshot: one that reads a
            // closing session early and its successor late counts both.
            // Two scans back to back both see a fifth session that holds
            // its slot for its whole second; a hand-off, one of them.
            while !done.load(Ordering::SeqCst) {
                let seen = established_to(&ports).min(established_to(&ports));
                most.fetch_max(seen, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let messages = 20;
    let started = Instant::now();
    let out = Command::new(require("smtp-source"))
        .args(["-s", "20", "-m", &messages.to_string()])
        .args(["-f", "a@client.test", "-t", "b@example.test"])
        .arg(gale.address("in").to_string())
        .output()
        .unwrap();
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "smtp-source saw errors (a 421?):\n{stderr}"
    );
    // Four slots, twenty sessions of a second each: five waves.
    assert_eq!(
        most.load(Ordering::SeqCst),
        4,
        "sessions at the sinks at once"
    );
    assert!(
        took >= Duration::from_secs(5),
        "20 sessions through 4 slots in {took:?}"
    );
    let sessions = gale.wait_count(
        "smtp session listener=in",
        messages,
        Duration::from_secs(10),
    );
    assert!(
        sessions.iter().all(|s| s.contains("end=closed")),
        "{sessions:#?}"
    );
    let queued: Vec<_> = sessions.iter().filter(|s| s.contains("queued ")).collect();
    assert!(queued.len() >= 16, "sessions that waited: {queued:#?}");
    let samples = scrape(&gale);
    let outcome = |o: &str| value(&samples, "gale_queue_outcomes_total", &[("outcome", o)]);
    assert_eq!(outcome("served"), queued.len() as f64);
    assert_eq!(outcome("timeout") + outcome("full") + outcome("gone"), 0.0);
    assert_eq!(
        value(&samples, "gale_queued_sessions", &[("listener", "in")]),
        0.0
    );
    assert_eq!(
        value(&samples, "gale_error_replies_total", &[("code", "421")]),
        0.0
    );
}

/// Until `n` sessions wait in listener `in`'s queue (10 s at most).
fn wait_queued(gale: &Gale, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&scrape(gale), "gale_queued_sessions", &[("listener", "in")]) != n {
        assert!(Instant::now() < deadline, "never {n} sessions queued");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A raw client: connects, then reads what gale sends first (the backend's
/// greeting or gale's own 421) within `limit`.
fn first_line(addr: SocketAddr, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    (
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn frozen_backends_leave_queued_clients_a_421_after_queue_timeout() {
    let a = SmtpSink::start(free_port());
    let b = SmtpSink::start(free_port());
    let gale = Gale::start(
        &config(&[&a, &b])
            .set("listeners.in.queue_timeout", "1s")
            .set("listeners.in.queue_size", 3)
            .set("listeners.in.banner_timeout", "4s")
            .to_string(),
    );
    let addr = gale.address("in");
    let slots = HashSet::from([a.address.port(), b.address.port()]);
    await_first_probes(&gale, &slots);
    // Stopped, their kernels still complete the handshake: the first four
    // sessions take the slots and wait for a greeting that never comes.
    signal(a.child.id(), "STOP");
    signal(b.child.id(), "STOP");
    let holders: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || first_line(addr, Duration::from_secs(10))))
        .collect();
    // Until all four hold a slot (what the queue's first waiter needs).
    let deadline = Instant::now() + Duration::from_secs(10);
    while established_to(&slots) < 4 {
        assert!(
            Instant::now() < deadline,
            "the four sessions never reached the sinks"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // One waits in the queue and leaves: its place is freed at once.
    let leaver = TcpStream::connect(addr).unwrap();
    wait_queued(&gale, 1.0);
    drop(leaver);
    wait_queued(&gale, 0.0);
    // Three wait in the queue, the fourth finds it full: 421 at once.
    let waiters: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || first_line(addr, Duration::from_secs(10))))
        .collect();
    wait_queued(&gale, 3.0);
    let (line, took) = first_line(addr, Duration::from_secs(10));
    assert!(line.starts_with("421 4.3.2 gale.test"), "{line:?}");
    assert!(
        took < Duration::from_millis(900),
        "a full queue refuses at once: {took:?}"
    );
    for w in waiters {
        let (line, took) = w.join().unwrap();
        assert!(line.starts_with("421 4.3.2 gale.test"), "{line:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "a queued client got its 421 after {took:?} (queue_timeout 1s)"
        );
    }
    let samples = scrape(&gale);
    let outcome = |o: &str| value(&samples, "gale_queue_outcomes_total", &[("outcome", o)]);
    assert_eq!(
        (
            outcome("timeout"),
            outcome("full"),
            outcome("gone"),
            outcome("served")
        ),
        (3.0, 1.0, 1.0, 0.0)
    );
    // The slot holders end with the banner timeout, as before the queue.
    for h in holders {
        let (line, took) = h.join().unwrap();
        assert!(line.starts_with("421 4.3.2"), "{line:?}");
        assert!(took >= Duration::from_secs(3), "{took:?}");
    }
    signal(a.child.id(), "CONT");
    signal(b.child.id(), "CONT");
}

#[test]
fn http_requests_over_both_engines_wait_for_the_one_slot() {
    // One slot, answers after 400 ms: three requests at once (two
    // HTTP/1.1, one h2c) are served one after the other.
    let slow = HttpBackend::start("slow", Behaviour::Slow(400));
    let gale = Gale::start(
        &web(&[("slow", slow.address, 1)])
            .admin()
            .set("pools.web.backends.slow.max_sessions", 1)
            .to_string(),
    );
    let url = format!("http://{}/", gale.address("web"));
    let started = Instant::now();
    let requests: Vec<_> = [&[][..], &[][..], &["--http2-prior-knowledge"][..]]
        .into_iter()
        .map(|extra| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut args = extra.to_vec();
                args.push(&url);
                curl(&args)
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.join().unwrap(), (200, "slow".to_string()));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "three 400 ms requests through one slot in {:?}",
        started.elapsed()
    );
    let samples = scrape(&gale);
    let outcome = |o: &str| value(&samples, "gale_queue_outcomes_total", &[("outcome", o)]);
    assert!(outcome("served") >= 1.0, "no request waited");
    assert_eq!(outcome("timeout") + outcome("full") + outcome("gone"), 0.0);
    drop(gale);

    // With no queue the request that finds the slot taken gets 503 at once
    // (a backend of its own, holding the slot for 3 s).
    let holding = HttpBackend::start("holding", Behaviour::Slow(3000));
    let gale = Gale::start(
        &web(&[("holding", holding.address, 1)])
            .set("pools.web.backends.holding.max_sessions", 1)
            .set("listeners.web.queue_size", 0)
            .to_string(),
    );
    let url = format!("http://{}/", gale.address("web"));
    let first = {
        let url = url.clone();
        std::thread::spawn(move || curl(&[&url]))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding.requests() < 1 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A raw request: the time is gale's, not a curl process starting.
    let mut raw = TcpStream::connect(gale.address("web")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut status = [0u8; 12];
    raw.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 503");
    // At once: well before the held slot frees (3 s).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(first.join().unwrap(), (200, "holding".to_string()));
}

#[test]
fn a_freed_slot_goes_to_a_session_queued_for_that_backend() {
    // Two sinks of one slot each, and one attempt per session: sessions
    // alternate between orders [s0] and [s1], and queue for their own.
    let sinks: Vec<SmtpSink> = ["sink-zero", "sink-one"]
        .iter()
        .map(|name| {
            SmtpSink::start_with(
                format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                &["-h", name],
            )
        })
        .collect();
    let mut conf = Conf::new()
        .admin()
        .smtp("in", "mta")
        .set("listeners.in.max_attempts", 1)
        .set("listeners.in.queue_timeout", "20s")
        .probe("mta", "tcp", "60s", "1s");
    for (i, sink) in sinks.iter().enumerate() {
        conf = conf
            .backend("mta", &format!("s{i}"), sink.address)
            .set(&format!("pools.mta.backends.s{i}.max_sessions"), 1);
    }
    let gale = Gale::start(&conf.to_string());
    let addr = gale.address("in");
    let ports: HashSet<u16> = sinks.iter().map(|s| s.address.port()).collect();
    await_first_probes(&gale, &ports);
    // Two holders take both slots; which sink greeted which is in the
    // greeting.
    let hold = |_| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let holders: Vec<(TcpStream, String)> = (0..2).map(hold).collect();
    assert!(
        holders.iter().all(|(_, g)| g.starts_with("220 sink-")),
        "{holders:?}"
    );
    // Two more queue, one for each sink.
    let queued: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    wait_queued(&gale, 2.0);
    // The second holder leaves: the session queued for its sink gets the
    // slot, whichever of the two waited longest.
    let mut holders = holders.into_iter();
    let first = holders.next().unwrap();
    let (mut second, freed) = holders.next().unwrap();
    second.write_all(b"QUIT\r\n").unwrap();
    drop(second);
    let name = freed.split_whitespace().nth(1).unwrap().to_string();
    let greetings: Vec<String> = std::thread::scope(|scope| {
        let readers: Vec<_> = queued
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let mut s = s;
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut buf = [0u8; 256];
                    let n = s.read(&mut buf).unwrap_or(0);
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let greeted: Vec<&String> = greetings.iter().filter(|g| !g.is_empty()).collect();
    assert_eq!(greeted.len(), 1, "{greetings:?}");
    assert!(
        greeted[0].starts_with(&format!("220 {name}")),
        "{greetings:?}"
    );
    drop(first);
}

#[test]
fn bytes_a_client_sends_while_queued_are_kept_for_the_session() {
    // SMTP: a client that speaks while queued is still caught speaking
    // before the greeting once a slot frees.
    let sink = SmtpSink::start(free_port());
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .smtp("in", "mta")
            .set("listeners.in.hostname", "gale.test")
            .probe("mta", "tcp", "60s", "1s")
            .backend("mta", "s", sink.address)
            .set("pools.mta.backends.s.max_sessions", 1)
            .to_string(),
    );
    let addr = gale.address("in");
    let (mut holder, _) = first_line_kept(addr);
    let mut bot = TcpStream::connect(addr).unwrap();
    bot.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wait_queued(&gale, 1.0);
    bot.write_all(b"EHLO bot.test\r\n").unwrap();
    holder.write_all(b"QUIT\r\n").unwrap();
    drop(holder);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&bot), &mut line).unwrap();
    assert!(line.starts_with("554 5.5.1 gale.test"), "{line:?}");

    // tcp: what the client sends first (a TLS ClientHello, say) reaches
    // the backend once a slot frees.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let Ok(s) = stream else { return };
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = std::io::BufReader::new(&s);
                while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                    let _ = (&s).write_all(line.as_bytes());
                    line.clear();
                }
            });
        }
    });
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .listener("in", "tcp", "echo")
            .probe("echo", "tcp", "60s", "1s")
            .backend("echo", "e", echo_addr)
            .set("pools.echo.backends.e.max_sessions", 1)
            .to_string(),
    );
    let addr = gale.address("in");
    let holder = TcpStream::connect(addr).unwrap();
    wait_until_relayed(&gale);
    let mut early = TcpStream::connect(addr).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    wait_queued(&gale, 1.0);
    early.write_all(b"hello\r\n").unwrap();
    // A half-close of a tcp client is its protocol, not a departure.
    early.shutdown(std::net::Shutdown::Write).unwrap();
    drop(holder);
    let mut echoed = String::new();
    early.read_to_string(&mut echoed).unwrap();
    assert_eq!(echoed, "hello\r\n");
}

/// A client that holds a session: connected and greeted.
fn first_line_kept(addr: SocketAddr) -> (TcpStream, String) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
    (s, line)
}

/// Until listener `in` has relayed one session to a backend.
fn wait_until_relayed(gale: &Gale) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(
        &scrape(gale),
        "gale_sessions_total",
        &[("outcome", "relayed")],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "no session relayed");
        std::thread::sleep(Duration::from_millis(10));
    }
}
