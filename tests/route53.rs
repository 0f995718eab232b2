//! Route 53 publishing by the running binary, against `moto_server` on
//! loopback as the API (`support/route53.rs`): weighted records follow
//! the backends' health while a record someone else owns in the same name
//! stays untouched, and one deleted behind gale's back is restored; three instances with `[peers]` each write their own
//! record, remove a dead one only after its hold, and leave the zone
//! alone while all are up; with health checks nobody removes anybody;
//! throttled change calls go through once, and a batch refused as stale
//! is read again and sent once; a wrong zone or refused
//! credentials are a clear error while mail still flows.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toml::Table;

use support::conf::Conf;
use support::process::{Gale, SmtpSink, curl, free_port, swaks_from};
use support::route53::{Moto, Route53Proxy, weighted};

const NAME: &str = "mx.example.test.";
const SECRET: &str = "never-logged-secret-key-0123456789";

/// Credentials from the environment, the first link of the standard
/// chain; nothing else of the chain is asked (no profile, no instance
/// metadata on loopback tests).
fn aws_env() -> [(&'static str, &'static str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", "AKIDGALETEST"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
}

fn start(conf: Conf) -> Gale {
    Gale::start_with_env(&conf.to_string(), &aws_env())
}

/// `conf` publishing `pool` as mx.example.test. to `zone` at `endpoint`,
/// read back every second.
fn to_route53(conf: Conf, pool: &str, endpoint: &str, zone: &str) -> Conf {
    conf.set("dns.zone", "example.test.")
        .set("dns.name", NAME)
        .set("dns.ttl", 30)
        .set("dns.pool", pool)
        .set("dns.debounce", "300ms")
        .set("dns.provider", "route53")
        .set("dns.route53.hosted_zone_id", zone)
        .set("dns.route53.endpoint_url", endpoint)
        .set("dns.route53.timeout", "2s")
        .set("dns.route53.reconcile", "1s")
}

/// An SMTP listener on pool `mta` of smtp-sinks (name, address, weight)
/// probed over TCP every 200 ms (out after 3 failures).
fn pool(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    let mut conf = Conf::new()
        .smtp("smtp", "mta")
        .probe("mta", "tcp", "200ms", "200ms")
        .admin();
    for &(name, address, weight) in backends {
        conf = conf.backend("mta", name, address).set(
            &format!("pools.mta.backends.{name}.weight"),
            i64::from(weight),
        );
    }
    conf
}

type Set = (String, String, u64, Option<String>);

fn set(id: &str, value: &str, weight: u64) -> Set {
    (id.to_string(), value.to_string(), weight, None)
}

/// Poll `read` until it equals `wanted`; how long that took.
fn wait_sets(read: impl Fn() -> Vec<Set>, wanted: &[Set], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = read();
        if now == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?} the zone holds {now:?}, not {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A weighted A record of mx.example.test. that gale does not own.
fn foreign(action: &str, weight: u64) -> Value {
    json!({"Changes": [{
        "Action": action,
        "ResourceRecordSet": {
            "Name": NAME, "Type": "A", "SetIdentifier": "other",
            "Weight": weight, "TTL": 60,
            "ResourceRecords": [{"Value": "192.0.2.77"}],
        },
    }]})
}

/// Wait until `gale`'s `/status` shows `records` published (its first
/// sync is done).
fn wait_published(gale: &Gale, records: usize) {
    let started = Instant::now();
    loop {
        let dns = status(gale)["dns"].clone();
        if dns["published"].as_array().map(Vec::len) == Some(records) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{dns}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(gale: &Gale) -> Value {
    let (code, body) = curl(&[&format!("http://{}/status", gale.admin_address())]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metric(gale: &Gale, line_start: &str) -> f64 {
    let (_, body) = curl(&[&format!("http://{}/metrics", gale.admin_address())]);
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn weighted_records_follow_health_and_leave_others_alone() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    moto.change(&zone, foreign("CREATE", 7));
    let port = free_port();
    let a: SocketAddr = format!("127.0.0.21:{port}").parse().unwrap();
    let b: SocketAddr = format!("127.0.0.22:{port}").parse().unwrap();
    let _sink_a = SmtpSink::start_at(a);
    let sink_b = SmtpSink::start_at(b);
    let gale = start(to_route53(
        pool(&[("a", a, 3), ("b", b, 5)]),
        "mta",
        &moto.endpoint(),
        &zone,
    ));
    let read = || weighted(&moto.records(&zone), NAME);
    let other = set("other", "192.0.2.77", 7);
    let both = [
        set("gale/a", "127.0.0.21", 3),
        set("gale/b", "127.0.0.22", 5),
        other.clone(),
    ];
    wait_sets(read, &both, Duration::from_secs(10));
    let records = moto.records(&zone);
    let ttl = records
        .iter()
        .find(|r| r["SetIdentifier"] == "gale/a")
        .map(|r| r["TTL"].clone());
    // Route 53 gives a weighted group the TTL last written: gale writes
    // the one the other owner's set has (60), not its own (30).
    assert_eq!(ttl, Some(json!(60)), "{records:?}");
    let other_ttl = records
        .iter()
        .find(|r| r["SetIdentifier"] == "other")
        .map(|r| r["TTL"].clone());
    assert_eq!(other_ttl, Some(json!(60)), "{records:?}");

    // fall (3) x interval (200 ms) + debounce (300 ms), and a read.
    drop(sink_b);
    let gone = wait_sets(
        read,
        &[set("gale/a", "127.0.0.21", 3), other.clone()],
        Duration::from_secs(5),
    );
    eprintln!("a dead backend's record left Route 53 {gone:?} after it was killed");
    let _sink_b = SmtpSink::start_at(b);
    let back = wait_sets(read, &both, Duration::from_secs(5));
    eprintln!("and came back {back:?} after it returned");

    // Drift: someone deletes gale's record behind its back; the next
    // read-back (reconcile = 1 s) puts it right.
    let applied = || {
        metric(
            &gale,
            "gale_dns_updates_total{provider=\"route53\",result=\"applied\"}",
        )
    };
    let before = applied();
    moto.change(
        &zone,
        json!({"Changes": [{"Action": "DELETE", "ResourceRecordSet": {
            "Name": NAME, "Type": "A", "SetIdentifier": "gale/a", "Weight": 3,
            "TTL": 60, "ResourceRecords": [{"Value": "127.0.0.21"}]}}]}),
    );
    let restored = wait_sets(read, &both, Duration::from_secs(5));
    eprintln!("a record deleted behind gale's back was restored {restored:?} later");
    assert_eq!(applied(), before + 1.0, "one change put it back");

    let dns = status(&gale)["dns"].clone();
    assert_eq!(dns["provider"], "route53", "{dns}");
    assert_eq!(dns["change"]["status"], "INSYNC", "{dns}");
    assert_eq!(dns["published"].as_array().map(Vec::len), Some(2), "{dns}");
    assert!(dns["last_error"].is_null(), "{dns}");
    assert!(
        dns["provider_held"][0]
            .as_str()
            .is_some_and(|h| h.contains("TTL is 60")),
        "{dns}"
    );
    assert!(applied() >= 4.0);
}

#[test]
fn throttled_changes_go_through_once() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    for code in ["Throttling", "PriorRequestNotComplete"] {
        // Three refusals, then the change reaches moto; the last two
        // status questions are answered PENDING.
        let proxy = Route53Proxy::start_with(&moto.endpoint(), 3, code, 2);
        let port = free_port();
        let a: SocketAddr = format!("127.0.0.23:{port}").parse().unwrap();
        let _sink = SmtpSink::start_at(a);
        let gale = start(
            to_route53(pool(&[("a", a, 1)]), "mta", &proxy.endpoint(), &zone)
                // Once applied the zone holds still: no second change.
                .set("dns.route53.reconcile", "300ms"),
        );
        let read = || weighted(&moto.records(&zone), NAME);
        wait_sets(
            read,
            &[set("gale/a", "127.0.0.23", 1)],
            Duration::from_secs(10),
        );
        // PENDING, then INSYNC, as /status tells it.
        let started = Instant::now();
        let mut seen = Vec::new();
        loop {
            let change = status(&gale)["dns"]["change"]["status"].clone();
            if seen.last() != Some(&change) {
                seen.push(change.clone());
            }
            if change == "INSYNC" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{seen:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(seen.first(), Some(&json!("PENDING")), "{code}: {seen:?}");
        assert_eq!(proxy.counts(), (1, 3), "{code}: applied once");
        assert_eq!(
            metric(
                &gale,
                "gale_dns_updates_total{provider=\"route53\",result=\"throttled\"}"
            ),
            3.0
        );
        drop(gale);
        // The next round starts from an empty zone again.
        moto.change(
            &zone,
            json!({"Changes": [{"Action": "DELETE", "ResourceRecordSet": {
                "Name": NAME, "Type": "A", "SetIdentifier": "gale/a", "Weight": 1,
                "TTL": 30, "ResourceRecords": [{"Value": "127.0.0.23"}]}}]}),
        );
    }
}

#[test]
fn a_batch_refused_as_stale_is_read_again_and_sent_once() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    // The first change is answered as Route 53 answers a DELETE of a set
    // changed since it was read.
    let proxy = Route53Proxy::start(&moto.endpoint(), 1, "InvalidChangeBatch");
    let port = free_port();
    let a: SocketAddr = format!("127.0.0.25:{port}").parse().unwrap();
    let _sink = SmtpSink::start_at(a);
    let gale = start(to_route53(
        pool(&[("a", a, 1)]),
        "mta",
        &proxy.endpoint(),
        &zone,
    ));
    wait_sets(
        || weighted(&moto.records(&zone), NAME),
        &[set("gale/a", "127.0.0.25", 1)],
        Duration::from_secs(10),
    );
    gale.wait_log("reading the zone again", Duration::from_secs(1));
    assert_eq!(proxy.counts(), (1, 1));
    assert_eq!(
        metric(
            &gale,
            "gale_dns_updates_total{provider=\"route53\",result=\"failed\"}"
        ),
        0.0,
        "a race is not a failure"
    );
}

/// Instance `n` of three (`Conf::peer_instance`) publishing
/// `pool = "peers"` to `zone` at `endpoint`, a failed peer removed after
/// 3 s.
fn instance(n: u8, port: u16, backend: SocketAddr, endpoint: &str, zone: &str) -> Conf {
    let conf = Conf::new().peer_instance(n, port, backend).admin();
    to_route53(conf, "peers", endpoint, zone).set("dns.route53.peer_hold", "3s")
}

#[test]
fn three_instances_write_their_own_records_and_remove_a_dead_one_after_its_hold() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    // Counts the change calls of all three.
    let proxy = Route53Proxy::start(&moto.endpoint(), 0, "Throttling");
    let sink = SmtpSink::start(free_port());
    let port = free_port();
    let config = |n| instance(n, port, sink.address, &proxy.endpoint(), &zone);
    let two = start(config(2));
    let three = start(config(3));
    let mut four = start(config(4));
    let read = || weighted(&moto.records(&zone), NAME);
    let all: Vec<Set> = (2..=4)
        .map(|n| set(&format!("gale/gale-{n}"), &format!("127.0.0.{n}"), 1))
        .collect();
    wait_sets(read, &all, Duration::from_secs(10));

    // All up: each reads the zone every second and writes nothing.
    let (before, _) = proxy.counts();
    std::thread::sleep(Duration::from_secs(10));
    let (after, _) = proxy.counts();
    assert_eq!(after, before, "change calls while all were up");

    four.child.kill().unwrap();
    four.child.wait().unwrap();
    let killed = Instant::now();
    // Out of the others' plans after fall (3) x interval (200 ms) +
    // debounce (300 ms); its record stays for peer_hold (3 s) more.
    let at = |d: u64| killed + Duration::from_millis(d);
    std::thread::sleep(at(2500).saturating_duration_since(Instant::now()));
    assert_eq!(read(), all, "removed before its hold ran out");
    wait_sets(read, &all[..2], Duration::from_secs(5));
    let gone = killed.elapsed();
    eprintln!("a dead instance's record left Route 53 {gone:?} after it was killed");
    let four = start(config(4));
    let back = wait_sets(read, &all, Duration::from_secs(10));
    eprintln!("and came back {back:?} after it restarted");

    // All restart at once: no record is removed (no hold runs out before
    // the peers' probes pass), and none is written (each finds its own as
    // it would write it).
    let (before, _) = proxy.counts();
    drop((two, three, four));
    let restarted: Vec<Gale> = std::thread::scope(|s| {
        let starting: Vec<_> = (2..=4).map(|n| s.spawn(move || start(config(n)))).collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for gale in &restarted {
        wait_published(gale, 3);
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(read(), all, "after all restarted");
    assert_eq!(
        proxy.counts().0,
        before,
        "change calls after the restart: {:?}",
        proxy.changes()
    );
    let mut restarted = restarted.into_iter();
    let (_two, _three, four) = (restarted.next(), restarted.next(), restarted.next());

    // A network split: instance 4 runs on, but neither side reaches the
    // other (it listens on another port, and looks for its peers on
    // ports nobody listens on). The two remove it after its hold; alone,
    // it sees 1 of 3 and removes nobody, nor does it put its own record
    // back: nothing fights.
    drop(four);
    let unreachable: Vec<Table> = [2, 3]
        .map(|other| {
            Table::from_iter([
                ("name".to_string(), format!("gale-{other}").into()),
                (
                    "address".to_string(),
                    format!("127.0.0.{other}:{}", free_port()).into(),
                ),
            ])
        })
        .into();
    let split = start(
        config(4)
            .set(
                "listeners.smtp.address",
                format!("127.0.0.4:{}", free_port()),
            )
            .set("peers.members", unreachable),
    );
    wait_sets(read, &all[..2], Duration::from_secs(8));
    let (before, _) = proxy.counts();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        proxy.counts().0,
        before,
        "change calls after the split: {:?}",
        proxy.changes()
    );
    assert_eq!(read(), all[..2], "the split instance changed the zone");
    let held = status(&split)["dns"]["provider_held"].clone();
    assert!(
        held.to_string()
            .contains("it sees 1 of 3 instances, not a majority"),
        "{held}"
    );
}

#[test]
fn with_health_checks_each_instance_keeps_its_own_record() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    let sink = SmtpSink::start(free_port());
    let port = free_port();
    let config = |n| {
        instance(n, port, sink.address, &moto.endpoint(), &zone)
            .set("dns.route53.health_check.kind", "tcp")
            .set("dns.route53.health_check.port", i64::from(port))
    };
    let _two = start(config(2));
    let _three = start(config(3));
    let mut four = start(config(4));
    let checks = |n: u8| -> Option<String> {
        moto.health_checks()
            .iter()
            .find(|c| c["HealthCheckConfig"]["IPAddress"] == format!("127.0.0.{n}"))
            .map(|c| {
                assert_eq!(c["HealthCheckConfig"]["Type"], "TCP", "{c}");
                assert_eq!(c["HealthCheckConfig"]["Port"], json!(port), "{c}");
                c["Id"].as_str().unwrap().to_string()
            })
    };
    let read = || weighted(&moto.records(&zone), NAME);
    let started = Instant::now();
    let ids = loop {
        let ids: Vec<Option<String>> = (2..=4).map(checks).collect();
        if ids.iter().all(Option::is_some) {
            break ids;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let all: Vec<Set> = (2..=4)
        .zip(&ids)
        .map(|(n, id)| {
            (
                format!("gale/gale-{n}"),
                format!("127.0.0.{n}"),
                1,
                id.clone(),
            )
        })
        .collect();
    wait_sets(read, &all, Duration::from_secs(10));
    assert_eq!(moto.health_checks().len(), 3, "one check per instance");

    // Route 53's checkers decide: the survivors leave the dead one's record.
    four.child.kill().unwrap();
    four.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(read(), all);
    // A restart finds its check again instead of making another.
    let four = start(config(4));
    four.wait_log(
        "route53 health check of this instance",
        Duration::from_secs(5),
    );
    wait_published(&four, 3);
    assert_eq!(read(), all);
    assert_eq!(moto.health_checks().len(), 3);
}

#[test]
fn a_wrong_zone_or_refused_credentials_are_errors_and_mail_still_flows() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    let port = free_port();
    let a: SocketAddr = format!("127.0.0.24:{port}").parse().unwrap();
    let _sink = SmtpSink::start_at(a);

    let wrong = start(to_route53(
        pool(&[("a", a, 1)]),
        "mta",
        &moto.endpoint(),
        "ZNOSUCHZONE1",
    ));
    let line = wrong.wait_log("dns update refused", Duration::from_secs(10));
    assert!(line.contains("NoSuchHostedZone"), "{line}");
    assert!(line.contains("ZNOSUCHZONE1"), "{line}");
    let error = status(&wrong)["dns"]["last_error"].clone();
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("NoSuchHostedZone")),
        "{error}"
    );
    swaks(&wrong);

    moto.change(&zone, foreign("CREATE", 7));
    moto.enforce_auth(true);
    let refused = start(to_route53(
        pool(&[("a", a, 1)]),
        "mta",
        &moto.endpoint(),
        &zone,
    ));
    let line = refused.wait_log("dns update refused", Duration::from_secs(10));
    assert!(line.contains("403"), "{line}");
    assert!(!line.contains(SECRET), "the secret was logged: {line}");
    assert!(
        refused.log_lines(SECRET).is_empty(),
        "the secret was logged"
    );
    assert!(
        status(&refused)["dns"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403"))
    );
    swaks(&refused);
    // Stopped first: once moto takes the key again, gale would publish.
    drop(refused);
    moto.enforce_auth(false);
    assert_eq!(
        weighted(&moto.records(&zone), NAME),
        vec![set("other", "192.0.2.77", 7)],
        "nothing changed"
    );
}

/// A message through gale's `smtp` listener is accepted.
fn swaks(gale: &Gale) {
    let (ok, transcript) = swaks_from("127.0.0.1", gale.address("smtp"), "b@example.test");
    assert!(ok, "{transcript}");
}
