//! Admission through the gale binary: `deny`/`allow` networks and
//! `client_rate`, checked on accept before any backend is touched; swaks
//! and raw sockets from chosen loopback addresses for SMTP, curl for
//! HTTP.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::conf::Conf;
use support::http::{Behaviour, HttpBackend, web};
use support::process::{Gale, SmtpSink, curl, free_port, scrape, swaks_from, value};

/// A connection to `addr` from the loopback address `from`.
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The first line gale (or the backend) sends to a client from `from`;
/// the client then says QUIT.
fn greeting_from(from: &str, addr: SocketAddr) -> String {
    let mut stream = connect_from(from, addr);
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let _ = stream.write_all(b"QUIT\r\n");
    line
}

#[test]
fn smtp_clients_are_denied_or_slowed_before_any_backend_sees_them() {
    let sink = SmtpSink::start(free_port());
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .smtp("in", "mta")
            .set("listeners.in.hostname", "gale.test")
            .set("listeners.in.deny", vec!["127.0.0.3/32"])
            .set("listeners.in.client_rate", 1)
            .set("listeners.in.client_burst", 5)
            .backend("mta", "sink", sink.address)
            .to_string(),
    );
    let addr = gale.address("in");
    // A denied client gets the permanent refusal.
    let (ok, transcript) = swaks_from("127.0.0.3", addr, "b@example.test");
    assert!(!ok, "{transcript}");
    assert!(
        transcript.contains("554 5.7.1 gale.test Access denied"),
        "{transcript}"
    );

    // A burst of 20 sessions from one address: its 5 saved up, then 1 a
    // second; the rest are told to slow down.
    let started = Instant::now();
    let lines: Vec<String> = (0..20).map(|_| greeting_from("127.0.0.2", addr)).collect();
    let took = started.elapsed().as_secs_f64();
    let admitted = lines.iter().filter(|l| l.starts_with("220")).count();
    let slowed = lines
        .iter()
        .filter(|l| l.starts_with("421 4.7.0 gale.test Too many new sessions"))
        .count();
    assert_eq!(admitted + slowed, 20, "{lines:#?}");
    assert!(slowed >= 1, "{lines:#?}");
    assert!(
        admitted >= 5 && admitted as f64 <= 5.0 + took.ceil(),
        "{admitted} admitted in {took:.2} s: {lines:#?}"
    );
    // Another client is not slowed by that one.
    let (ok, transcript) = swaks_from("127.0.0.4", addr, "b@example.test");
    assert!(ok, "{transcript}");

    let samples = scrape(&gale);
    let refusals = |reason: &str| {
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("listener", "in"), ("reason", reason)],
        )
    };
    assert_eq!(refusals("deny"), 1.0);
    assert_eq!(refusals("rate"), slowed as f64);
    // The backend saw only the admitted sessions (gale's probes are not
    // sessions).
    assert_eq!(
        value(
            &samples,
            "gale_backend_sessions_total",
            &[("backend", "sink")]
        ),
        (admitted + 1) as f64
    );
    assert_eq!(
        value(&samples, "gale_error_replies_total", &[("code", "554")]),
        1.0
    );
}

#[test]
fn http_clients_outside_allow_get_403_and_a_fast_one_429() {
    let backend = HttpBackend::start("a", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("a", backend.address, 1)])
            .admin()
            .set("listeners.web.allow", vec!["127.0.0.0/30"])
            .set("listeners.web.deny", vec!["127.0.0.3"])
            .set("listeners.web.client_rate", 1)
            .set("listeners.web.client_burst", 2)
            .to_string(),
    );
    let url = format!("http://{}/", gale.address("web"));
    let from = |ip: &str| curl(&["--interface", ip, &url]);
    assert_eq!(from("127.0.0.5").0, 403, "outside allow");
    assert_eq!(from("127.0.0.3").0, 403, "in deny");
    assert_eq!(from("127.0.0.2"), (200, "a".to_string()));
    assert_eq!(from("127.0.0.2").0, 200);
    // The burst is spent: back to back, the next connections are told to
    // slow down (one of three at least, whatever this machine's speed).
    let addr = gale.address("web");
    let answers: Vec<String> = (0..3)
        .map(|_| {
            let mut c = connect_from("127.0.0.2", addr);
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut c, &mut answer);
            answer
        })
        .collect();
    let slowed: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429 Too Many Requests\r\n"))
        .collect();
    assert!(!slowed.is_empty(), "{answers:#?}");
    for a in &slowed {
        assert!(
            a.contains("\r\nretry-after: 1\r\n")
                && a.ends_with("too many new connections from your address\n"),
            "{a:?}"
        );
    }
    let samples = scrape(&gale);
    assert_eq!(
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("reason", "deny")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("reason", "rate")]
        ),
        slowed.len() as f64
    );
    assert_eq!(backend.requests(), 2 + 3 - slowed.len() as u64);
}

/// The Python admission plugin (`plugins/admission-python`) on SMTP
/// listener `in` and HTTP listener `web`: 127.0.0.3 refused, 127.0.0.4
/// held `tarpit_seconds`.
fn python_conf(sink: SocketAddr, web_backend: SocketAddr, tarpit_seconds: u32) -> Conf {
    let plugin = support::foreign_plugin("admission-python");
    let path = plugin.display().to_string();
    web(&[("a", web_backend, 1)])
        .admin()
        .smtp("in", "mta")
        .set("listeners.in.hostname", "gale.test")
        .backend("mta", "sink", sink)
        .set("listeners.in.admission_plugin.path", path.clone())
        .set("listeners.in.admission_plugin.settings.reject", "127.0.0.3")
        .set(
            "listeners.in.admission_plugin.settings.reject_text",
            "5.7.1 Not from 127.0.0.3, says the policy",
        )
        .set("listeners.in.admission_plugin.settings.tarpit", "127.0.0.4")
        .set(
            "listeners.in.admission_plugin.settings.tarpit_seconds",
            i64::from(tarpit_seconds),
        )
        .set("listeners.web.admission_plugin.path", path)
        // Networks too.
        .set(
            "listeners.web.admission_plugin.settings.reject",
            "127.0.0.3/32, 2001:db8:1:2::/64",
        )
        .set("listeners.web.admission_plugin.settings.reject_code", 403)
        .set(
            "listeners.web.admission_plugin.settings.reject_text",
            "not from here",
        )
}

#[test]
fn a_python_admission_plugin_refuses_one_address_and_tarpits_another_before_its_greeting() {
    let sink = SmtpSink::start(free_port());
    let backend = HttpBackend::start("a", Behaviour::Respond);
    let tarpit = Duration::from_secs(2);
    let gale = Gale::start(&python_conf(sink.address, backend.address, 2).to_string());
    let addr = gale.address("in");

    // Refused with the plugin's own code and text, before any backend.
    let (ok, transcript) = swaks_from("127.0.0.3", addr, "b@example.test");
    assert!(!ok, "{transcript}");
    assert!(
        transcript.contains("<** 554 5.7.1 Not from 127.0.0.3, says the policy"),
        "{transcript}"
    );
    // Another address goes through to the backend.
    let (ok, transcript) = swaks_from("127.0.0.2", addr, "b@example.test");
    assert!(ok, "{transcript}");
    assert!(transcript.contains("<-  220 "), "{transcript}");

    // Tarpitted: the greeting comes only after the delay; meanwhile the
    // listener greets others at once (the plugin and the hold are on the
    // connection's own task, not on the accept loop).
    let held = std::thread::spawn(move || {
        let started = Instant::now();
        let line = greeting_from("127.0.0.4", addr);
        (line, started.elapsed())
    });
    gale.wait_log("tarpit by the admission plugin", Duration::from_secs(10));
    let started = Instant::now();
    let other = greeting_from("127.0.0.2", addr);
    let other_took = started.elapsed();
    assert!(other.starts_with("220 "), "{other}");
    let (line, took) = held.join().unwrap();
    eprintln!("tarpit {tarpit:?}: greeted after {took:?}; a client beside it after {other_took:?}");
    assert!(line.starts_with("220 "), "{line}");
    assert!(took >= tarpit, "greeted after {took:?}");
    assert!(took < tarpit * 3, "greeted after {took:?}");
    assert!(
        other_took < tarpit / 2,
        "a client beside the tarpit waited {other_took:?}"
    );
    // A tarpitted client that hangs up ends there: no backend sees it.
    drop(connect_from("127.0.0.4", addr));
    gale.wait_log("the client left during its tarpit", Duration::from_secs(10));

    // HTTP: the plugin's status and text.
    let url = format!("http://{}/", gale.address("web"));
    let (status, body) = curl(&["--interface", "127.0.0.3", &url]);
    assert_eq!((status, body.trim_end()), (403, "not from here"));
    assert_eq!(curl(&["--interface", "127.0.0.2", &url]), (200, "a".into()));

    let samples = scrape(&gale);
    let on = |listener: &str, reason: &str| {
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    assert_eq!(on("in", "plugin"), 1.0);
    assert_eq!(on("web", "plugin"), 1.0);
    assert_eq!(
        value(
            &samples,
            "gale_admission_tarpits_total",
            &[("listener", "in")]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "gale_error_replies_total", &[("code", "554")]),
        1.0
    );
    // swaks from .2, the greeting beside the tarpit, the tarpitted one.
    assert_eq!(
        value(
            &samples,
            "gale_backend_sessions_total",
            &[("backend", "sink")]
        ),
        3.0
    );
    assert_eq!(backend.requests(), 1);
    assert!(
        !samples
            .iter()
            .any(|s| s.metric == "gale_admission_plugin_failures_total"),
        "the plugin failed"
    );
}

#[test]
fn an_admission_plugin_that_traps_spins_or_answers_garbage_admits_the_client_and_is_counted() {
    let sink = SmtpSink::start(free_port());
    let path = support::plugin("admission-trap").display().to_string();
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .smtp("trap", "mta")
            .smtp("spin", "mta")
            .smtp("garbage", "mta")
            .backend("mta", "sink", sink.address)
            .set("listeners.trap.admission_plugin.path", path.clone())
            .set("listeners.spin.admission_plugin.path", path.clone())
            .set("listeners.spin.admission_plugin.settings.spin", true)
            .set("listeners.garbage.admission_plugin.path", path)
            // Not a refusal code: a malformed answer.
            .set("listeners.garbage.admission_plugin.settings.code", 250)
            .to_string(),
    );
    for listener in ["trap", "spin", "garbage"] {
        for _ in 0..2 {
            let (ok, transcript) = swaks_from("127.0.0.2", gale.address(listener), "b@x.test");
            assert!(ok, "{listener}: {transcript}");
        }
    }
    let samples = scrape(&gale);
    let failures = |listener: &str, reason: &str| {
        value(
            &samples,
            "gale_admission_plugin_failures_total",
            &[("listener", listener), ("reason", reason)],
        )
    };
    // Each call failed, and each client was admitted: by the plugin's
    // own fault, or (the next call) by finding the fresh instance still
    // being set up.
    assert!(failures("trap", "trap") >= 1.0);
    assert!(failures("spin", "deadline") >= 1.0);
    assert!(failures("garbage", "malformed") >= 1.0);
    for listener in ["trap", "spin", "garbage"] {
        let all: f64 = ["trap", "deadline", "malformed", "unavailable", "busy"]
            .iter()
            .map(|r| failures(listener, r))
            .sum();
        assert_eq!(all, 2.0, "{listener}");
    }
    assert_eq!(
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("reason", "plugin")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "gale_backend_sessions_total",
            &[("backend", "sink")]
        ),
        6.0
    );
    gale.wait_log(
        "admission plugin call failed, the client was admitted",
        Duration::from_secs(1),
    );
    // /status lists each listener's plugin.
    let (_, status) = curl(&[&format!("http://{}/status", gale.admin_address())]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let listed: Vec<(&str, &str)> = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hook"] == "admission")
        .map(|p| {
            (
                p["listener"].as_str().unwrap(),
                p["contract"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("garbage", "gale:plugin/admitter@0.1.3"),
            ("spin", "gale:plugin/admitter@0.1.3"),
            ("trap", "gale:plugin/admitter@0.1.3")
        ]
    );
}

#[test]
fn a_plugin_of_another_world_is_refused_as_the_admission_plugin() {
    let (rt, _cache) = support::runtime();
    let balancer = support::plugin("hostile-trap");
    let conf = Conf::new()
        .smtp("in", "mta")
        .backend("mta", "b", "127.0.0.1:31000".parse().unwrap())
        .set(
            "listeners.in.admission_plugin.path",
            balancer.display().to_string(),
        );
    let err = gale::generation::Generation::build(
        1,
        &rt,
        support::parse(&conf),
        &std::sync::Arc::new(gale::metrics::Metrics::new()),
    )
    .err()
    .expect("a balancer must not load as an admission plugin");
    let msg = err.to_string();
    assert!(
        matches!(err, gale::plugin::PluginError::WrongWorld { .. }),
        "{msg}"
    );
    assert!(msg.contains("in/admission"), "{msg}");
    assert!(
        msg.contains("does not implement world `gale:plugin/admission@0.1.3`"),
        "{msg}"
    );
}

#[test]
fn a_reload_with_a_broken_admission_plugin_keeps_the_running_one() {
    use support::in_process::InProcess;
    let sink = SmtpSink::start(free_port());
    let base = Conf::new()
        .smtp("in", "mta")
        .backend("mta", "sink", sink.address);
    let with_plugin = |name: &str| {
        (base.clone())
            .set(
                "listeners.in.admission_plugin.path",
                support::plugin(name).display().to_string(),
            )
            .to_string()
    };
    let gale = InProcess::start(&with_plugin("admission-trap"));
    let addr = gale.address("in");
    let has_plugin = || gale.running.server.current.load().admission[0].is_some();
    assert!(has_plugin());

    gale.rewrite_config(&with_plugin("hostile-trap"));
    let failed = gale.wait_reload(
        |e| {
            e.error
                .as_deref()
                .is_some_and(|e| e.contains("does not implement world `gale:plugin/admission"))
        },
        Duration::from_secs(20),
    );
    assert!(!failed.ok && failed.serving == 1, "{failed:?}");
    assert_eq!(gale.generation(), 1);
    assert!(has_plugin(), "the running plugin was dropped");
    support::client::send_mail(addr);

    gale.rewrite_config(&base.to_string());
    let done = gale.wait_reload(|e| e.ok, Duration::from_secs(20));
    assert_eq!(gale.generation(), done.generation);
    assert!(!has_plugin());
    support::client::send_mail(addr);
}

#[test]
fn a_slow_admission_plugin_holds_no_worker_that_other_listeners_need() {
    let sink = SmtpSink::start(free_port());
    let path = support::plugin("admission-trap").display().to_string();
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .smtp("spin", "mta")
            .smtp("free", "mta")
            .backend("mta", "sink", sink.address)
            .set("listeners.spin.admission_plugin.path", path)
            .set("listeners.spin.admission_plugin.settings.spin", true)
            .set("listeners.spin.admission_plugin.deadline", "500ms")
            .to_string(),
    );
    let spin = gale.address("spin");
    // Six clients at once: calls that spin for their 500 ms deadline (on
    // blocking threads, at most four), or find the instance busy.
    let clients: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || greeting_from("127.0.0.2", spin)))
        .collect();
    // Meanwhile the other listener greets at once, every time.
    let free = gale.address("free");
    let mut slowest = Duration::ZERO;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(800) {
        let started = Instant::now();
        let line = greeting_from("127.0.0.5", free);
        assert!(line.starts_with("220 "), "{line}");
        slowest = slowest.max(started.elapsed());
    }
    for client in clients {
        let line = client.join().unwrap();
        assert!(line.starts_with("220 "), "admitted by the fallback: {line}");
    }
    eprintln!("slowest greeting beside the spinning plugin: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(250),
        "a greeting on another listener took {slowest:?}"
    );
}

#[test]
fn a_burst_of_connections_does_not_get_past_the_plugin() {
    // More at once than the plugin's calls in flight: the rest wait for a
    // turn instead of being admitted.
    let sink = SmtpSink::start(free_port());
    let path = support::plugin("admission-trap").display().to_string();
    let gale = Gale::start(
        &Conf::new()
            .admin()
            .smtp("in", "mta")
            .backend("mta", "sink", sink.address)
            .set("listeners.in.admission_plugin.path", path)
            .set("listeners.in.admission_plugin.settings.code", 554)
            .to_string(),
    );
    let addr = gale.address("in");
    let clients: Vec<_> = (0..40)
        .map(|_| std::thread::spawn(move || greeting_from("127.0.0.2", addr)))
        .collect();
    let lines: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("554 5.7.1 from a broken plugin")),
        "{lines:#?}"
    );
    let samples = scrape(&gale);
    assert_eq!(
        value(
            &samples,
            "gale_admission_refusals_total",
            &[("reason", "plugin")]
        ),
        40.0
    );
}
