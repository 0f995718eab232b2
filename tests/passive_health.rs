//! Health from live traffic, under attack: a client the MTAs refuse cannot
//! take backends out, the MTAs' verdict reaches that client, and traffic
//! evidence alone never takes out more than `max_ejection_percent` of a
//! pool. In-process server on 127.0.0.1:0, in-test MTAs.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gale::generation::Generation;
use gale::pool::{Out, Pool};
use gale::server::Server;
use support::conf::Conf;
use support::process::{SmtpSink, free_port};
use support::smtp::{Backend, Behaviour, Client, LISTED};
use support::wait_until;

/// An SMTP listener before a pool `mta` of `backends` as `b0`, `b1`, ...
/// (with PROXY v1 if `proxy`), as many attempts as backends; the probe and
/// more pool keys with [`Conf::set`].
fn conf(backends: &[&Backend], proxy: bool) -> Conf {
    let mut conf = Conf::new()
        .smtp("in", "mta")
        .set("listeners.in.hostname", "gale.test")
        .set("listeners.in.banner_timeout", "1s")
        .set("listeners.in.connect_timeout", "1s")
        .set("listeners.in.max_attempts", backends.len() as i64);
    for (i, b) in backends.iter().enumerate() {
        let name = format!("b{i}");
        conf = conf.backend("mta", &name, b.address).set(
            &format!("pools.mta.backends.{name}.proxy_protocol"),
            if proxy { "v1" } else { "none" },
        );
    }
    conf
}

async fn start(conf: Conf) -> Server {
    let config = support::parse(&conf);
    let (runtime, _cache) = support::runtime();
    let generation = Generation::build(1, &runtime, config, &Default::default()).unwrap();
    Server::start(generation).await.unwrap()
}

/// Two MTAs behind PROXY v1 that treat clients as `behaviour` says, and
/// gale before them with an SMTP probe: (server, backends, pool).
async fn two_behind_proxy(behaviour: Behaviour) -> (Server, [Backend; 2], Arc<Pool>) {
    let at = || "127.0.0.1:0".parse().unwrap();
    let backends = [
        Backend::start_on(at(), behaviour, Some(1)).await,
        Backend::start_on(at(), behaviour, Some(1)).await,
    ];
    let server =
        start(conf(&[&backends[0], &backends[1]], true).probe("mta", "smtp", "100ms", "1s")).await;
    let pool = server.current.load_full().pools[0].clone();
    (server, backends, pool)
}

fn count(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::counter(&server.current.load().metrics, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_client_gets_the_mtas_refusal_and_empties_no_pool() {
    let listed: IpAddr = "127.0.0.66".parse().unwrap();
    let (server, [a, b], pool) = two_behind_proxy(Behaviour::Blocklist(listed)).await;
    let addr = server.address("in").unwrap();
    // Each greets a client with 220 (round-robin takes turns): they are
    // known to welcome others, so refusing one client is a verdict on it.
    for _ in 0..2 {
        let mut ok = Client::connect(addr).await;
        assert!(ok.reply().await.last().unwrap().starts_with("220"));
        ok.command("QUIT").await;
    }
    assert!(pool.vouches_for_refusal(0, listed) && pool.vouches_for_refusal(1, listed));

    for i in 0..50 {
        let mut c = Client::connect_from(addr, listed).await;
        assert_eq!(
            c.reply().await,
            vec![LISTED],
            "session {i}: the listed client gets the MTAs' own refusal, not 421"
        );
        assert!(c.closed().await, "session {i}: closed after the refusal");
        if i % 5 == 4 {
            let mut ok = Client::connect(addr).await;
            assert!(
                ok.reply().await.last().unwrap().starts_with("220"),
                "session {i}"
            );
            assert!(
                ok.send_mail().await.starts_with("250"),
                "legitimate clients keep relaying"
            );
            ok.command("QUIT").await;
        }
    }
    assert!(
        pool.is_healthy(0) && pool.is_healthy(1),
        "a refused client took a backend out of rotation"
    );
    assert_eq!(count(&server, "gale_backend_ejections_total", &[]), 0.0);
    assert_eq!(
        count(&server, "gale_sessions_total", &[("outcome", "refused")]),
        50.0
    );
    assert_eq!(
        count(&server, "gale_sessions_total", &[("outcome", "relayed")]),
        12.0,
        "the two first sessions and every fifth"
    );
    assert_eq!(
        a.messages.load(Ordering::SeqCst) + b.messages.load(Ordering::SeqCst),
        10
    );
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtas_refusing_every_client_are_an_outage_421_not_a_bounce() {
    // A blocklist that misfires for everyone but gale's own address: the
    // SMTP probes (PROXY from 127.0.0.1) pass, every client gets 554.
    let gale_ip: IpAddr = "127.0.0.1".parse().unwrap();
    let (server, [a, b], pool) = two_behind_proxy(Behaviour::AllowOnly(gale_ip)).await;
    let addr = server.address("in").unwrap();
    wait_until(
        || a.sessions.load(Ordering::SeqCst) >= 2 && b.sessions.load(Ordering::SeqCst) >= 2,
        Duration::from_secs(5),
        "both probed",
    )
    .await;
    for i in 0..10u8 {
        let mut c = Client::connect_from(addr, IpAddr::from([127, 0, 0, 20 + i])).await;
        assert_eq!(
            c.reply().await,
            vec!["421 4.3.2 gale.test Service temporarily unavailable, try again later"],
            "session {i}: deferred, never bounced: no client was welcomed"
        );
    }
    assert!(pool.is_healthy(0) || pool.is_healthy(1), "probes pass");
    assert_eq!(
        count(&server, "gale_sessions_total", &[("outcome", "refused")]),
        0.0
    );
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_ejects_at_most_max_ejection_percent_and_ejections_grow() {
    // Three MTAs that greet 421 to every session (no PROXY: about gale,
    // not a client) and one that works. A TCP probe passes for all, so
    // only traffic evidence judges them.
    let busy = [
        Backend::start(Behaviour::Busy).await,
        Backend::start(Behaviour::Busy).await,
        Backend::start(Behaviour::Busy).await,
    ];
    let good = Backend::start(Behaviour::Sink).await;
    let server = start(
        conf(&[&busy[0], &busy[1], &busy[2], &good], false)
            .set("pools.mta.base_ejection_time", "2s")
            .set("pools.mta.max_ejection_time", "20s")
            .set("pools.mta.probe.kind", "tcp")
            .set("pools.mta.probe.interval", "100ms"),
    )
    .await;
    let addr = server.address("in").unwrap();
    let pool = server.current.load_full().pools[0].clone();
    let send = |n: usize| async move {
        for i in 0..n {
            let mut c = Client::connect(addr).await;
            assert!(
                c.reply().await.last().unwrap().starts_with("220"),
                "session {i}: the client waited while gale tried the next backend"
            );
            c.command("QUIT").await;
        }
    };
    send(30).await;
    let ejected = |pool: &gale::pool::Pool| {
        (0..3)
            .filter(|&i| matches!(pool.out(i), Some(Out::Traffic { .. })))
            .count()
    };
    assert_eq!(
        ejected(&pool),
        2,
        "max_ejection_percent = 50: two of four out on traffic, the third failing one stays"
    );
    assert!(pool.is_healthy(3));
    assert!(count(&server, "gale_pool_ejections_capped_total", &[]) > 0.0);
    let first: Vec<u64> = pool
        .backend_reports()
        .iter()
        .filter_map(|r| r.out.as_ref()?.ejected_ms_left)
        .collect();
    assert!(
        first.iter().all(|&ms| ms <= 2000),
        "first ejection: base_ejection_time {first:?}"
    );

    // Past the ejection time, a passing probe brings them back; failing
    // again soon after, they are ejected for twice as long.
    wait_until(
        || (0..4).all(|i| pool.is_healthy(i)),
        Duration::from_secs(8),
        "ejected backends return after base_ejection_time and a passing probe",
    )
    .await;
    send(30).await;
    let second: Vec<u64> = pool
        .backend_reports()
        .iter()
        .filter(|r| r.ejections_total == 2)
        .filter_map(|r| r.out.as_ref()?.ejected_ms_left)
        .collect();
    assert!(
        !second.is_empty() && second.iter().all(|&ms| ms > 2000 && ms <= 4000),
        "a second ejection soon after the first lasts twice base_ejection_time: {second:?}"
    );
    assert_eq!(ejected(&pool), 2, "still at most half the pool");
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deep_smtp_probe_sees_backends_that_greet_but_defer_mail() {
    let at = |port: u16| format!("127.0.0.1:{port}").parse().unwrap();
    let good = SmtpSink::start_with(at(free_port()), &[]);
    let full_spool = SmtpSink::start_with(at(free_port()), &["-r", "MAIL"]);
    let broken_rcpt = SmtpSink::start_with(at(free_port()), &["-r", "RCPT"]);
    let server = start(
        Conf::new()
            .smtp("in", "mta")
            .set("pools.mta.probe.kind", "smtp")
            .set("pools.mta.probe.interval", "100ms")
            .set("pools.mta.probe.mail_from", "probe@gale.test")
            .set("pools.mta.probe.rcpt_to", "postmaster@example.test")
            .backend("mta", "good", good.address)
            .backend("mta", "full-spool", full_spool.address)
            .backend("mta", "broken-rcpt", broken_rcpt.address),
    )
    .await;
    let pool = server.current.load_full().pools[0].clone();
    wait_until(
        || !pool.is_healthy(1) && !pool.is_healthy(2),
        Duration::from_secs(5),
        "backends that greet 220 but defer MAIL or RCPT leave rotation",
    )
    .await;
    assert!(pool.is_healthy(0), "the good backend stays");
    let reports = pool.backend_reports();
    for (i, step) in [(1, "MAIL FROM"), (2, "RCPT TO")] {
        assert_eq!(pool.out(i), Some(Out::Probe));
        let last = reports[i].last_result.as_ref().unwrap();
        assert_eq!(last.code, Some(450), "{last:?}");
        assert!(last.detail.starts_with(step), "{last:?}");
    }
    assert_eq!(server.shutdown().await, 0);
}

/// A mail transaction after the greeting, as far as the backend lets it
/// go: `Err` with the reply that stopped it.
async fn try_mail(c: &mut Client) -> Result<(), String> {
    for (line, expect) in [
        ("EHLO client.test", "250"),
        ("MAIL FROM:<a@client.test>", "250"),
        ("RCPT TO:<b@example.test>", "250"),
        ("DATA", "354"),
        ("Subject: t\r\n\r\nhello\r\n.", "250"),
    ] {
        c.send_raw(&format!("{line}\r\n")).await;
        let reply = c.reply().await;
        if !reply.last().unwrap().starts_with(expect) {
            return Err(reply.join(" / "));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtas_that_greet_but_defer_mail_leave_rotation_on_traffic() {
    let at = |port: u16| format!("127.0.0.1:{port}").parse().unwrap();
    // `450 4.3.0` to MAIL FROM; `421 4.0.0` and a close after DATA.
    let defers_mail = SmtpSink::start_with(at(free_port()), &["-r", "MAIL"]);
    let drops_data = SmtpSink::start_with(at(free_port()), &["-Q", "DATA"]);
    let good = SmtpSink::start_with(at(free_port()), &[]);
    // A probe that only connects sees nothing wrong: traffic must.
    let server = start(
        Conf::new()
            .smtp("in", "mta")
            .set("pools.mta.max_ejection_percent", 100)
            .set("pools.mta.base_ejection_time", "1m")
            .set("pools.mta.probe.kind", "tcp")
            .set("pools.mta.probe.interval", "1h")
            .backend("mta", "defers-mail", defers_mail.address)
            .backend("mta", "drops-data", drops_data.address)
            .backend("mta", "good", good.address),
    )
    .await;
    let addr = server.address("in").unwrap();
    let pool = server.current.load_full().pools[0].clone();
    // Senders from many addresses, as a fleet sees them (a 421 outside
    // class 4.3 counts once per client).
    let mut deferred = Vec::new();
    for i in 0..30u8 {
        let from = IpAddr::from([127, 0, 0, 10 + i]);
        let mut c = Client::connect_from(addr, from).await;
        assert!(c.reply().await.last().unwrap().starts_with("220"));
        if let Err(reply) = try_mail(&mut c).await {
            deferred.push(reply);
        }
    }
    for (id, name) in [(0, "defers-mail"), (1, "drops-data")] {
        assert!(
            matches!(pool.out(id), Some(Out::Traffic { .. })),
            "{name} greets 220 and defers, yet stays in rotation: {deferred:?} {:?}",
            pool.backend_reports()[id]
        );
    }
    assert!(pool.is_healthy(2));
    // fall = 3 for each bad backend, then every message goes through.
    assert_eq!(deferred.len(), 6, "{deferred:?}");
    assert!(
        deferred.iter().any(|r| r.starts_with("450 4.3.0")),
        "{deferred:?}"
    );
    assert!(
        deferred.iter().any(|r| r.starts_with("421")),
        "{deferred:?}"
    );
    for backend in ["defers-mail", "drops-data"] {
        assert_eq!(
            count(
                &server,
                "gale_backend_failures_total",
                &[("backend", backend), ("reason", "deferred")]
            ),
            3.0
        );
    }
    assert_eq!(server.shutdown().await, 0);
}
