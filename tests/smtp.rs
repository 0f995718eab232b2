//! SMTP balancing end to end through gale's server on 127.0.0.1:0, with
//! in-test backends that refuse, greet 421, never greet or talk garbage.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use gale::generation::Generation;
use gale::server::Server;
use support::conf::Conf;
use support::smtp::{Backend, Behaviour, Client, closed_port};
use support::wait_until;

struct BackendSpec {
    address: std::net::SocketAddr,
    role: &'static str,
    proxy: &'static str,
}

fn spec(address: std::net::SocketAddr) -> BackendSpec {
    BackendSpec {
        address,
        role: "primary",
        proxy: "none",
    }
}

/// An SMTP listener `in` (hostname gale.test, 300 ms timeouts, five
/// attempts) before pool `mta` of `backends` as `b0`, `b1`, ..., probed
/// over SMTP every 200 ms; more keys with [`Conf::set`].
fn conf(backends: &[BackendSpec]) -> Conf {
    let mut conf = Conf::new()
        .set("server.drain_timeout", "10s")
        .smtp("in", "mta")
        .set("listeners.in.hostname", "gale.test")
        .set("listeners.in.banner_timeout", "300ms")
        .set("listeners.in.connect_timeout", "300ms")
        .set("listeners.in.max_attempts", 5)
        .probe("mta", "smtp", "200ms", "300ms");
    for (i, b) in backends.iter().enumerate() {
        let name = format!("b{i}");
        let at = format!("pools.mta.backends.{name}");
        conf = conf
            .backend("mta", &name, b.address)
            .set(&format!("{at}.role"), b.role)
            .set(&format!("{at}.proxy_protocol"), b.proxy);
    }
    conf
}

async fn start(conf: Conf) -> Server {
    let config = support::parse(&conf);
    let (runtime, _cache) = support::runtime();
    let generation = Generation::build(1, &runtime, config, &Default::default()).unwrap();
    Server::start(generation).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backends_are_skipped_while_the_client_waits() {
    let good = Backend::start(Behaviour::Sink).await;
    let busy = Backend::start(Behaviour::Busy).await;
    let silent = Backend::start(Behaviour::Silent).await;
    let garbage = Backend::start(Behaviour::Garbage).await;
    let refused = closed_port().await;
    let server = start(conf(&[
        spec(refused),
        spec(busy.address),
        spec(silent.address),
        spec(garbage.address),
        spec(good.address),
    ]))
    .await;
    let addr = server.address("in").unwrap();
    for i in 0..20 {
        let mut c = Client::connect(addr).await;
        let greeting = c.reply().await;
        assert_eq!(
            greeting,
            vec!["220-sink.test ESMTP", "220 ready"],
            "session {i}: multi-line greeting intact"
        );
        assert!(c.send_mail().await.starts_with("250"), "session {i}");
        assert_eq!(c.command("QUIT").await[0], "221 bye");
    }
    assert_eq!(
        good.messages.load(Ordering::SeqCst),
        20,
        "every message reached the good backend"
    );
    // Live-traffic failures took the bad backends out (fall 3).
    let generation = server.current.load_full();
    let pool = &generation.pools[0];
    for (id, name) in [(0, "refused"), (1, "421"), (2, "silent"), (3, "garbage")] {
        assert!(!pool.is_healthy(id), "{name} backend still in rotation");
    }
    assert!(pool.is_healthy(4));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backend_means_421_and_a_clean_close() {
    let busy = Backend::start(Behaviour::Busy).await;
    let refused = closed_port().await;
    let server = start(conf(&[spec(refused), spec(busy.address)])).await;
    let addr = server.address("in").unwrap();
    for _ in 0..5 {
        let mut c = Client::connect(addr).await;
        assert_eq!(
            c.reply().await,
            vec!["421 4.3.2 gale.test Service temporarily unavailable, try again later"]
        );
        assert!(c.closed().await, "gale must close after the 421");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_carry_the_client_address() {
    let v1 = Backend::start_on("127.0.0.1:0".parse().unwrap(), Behaviour::Sink, Some(1)).await;
    let v2 = Backend::start_on("127.0.0.1:0".parse().unwrap(), Behaviour::Sink, Some(2)).await;
    let backends = [
        BackendSpec {
            address: v1.address,
            role: "primary",
            proxy: "v1",
        },
        BackendSpec {
            address: v2.address,
            role: "standby",
            proxy: "v2",
        },
    ];
    let server = start(conf(&backends).set("pools.mta.balancer.builtin", "failover")).await;
    let addr = server.address("in").unwrap();
    let mut c = Client::connect(addr).await;
    c.reply().await;
    assert!(c.send_mail().await.starts_with("250"));
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        c.local.port(),
        addr.port()
    );
    let headers = v1.proxy_headers.lock().unwrap().clone();
    assert!(
        headers.iter().any(|h| h == expected.as_bytes()),
        "no PROXY v1 header with the client's address {expected:?} in {headers:?}"
    );
    // Probes send headers too (v1 with the probe's own addresses, v2
    // LOCAL), so the MTA never waits for one.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let probes = v1
                .proxy_headers
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.as_slice() != expected.as_bytes())
                .count();
            let locals = v2
                .proxy_headers
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h[12] == 0x20)
                .count();
            if probes > 0 && locals > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("probes with PROXY v1 and v2 LOCAL headers");
    drop(c);
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_returns_when_it_recovers() {
    let spare = closed_port().await;
    let good = Backend::start(Behaviour::Sink).await;
    let server = start(conf(&[spec(spare), spec(good.address)])).await;
    let generation = server.current.load_full();
    let pool = generation.pools[0].clone();
    // Probes every 200 ms, fall 3: out within about a second.
    wait_until(
        || !pool.is_healthy(0),
        Duration::from_secs(5),
        "dead backend leaves",
    )
    .await;
    let revived = Backend::start_on(spare, Behaviour::Sink, None).await;
    // rise 2 at 200 ms: back within interval × rise + one interval.
    let started = std::time::Instant::now();
    wait_until(
        || pool.is_healthy(0),
        Duration::from_secs(5),
        "recovered backend returns",
    )
    .await;
    assert!(
        started.elapsed() <= Duration::from_millis(200 * 3 + 300),
        "took {:?}",
        started.elapsed()
    );
    let addr = server.address("in").unwrap();
    for _ in 0..4 {
        let mut c = Client::connect(addr).await;
        c.reply().await;
        assert!(c.send_mail().await.starts_with("250"));
    }
    assert!(
        revived.messages.load(Ordering::SeqCst) >= 1,
        "the revived backend takes sessions again"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_session_in_data_finish() {
    let good = Backend::start(Behaviour::Sink).await;
    let server = start(conf(&[spec(good.address)])).await;
    let addr = server.address("in").unwrap();
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.start_data().await;
    c.send_raw("Subject: half\r\n\r\nfirst half\r\n").await;
    let shutdown = tokio::spawn(async move { server.shutdown().await });
    // New sessions are refused at the socket once accepting stops.
    support::wait_refused(addr, Duration::from_secs(2)).await;
    let end = c.command("second half\r\n.").await;
    assert_eq!(end[0], "250 2.0.0 queued");
    assert_eq!(c.command("QUIT").await[0], "221 bye");
    drop(c);
    assert_eq!(shutdown.await.unwrap(), 0, "no session was cut");
    assert_eq!(good.messages.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_balancer_a_standby_takes_sessions_only_while_every_primary_is_down() {
    // No `balancer` key: the built-in weighted round-robin.
    standby_only_while_every_primary_is_down(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_the_same_policy_under_its_former_name() {
    standby_only_while_every_primary_is_down(Some("failover")).await;
}

/// One primary and one standby of equal weight under the built-in
/// `balancer` (gale's default if `None`): the
/// standby takes nothing while the primary is up, everything while it is
/// down, and nothing again once it is back.
async fn standby_only_while_every_primary_is_down(balancer: Option<&str>) {
    let primary = Backend::start(Behaviour::Sink).await;
    let primary_addr = primary.address;
    let standby = Backend::start(Behaviour::Sink).await;
    let backends = [
        BackendSpec {
            address: primary_addr,
            role: "primary",
            proxy: "none",
        },
        BackendSpec {
            address: standby.address,
            role: "standby",
            proxy: "none",
        },
    ];
    // Traffic ejects the dead primary; a short ejection lets it return on
    // its probes within the test.
    let mut conf = conf(&backends).set("pools.mta.base_ejection_time", "500ms");
    if let Some(builtin) = balancer {
        conf = conf.set("pools.mta.balancer.builtin", builtin);
    }
    let server = start(conf).await;
    let addr = server.address("in").unwrap();
    let send = |n: usize| async move {
        for _ in 0..n {
            let mut c = Client::connect(addr).await;
            assert!(c.reply().await.last().unwrap().starts_with("220"));
            assert!(c.send_mail().await.starts_with("250"));
            c.command("QUIT").await;
        }
    };
    send(10).await;
    assert_eq!(primary.messages.load(Ordering::SeqCst), 10);
    assert_eq!(
        standby.messages.load(Ordering::SeqCst),
        0,
        "standby took sessions while the primary was up"
    );

    drop(primary);
    send(10).await;
    assert_eq!(
        standby.messages.load(Ordering::SeqCst),
        10,
        "every session failed over, none lost"
    );
    let generation = server.current.load_full();
    let pool = generation.pools[0].clone();
    wait_until(
        || !pool.is_healthy(0),
        Duration::from_secs(5),
        "primary leaves",
    )
    .await;

    let revived = Backend::start_on(primary_addr, Behaviour::Sink, None).await;
    wait_until(
        || pool.is_healthy(0),
        Duration::from_secs(5),
        "primary returns",
    )
    .await;
    send(10).await;
    assert_eq!(
        revived.messages.load(Ordering::SeqCst),
        10,
        "traffic back on the primary"
    );
    assert_eq!(standby.messages.load(Ordering::SeqCst), 10);
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_sessions_is_skipped() {
    let a = Backend::start(Behaviour::Sink).await;
    let b = Backend::start(Behaviour::Sink).await;
    // Failover keeps b as the standby: it takes sessions only when a cannot.
    let backends = [
        BackendSpec {
            address: a.address,
            role: "primary",
            proxy: "none",
        },
        BackendSpec {
            address: b.address,
            role: "standby",
            proxy: "none",
        },
    ];
    let server = start(
        conf(&backends)
            .set("pools.mta.balancer.builtin", "failover")
            .set("pools.mta.backends.b0.max_sessions", 1),
    )
    .await;
    let addr = server.address("in").unwrap();
    let mut held = Client::connect(addr).await;
    held.reply().await;
    held.start_data().await;
    // a holds one session, its maximum: the next goes to the standby.
    let mut next = Client::connect(addr).await;
    next.reply().await;
    assert!(next.send_mail().await.starts_with("250"));
    assert_eq!(b.messages.load(Ordering::SeqCst), 1);
    assert_eq!(held.command("held\r\n.").await[0], "250 2.0.0 queued");
    assert_eq!(a.messages.load(Ordering::SeqCst), 1);
    drop((held, next));
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_after_the_idle_timeout() {
    let good = Backend::start(Behaviour::Sink).await;
    let server = start(conf(&[spec(good.address)]).set("listeners.in.idle_timeout", "300ms")).await;
    let mut c = Client::connect(server.address("in").unwrap()).await;
    c.reply().await;
    let started = std::time::Instant::now();
    assert!(c.closed().await, "an idle session must be closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_per_session_are_capped() {
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(Backend::start(Behaviour::Busy).await);
    }
    let specs: Vec<BackendSpec> = busy.iter().map(|b| spec(b.address)).collect();
    // Probes are spread over the interval: with an hour, only backend 0 is
    // probed, once, at start; wait for it so it cannot blur the count.
    let server = start(
        conf(&specs)
            .set("listeners.in.max_attempts", 2)
            .set("pools.mta.probe.kind", "tcp")
            .set("pools.mta.probe.interval", "1h")
            .unset("pools.mta.probe.timeout"),
    )
    .await;
    wait_until(
        || busy[0].sessions.load(Ordering::SeqCst) == 1,
        Duration::from_secs(5),
        "first probe",
    )
    .await;
    let connects = || {
        busy.iter()
            .map(|b| b.sessions.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let before = connects();
    let mut c = Client::connect(server.address("in").unwrap()).await;
    assert!(c.reply().await[0].starts_with("421 4.3.2"));
    assert_eq!(
        connects() - before,
        2,
        "max_attempts = 2: two backends tried, then 421"
    );
    assert_eq!(server.shutdown().await, 0);
}
