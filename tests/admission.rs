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
