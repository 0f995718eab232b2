//! DNS publishing by the running binary, checked with dig: through the
//! embedded authoritative server (UDP and TCP: only healthy members are
//! answered, a backend that dies leaves the answer and comes back with it,
//! weights show in which address comes first) and through RFC 2136
//! updates signed with TSIG to a real BIND 9 (records follow health, a
//! wrong key changes nothing, an update waits out a stopped server, an
//! answer forged on the way is an error and never taken as published).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::named::{KEY_NAME, KEY_SECRET, Named, addresses, dig};
use support::process::{Gale, curl, free_port, require};

/// A TCP backend the probes can reach, until stopped.
struct Backend {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(address: &str) -> Backend {
        let socket = TcpListener::bind(address).unwrap();
        socket.set_nonblocking(true).unwrap();
        let address = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match socket.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            address,
            stop,
            thread: Some(thread),
        }
    }

    /// Close the listening socket: connections are refused from now on.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pool `mta` of `backends` (name, address, weight) probed every 200 ms,
/// published as mx.example.test by the embedded server. Without a rate
/// limit: these tests poll with dig far faster than a caching resolver
/// asks (`dns_reflection.rs` tests the limit).
fn config(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    pool(backends)
        .set("dns.provider", "embedded")
        .set("dns.embedded.address", "127.0.0.1:0")
        .set("dns.embedded.rate_limit", 0)
}

/// The same, published to the BIND at `server` with `secret`.
fn rfc2136(backends: &[(&str, SocketAddr, u32)], server: SocketAddr, secret: &str) -> Conf {
    to_bind(pool(backends), server, secret)
}

/// An SMTP listener `smtp` on pool `mta` of `backends` (name, address,
/// weight) probed over TCP every 200 ms, published as mx.example.test by
/// a provider still to be named.
fn pool(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    let mut conf = publish(
        Conf::new()
            .smtp("smtp", "mta")
            .probe("mta", "tcp", "200ms", "200ms"),
        "mta",
    );
    for &(name, address, weight) in backends {
        conf = conf.backend("mta", name, address).set(
            &format!("pools.mta.backends.{name}.weight"),
            i64::from(weight),
        );
    }
    conf
}

/// `conf` with the `dns` keys but the provider's: pool `pool` as
/// mx.example.test.
fn publish(conf: Conf, pool: &str) -> Conf {
    conf.set("dns.zone", "example.test.")
        .set("dns.name", "mx.example.test.")
        .set("dns.ttl", 5)
        .set("dns.pool", pool)
        .set("dns.debounce", "300ms")
}

/// `conf` publishing to the BIND at `server` with `secret`.
fn to_bind(conf: Conf, server: SocketAddr, secret: &str) -> Conf {
    conf.set("dns.provider", "rfc2136")
        .set("dns.rfc2136.server", server.to_string())
        .set("dns.rfc2136.key_name", KEY_NAME)
        .set("dns.rfc2136.key_secret", secret)
        .set("dns.rfc2136.timeout", "500ms")
        .set("dns.rfc2136.reconcile", "1s")
}

/// Wait until both transports answer exactly `want`; how long it took.
fn wait_for(server: SocketAddr, want: &[&str], limit: Duration) -> Duration {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    loop {
        let (udp, tcp) = (addresses(server, false), addresses(server, true));
        if udp == want && tcp == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?}: UDP {udp:?}, TCP {tcp:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_healthy_members_are_answered_and_a_dead_one_comes_back() {
    let mut b = Backend::start("127.0.0.3:0");
    let (a, c) = (Backend::start("127.0.0.2:0"), Backend::start("127.0.0.4:0"));
    let gale = Gale::start(
        &config(&[
            ("a", a.address, 1),
            ("b", b.address, 1),
            ("c", c.address, 1),
        ])
        .to_string(),
    );
    let server = gale.dns_address();
    wait_for(
        server,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        Duration::from_secs(5),
    );

    // The configured TTL on every answer.
    let answer = dig(server, &["mx.example.test.", "A", "+noall", "+answer"]);
    assert_eq!(answer.matches("\t5\tIN\tA\t").count(), 3, "{answer}");
    // Authoritative for the zone, nothing else.
    let soa = dig(
        server,
        &["example.test.", "SOA", "+noall", "+answer", "+comments"],
    );
    assert!(soa.contains("flags: qr aa"), "{soa}");
    assert!(
        soa.contains("SOA\tgale.example.test. hostmaster.example.test."),
        "{soa}"
    );
    let missing = dig(server, &["nope.example.test.", "A"]);
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");
    let elsewhere = dig(server, &["example.org.", "A"]);
    assert!(elsewhere.contains("status: REFUSED"), "{elsewhere}");

    // fall (3) x interval (200 ms) + debounce (300 ms) = 0.9 s, plus up to
    // an interval (the death falls between probes), the publisher's tick
    // and slack for a busy machine.
    b.kill();
    let gone = wait_for(server, &["127.0.0.2", "127.0.0.4"], Duration::from_secs(2));
    eprintln!("record removed {gone:?} after the backend died");
    let line = gale.wait_log("removed=127.0.0.3", Duration::from_secs(1));
    assert!(line.contains("dns records changed"), "{line}");

    let _b = Backend::start(&b.address.to_string());
    let back = wait_for(
        server,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        Duration::from_secs(3),
    );
    eprintln!("record back {back:?} after the backend returned");
}

#[test]
fn the_last_records_stay_when_every_member_is_down() {
    let mut a = Backend::start("127.0.0.5:0");
    let gale = Gale::start(&config(&[("a", a.address, 1)]).to_string());
    let server = gale.dns_address();
    wait_for(server, &["127.0.0.5"], Duration::from_secs(5));
    a.kill();
    gale.wait_log("left rotation", Duration::from_secs(3));
    // Well past fall x interval + debounce: still answered (a stale answer
    // defers mail to a balancer that says 421; an empty one bounces it).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        addresses(server, false),
        BTreeSet::from(["127.0.0.5".to_string()])
    );
}

#[test]
fn weights_show_in_which_address_comes_first() {
    let (light, heavy) = (Backend::start("127.0.0.6:0"), Backend::start("127.0.0.7:0"));
    let gale = Gale::start(
        &config(&[("light", light.address, 1), ("heavy", heavy.address, 3)]).to_string(),
    );
    let server = gale.dns_address();
    wait_for(server, &["127.0.0.6", "127.0.0.7"], Duration::from_secs(5));

    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("queries");
    std::fs::write(&batch, "mx.example.test. A\n".repeat(1000)).unwrap();
    let out = dig(server, &["-f", batch.to_str().unwrap(), "+short"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2000, "two addresses per answer");
    let heavy_first = lines
        .chunks(2)
        .filter(|pair| pair[0] == "127.0.0.7")
        .count();
    // Expected 750 (weight 3 of 4); 5 points either side.
    assert!(
        (700..=800).contains(&heavy_first),
        "heavy first in {heavy_first} of 1000"
    );
    eprintln!("heavy first in {heavy_first} of 1000 answers");
}

/// A BIND, backends on `a` and `b`, and gale publishing both to BIND
/// (returned once BIND has them).
fn two_on_bind(a: &str, b: &str) -> (Named, Backend, Backend, Gale) {
    let named = Named::start(free_port());
    let (first, second) = (
        Backend::start(&format!("{a}:0")),
        Backend::start(&format!("{b}:0")),
    );
    let gale = Gale::start(
        &rfc2136(
            &[("a", first.address, 1), ("b", second.address, 1)],
            named.address,
            KEY_SECRET,
        )
        .to_string(),
    );
    wait_for(named.address, &[a, b], Duration::from_secs(5));
    (named, first, second, gale)
}

#[test]
fn bind_gets_the_records_by_signed_updates_and_they_follow_health() {
    let (named, _a, mut b, gale) = two_on_bind("127.0.0.11", "127.0.0.12");
    b.kill();
    // As above, plus the update's round trip.
    let gone = wait_for(named.address, &["127.0.0.11"], Duration::from_secs(2));
    eprintln!("record removed from BIND {gone:?} after the backend died");
    let _b = Backend::start(&b.address.to_string());
    let back = wait_for(
        named.address,
        &["127.0.0.11", "127.0.0.12"],
        Duration::from_secs(3),
    );
    eprintln!("record back in BIND {back:?} after the backend returned");
    assert!(
        named.log().contains("updating zone 'example.test/IN'"),
        "{}",
        named.log()
    );
    drop(gale);
}

#[test]
fn a_wrong_key_is_refused_with_a_clear_error_and_changes_nothing() {
    let named = Named::start(free_port());
    let a = Backend::start("127.0.0.13:0");
    // The right length, the wrong bytes.
    let wrong = "d3Jvbmcta2V5LWZvci1nYWxlLXRlc3RzLTMyLWJ5dGVzLg==";
    let gale = Gale::start(&rfc2136(&[("a", a.address, 1)], named.address, wrong).to_string());
    let line = gale.wait_log("dns update refused", Duration::from_secs(5));
    assert!(line.contains("key=gale-key."), "{line}");
    assert!(line.contains("the server refused the key"), "{line}");
    assert!(!line.contains(wrong), "the secret was logged: {line}");
    assert!(addresses(named.address, false).is_empty());
}

#[test]
fn an_update_made_while_the_server_is_down_lands_when_it_returns() {
    let (mut named, _a, mut b, gale) = two_on_bind("127.0.0.14", "127.0.0.15");

    named.stop();
    b.kill();
    gale.wait_log("dns update failed", Duration::from_secs(5));
    // The outage itself: 30 s during which gale keeps retrying.
    std::thread::sleep(Duration::from_secs(30));
    named.resume();
    let landed = wait_for(named.address, &["127.0.0.14"], Duration::from_secs(8));
    eprintln!("update landed {landed:?} after the server came back");
}

/// Instance `n` of three (`Conf::peer_instance`), each publishing the
/// healthy ones (itself included) to BIND.
fn instance(n: u8, port: u16, backend: SocketAddr, named: SocketAddr) -> String {
    let conf = Conf::new()
        .peer_instance(n, port, backend)
        .set("pools.mta.backends.mta.weight", 1);
    to_bind(publish(conf, "peers"), named, KEY_SECRET).to_string()
}

#[test]
fn three_balancers_share_a_name_and_the_survivors_remove_a_dead_one() {
    let named = Named::start(free_port());
    let backend = Backend::start("127.0.0.1:0");
    let port = free_port();
    let config = |n| instance(n, port, backend.address, named.address);
    let _two = Gale::start(&config(2));
    let _three = Gale::start(&config(3));
    let mut four = Gale::start(&config(4));
    let all = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    wait_for(named.address, &all, Duration::from_secs(5));

    // Until the three have seen each other up (the first ones probed the
    // last before it started, and took it out for a moment).
    let updates = || {
        named
            .log()
            .matches("updating zone 'example.test/IN'")
            .count()
    };
    let settling = Instant::now();
    loop {
        let before = updates();
        std::thread::sleep(Duration::from_millis(1500));
        if updates() == before {
            break;
        }
        assert!(
            settling.elapsed() < Duration::from_secs(15),
            "never settled"
        );
    }
    // All healthy: the zone holds still (each instance reads it back every
    // second and finds nothing to change).
    let before = updates();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        updates(),
        before,
        "updates while nothing changed:\n{}",
        named.log()
    );
    assert_eq!(addresses(named.address, false).len(), 3);

    four.child.kill().unwrap();
    four.child.wait().unwrap();
    let gone = wait_for(named.address, &all[..2], Duration::from_secs(4));
    eprintln!("the dead balancer's record went {gone:?} after it was killed");

    let _four = Gale::start(&config(4));
    let back = wait_for(named.address, &all, Duration::from_secs(4));
    eprintln!("and came back {back:?} after it restarted");
}

#[test]
fn changes_past_max_changes_wait_and_status_says_why() {
    let (a, mut b) = (Backend::start("127.0.0.8:0"), Backend::start("127.0.0.9:0"));
    let toml = config(&[("a", a.address, 1), ("b", b.address, 1)])
        .set("dns.max_changes", 2)
        .admin()
        .to_string();
    let gale = Gale::start(&toml);
    let server = gale.dns_address();
    // The first publication spends this minute's two changes.
    wait_for(server, &["127.0.0.8", "127.0.0.9"], Duration::from_secs(5));
    let status = format!("http://{}/status", gale.admin_address());

    b.kill();
    gale.wait_log("left rotation", Duration::from_secs(3));
    let started = Instant::now();
    let dns = loop {
        let (code, body) = curl(&[&status]);
        assert_eq!(code, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !doc["dns"]["held_back"].is_null() {
            break doc["dns"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never held back: {doc}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let held = dns["held_back"].as_str().unwrap();
    assert!(held.contains("max_changes = 2"), "{held}");
    assert_eq!(dns["wanted"].as_array().unwrap().len(), 1, "{dns}");
    assert_eq!(dns["published"].as_array().unwrap().len(), 2, "{dns}");
    assert_eq!(
        (dns["provider"].as_str(), dns["pool"].as_str()),
        (Some("embedded"), Some("mta"))
    );
    // Still answered as published until the minute is over.
    assert_eq!(addresses(server, false).len(), 2);
}

#[test]
fn drift_on_the_server_is_put_right_by_the_reconcile_loop() {
    let named = Named::start(free_port());
    let a = Backend::start("127.0.0.16:0");
    let _gale =
        Gale::start(&rfc2136(&[("a", a.address, 1)], named.address, KEY_SECRET).to_string());
    wait_for(named.address, &["127.0.0.16"], Duration::from_secs(5));
    // Another writer deletes the set behind gale's back.
    let mut nsupdate = Command::new(require("nsupdate"))
        .args(["-y", &format!("hmac-sha256:{KEY_NAME}:{KEY_SECRET}")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "server 127.0.0.1 {}\nzone example.test.\nupdate delete mx.example.test. A\nsend\n",
        named.address.port()
    );
    std::io::Write::write_all(nsupdate.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(nsupdate.stdin.take());
    assert!(nsupdate.wait().unwrap().success(), "nsupdate failed");
    assert!(
        named
            .log()
            .contains("deleting rrset at 'mx.example.test' A"),
        "{}",
        named.log()
    );
    // reconcile = 1 s.
    let restored = wait_for(named.address, &["127.0.0.16"], Duration::from_secs(3));
    eprintln!("the deleted set was back {restored:?} later");
}

/// A UDP relay on 127.0.0.1 in front of `upstream` that, while `forging`,
/// rewrites every answer to an A query to hold `forged` (with `ttl`) and
/// nothing else, keeping the rest of the message: a signature BIND made
/// is kept too, and no longer matches.
struct ForgingRelay {
    address: SocketAddr,
    forging: Arc<AtomicBool>,
    /// Answers rewritten so far.
    forged: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ForgingRelay {
    fn start(upstream: SocketAddr, forged: Ipv4Addr, ttl: u32) -> ForgingRelay {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::{RData, Record, RecordType, rdata::A};

        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.connect(upstream).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let (forging, count, stop) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (forge, counted, stopped) = (forging.clone(), count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut query, mut answer) = ([0u8; 4096], [0u8; 65535]);
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut query) else {
                    continue;
                };
                server.send(&query[..n]).unwrap();
                let Ok(m) = server.recv(&mut answer) else {
                    continue;
                };
                let mut reply = answer[..m].to_vec();
                if forge.load(Ordering::Relaxed)
                    && let Ok(mut message) = Message::from_vec(&reply)
                    && let Some(name) = message
                        .queries
                        .first()
                        .filter(|q| q.query_type() == RecordType::A)
                        .map(|q| q.name().clone())
                {
                    message.metadata.response_code = ResponseCode::NoError;
                    message.answers = vec![Record::from_rdata(name, ttl, RData::A(A(forged)))];
                    message.authorities.clear();
                    reply = message.to_vec().unwrap();
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                let _ = socket.send_to(&reply, client);
            }
        });
        ForgingRelay {
            address,
            forging,
            forged: count,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ForgingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_forged_answer_to_a_read_is_an_error_and_never_taken_as_published() {
    let named = Named::start(free_port());
    let a = Backend::start("127.0.0.17:0");
    // The forger claims BIND already has exactly what gale wants, so
    // trusting it would mean sending no update at all.
    let relay = ForgingRelay::start(named.address, Ipv4Addr::new(127, 0, 0, 17), 5);
    let toml = rfc2136(&[("a", a.address, 1)], relay.address, KEY_SECRET)
        .admin()
        .to_string();
    let gale = Gale::start(&toml);

    let line = gale.wait_log("dns answer not trusted", Duration::from_secs(5));
    assert!(line.contains("failed TSIG verification"), "{line}");
    assert!(relay.forged.load(Ordering::Relaxed) > 0);
    let admin = gale.admin_address();
    let (code, body) = curl(&[&format!("http://{admin}/status")]);
    assert_eq!(code, 200, "{body}");
    let dns = serde_json::from_str::<serde_json::Value>(&body).unwrap()["dns"].clone();
    let error = dns["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("failed TSIG verification"), "{dns}");
    assert_eq!(dns["published"].as_array().map(Vec::len), Some(0), "{dns}");
    let (code, metrics) = curl(&[&format!("http://{admin}/metrics")]);
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("gale_dns_updates_total{provider=\"rfc2136\",result=\"unverified\"}")),
        "{metrics}"
    );
    // Nothing was sent: BIND never got the record.
    assert!(addresses(named.address, false).is_empty());
    assert!(!named.log().contains("updating zone"), "{}", named.log());

    // Honest answers again: gale, still retrying, publishes.
    relay.forging.store(false, Ordering::Relaxed);
    let landed = wait_for(named.address, &["127.0.0.17"], Duration::from_secs(8));
    eprintln!("published {landed:?} after the answers stopped being forged");
    let started = Instant::now();
    loop {
        let (_, body) = curl(&[&format!("http://{admin}/status")]);
        let dns = serde_json::from_str::<serde_json::Value>(&body).unwrap()["dns"].clone();
        if dns["published"].as_array().map(Vec::len) == Some(1) && dns["last_error"].is_null() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{dns}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
