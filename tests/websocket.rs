//! WebSocket (HTTP/1.1 `Upgrade`) through gale's HTTP listener, with real
//! peers on both sides (python3-websockets): the upgrade request is
//! balanced like any request, a `101` joins the two connections both ways
//! under the listener's idle timeout, a backend that dies mid-stream ends
//! the client's connection, and a shutdown drains open ones.

mod support;

use std::time::{Duration, Instant};

use support::conf::Conf;
use support::in_process::InProcess;
use support::process::{Gale, signal};
use support::websocket::{WsBackend, WsClient};

fn config(backends: &[&WsBackend], idle: &str, drain: &str) -> String {
    let mut conf = Conf::new()
        .set("server.drain_timeout", drain)
        .http("web", "ws")
        .set("listeners.web.idle_timeout", idle)
        .set("listeners.web.connect_timeout", "500ms")
        .probe("ws", "tcp", "200ms", "500ms");
    for (i, b) in backends.iter().enumerate() {
        conf = conf.backend("ws", &format!("ws{i}"), b.address);
    }
    conf.to_string()
}

/// The value of `metric` for listener `web` in gale's exposition.
fn metric(gale: &InProcess, metric: &str) -> f64 {
    let text = gale.running.server.current.load().metrics.encode();
    text.lines()
        .find(|l| l.starts_with(metric) && l.contains("listener=\"web\""))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// Wait until `metric` reads `want`.
fn wait_metric(gale: &InProcess, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(gale, name) != want {
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {}, not {want}",
            metric(gale, name)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn websockets_are_balanced_and_echo_both_ways() {
    let (a, b) = (WsBackend::start("a"), WsBackend::start("b"));
    let gale = InProcess::start(&config(&[&a, &b], "30s", "5s"));
    let url = format!("ws://{}/chat", gale.address("web"));
    let mut clients: Vec<WsClient> = (0..4)
        .map(|_| WsClient::connect(&url).expect("handshake through gale"))
        .collect();
    wait_metric(&gale, "gale_http_upgraded_connections", 4.0);
    // A reload does not touch open connections: they finish on the
    // generation they started on.
    gale.rewrite_config(&config(&[&a, &b], "30s", "4s"));
    gale.wait_generation(2, Duration::from_secs(20));
    let mut names = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 0..3 {
            let reply = c.send(&format!("hello {i}.{n}"));
            let (name, echoed) = reply.split_once(": ").expect(&reply);
            assert_eq!(echoed, format!("hello {i}.{n}"));
            names.push(name.to_string());
        }
    }
    // Round-robin over two backends: both took connections.
    assert!(
        names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"),
        "{names:?}"
    );
    for c in &mut clients {
        assert_eq!(c.close(), "closed 1000");
    }
    wait_metric(&gale, "gale_http_upgraded_connections", 0.0);
    assert_eq!(metric(&gale, "gale_http_upgrades_total"), 4.0);
    assert_eq!(gale.stop(), 0, "no connection was cut");
}

#[test]
fn a_backend_killed_mid_stream_ends_the_client_connection_and_the_next_one_goes_elsewhere() {
    let (mut a, b) = (WsBackend::start("a"), WsBackend::start("b"));
    let gale = InProcess::start(&config(&[&a, &b], "30s", "5s"));
    let url = format!("ws://{}/", gale.address("web"));
    // A connection on `a` (round-robin: one of the first two).
    let mut on_a = (0..4)
        .map(|_| WsClient::connect(&url).unwrap())
        .find_map(|mut c| c.send("who").starts_with("a: ").then_some(c))
        .expect("no connection went to a");
    a.kill();
    // No close frame from a killed backend: the client sees the TCP close.
    let said = on_a.send("still there?");
    assert_eq!(said, "closed 1006", "{said}");
    wait_metric(&gale, "gale_http_upgraded_connections", 0.0);
    for _ in 0..4 {
        let mut c = WsClient::connect(&url).expect("a handshake after the kill");
        assert!(c.send("who").starts_with("b: "));
        c.close();
    }
}

#[test]
fn an_idle_websocket_is_closed_after_the_listeners_idle_timeout() {
    let a = WsBackend::start("a");
    let gale = InProcess::start(&config(&[&a], "1s", "5s"));
    let mut c = WsClient::connect(&format!("ws://{}/", gale.address("web"))).unwrap();
    assert_eq!(c.send("ping"), "a: ping");
    let opened = Instant::now();
    wait_metric(&gale, "gale_http_upgraded_connections", 0.0);
    let quiet = opened.elapsed();
    assert!(
        quiet >= Duration::from_millis(900) && quiet < Duration::from_secs(3),
        "closed after {quiet:?} of quiet, not about the 1 s idle timeout"
    );
    assert_eq!(c.send("ping"), "closed 1006");
}

#[test]
fn sigterm_drains_an_open_websocket_until_its_client_closes() {
    let a = WsBackend::start("a");
    let mut gale = Gale::start(&config(&[&a], "30s", "20s"));
    let url = format!("ws://{}/", gale.address("web"));
    let mut c = WsClient::connect(&url).unwrap();
    assert_eq!(c.send("before"), "a: before");
    signal(gale.child.id(), "TERM");
    gale.wait_log("draining sessions", Duration::from_secs(10));
    // Draining: no new connections, the open one still carries messages.
    assert!(
        WsClient::connect(&url).is_err(),
        "a new connection during the drain"
    );
    assert_eq!(c.send("during"), "a: during");
    let closed = Instant::now();
    assert_eq!(c.close(), "closed 1000");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = gale.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gale still running after its last connection closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "gale waited out the drain deadline"
    );
    assert!(gale.log_lines("closing the sessions left").is_empty());
}
