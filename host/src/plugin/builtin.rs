//! Default plugins compiled from `plugins/` by `build.rs` and shipped inside
//! the gale binary, so a config can name them without any `.wasm` file.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// Names a config may use in `builtin = "..."` (`failover` is
/// weighted-round-robin under its former name).
pub const NAMES: [&str; 4] = [
    "weighted-round-robin",
    "failover",
    "threshold-health",
    "weighted-dns",
];

/// The component bytes of a built-in plugin.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
