//! DNS publishing by the running binary, checked with dig: through the
//! embedded authoritative server (UDP and TCP: only healthy members are
//! answered, a backend that dies leaves the answer and comes back with it,
//! weights show in which address comes first) and through RFC 2136
//! updates signed with TSIG to a real BIND 9 (records follow health, a
//! wrong key changes nothing, an update waits out a stopped server).

mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::named::{KEY_NAME, KEY_SECRET, Named};
use support::process::{Gale, free_port, require};

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
/// published as mx.example.test by the embedded server.
fn config(backends: &[(&str, SocketAddr, u32)]) -> String {
    with_provider(
        backends,
        "provider = \"embedded\"\n[dns.embedded]\naddress = \"127.0.0.1:0\"\n",
    )
}

/// The same, published to the BIND at `server` with `secret`.
fn rfc2136(backends: &[(&str, SocketAddr, u32)], server: SocketAddr, secret: &str) -> String {
    with_provider(
        backends,
        &format!(
            "provider = \"rfc2136\"\n[dns.rfc2136]\nserver = \"{server}\"\n\
             key_name = \"{KEY_NAME}\"\nkey_secret = \"{secret}\"\ntimeout = \"500ms\"\n\
             reconcile = \"1s\"\n"
        ),
    )
}

fn with_provider(backends: &[(&str, SocketAddr, u32)], provider: &str) -> String {
    let mut toml = format!(
        "[listeners.smtp]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"mta\"\n\
         [pools.mta]\n[pools.mta.probe]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         [dns]\nzone = \"example.test.\"\nname = \"mx.example.test.\"\nttl = 5\npool = \"mta\"\n\
         debounce = \"300ms\"\n{provider}"
    );
    for (name, address, weight) in backends {
        toml.push_str(&format!(
            "[[pools.mta.backends]]\nname = \"{name}\"\naddress = \"{address}\"\nweight = {weight}\n"
        ));
    }
    toml
}

fn dns_address(gale: &Gale) -> SocketAddr {
    let line = gale.wait_log("dns server listening", Duration::from_secs(10));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// dig's output for `args` against `server`.
fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(require("dig"))
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The addresses answered for mx.example.test over UDP or TCP.
fn addresses(server: SocketAddr, tcp: bool) -> BTreeSet<String> {
    let mut args = vec!["mx.example.test.", "A", "+short"];
    if tcp {
        args.push("+tcp");
    }
    dig(server, &args).lines().map(str::to_string).collect()
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
    let gale = Gale::start(&config(&[
        ("a", a.address, 1),
        ("b", b.address, 1),
        ("c", c.address, 1),
    ]));
    let server = dns_address(&gale);
    wait_for(
        server,
        &["127.0.0.2", "127.0.0.3", "127.0.0.4"],
        Duration::from_secs(5),
    );

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

    // fall (3) x interval (200 ms) + debounce (300 ms), plus a probe's
    // timeout and the publisher's tick.
    b.kill();
    let gone = wait_for(server, &["127.0.0.2", "127.0.0.4"], Duration::from_secs(3));
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
    let gale = Gale::start(&config(&[("a", a.address, 1)]));
    let server = dns_address(&gale);
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
    let gale = Gale::start(&config(&[
        ("light", light.address, 1),
        ("heavy", heavy.address, 3),
    ]));
    let server = dns_address(&gale);
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

#[test]
fn bind_gets_the_records_by_signed_updates_and_they_follow_health() {
    let named = Named::start(free_port());
    let mut b = Backend::start("127.0.0.12:0");
    let a = Backend::start("127.0.0.11:0");
    let gale = Gale::start(&rfc2136(
        &[("a", a.address, 1), ("b", b.address, 1)],
        named.address,
        KEY_SECRET,
    ));
    wait_for(
        named.address,
        &["127.0.0.11", "127.0.0.12"],
        Duration::from_secs(5),
    );
    b.kill();
    let gone = wait_for(named.address, &["127.0.0.11"], Duration::from_secs(3));
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
    let gale = Gale::start(&rfc2136(&[("a", a.address, 1)], named.address, wrong));
    let line = gale.wait_log("dns update refused", Duration::from_secs(5));
    assert!(line.contains("key=gale-key."), "{line}");
    assert!(!line.contains(wrong), "the secret was logged: {line}");
    assert!(addresses(named.address, false).is_empty());
}

#[test]
fn an_update_made_while_the_server_is_down_lands_when_it_returns() {
    let mut named = Named::start(free_port());
    let mut b = Backend::start("127.0.0.15:0");
    let a = Backend::start("127.0.0.14:0");
    let gale = Gale::start(&rfc2136(
        &[("a", a.address, 1), ("b", b.address, 1)],
        named.address,
        KEY_SECRET,
    ));
    wait_for(
        named.address,
        &["127.0.0.14", "127.0.0.15"],
        Duration::from_secs(5),
    );

    named.stop();
    b.kill();
    gale.wait_log("dns update failed", Duration::from_secs(5));
    // The outage itself: 30 s during which gale keeps retrying.
    std::thread::sleep(Duration::from_secs(30));
    named.resume();
    let landed = wait_for(named.address, &["127.0.0.14"], Duration::from_secs(8));
    eprintln!("update landed {landed:?} after the server came back");
}
