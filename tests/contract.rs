//! Contract versioning (rule 1 at the top of `wit/types.wit`): a plugin
//! built against the previous contract, kept unchanged in
//! `wit/previous/`, still loads and decides in this host; one built
//! against an incompatible version is refused at load, naming both.

mod support;

use gale::generation::sample_context;
use gale::plugin::PluginError;
use gale::plugin::contract::host_version;
use gale::pool::Decider;
use support::conf::Conf;
use support::{plugin, runtime};

/// Pool `p` of three backends, `b0` to `b2` on 127.0.0.1:31000 to 31002;
/// its plugins with [`Conf::set`].
fn pool_conf() -> Conf {
    let mut conf = Conf::new();
    for i in 0..3 {
        conf = conf.backend("p", &format!("b{i}"), ([127, 0, 0, 1], 31000 + i).into());
    }
    conf
}

/// [`pool_conf`] with the plugin at `path` as its balancer.
fn with_balancer(path: &std::path::Path) -> Conf {
    pool_conf().set("pools.p.balancer.path", path.display().to_string())
}

#[test]
fn a_plugin_built_against_the_previous_contract_still_loads_and_decides() {
    let previous =
        std::fs::read_to_string(support::workspace().join("wit/previous/0.1.0/types.wit")).unwrap();
    assert!(previous.contains("package gale:plugin@0.1.0;"));
    assert!(
        host_version() > semver::Version::new(0, 1, 0),
        "{}",
        host_version()
    );

    let (rt, _cache) = runtime();
    let path = plugin("contract-0-1-0");
    let config = support::parse(&with_balancer(&path));
    let pool = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .unwrap_or_else(|e| panic!("the 0.1.0 plugin was refused: {e}"));
    let plugins = pool.plugins();
    let (hook, info) = plugins[0];
    assert_eq!(hook, "balancer");
    assert_eq!(info.contract, "gale:plugin/selector@0.1.0");
    // Its own order (highest id first), not the fallback's.
    for _ in 0..5 {
        let decision = pool.select(&sample_context());
        assert_eq!(decision.decider, Decider::Plugin, "{decision:?}");
        assert_eq!(decision.order, [2, 1, 0]);
    }
}

#[test]
fn a_health_plugin_of_the_previous_world_loads_and_its_verdict_weight_applies() {
    let previous =
        std::fs::read_to_string(support::workspace().join("wit/previous/0.1.1/worlds.wit"))
            .unwrap();
    assert!(previous.contains("package gale:plugin@0.1.1;"));
    assert!(
        !previous.contains("health-detail"),
        "0.1.1 had no health-detail"
    );

    let (rt, _cache) = runtime();
    let path = plugin("contract-0-1-1");
    let conf = pool_conf().set("pools.p.health.path", path.display().to_string());
    let config = support::parse(&conf);
    let pool = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .unwrap_or_else(|e| panic!("the 0.1.1 health plugin was refused: {e}"));
    assert_eq!(pool.plugins()[1].1.contract, "gale:plugin/evaluator@0.1.1");
    let probe = |ok| gale::plugin::types::ProbeResult {
        ok,
        latency_us: 100,
        code: None,
        detail: "probe".into(),
        source: gale::plugin::types::ProbeSource::Probe,
    };
    // Its verdict: the newest result, at weight 7 (the contract: a
    // verdict's weight replaces the configured one while it holds).
    pool.record(0, probe(true));
    assert_eq!(pool.health_weight(0), Some(7));
    assert_eq!(pool.effective_weight(0), 7);
    assert_eq!(pool.record(1, probe(false)), Some(false));
    assert!(pool.is_healthy(0) && !pool.is_healthy(1));
}

#[test]
fn a_balancer_built_against_0_1_2_before_the_admission_world_still_decides() {
    let previous =
        std::fs::read_to_string(support::workspace().join("wit/previous/0.1.2/worlds.wit"))
            .unwrap();
    assert!(previous.contains("package gale:plugin@0.1.2;"));
    assert!(
        !previous.contains("world admission"),
        "0.1.2 had no admission world"
    );

    let (rt, _cache) = runtime();
    let path = plugin("contract-0-1-2");
    let config = support::parse(&with_balancer(&path));
    let pool = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .unwrap_or_else(|e| panic!("the 0.1.2 plugin was refused: {e}"));
    assert_eq!(pool.plugins()[0].1.contract, "gale:plugin/selector@0.1.2");
    // Its own order (the eligible ones rotated by one), not the fallback's.
    for _ in 0..3 {
        let decision = pool.select(&sample_context());
        assert_eq!(decision.decider, Decider::Plugin, "{decision:?}");
        assert_eq!(decision.order, [1, 2, 0]);
    }
}

#[test]
fn a_plugin_of_an_incompatible_contract_is_refused_naming_both_versions() {
    let (rt, _cache) = runtime();
    let path = plugin("contract-0-2-0");
    let config = support::parse(&with_balancer(&path));
    let err = gale::pool::Pool::build(&rt, &config.pools[0], &Default::default())
        .err()
        .expect("a 0.2.0 plugin must not load");
    let msg = err.to_string();
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{msg}");
    assert!(
        msg.contains(
            "built against contract gale:plugin@0.2.0 (it exports gale:plugin/selector@0.2.0)"
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("this gale speaks {}", host_version())),
        "{msg}"
    );
}
