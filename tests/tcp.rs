//! `protocol = "tcp"` listeners through the gale binary: implicit TLS
//! (SMTPS, as on port 465) passed through to two Postfix instances that
//! terminate it themselves, driven by `swaks --tls-on-connect`; a killed
//! instance costs no new session; an LMTP-style backend that speaks
//! first is relayed as it is.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::conf::Conf;
use support::process::{Gale, Postfix, scrape, swaks_smtps, value};

/// A tcp listener `in` before pool `mta` of `backends`, each sent a PROXY
/// v2 header; tcp probes every 10 s, so that sessions, not probes, find
/// a killed backend first.
fn config(backends: &[SocketAddr]) -> Conf {
    Conf::new()
        .admin()
        .listener("in", "tcp", "mta")
        .set("listeners.in.connect_timeout", "500ms")
        .probe("mta", "tcp", "10s", "500ms")
        .proxied_backends("mta", backends)
}

#[test]
fn smtps_passes_through_to_postfix_and_a_killed_one_costs_no_new_session() {
    let (a, b) = (Postfix::start_smtps(), Postfix::start_smtps());
    let gale = Gale::start(&config(&[a.address, b.address]).to_string());
    let addr = gale.address("in");
    // Both terminate the TLS gale passed through, and see the client's own
    // address from the PROXY header.
    for n in 0..4 {
        let to = format!("rcpt-{n}@example.test");
        let transcript = swaks_smtps(addr, "127.0.0.2", &to).unwrap_or_else(|t| {
            panic!(
                "swaks over SMTPS through gale failed:\n{t}\npostfix a:\n{}\npostfix b:\n{}",
                a.maillog(),
                b.maillog()
            )
        });
        assert!(transcript.contains("TLS started"), "{transcript}");
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as"),
            "{transcript}"
        );
    }
    for postfix in [&a, &b] {
        postfix.wait_log(&["client=unknown[127.0.0.2]"], Duration::from_secs(10));
    }

    // Load from two clients while a is killed: every session that starts
    // after the kill is delivered by b.
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let killed = killed.clone();
            std::thread::spawn(move || {
                let mut after = Vec::new();
                for n in 0..12 {
                    let started_after_kill = killed.load(Ordering::SeqCst);
                    let outcome =
                        swaks_smtps(addr, "127.0.0.3", &format!("load-{c}-{n}@example.test"));
                    if started_after_kill {
                        after.push(outcome);
                    }
                }
                after
            })
        })
        .collect();
    b.wait_count("client=unknown[127.0.0.3]", 2, Duration::from_secs(20));
    drop(a);
    killed.store(true, Ordering::SeqCst);
    let mut after_kill = 0;
    for c in clients {
        for outcome in c.join().unwrap() {
            outcome.unwrap_or_else(|t| panic!("a session after the kill failed:\n{t}"));
            after_kill += 1;
        }
    }
    assert!(
        after_kill >= 4,
        "only {after_kill} sessions started after the kill"
    );
    // Written once both sides have closed, just after swaks exits.
    let sessions = gale.wait_count("tcp session listener=in", 28, Duration::from_secs(10));
    let after: Vec<_> = sessions
        .iter()
        .filter(|s| s.contains("p0: connect: "))
        .collect();
    assert!(
        !after.is_empty(),
        "no session tried the killed one: {sessions:#?}"
    );
    assert!(
        after
            .iter()
            .all(|s| s.contains("backend=p1") && s.contains("end=closed")),
        "{after:#?}"
    );
    let samples = scrape(&gale);
    assert_eq!(
        value(&samples, "gale_sessions_total", &[("outcome", "relayed")]),
        28.0
    );
}

#[test]
fn a_backend_that_speaks_first_is_relayed_and_no_backend_means_a_close() {
    // An LMTP-style server: it greets first, then echoes one line.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let Ok(mut s) = stream else { return };
            // Probes connect and close at once: errors are theirs.
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let _ = s.write_all(b"220 lmtp ready\r\n");
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok() {
                    let _ = s.write_all(format!("250 {line}").as_bytes());
                }
            });
        }
    });
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gale = Gale::start(
        &Conf::new()
            .listener("in", "tcp", "lmtp")
            // Second in the list, "gone" is first probed half an interval
            // after the start: the session finds it in rotation.
            .probe("lmtp", "tcp", "60s", "1s")
            .backend("lmtp", "up", backend)
            .backend("lmtp", "gone", closed)
            .set("pools.lmtp.balancer.builtin", "failover")
            .set("pools.lmtp.backends.up.role", "standby")
            .to_string(),
    );
    let mut s = std::net::TcpStream::connect(gale.address("in")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    let mut greeting = [0u8; 16];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 lmtp ready\r\n");
    s.write_all(b"LHLO x\r\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "250 LHLO x\r\n");
    // Half-closes pass on: the session ends when the client closes too.
    drop(s);
    let line = gale.wait_log("tcp session listener=in", Duration::from_secs(10));
    assert!(
        line.contains("backend=up") && line.contains("gone: connect"),
        "{line}"
    );

    // With no backend left, the client's connection is closed unanswered.
    let gale = Gale::start(
        &Conf::new()
            .listener("in", "tcp", "lmtp")
            .backend("lmtp", "gone", closed)
            .to_string(),
    );
    let mut s = std::net::TcpStream::connect(gale.address("in")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{got:?}");
    gale.wait_log("no backend could take it", Duration::from_secs(10));
}
