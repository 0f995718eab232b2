//! Default and hostile plugins through the real host runtime, compiled
//! from source.

mod support;

use std::time::{Duration, Instant};

use gale::generation::sample_context;
use gale::plugin::types::{ProbeResult, ProbeSource};
use gale::plugin::{CallFailure, PluginError};
use gale::pool::Decider;
use support::conf::Conf;
use support::{counter, first_choices, plugin, pool, runtime};

/// Pool `p` of backends `b0`, `b1`, ... on 127.0.0.1:30000, 30001, ...
/// with these (weight, role); its plugins with [`Conf::set`].
fn backends(weights: &[(u32, &str)]) -> Conf {
    let mut conf = Conf::new();
    for (i, &(weight, role)) in weights.iter().enumerate() {
        let name = format!("b{i}");
        let address = ([127, 0, 0, 1], 30000 + i as u16).into();
        conf = conf
            .backend("p", &name, address)
            .set(
                &format!("pools.p.backends.{name}.weight"),
                i64::from(weight),
            )
            .set(&format!("pools.p.backends.{name}.role"), role);
    }
    conf
}

fn result(ok: bool) -> ProbeResult {
    ProbeResult {
        ok,
        latency_us: 500,
        code: Some(if ok { 220 } else { 421 }),
        detail: String::new(),
        source: ProbeSource::Probe,
    }
}

#[test]
fn weighted_round_robin_splits_by_weight() {
    let (rt, _cache) = runtime();
    let conf = backends(&[
        (5, "primary"),
        (3, "primary"),
        (1, "primary"),
        (1, "primary"),
    ])
    .set("pools.p.balancer.builtin", "weighted-round-robin");
    let (pool, _) = pool(&rt, &conf);
    let counts = first_choices(&pool, 10_000);
    for (i, want) in [5000.0, 3000.0, 1000.0, 1000.0].iter().enumerate() {
        let got = counts[i] as f64;
        assert!(
            (got - want).abs() / 10_000.0 <= 0.01,
            "backend {i}: {got} of 10000, want {want}: {counts:?}"
        );
    }
    // Every healthy backend follows in the order, for retries.
    let decision = pool.select(&sample_context());
    let mut sorted = decision.order.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3]);
}

#[test]
fn unhealthy_backends_are_never_chosen_first() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(5, "primary"), (3, "primary"), (1, "primary")]);
    let (pool, _) = pool(&rt, &conf);
    // threshold-health defaults: fall 3.
    assert_eq!(pool.record(0, result(false)), None);
    assert_eq!(pool.record(0, result(false)), None);
    assert_eq!(pool.record(0, result(false)), Some(false));
    let ctx = sample_context();
    for _ in 0..1000 {
        let d = pool.select(&ctx);
        assert_eq!(d.decider, Decider::Plugin);
        assert_ne!(d.order[0], 0, "unhealthy backend chosen first");
        assert!(!d.order.contains(&0), "unhealthy backend offered for retry");
    }
    let counts = first_choices(&pool, 4000);
    assert_eq!(counts, vec![0, 3000, 1000]);
}

#[test]
fn round_robin_goes_primary_standby_primary() {
    primary_standby_primary("weighted-round-robin");
}

#[test]
fn failover_goes_primary_standby_primary() {
    primary_standby_primary("failover");
}

#[test]
fn without_standby_retry_standbys_stay_out_of_retries() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary"), (1, "primary"), (1, "standby")])
        .set("pools.p.balancer.builtin", "weighted-round-robin")
        .set("pools.p.balancer.settings.standby_retry", false);
    let (pool, _) = pool(&rt, &conf);
    let order = pool.select(&sample_context()).order;
    assert_eq!(order.len(), 2, "primaries only: {order:?}");
    assert!(!order.contains(&2));
}

/// Two primaries and a standby under the built-in balancer `balancer`.
fn primary_standby_primary(balancer: &str) {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary"), (1, "primary"), (1, "standby")])
        .set("pools.p.balancer.builtin", balancer)
        .set("pools.p.health.builtin", "threshold-health")
        .set("pools.p.health.settings.rise", 2)
        .set("pools.p.health.settings.fall", 1);
    let (pool, _) = pool(&rt, &conf);
    let counts = first_choices(&pool, 100);
    assert_eq!(
        counts,
        vec![50, 50, 0],
        "standby took sessions while primaries were up"
    );
    // Standby follows the primaries for retries.
    assert_eq!(pool.select(&sample_context()).order[2], 2);

    pool.record(0, result(false));
    assert_eq!(
        first_choices(&pool, 10),
        vec![0, 10, 0],
        "one primary down: the other takes all"
    );
    pool.record(1, result(false));
    assert_eq!(
        first_choices(&pool, 10),
        vec![0, 0, 10],
        "every primary down: standby takes all"
    );

    pool.record(1, result(true));
    assert_eq!(
        first_choices(&pool, 10),
        vec![0, 0, 10],
        "rise 2: one good result is not enough"
    );
    pool.record(1, result(true));
    assert_eq!(
        first_choices(&pool, 10),
        vec![0, 10, 0],
        "primary recovered: traffic returns at once"
    );
}

#[test]
fn thresholds_flip_exactly_after_rise_and_fall() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary")])
        .set("pools.p.health.builtin", "threshold-health")
        .set("pools.p.health.settings.rise", 3)
        .set("pools.p.health.settings.fall", 2);
    let (pool, _) = pool(&rt, &conf);
    assert_eq!(pool.record(0, result(false)), None);
    assert_eq!(
        pool.record(0, result(true)),
        None,
        "a good result resets the failure streak"
    );
    assert_eq!(pool.record(0, result(false)), None);
    assert_eq!(pool.record(0, result(false)), Some(false), "fall 2");
    assert!(!pool.is_healthy(0));
    assert_eq!(pool.record(0, result(true)), None);
    assert_eq!(pool.record(0, result(true)), None);
    assert_eq!(
        pool.record(0, result(false)),
        None,
        "a failure resets the rise streak"
    );
    assert_eq!(pool.record(0, result(true)), None);
    assert_eq!(pool.record(0, result(true)), None);
    assert_eq!(pool.record(0, result(true)), Some(true), "rise 3");
    assert!(pool.is_healthy(0));
}

#[test]
fn threshold_health_rejects_bad_settings() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary")])
        .set("pools.p.health.builtin", "threshold-health")
        .set("pools.p.health.settings.rise", "often");
    let config = support::parse(&conf);
    let err = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .err()
        .expect("bad settings must be refused");
    assert!(matches!(err, PluginError::Init { .. }), "{err}");
    assert!(
        err.to_string().contains("setting `rise` = \"often\""),
        "{err}"
    );
}

/// Run `n` decisions through a hostile balancer and check each is
/// contained: back within the deadline (plus slack), decided by the
/// fallback, counted.
fn contained(crate_name: &str, reason: &str, deadline: Duration, slack: Duration) {
    contained_within(
        crate_name,
        reason,
        deadline,
        Duration::ZERO,
        deadline + slack,
    )
}

fn contained_within(
    crate_name: &str,
    reason: &str,
    deadline: Duration,
    min: Duration,
    max: Duration,
) {
    let (rt, _cache) = runtime();
    let conf = backends(&[(2, "primary"), (1, "primary")])
        .set(
            "pools.p.balancer.path",
            plugin(crate_name).display().to_string(),
        )
        .set(
            "pools.p.balancer.deadline",
            format!("{}ms", deadline.as_millis()),
        )
        .set("pools.p.balancer.memory_mb", 16);
    // Each pool's first call meets the hostile code; the calls after it
    // find the instance gone (a fresh one is set up off the request path)
    // and fall back at once, or meet the fresh instance and fail again.
    let rounds = 5;
    let per_round = 4;
    for round in 0..rounds {
        let (pool, metrics) = pool(&rt, &conf);
        let ctx = sample_context();
        for i in 0..per_round {
            let started = Instant::now();
            let d = pool.select(&ctx);
            let took = started.elapsed();
            match &d.decider {
                Decider::Fallback(f) if i == 0 => {
                    assert_eq!(f.reason(), reason, "round {round}: {f}");
                    assert!(min <= took && took <= max, "round {round}: took {took:?}");
                }
                Decider::Fallback(f) => {
                    assert!(
                        [reason, "unavailable"].contains(&f.reason()),
                        "round {round}, call {i}: {f}"
                    );
                    assert!(took <= max, "round {round}, call {i} took {took:?}");
                }
                Decider::Plugin => {
                    panic!("call {i}: hostile plugin's answer was used: {d:?}")
                }
            }
            assert!(
                !d.order.is_empty() && d.order.len() == 2,
                "fallback gave {d:?}"
            );
        }
        let count = |reason| {
            counter(
                &metrics,
                "gale_plugin_fallbacks_total",
                &[("pool", "p"), ("hook", "balancer"), ("reason", reason)],
            )
        };
        assert!(count(reason) >= 1.0);
        assert_eq!(count(reason) + count("unavailable"), per_round as f64);
        assert_eq!(
            counter(
                &metrics,
                "gale_plugin_calls_total",
                &[("pool", "p"), ("hook", "balancer")]
            ),
            per_round as f64
        );
    }
}

#[test]
fn trapping_plugin_is_contained() {
    contained(
        "hostile-trap",
        "trap",
        Duration::from_millis(1),
        Duration::from_millis(20),
    );
}

#[test]
fn looping_plugin_is_stopped_by_the_deadline() {
    // 5 ms worth of fuel, then the trap: 2.4-17 ms of wall time here,
    // depending on how busy the machine is (fuel does not count the time
    // the OS holds the call back).
    contained(
        "hostile-spin",
        "deadline",
        Duration::from_millis(5),
        Duration::from_millis(45),
    );
}

#[test]
fn plugin_looping_over_host_calls_is_stopped_by_the_backstop() {
    // Each turn copies a 1 MiB log message into the host for a few fuel:
    // fuel alone would allow minutes. The wall-clock backstop in the host
    // imports stops it after three deadlines plus two 10 ms ticks.
    contained_within(
        "hostile-chatty",
        "deadline",
        Duration::from_millis(1),
        Duration::ZERO,
        Duration::from_millis(80),
    );
}

/// The first decision of a pool whose balancer is `hostile-random` with
/// `bytes`: its failure reason and how long it took.
fn random_decision(bytes: u64, deadline: Duration) -> (String, Duration) {
    let (rt, _cache) = runtime();
    let conf = backends(&[(2, "primary"), (1, "primary")])
        .set(
            "pools.p.balancer.path",
            plugin("hostile-random").display().to_string(),
        )
        .set(
            "pools.p.balancer.deadline",
            format!("{}ms", deadline.as_millis()),
        )
        .set(
            "pools.p.balancer.settings.bytes",
            i64::try_from(bytes).unwrap(),
        );
    let (pool, _) = pool(&rt, &conf);
    // A real client: the sample one is answered honestly.
    let mut ctx = sample_context();
    ctx.client_ip = gale::plugin::types::IpAddress::V4(0x7f00_0001);
    let started = Instant::now();
    let d = pool.select(&ctx);
    let took = started.elapsed();
    match d.decider {
        Decider::Fallback(f) => (f.reason().to_string(), took),
        Decider::Plugin => panic!("the hostile plugin's answer was used: {d:?}"),
    }
}

#[test]
fn a_plugin_looping_in_wasi_random_is_stopped_by_its_deadline() {
    // 64 KiB a turn is allowed, and costs the guest a few fuel: the time
    // spent in the host is what is charged. Without that charge the loop
    // ran until the test's timeout.
    for _ in 0..5 {
        let (reason, took) = random_decision(64 << 10, Duration::from_millis(5));
        assert_eq!(reason, "deadline");
        assert!(took < Duration::from_millis(45), "took {took:?}");
    }
}

#[test]
fn a_plugin_asking_for_megabytes_of_random_traps_and_falls_back() {
    let (reason, took) = random_decision(8 << 20, Duration::from_millis(1));
    assert_eq!(reason, "trap");
    assert!(took < Duration::from_millis(20), "took {took:?}");
}

#[test]
fn allocating_plugin_is_stopped_by_the_memory_cap() {
    contained(
        "hostile-hog",
        "memory",
        Duration::from_millis(50),
        Duration::from_millis(50),
    );
}

#[test]
fn garbage_answers_are_refused() {
    contained(
        "hostile-garbage",
        "malformed",
        Duration::from_millis(1),
        Duration::from_millis(20),
    );
}

#[test]
fn wrong_world_is_refused_at_load_naming_the_expected_world() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary")]).set(
        "pools.p.balancer.path",
        plugin("hostile-wrong-world").display().to_string(),
    );
    let config = support::parse(&conf);
    let err = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .err()
        .expect("a health plugin must not load as a balancer");
    let msg = err.to_string();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{msg}");
    assert!(
        msg.contains("does not implement world `gale:plugin/balancer@0.1.3`"),
        "{msg}"
    );
    assert!(
        msg.contains("gale:plugin/evaluator@0.1.3 (world `health`)"),
        "{msg}"
    );
}

#[test]
fn a_plugin_that_fails_self_check_is_refused() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary")]).set(
        "pools.p.balancer.path",
        plugin("hostile-trap").display().to_string(),
    );
    let config = support::parse(&conf);
    let err = gale::generation::Generation::build(1, &rt, config, &Default::default())
        .err()
        .expect("a plugin that traps on its sample call must be refused");
    assert!(
        matches!(
            &err,
            PluginError::SelfCheck {
                failure: CallFailure::Trap(_),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_across_runtimes() {
    let cache = tempfile::tempdir().unwrap();
    let conf = backends(&[(1, "primary")]);
    let first = gale::plugin::PluginRuntime::new(Some(cache.path().to_path_buf())).unwrap();
    let _ = pool(&first, &conf);
    assert_eq!(
        first.stats(),
        (2, 0),
        "(compiled, cache hits) on a cold cache"
    );
    let second = gale::plugin::PluginRuntime::new(Some(cache.path().to_path_buf())).unwrap();
    let _ = pool(&second, &conf);
    assert_eq!(second.stats(), (0, 2), "a restart must not recompile");
}

#[test]
fn weighted_dns_publishes_healthy_members_and_keeps_the_last() {
    use gale::config::PluginSpec;
    use gale::plugin::DnsPlugin;
    use gale::plugin::types::{DnsSnapshot, Member, MemberKind};

    let (rt, _cache) = runtime();
    let spec = PluginSpec {
        source: gale::config::PluginSource::Builtin("weighted-dns".into()),
        settings: vec![],
        deadline: Duration::from_millis(5),
        memory_mb: 16,
    };
    let dns = DnsPlugin::load(&rt, &spec, "dns").unwrap();
    let member = |name: &str, address: &str, healthy| Member {
        name: name.into(),
        address: address.into(),
        weight: 50,
        healthy,
        kind: MemberKind::Peer,
    };
    let mut snapshot = DnsSnapshot {
        zone: "example.test.".into(),
        name: "mx.example.test.".into(),
        ttl: 30,
        members: vec![member("a", "127.0.0.2", true), member("b", "::1", true)],
        published: vec![],
    };
    let plan = dns.plan(&snapshot).unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[1].value, "::1");
    assert_eq!(plan[1].rtype, gale::plugin::types::RecordType::Aaaa);

    snapshot.members[1].healthy = false;
    let plan = dns.plan(&snapshot).unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(
        (plan[0].value.as_str(), plan[0].weight, plan[0].ttl),
        ("127.0.0.2", 50, 30)
    );

    snapshot.members[0].healthy = false;
    snapshot.published = plan.clone();
    assert_eq!(dns.plan(&snapshot).unwrap(), plan, "the last record stays");
}

#[test]
fn host_imports_reach_the_plugin() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary"), (1, "primary"), (1, "primary")])
        .smtp("in", "p")
        .set("listeners.in.address", "127.0.0.1:2525")
        .set(
            "pools.p.balancer.path",
            plugin("imports-probe").display().to_string(),
        );
    let (pool, _) = pool(&rt, &conf);
    for _ in 0..3 {
        assert!(pool.live().try_enter(0, false));
    }
    assert!(pool.live().try_enter(1, false));
    let ctx = sample_context();
    for _ in 0..10 {
        let d = pool.select(&ctx);
        assert_eq!(d.decider, Decider::Plugin, "{d:?}");
        assert_eq!(d.order, vec![2, 1, 0], "fewest sessions in flight first");
    }
    pool.live().leave(0);
    pool.live().leave(0);
    pool.live().leave(0);
    assert_eq!(pool.select(&ctx).order, vec![0, 2, 1]);
}

#[test]
fn a_plugin_importing_what_gale_does_not_grant_loads_and_traps_only_when_it_calls_it() {
    let (rt, _cache) = runtime();
    let conf = backends(&[(1, "primary"), (1, "primary")]).set(
        "pools.p.balancer.path",
        plugin("fs-importer").display().to_string(),
    );
    let (pool, _) = pool(&rt, &conf);
    let d = pool.select(&sample_context());
    assert_eq!(d.decider, Decider::Plugin, "{d:?}");
    let mut ctx = sample_context();
    ctx.client_port = 1;
    let d = pool.select(&ctx);
    match &d.decider {
        Decider::Fallback(CallFailure::Trap(why)) => {
            assert!(why.contains("wasi:filesystem"), "{why}");
        }
        other => panic!("expected a trap on the file call: {other:?}"),
    }
    assert_eq!(d.order.len(), 2, "the fallback decided: {d:?}");
}
