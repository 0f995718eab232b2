//! Invalid configs paired with the exact message each must produce
//! (`tests/config/invalid/NAME.toml` and `NAME.err`), and the shipped
//! config loading cleanly.

use std::path::Path;

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

#[test]
fn missing_file_names_the_file() {
    let err = Config::load(Path::new("/nonexistent/gale.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/gale.toml: cannot read:"),
        "{err}"
    );
}
