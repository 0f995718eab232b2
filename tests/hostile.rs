//! Hostile plugins in the running `gale` binary: whatever one plugin does
//! (spend its calls in WASI, take a second to set up, flood the log), other
//! pools, other sessions and the log stay as they were.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::client::{HttpConnection, Load, Session, greeting_time};
use support::conf::Conf;
use support::http::{Behaviour, HttpBackend};
use support::process::{Gale, SmtpSink, curl, free_port};

/// An SMTP listener `name` over pool `name` over `sink`; its balancer by
/// `set("pools.NAME.balancer.KEY", ...)`.
fn smtp_pool(conf: Conf, name: &str, sink: SocketAddr) -> Conf {
    conf.smtp(name, name)
        .backend(name, &format!("{name}-sink"), sink)
}

fn fallbacks(gale: &Gale, pool: &str) -> f64 {
    let (_, metrics) = curl(&[&format!("http://{}/metrics", gale.admin_address())]);
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("gale_plugin_fallbacks_total{") && l.contains(&format!("pool=\"{pool}\""))
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

#[test]
fn a_plugin_spending_its_calls_in_wasi_stalls_no_other_pool() {
    let sink = SmtpSink::start(free_port());
    let web = HttpBackend::start("web", Behaviour::Respond);
    let random = support::plugin("hostile-random");
    // 64 KiB a turn: each call succeeds, so only the time charged for the
    // host stops the loop.
    let bad = smtp_pool(Conf::new().admin(), "bad", sink.address)
        .set("pools.bad.balancer.path", random.to_str().unwrap())
        .set("pools.bad.balancer.settings.bytes", 65536);
    let toml = smtp_pool(bad, "good", sink.address)
        .set("pools.good.balancer.builtin", "weighted-round-robin")
        .http("web", "web")
        .backend("web", "web", web.address)
        .to_string();
    let gale = Gale::start(&toml);
    let load = Load::start(gale.address("bad"), 4);
    // The hostile pool is being decided on (and failing) while we measure.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fallbacks(&gale, "bad") < 1.0 {
        assert!(Instant::now() < deadline, "no decision reached the plugin");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut smtp = Vec::new();
    let mut http = Vec::new();
    let mut conn = HttpConnection::open(gale.address("web")).unwrap();
    for _ in 0..20 {
        smtp.push(greeting_time(gale.address("good")));
        let started = Instant::now();
        conn.get("/").unwrap();
        http.push(started.elapsed());
    }
    let (sent, failed) = load.stop();
    smtp.sort();
    http.sort();
    eprintln!(
        "while {sent} sessions met the hostile pool: SMTP greeting p50 {:?} max {:?}, HTTP p50 {:?} max {:?}",
        smtp[10], smtp[19], http[10], http[19]
    );
    assert_eq!(
        failed, 0,
        "sessions through the hostile pool fell back, never failed"
    );
    assert!(smtp[19] < Duration::from_millis(100), "{smtp:?}");
    assert!(http[19] < Duration::from_millis(100), "{http:?}");
    assert!(fallbacks(&gale, "good") == 0.0);
}

#[test]
fn after_a_trap_decisions_never_wait_for_a_slow_init() {
    let sink = SmtpSink::start(free_port());
    let slow = support::plugin("hostile-slow-init");
    let gale = Gale::start(
        &smtp_pool(Conf::new().admin(), "slow", sink.address)
            .set("pools.slow.balancer.path", slow.to_str().unwrap())
            .to_string(),
    );
    let addr = gale.address("slow");
    // Ten clients at once: the first decision traps, and every fresh
    // instance takes ~600 ms in init (not more: time charged to the
    // deadline on a loaded machine runs ahead of the clock); none of them
    // may wait for it.
    let clients: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || greeting_time(addr)))
        .collect();
    let mut times: Vec<Duration> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    // And ten more, while a fresh instance is being set up.
    times.extend((0..10).map(|_| greeting_time(addr)));
    times.sort();
    eprintln!("greeting times: {times:?}");
    assert!(
        times[19] < Duration::from_millis(50),
        "a decision waited for init: {times:?}"
    );
    assert!(fallbacks(&gale, "slow") >= 20.0);
}

#[test]
fn a_plugin_cannot_flood_or_forge_the_log() {
    let sink = SmtpSink::start(free_port());
    let flood = support::plugin("hostile-flood");
    // The self-check at start-up calls the plugin too: the budget counts
    // from there.
    let started = Instant::now();
    let gale = Gale::start(
        &smtp_pool(Conf::new().admin(), "flood", sink.address)
            .set("pools.flood.balancer.path", flood.to_str().unwrap())
            .set("pools.flood.balancer.deadline", "200ms")
            .to_string(),
    );
    let addr = gale.address("flood");
    // Each session's decision logs 10,000 warnings; keep going until a
    // line says how many were suppressed (the budget refills at 20 a
    // second), for at most 10 s.
    let mut sessions = 0;
    let reported = loop {
        let mut s = Session::open(addr);
        s.command("QUIT\r\n", "221");
        sessions += 1;
        let reported = gale
            .log_lines("gale::plugin")
            .into_iter()
            .find(|l| l.contains("suppressed=") && !l.contains("suppressed=0"));
        if let Some(line) = reported {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no line reported suppression"
        );
    };
    let elapsed = started.elapsed();
    let lines = gale.log_lines("");
    let from_plugin = lines.iter().filter(|l| l.contains("gale::plugin")).count();
    let allowed = 100 + (elapsed.as_secs_f64() * 20.0).ceil() as usize + 1;
    eprintln!(
        "{sessions} sessions, {} lines asked for, {from_plugin} logged in {elapsed:?}: {reported}",
        sessions * 10_000
    );
    assert!(
        from_plugin <= allowed,
        "{from_plugin} plugin lines in {elapsed:?}"
    );
    assert!(from_plugin >= 100, "the first burst is logged");
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "an escape sequence reached the log: {line:?}"
        );
        assert!(
            !line.contains('\u{202e}'),
            "a bidi override reached the log: {line:?}"
        );
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged line: {line:?}"
        );
        assert!(!line.starts_with("FORGED"), "a forged line: {line:?}");
    }
    // The escaped text is there, on the plugin's own line.
    assert!(
        reported.contains("flood\\n2026-01-01T00:00:00Z"),
        "{reported}"
    );
    // Every decision was the plugin's own, within its deadline.
    assert_eq!(fallbacks(&gale, "flood"), 0.0);
}
