//! The `gale` binary as an operator runs it: `check`, `--help`, and
//! `gale dns plan` against a running gale, Route 53 (moto) and BIND.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::named::{KEY_NAME, KEY_SECRET, Named, addresses};
use support::process::{Gale, SmtpSink, free_port, require};
use support::route53::Moto;

fn gale() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gale"));
    let cache = std::env::temp_dir().join(format!("gale-cli-test-{}", std::process::id()));
    cmd.env("GALE_CACHE_DIR", cache).env("RUST_LOG", "warn");
    cmd
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn version_and_help() {
    let out = gale().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        concat!("gale ", env!("CARGO_PKG_VERSION"))
    );
    let out = gale().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in ["run", "check", "--version"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_config_and_loads_its_plugins() {
    let out = gale()
        .current_dir(root())
        .args(["check", "--config", "config/gale.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config/gale.toml: ok"), "{stdout}");
    assert!(
        stdout.contains("balancer mta/balancer (builtin:weighted-round-robin)"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_a_bad_config_with_file_line_and_key() {
    let out = gale()
        .current_dir(root())
        .args(["check", "--config", "tests/config/invalid/unknown-key.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/config/invalid/unknown-key.toml:6:1: pools.mta.backends[0].wieght: unknown field `wieght`"),
        "{stderr}"
    );
}

#[test]
fn check_rejects_a_plugin_of_the_wrong_world() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    // A valid component, but a health plugin named as a balancer.
    let wasm = root().join("target/wasm/wasm32-wasip2/release/threshold_health.wasm");
    let conf = Conf::new()
        .pool("p")
        .set("pools.p.balancer.path", wasm.display().to_string());
    std::fs::write(&config, conf.to_string()).unwrap();
    let out = gale()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not implement world `gale:plugin/balancer@0.1.3`"),
        "{stderr}"
    );
}

/// `conf` publishing pool `mta` as mx.example.test. (TTL 30).
fn publish_mta(conf: Conf) -> Conf {
    conf.set("dns.zone", "example.test.")
        .set("dns.name", "mx.example.test.")
        .set("dns.ttl", 30)
        .set("dns.pool", "mta")
        .set("dns.debounce", "300ms")
}

/// An SMTP listener on pool `mta` of `backends` (name, address, weight),
/// probed over TCP every 200 ms.
fn mta(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    let mut conf = Conf::new()
        .smtp("smtp", "mta")
        .probe("mta", "tcp", "200ms", "200ms");
    for &(name, address, weight) in backends {
        conf = conf.backend("mta", name, address).set(
            &format!("pools.mta.backends.{name}.weight"),
            i64::from(weight),
        );
    }
    publish_mta(conf)
}

/// `gale dns plan` on `config` with `args` and `env`: (exit code, stdout,
/// stderr).
fn dns_plan(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = gale()
        .args(["dns", "plan", "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("GALE_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An admin address nothing listens on.
fn no_gale() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn dns_plan_takes_health_from_the_running_gale_and_shows_no_changes_once_published() {
    let port = free_port();
    let a: SocketAddr = format!("127.0.0.41:{port}").parse().unwrap();
    let b: SocketAddr = format!("127.0.0.42:{port}").parse().unwrap();
    let _sink_a = SmtpSink::start_at(a);
    let sink_b = SmtpSink::start_at(b);
    let gale = Gale::start(
        &mta(&[("a", a, 3), ("b", b, 5)])
            .admin()
            .set("dns.provider", "embedded")
            .set("dns.embedded.address", "127.0.0.1:0")
            .to_string(),
    );
    let admin = gale.admin_address().to_string();
    drop(sink_b);
    // b fails 3 probes 200 ms apart, then the debounce: about 1 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stdout = loop {
        let (code, stdout, stderr) = dns_plan(&gale.config, &["--admin", &admin], &[]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        if stdout.contains("changes: none") && stdout.contains("out (down)") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "b is still published after 10 s:\n{stdout}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = format!(
        "mx.example.test. (zone example.test., provider embedded, pool mta, plugin builtin:weighted-dns)\n\
         health: from the gale at {admin} (generation 1)\n\
         members:\n  a 127.0.0.41 w3 healthy\n  b 127.0.0.42 w5 out (down)\n\
         wanted:\n  A 127.0.0.41 w3 ttl 30 set a\n\
         provider has: (what the gale at {admin} answers)\n  A 127.0.0.41 w3 ttl 30 set a\n\
         changes: none\n"
    );
    assert_eq!(stdout, expected);

    // Without a gale to ask, every member counts: b is to be added.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    std::fs::copy(&gale.config, &config).unwrap();
    drop(gale);
    let (code, stdout, stderr) = dns_plan(&config, &["--admin", &admin], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("health: no gale at {admin} (")),
        "{stdout}"
    );
    assert!(stdout.contains("every member counted healthy"), "{stdout}");
    assert!(
        stdout.contains("provider has: nothing published: no gale answering\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "changes:\n  ADD A 127.0.0.41 w3 ttl 30 set a\n  ADD A 127.0.0.42 w5 ttl 30 set b\n"
        ),
        "{stdout}"
    );
}

/// `conf` publishing to the Route 53 zone `zone` at `endpoint`.
fn to_route53(conf: Conf, endpoint: &str, zone: &str) -> Conf {
    conf.set("dns.provider", "route53")
        .set("dns.route53.hosted_zone_id", zone)
        .set("dns.route53.endpoint_url", endpoint)
        .set("dns.route53.timeout", "2s")
}

/// Credentials from the environment only (no profile, no instance
/// metadata).
const AWS_ENV: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "AKIDGALETEST"),
    ("AWS_SECRET_ACCESS_KEY", "gale-test-secret"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

/// A weighted A record of mx.example.test. with set identifier `id`.
fn weighted_a(id: &str, value: &str, weight: u64) -> serde_json::Value {
    serde_json::json!({"Changes": [{
        "Action": "CREATE",
        "ResourceRecordSet": {
            "Name": "mx.example.test.", "Type": "A", "SetIdentifier": id,
            "Weight": weight, "TTL": 30,
            "ResourceRecords": [{"Value": value}],
        },
    }]})
}

#[test]
fn dns_plan_lists_the_route53_batch_gale_would_send_and_writes_nothing() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    moto.change(&zone, weighted_a("other", "192.0.2.77", 7));
    // gale's, for a member the config no longer has.
    moto.change(&zone, weighted_a("gale/old", "192.0.2.9", 1));
    let before = moto.records(&zone);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    let a: SocketAddr = "127.0.0.41:25".parse().unwrap();
    let b: SocketAddr = "127.0.0.42:25".parse().unwrap();
    let conf = to_route53(mta(&[("a", a, 3), ("b", b, 5)]), &moto.endpoint(), &zone)
        .set("admin.address", no_gale());
    std::fs::write(&config, conf.to_string()).unwrap();

    let (code, stdout, stderr) = dns_plan(&config, &[], &AWS_ENV);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("every member counted healthy"), "{stdout}");
    assert!(stdout.contains("  old A 192.0.2.9 w1 ttl 30\n"), "{stdout}");
    assert!(
        stdout.contains("  other A 192.0.2.77 w7 ttl 30 (not gale's)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "changes:\n  UPSERT a A 127.0.0.41 w3 ttl 30\n  UPSERT b A 127.0.0.42 w5 ttl 30\n  \
             DELETE old A 192.0.2.9 w1 ttl 30\n"
        ),
        "{stdout}"
    );
    assert_eq!(
        moto.records(&zone),
        before,
        "gale dns plan wrote to the zone"
    );

    let wrong = dir.path().join("wrong-zone.toml");
    let conf = to_route53(mta(&[("a", a, 3)]), &moto.endpoint(), "ZNOSUCHZONE0");
    std::fs::write(&wrong, conf.to_string()).unwrap();
    let (code, stdout, stderr) = dns_plan(&wrong, &[], &AWS_ENV);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("route53 zone ZNOSUCHZONE0: NoSuchHostedZone"),
        "{stderr}"
    );
    assert!(stdout.contains("wanted:\n  A 127.0.0.41"), "{stdout}");
    assert!(!stdout.contains("changes"), "{stdout}");
}

#[test]
fn dns_plan_reads_bind_signed_and_sends_no_update() {
    let named = Named::start(free_port());
    // Someone else's address under the name: gale would remove it.
    let update = format!(
        "server 127.0.0.1 {}\nzone example.test.\nupdate add mx.example.test. 30 A 192.0.2.99\nsend\n",
        named.address.port()
    );
    let mut nsupdate = std::process::Command::new(require("nsupdate"))
        .args(["-y", &format!("hmac-sha256:{KEY_NAME}:{KEY_SECRET}")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nsupdate.stdin.take().unwrap(), update.as_bytes()).unwrap();
    assert!(nsupdate.wait().unwrap().success());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    let a: SocketAddr = "127.0.0.41:25".parse().unwrap();
    let conf = mta(&[("a", a, 3)])
        .set("dns.provider", "rfc2136")
        .set("dns.rfc2136.server", named.address.to_string())
        .set("dns.rfc2136.key_name", KEY_NAME)
        .set("dns.rfc2136.key_secret", KEY_SECRET)
        .set("dns.rfc2136.timeout", "500ms");
    std::fs::write(&config, conf.to_string()).unwrap();

    let (code, stdout, stderr) = dns_plan(&config, &["--admin", &no_gale()], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "provider has: (server {}, read signed with key {KEY_NAME})\n  A 192.0.2.99 ttl 30\n\
             changes:\n  ADD A 127.0.0.41 ttl 30\n  REMOVE A 192.0.2.99 ttl 30\n",
            named.address
        )),
        "{stdout}"
    );
    let published: Vec<String> = addresses(named.address, false).into_iter().collect();
    assert_eq!(published, ["192.0.2.99"], "gale dns plan updated BIND");

    // The wrong key: BIND refuses the signed read, and the plan says so.
    let wrong = dir.path().join("wrong-key.toml");
    let conf = conf.set(
        "dns.rfc2136.key_secret",
        "d3Jvbmcta2V5LWZvci1nYWxlLXRlc3RzLTMyLWJ5dGVzLg==",
    );
    std::fs::write(&wrong, conf.to_string()).unwrap();
    let (code, stdout, stderr) = dns_plan(&wrong, &["--admin", &no_gale()], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("rfc2136 server"), "{stderr}");
}

#[test]
fn dns_plan_without_dns_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    std::fs::write(&config, Conf::new().pool("p").to_string()).unwrap();
    let (code, stdout, stderr) = dns_plan(&config, &[], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("gale.toml: no [dns]: gale publishes no records"),
        "{stderr}"
    );
}
