//! Invalid configs paired with the exact message each must produce
//! (`tests/config/invalid/NAME.toml` and `NAME.err`), and the shipped
//! config loading cleanly.

use std::path::Path;
use std::time::Duration;

use gale::config::Config;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/config/invalid")
}

#[test]
fn each_invalid_config_gives_its_expected_message() {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for toml in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let name = toml.file_name().unwrap();
        let text = std::fs::read_to_string(toml).unwrap();
        let expected_path = toml.with_extension("err");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .err file", toml.display()));
        // Parse under the bare file name so messages do not depend on where
        // the checkout lives.
        let err = Config::parse(Path::new(name), &text)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", toml.display()));
        assert_eq!(err.to_string(), expected.trim_end(), "{}", toml.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid configs checked");
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gale.toml");
    let config = Config::load(&path).unwrap();
    // Pools and listeners are kept in name order.
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["mta", "web"]);
    assert_eq!(config.pools[0].backends.len(), 3);
    assert_eq!(
        config.pools[0].backends[2].priority, 1,
        "standby role is tier 1"
    );
    let smtp = config
        .listeners
        .iter()
        .find(|l| l.name == "submission")
        .unwrap();
    assert_eq!(smtp.hostname, "gale.localhost");
    let http = config.listeners.iter().find(|l| l.name == "api").unwrap();
    assert_eq!(config.pool_of(http).name, "web");
}

/// `config/gale.toml` writes each key with its default: the constants
/// the code falls back on must say the same. The defaults it shows
/// commented out are uncommented here and must change nothing.
#[test]
fn shipped_config_states_the_defaults() {
    use gale::config::{dns, health, listeners, plugins, pools, server};

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gale.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for commented in [
        "# max_ejection_percent = 50",
        "# base_ejection_time = \"30s\"",
        "# max_ejection_time = \"5m\"",
        "# rate_limit = 20",
        "# rate_limit_burst = 40",
    ] {
        assert!(text.contains(commented), "{commented:?} is no longer there");
        text = text.replace(commented, commented.trim_start_matches("# "));
    }
    let config = Config::parse(&path, &text).unwrap();

    assert_eq!(config.plugins.deadline, plugins::DEFAULT_DEADLINE);
    assert_eq!(config.plugins.memory_mb, plugins::DEFAULT_MEMORY_MB);
    assert_eq!(
        config.plugins.rollback_share,
        plugins::DEFAULT_ROLLBACK_SHARE
    );
    assert_eq!(
        config.plugins.rollback_window,
        plugins::DEFAULT_ROLLBACK_WINDOW
    );
    assert_eq!(config.drain_timeout, server::DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(config.log, gale::config::LogConfig::default());

    let smtp = config.listener("submission").unwrap();
    assert_eq!(smtp.max_sessions, listeners::DEFAULT_MAX_SESSIONS);
    assert_eq!(smtp.max_attempts, listeners::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(smtp.connect_timeout, listeners::DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(smtp.banner_timeout, listeners::DEFAULT_BANNER_TIMEOUT);
    assert_eq!(smtp.idle_timeout, listeners::DEFAULT_IDLE_TIMEOUT);
    assert_eq!(smtp.pregreet, gale::config::Pregreet::default());
    let http = config.listener("api").unwrap();
    assert_eq!(http.header_timeout, listeners::DEFAULT_HEADER_TIMEOUT);
    assert_eq!(http.response_timeout, listeners::DEFAULT_RESPONSE_TIMEOUT);

    let mta = config.pool_of(smtp);
    assert_eq!(
        mta.ejection.max_percent,
        health::DEFAULT_MAX_EJECTION_PERCENT
    );
    assert_eq!(mta.ejection.base_time, health::DEFAULT_BASE_EJECTION_TIME);
    assert_eq!(mta.ejection.max_time, health::DEFAULT_MAX_EJECTION_TIME);
    let web = config.pool_of(http);
    assert_eq!(web.keepalive_timeout, pools::DEFAULT_KEEPALIVE_TIMEOUT);
    assert_eq!(web.probe.interval, health::DEFAULT_PROBE_INTERVAL);
    assert_eq!(web.probe.timeout, health::DEFAULT_PROBE_TIMEOUT);
    assert_eq!(web.probe.method, health::DEFAULT_PROBE_METHOD);
    assert_eq!(web.probe.path, health::DEFAULT_PROBE_PATH);
    assert_eq!(web.probe.expect_status, health::DEFAULT_EXPECT_STATUS);

    let published = config.dns.as_ref().unwrap();
    assert_eq!(published.ttl, dns::DEFAULT_TTL);
    assert_eq!(published.debounce, dns::DEFAULT_DEBOUNCE);
    assert_eq!(published.max_changes, dns::DEFAULT_MAX_CHANGES);
    let gale::config::DnsProvider::Embedded { rate_limit, .. } = &published.provider else {
        panic!("the shipped provider is the embedded one");
    };
    assert_eq!(*rate_limit, dns::RateLimit::default());
    assert_eq!(rate_limit.per_second, dns::DEFAULT_RATE_LIMIT);
    assert_eq!(rate_limit.burst, dns::DEFAULT_RATE_LIMIT_BURST);
}

/// Pool keys of one protocol are refused only when every listener of the
/// pool speaks the other: a pool behind both kinds of listener, or behind
/// none (published by `[dns]` alone), keeps them all.
#[test]
fn a_pool_whose_protocol_is_ambiguous_keeps_every_key() {
    let pool_keys = "keepalive_timeout = \"30s\"\nretry_on = [\"connect\"]\n\
         [pools.POOL.probe]\nkind = \"http\"\n\
         [[pools.POOL.backends]]\nname = \"a\"\naddress = \"127.0.0.1:2601\"\nproxy_protocol = \"v1\"\n";
    let both = format!(
        "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:2525\"\npool = \"both\"\n\
         [listeners.api]\nprotocol = \"http\"\naddress = \"127.0.0.1:8080\"\npool = \"both\"\n\
         [pools.both]\n{}\
         [pools.alone]\n{}",
        pool_keys.replace("POOL", "both"),
        pool_keys.replace("POOL", "alone"),
    );
    let config = Config::parse(Path::new("both.toml"), &both).unwrap();
    for pool in &config.pools {
        assert_eq!(
            pool.keepalive_timeout,
            Duration::from_secs(30),
            "{}",
            pool.name
        );
        assert!(!pool.retry_on.error, "{}", pool.name);
        assert_eq!(pool.probe.kind, gale::config::ProbeKind::Http);
        assert_eq!(
            pool.backends[0].proxy_protocol,
            gale::config::ProxyProtocol::V1
        );
    }
}

#[test]
fn missing_file_names_the_file() {
    let err = Config::load(Path::new("/nonexistent/gale.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/gale.toml: cannot read:"),
        "{err}"
    );
}
