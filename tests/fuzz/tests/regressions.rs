//! Replays, through the fuzz targets' checks, the seed inputs of each
//! target (`seeds/TARGET/`) and every input that once made a target fail
//! (`regressions/TARGET/`, named for what it found). Runs on stable in the
//! ordinary test suite, so a fixed crash stays fixed.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![
        root.join("seeds").join(target),
        root.join("regressions").join(target),
    ];
    if target == "config" {
        // The shipped config and the invalid ones the config tests hold
        // seed the config target too (tests/fuzz/run passes them).
        dirs.push(root.join("../../config"));
        dirs.push(root.join("../config/invalid"));
    }
    let mut replayed = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails {target}", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs for {target}");
}

#[test]
fn config_inputs() {
    replay("config", gale_fuzz::config);
}

#[test]
fn smtp_reply_inputs() {
    replay("smtp_reply", gale_fuzz::smtp_reply);
}

#[test]
fn proxy_header_inputs() {
    replay("proxy_header", gale_fuzz::proxy_header);
}

#[test]
fn http_request_inputs() {
    replay("http_request", gale_fuzz::http_request);
}

#[test]
fn dns_message_inputs() {
    replay("dns_message", gale_fuzz::dns_message);
}
