//! The `gale` binary as an operator runs it.

mod support;

use std::path::Path;
use std::process::Command;

use support::conf::Conf;

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
