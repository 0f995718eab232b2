//! Reloads of a running gale (the binary, or in-process where a test
//! needs no signal or log line): SIGHUP and file changes swap in a new
//! generation without costing a session; broken input keeps the running
//! generation and says why; health state carries over.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::client::{Load, Session, greeting_time, send_mail};
use support::conf::Conf;
use support::http::{Behaviour, HttpBackend};
use support::in_process::InProcess;
use support::process::{Gale, SmtpSink, curl, free_port, signal};

fn config(backends: &[(&str, SocketAddr, u32)]) -> String {
    conf(backends).to_string()
}

fn conf(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    let mut conf = Conf::new()
        .smtp("in", "mta")
        .set("listeners.in.connect_timeout", "500ms")
        .set("listeners.in.banner_timeout", "500ms")
        .probe("mta", "smtp", "200ms", "500ms");
    for &(name, address, weight) in backends {
        conf = conf.backend("mta", name, address).set(
            &format!("pools.mta.backends.{name}.weight"),
            i64::from(weight),
        );
    }
    conf
}

#[test]
fn reloads_swap_generations_without_losing_a_session() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let gale = Gale::start(&config(&[("a", a.address, 1)]));
    let addr = gale.address("in");

    // A session that starts on generation 1 and ends on generation 2's watch.
    let mut open = Session::open(addr);
    open.command("EHLO client.test\r\n", "250");

    gale.rewrite_config(&config(&[("b", b.address, 1)]));
    let reloaded = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    assert!(reloaded.contains("trigger=\"file change\""), "{reloaded}");
    for _ in 0..10 {
        send_mail(addr);
    }
    let sessions = gale.wait_count("smtp session", 10, Duration::from_secs(10));
    assert!(
        sessions.iter().all(|l| l.contains("backend=b ")),
        "{sessions:#?}"
    );

    // The old session still runs on generation 1's backend, and finishes.
    open.send_mail();
    let old = gale.wait_log("backend=a ", Duration::from_secs(10));
    assert!(old.contains("end=closed"), "{old}");

    // SIGHUP reloads too, and a file write is picked up within a second.
    gale.rewrite_config(&config(&[("a", a.address, 1), ("b", b.address, 1)]));
    let _ = gale.wait_log("reloaded generation=3", Duration::from_secs(20));
    signal(gale.child.id(), "HUP");
    let _ = gale.wait_line(
        &["reloaded generation=4", "trigger=\"SIGHUP\""],
        Duration::from_secs(20),
    );
    let written = Instant::now();
    gale.rewrite_config(&config(&[("a", a.address, 3), ("b", b.address, 1)]));
    let _ = gale.wait_log("reloaded generation=5", Duration::from_secs(20));
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "file change took {took:?} to apply"
    );
    send_mail(addr);
    assert!(gale.log_lines("reload failed").is_empty());
}

#[test]
fn broken_reloads_keep_the_running_generation() {
    let sink = SmtpSink::start(free_port());
    let good = conf(&[("a", sink.address, 1)]);
    let gale = InProcess::start(&good.to_string());
    let addr = gale.address("in");
    let not_a_component = gale.config.with_file_name("garbage.wasm");
    std::fs::write(&not_a_component, b"\0asm but not really").unwrap();
    let wrong_world = support::plugin("hostile-wrong-world");
    let with_balancer = |path: &std::path::Path| {
        (good.clone())
            .set("pools.mta.balancer.path", path.to_str().unwrap())
            .to_string()
    };
    let cases = [
        ("[listeners.in\n".to_string(), "gale.toml:1:"),
        (
            (good.clone())
                .unset("pools.mta.backends.a.weight")
                .set("pools.mta.backends.a.wieght", 1)
                .to_string(),
            "unknown field `wieght`",
        ),
        (with_balancer(&not_a_component), "garbage.wasm"),
        (
            with_balancer(&wrong_world),
            "does not implement world `gale:plugin/balancer",
        ),
    ];
    for (i, (toml, reason)) in cases.iter().enumerate() {
        gale.rewrite_config(toml);
        let failed = gale.wait_reload(
            |e| e.error.as_deref().is_some_and(|e| e.contains(reason)),
            Duration::from_secs(20),
        );
        assert!(!failed.ok, "case {i}: {failed:?}");
        assert_eq!(failed.serving, 1, "case {i}: {failed:?}");
        send_mail(addr);
    }
    assert_eq!(gale.generation(), 1);
    assert!(
        gale.reloads().iter().all(|e| !e.ok),
        "{:#?}",
        gale.reloads()
    );
}

#[test]
fn health_state_survives_a_reload() {
    let sink = SmtpSink::start(free_port());
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gale = InProcess::start(&config(&[("dead", dead, 1), ("good", sink.address, 1)]));
    let pool = || gale.running.server.current.load().pools[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool().is_healthy(0) {
        assert!(Instant::now() < deadline, "the dead backend never left");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Weight 100 would send nearly every session to `dead` first if the
    // reload forgot that it is down.
    gale.rewrite_config(&config(&[("dead", dead, 100), ("good", sink.address, 1)]));
    gale.wait_generation(2, Duration::from_secs(20));
    assert!(
        !pool().is_healthy(0),
        "generation 2 took `dead` for healthy"
    );
    let ctx = gale::generation::sample_context();
    for _ in 0..100 {
        assert_eq!(pool().select(&ctx).order, vec![1], "`dead` offered");
    }
    for _ in 0..10 {
        send_mail(gale.address("in"));
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/pid/status")
}

#[test]
fn a_thousand_reloads_do_not_grow_memory() {
    let sink = SmtpSink::start(free_port());
    let gale = Gale::start(&config(&[("a", sink.address, 1)]));
    let pid = gale.child.id();
    let mut after_ten = 0;
    for n in 1..=1000u64 {
        signal(pid, "HUP");
        // Signals sent faster than reloads run would merge: one at a time.
        let needle = format!("reloaded generation={} ", n + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while gale.log_lines(&needle).is_empty() {
            assert!(Instant::now() < deadline, "reload {n} did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        if n == 10 {
            after_ten = rss_kib(pid);
        }
    }
    send_mail(gale.address("in"));
    let after = rss_kib(pid);
    assert!(
        after * 10 <= after_ten * 11,
        "resident memory grew from {after_ten} KiB after 10 reloads to {after} KiB after 1000"
    );
    eprintln!("RSS after 10 reloads: {after_ten} KiB, after 1000: {after} KiB");
}

/// The config of the load test: backends `a`, `b` and optionally more; the balancer is whatever component `balancer.wasm` holds.
/// `toml` plus an HTTP listener `web` whose pool `web` has the same
/// balancer over `backends` (equal weights).
fn with_http(conf: Conf, balancer: &std::path::Path, backends: &[SocketAddr]) -> String {
    let mut conf = conf
        .http("web", "web")
        .set("pools.web.balancer.path", balancer.to_str().unwrap());
    for (i, &address) in backends.iter().enumerate() {
        conf = conf.backend("web", &format!("w{i}"), address);
    }
    conf.to_string()
}

fn swap_config(balancer: &std::path::Path, backends: &[(&str, SocketAddr, u32, &str)]) -> Conf {
    let mut conf = Conf::new()
        .smtp("in", "mta")
        .set("pools.mta.balancer.path", balancer.to_str().unwrap());
    for &(name, address, weight, role) in backends {
        let at = format!("pools.mta.backends.{name}");
        conf = conf
            .backend("mta", name, address)
            .set(&format!("{at}.weight"), i64::from(weight))
            .set(&format!("{at}.role"), role);
    }
    conf
}

/// Field `key=` of a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn plugin_and_config_swaps_under_load_cost_no_session() {
    let sinks: Vec<SmtpSink> = (0..3).map(|_| SmtpSink::start(free_port())).collect();
    let (a, b, c) = (sinks[0].address, sinks[1].address, sinks[2].address);
    let dir = tempfile::tempdir().unwrap();
    let balancer = dir.path().join("balancer.wasm");
    // Round-robin spreads over a and b; the test balancer first-listed
    // sends everything to a while it is healthy: which one decided is
    // visible.
    let versions = [
        (
            "weighted-round-robin",
            std::fs::read(support::plugin("weighted-round-robin")).unwrap(),
        ),
        (
            "first-listed",
            std::fs::read(support::plugin("first-listed")).unwrap(),
        ),
    ];
    let install = |bytes: &[u8]| {
        let next = balancer.with_extension("wasm.new");
        std::fs::write(&next, bytes).unwrap();
        std::fs::rename(&next, &balancer).unwrap();
    };
    install(&versions[0].1);
    let web = [
        HttpBackend::start("w0", Behaviour::Respond),
        HttpBackend::start("w1", Behaviour::Respond),
    ];
    let web = [web[0].address, web[1].address];
    let config = |backends: &[(&str, SocketAddr, u32, &str)]| {
        with_http(swap_config(&balancer, backends), &balancer, &web)
    };
    let two = [("a", a, 1, "primary"), ("b", b, 1, "primary")];
    let gale = Gale::start(&config(&two));
    let addr = gale.address("in");

    let load = Load::start(addr, 3);
    let http_load = Load::http(gale.address("web"), 2);

    let mut generation = 1;
    let mut plugin_of = std::collections::HashMap::new();
    plugin_of.insert(1, versions[0].0);
    let mut slowest = Duration::ZERO;
    let mut apply = |change: &dyn Fn(), plugin: &'static str| -> u64 {
        generation += 1;
        let written = Instant::now();
        change();
        let _ = gale.wait_log(
            &format!("reloaded generation={generation} "),
            Duration::from_secs(20),
        );
        slowest = slowest.max(written.elapsed());
        plugin_of.insert(generation, plugin);
        generation
    };
    for i in 1..=50 {
        let (name, bytes) = &versions[i % 2];
        apply(&|| install(bytes), name);
    }
    // Round-robin again after an even number of swaps; now the config:
    // new weights, a third backend, and without it again.
    let rr = versions[0].0;
    let heavier = [("a", a, 3, "primary"), ("b", b, 1, "primary")];
    let three = [
        ("a", a, 1, "primary"),
        ("b", b, 1, "primary"),
        ("c", c, 2, "primary"),
    ];
    apply(&|| gale.rewrite_config(&config(&heavier)), rr);
    let with_c = apply(&|| gale.rewrite_config(&config(&three)), rr);
    apply(&|| gale.rewrite_config(&config(&two)), rr);
    let (sent, failed) = load.stop();
    let (requests, failed_requests) = http_load.stop();
    assert_eq!(failed, 0, "{failed} of {sent} client sessions failed");
    assert!(sent >= 100, "only {sent} sessions ran during the swaps");
    assert_eq!(
        failed_requests, 0,
        "{failed_requests} of {requests} HTTP connections failed"
    );
    assert!(requests >= 20, "only {requests} HTTP connections ran");
    assert!(
        slowest < Duration::from_secs(1),
        "a change took {slowest:?} to apply"
    );
    // Every session was decided by the plugin of the generation it ran on.
    let sessions = gale.wait_count("smtp session", sent as usize, Duration::from_secs(10));
    let mut backends_by_generation: std::collections::HashMap<u64, Vec<String>> =
        Default::default();
    for line in &sessions {
        let g: u64 = field(line, "generation=").parse().unwrap();
        backends_by_generation
            .entry(g)
            .or_default()
            .push(field(line, "backend=").to_string());
    }
    for (g, backends) in &backends_by_generation {
        let enough = backends.len() >= 4;
        match plugin_of[g] {
            "first-listed" => assert!(
                backends.iter().all(|b| b == "a"),
                "generation {g} (first-listed) did not keep to a: {backends:?}"
            ),
            _ if enough => assert!(
                backends.iter().any(|b| b == "b"),
                "generation {g} (round-robin) never chose b: {backends:?}"
            ),
            _ => {}
        }
        if *g == with_c && enough {
            assert!(
                backends.iter().any(|b| b == "c"),
                "the added backend took nothing: {backends:?}"
            );
        } else if *g != with_c {
            assert!(
                !backends.iter().any(|b| b == "c"),
                "generation {g} chose c: {backends:?}"
            );
        }
    }
    eprintln!(
        "{sent} SMTP sessions and {requests} HTTP connections (20 requests each) over {generation} generations, 0 failed; slowest change applied in {slowest:?}"
    );
}

#[test]
fn a_moved_listener_is_rebound_and_the_others_keep_their_sockets() {
    let sink = SmtpSink::start(free_port());
    let listeners = |second: &str| {
        format!(
            "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"mta\"\n\
             [listeners.side]\nprotocol = \"smtp\"\naddress = \"{second}\"\npool = \"mta\"\n\
             [pools.mta]\n\
             [[pools.mta.backends]]\nname = \"a\"\naddress = \"{}\"\n",
            sink.address
        )
    };
    let gale = Gale::start(&listeners("127.0.0.3:0"));
    let (main, side) = (gale.address("in"), gale.address("side"));
    // A session on the listener that stays, open across the reload.
    let mut open = Session::open(main);
    open.command("EHLO client.test\r\n", "250");

    gale.rewrite_config(&listeners("127.0.0.2:0"));
    let _ = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    let moved = gale.wait_line(
        &["listening", "listener=side", "address=127.0.0.2:"],
        Duration::from_secs(20),
    );
    let moved: SocketAddr = field(&moved, "address=").parse().unwrap();
    let _ = gale.wait_line(
        &["listener removed by reload", "listener=side"],
        Duration::from_secs(20),
    );

    open.send_mail();
    send_mail(main);
    send_mail(moved);
    assert!(
        TcpStream::connect(side).is_err(),
        "the old address of a moved listener still accepts"
    );
    assert_eq!(
        gale.log_lines(" listening ").len(),
        3,
        "only the moved listener was re-bound"
    );
}

#[test]
fn a_listener_that_changes_protocol_keeps_its_socket() {
    let sink = SmtpSink::start(free_port());
    let web = HttpBackend::start("web", Behaviour::Respond);
    // A fixed port: with port 0 every bind gets a new one, and nothing
    // would be in the way.
    let address = format!("127.0.0.1:{}", free_port());
    let speaking = |protocol: &str, pool: &str| {
        Conf::new()
            .listener("in", protocol, pool)
            .set("listeners.in.address", address.as_str())
            .backend("mta", "a", sink.address)
            .backend("web", "web", web.address)
    };
    let gale = Gale::start(&speaking("smtp", "mta").to_string());
    let at = gale.address("in");
    // A session of the SMTP listener, open across the change.
    let mut open = Session::open(at);
    open.command("EHLO client.test\r\n", "250");

    // A change that fails (another listener on a port in use) leaves the
    // socket as it was: an HTTP listener's options would hold each SMTP
    // client a second (a deferred accept waits for the client's bytes).
    let in_use = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // `zz` is bound after `in` (listeners go in name order), so the
    // reload fails after `in` took the socket's duplicate.
    let failing = speaking("http", "web").listener("zz", "http", "web").set(
        "listeners.zz.address",
        in_use.local_addr().unwrap().to_string(),
    );
    gale.rewrite_config(&failing.to_string());
    let failed = gale.wait_log("reload failed", Duration::from_secs(20));
    assert!(failed.contains("Address already in use"), "{failed}");
    let fastest = (0..3).map(|_| greeting_time(at)).min().unwrap();
    assert!(
        fastest < Duration::from_millis(800),
        "greeted in {fastest:?} after a failed reload"
    );

    gale.rewrite_config(&speaking("http", "web").to_string());
    let reloaded = gale.wait_count("reloaded generation=", 1, Duration::from_secs(20));
    assert_eq!(reloaded.len(), 1, "{reloaded:#?}");
    // Several: with an SMTP loop still accepting on the socket, some
    // would get a greeting.
    for _ in 0..5 {
        let (code, body) = curl(&["-s", &format!("http://{at}/")]);
        assert_eq!((code, body.as_str()), (200, "web"));
    }
    open.send_mail();

    // And back, as an operator undoing it would.
    gale.rewrite_config(&speaking("smtp", "mta").to_string());
    let reloaded = gale.wait_count("reloaded generation=", 2, Duration::from_secs(20));
    assert_eq!(reloaded.len(), 2, "{reloaded:#?}");
    send_mail(at);
    // The HTTP listener's options went with it.
    let fastest = (0..3).map(|_| greeting_time(at)).min().unwrap();
    assert!(
        fastest < Duration::from_millis(800),
        "greeted in {fastest:?} once SMTP again"
    );
    let listening = gale.log_lines(" listening ");
    assert_eq!(listening.len(), 3, "{listening:#?}");
    assert!(
        listening
            .iter()
            .all(|l| l.contains(&format!("address={at}"))),
        "{listening:#?}"
    );
    assert_eq!(gale.log_lines("reload failed").len(), 1);
}

#[test]
fn a_plugin_version_failing_on_traffic_is_rolled_back() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let dir = tempfile::tempdir().unwrap();
    let balancer = dir.path().join("balancer.wasm");
    std::fs::copy(support::plugin("weighted-round-robin"), &balancer).unwrap();
    let toml = format!(
        "[plugins]\nrollback_window = \"20s\"\n[admin]\naddress = \"127.0.0.1:0\"\n{}",
        swap_config(
            &balancer,
            &[
                ("a", a.address, 1, "primary"),
                ("b", b.address, 1, "primary")
            ]
        )
    );
    let gale = Gale::start(&toml);
    let addr = gale.address("in");

    let load = Load::start(addr, 2);

    // A version that passes the self-check and traps on every real client.
    let next = balancer.with_extension("wasm.new");
    std::fs::copy(support::plugin("hostile-sneaky"), &next).unwrap();
    std::fs::rename(&next, &balancer).unwrap();
    let _ = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    let swapped = Instant::now();
    let rolled = gale.wait_line(
        &["rolled back", "serving generation 1 again"],
        Duration::from_secs(20),
    );
    let took = swapped.elapsed();
    // The plugin of generation 1 decides again.
    let before = gale.log_lines("generation=1 ").len();
    let _ = gale.wait_count("generation=1 ", before + 10, Duration::from_secs(10));
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0, "{failed} of {sent} client sessions failed");
    assert!(rolled.contains("(pool mta)"), "{rolled}");
    assert!(
        took < Duration::from_secs(20),
        "rolled back only after {took:?}"
    );
    // Shown in /status as well.
    let (code, body) = curl(&[&format!("http://{}/status", gale.admin_address())]);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rollback = &status["reloads"]["last_rollback"];
    assert_eq!(
        (&status["generation"], &rollback["serving"]),
        (&1.into(), &1.into()),
        "{status}"
    );
    assert!(
        rollback["error"]
            .as_str()
            .unwrap()
            .contains("generation 2) failed"),
        "{rollback}"
    );
    eprintln!("rolled back {took:?} after the swap; {sent} sessions, 0 failed: {rolled}");
}

#[test]
fn a_plugin_version_answering_garbage_is_rolled_back() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let backends = [
        ("a", a.address, 1, "primary"),
        ("b", b.address, 1, "primary"),
    ];
    let wrr = support::plugin("weighted-round-robin");
    let head = "[plugins]\nrollback_window = \"20s\"\n[admin]\naddress = \"127.0.0.1:0\"\n";
    let gale = Gale::start(&format!("{head}{}", swap_config(&wrr, &backends)));
    let addr = gale.address("in");
    let load = Load::start(addr, 2);

    // It passes the self-check, then answers backend id 999 to every
    // real client, forever.
    let sneaky = support::plugin("hostile-sneaky");
    let garbage =
        swap_config(&sneaky, &backends).set("pools.mta.balancer.settings.fail", "garbage");
    gale.rewrite_config(&format!("{head}{garbage}"));
    let _ = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    let rolled = gale.wait_line(
        &["rolled back", "serving generation 1 again"],
        Duration::from_secs(20),
    );
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0, "{failed} of {sent} client sessions failed");
    assert!(rolled.contains("(pool mta)"), "{rolled}");
    let (_, metrics) = curl(&[&format!("http://{}/metrics", gale.admin_address())]);
    let malformed = metrics
        .lines()
        .find(|l| {
            l.starts_with("gale_plugin_fallbacks_total{")
                && l.contains("reason=\"malformed\"")
                && l.contains("pool=\"mta\"")
        })
        .unwrap_or_else(|| panic!("no malformed fallbacks counted: {metrics}"));
    let count: f64 = malformed.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!(count >= 1.0, "{malformed}");
}

/// The status code of an unauthenticated `POST path` to `addr`; `None`
/// when nothing accepts there.
fn post_unauthenticated(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// The admin listener's address and token come from one config: when a
/// reload that moved the admin API to a public address (with a token) is
/// rolled back to a config without a token, the public address is not
/// left open.
#[test]
fn a_rollback_never_leaves_the_admin_api_open() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let backends = [
        ("a", a.address, 1, "primary"),
        ("b", b.address, 1, "primary"),
    ];
    let wrr = support::plugin("weighted-round-robin");
    let head = "[plugins]\nrollback_window = \"20s\"\n";
    let gale = Gale::start(&format!(
        "{head}[admin]\naddress = \"127.0.0.1:0\"\n{}",
        swap_config(&wrr, &backends)
    ));
    let local_admin = gale.admin_address();
    let addr = gale.address("in");
    let load = Load::start(addr, 2);

    // 127.0.0.2 stands for a public address: it needs a token.
    let public = {
        let probe = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        probe.local_addr().unwrap()
    };
    let sneaky = support::plugin("hostile-sneaky");
    gale.rewrite_config(&format!(
        "{head}[admin]\naddress = \"{public}\"\ntoken = \"s3cret-token\"\n{}",
        swap_config(&sneaky, &backends)
    ));
    let _ = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    let disable = "/pools/mta/backends/a/disable";
    assert_eq!(
        post_unauthenticated(public, disable),
        Some(401),
        "generation 2 serves {public} with its token"
    );
    let _ = gale.wait_line(
        &["rolled back", "serving generation 1 again"],
        Duration::from_secs(20),
    );
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0, "{failed} of {sent} client sessions failed");

    // The restored config has no token and a loopback address: the public
    // address is closed or still asks for the token; never served open.
    let answer = post_unauthenticated(public, disable);
    assert!(
        matches!(answer, None | Some(401)),
        "an unauthenticated POST to {public} after the rollback got {answer:?}"
    );
    // Port 0 in the restored config: a fresh port, the third listening line.
    let listening = gale.wait_count("admin listening", 3, Duration::from_secs(10));
    let restored = listening[2]
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap();
    assert!(restored.starts_with("127.0.0.1:"), "{listening:#?}");
    assert_ne!(restored, local_admin.to_string());
    let (code, body) = curl(&[&format!("http://{restored}/status")]);
    assert_eq!(code, 200, "the restored config's admin address: {body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["pools"][0]["backends"][0]["state"], "up", "{status}");
}

#[test]
fn sessions_of_the_old_generation_count_against_max_sessions() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let toml = format!(
        "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"mta\"\n\
         [pools.mta]\n\
         [[pools.mta.backends]]\nname = \"a\"\naddress = \"{}\"\nweight = 100\nmax_sessions = 1\n\
         [[pools.mta.backends]]\nname = \"b\"\naddress = \"{}\"\nweight = 1\n",
        a.address, b.address
    );
    let gale = Gale::start(&toml);
    let addr = gale.address("in");
    // Holds a's only slot, on generation 1.
    let mut held = Session::open(addr);
    held.command("EHLO client.test\r\n", "250");
    signal(gale.child.id(), "HUP");
    let _ = gale.wait_line(
        &["reloaded generation=2", "SIGHUP"],
        Duration::from_secs(20),
    );
    // One at a time: each must have ended at gale too before the next, or
    // its own slot would still be taken.
    for n in 1..=3 {
        send_mail(addr);
        let _ = gale.wait_count("smtp session", n, Duration::from_secs(10));
    }
    let sessions = gale.log_lines("smtp session");
    for s in &sessions {
        assert!(
            s.contains("generation=2")
                && s.contains("backend=b")
                && s.contains("a: at max_sessions"),
            "a backend at max_sessions took a session after the reload: {s}"
        );
    }
    held.send_mail();
    let _ = gale.wait_line(
        &["smtp session", "generation=1", "backend=a"],
        Duration::from_secs(20),
    );
}

#[test]
fn a_reload_changes_max_sessions_on_a_kept_listener() {
    let a = SmtpSink::start(free_port());
    let toml = config(&[("a", a.address, 1)])
        .replace("pool = \"mta\"\n", "pool = \"mta\"\nmax_sessions = 1\n");
    let gale = Gale::start(&toml);
    let addr = gale.address("in");
    let held = Session::open(addr);
    // The second client is queued by the kernel, not accepted: no greeting.
    let waiting = TcpStream::connect(addr).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut greeting = [0u8; 3];
    let early = std::io::Read::read(&mut &waiting, &mut greeting);
    assert!(early.is_err(), "greeted past max_sessions: {early:?}");

    gale.rewrite_config(&toml.replace("max_sessions = 1", "max_sessions = 2"));
    gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Read::read_exact(&mut &waiting, &mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
    // Same socket: the listener was not bound again.
    assert_eq!(gale.log_lines("listener=in").len(), 1);
    held.send_mail();
}
