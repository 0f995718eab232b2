//! Compiles the default plugins in `plugins/` to WebAssembly components and
//! embeds them, so `gale` ships its built-in policies inside the binary.
//!
//! The guests are built by a nested `cargo build --target wasm32-wasip2`
//! into `target/wasm` (a separate target dir, so it never waits on the
//! outer build's lock), as wasmtime's test-programs do.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

const PLUGINS: [(&str, &str); 3] = [
    ("weighted-round-robin", "weighted_round_robin"),
    ("threshold-health", "threshold_health"),
    ("weighted-dns", "weighted_dns"),
];

/// Built-in names kept for configs written before a plugin was folded
/// into another: (name, the package whose component it is).
const ALIASES: [(&str, &str); 1] = [
    // Since weighted-round-robin keeps standbys for when every primary
    // is out, it is all `failover` was.
    ("failover", "weighted-round-robin"),
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for watched in ["plugins", "guest-sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target").join("wasm");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the
    // host target, not for the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("failed to run cargo for the plugins");
    if !status.success() {
        panic!(
            "building the default plugins for wasm32-wasip2 failed (see above). \
             If the target is missing: rustup target add wasm32-wasip2"
        );
    }

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // One static per component (an alias names the same bytes), then
    // the (name, bytes) table.
    let mut code = String::new();
    let mut table = Vec::new();
    for (package, file) in PLUGINS {
        let built = target_dir
            .join("wasm32-wasip2")
            .join("release")
            .join(format!("{file}.wasm"));
        let copy = out.join(format!("{file}.wasm"));
        std::fs::copy(&built, &copy).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
        let constant = file.to_uppercase();
        writeln!(
            code,
            "static {constant}: &[u8] = include_bytes!({:?});",
            copy.display()
        )
        .unwrap();
        let aliases = ALIASES.iter().filter(|(_, of)| *of == package);
        for name in std::iter::once(package).chain(aliases.map(|(name, _)| *name)) {
            table.push((name, constant.clone()));
        }
    }
    writeln!(
        code,
        "/// (name, component bytes) of every built-in plugin.\npub static BUILTIN: [(&str, &[u8]); {}] = [",
        table.len()
    )
    .unwrap();
    for (name, constant) in &table {
        writeln!(code, "    ({name:?}, {constant}),").unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), code).unwrap();
}
