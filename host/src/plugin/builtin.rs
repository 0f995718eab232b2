//! Default plugins compiled from `plugins/` by `build.rs` and shipped inside
//! the gale binary, so a config can name them without any `.wasm` file.

// BUILTIN (name, bytes), generated with the components; the name
// `failover` is weighted-round-robin under its former name.
include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// Names a config may use in `builtin = "..."`, comma-separated (for
/// error messages).
pub fn names() -> String {
    let names: Vec<&str> = BUILTIN.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

/// The component bytes of a built-in plugin.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
