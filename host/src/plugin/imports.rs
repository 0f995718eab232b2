//! Resolving a plugin's imports. wasmtime's linker matches names by
//! semver at instantiation (a plugin's `wasi:clocks/...@0.2.6` finds the
//! host's `@0.2.12`, its `gale:plugin/host@0.1.0` the host's `@0.1.2`),
//! but `define_unknown_imports_as_traps` looks names up exactly: used as
//! it was, it turned every import of a version other than the host's into
//! a trap, WASI clocks and random included. So gale stubs only what it
//! does not link at any compatible version:
//!
//! - interfaces gale links (the contract's, WASI clocks, random and cli):
//!   left to the linker;
//! - WASI io (streams, poll, error), which gale's cli interfaces return
//!   resources of: its functions trap, under the host's version, and its
//!   resource types are the real ones (`link_wasi_io`);
//! - anything else (files, sockets, ...): every item traps when called.

use semver::Version;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};
use wasmtime::{Engine, StoreContextMut, bail};

use super::contract::host_version;
use super::state::PluginState;

/// The WASI version wasmtime-wasi links (its `wit/deps`).
pub const WASI: &str = "0.2.12";

/// WASI interfaces `runtime::link_wasi` links.
const WASI_LINKED: [&str; 15] = [
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// Interfaces of the contract.
const GALE: [&str; 4] = [
    "gale:plugin/types",
    "gale:plugin/host",
    "gale:plugin/pool-state",
    "gale:plugin/health-detail",
];

/// The resource types of WASI io, as the cli interfaces gale links hand
/// them out; its functions are stubbed per plugin.
pub fn link_wasi_io(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    for (interface, resources) in [
        ("error", &["error"][..]),
        ("poll", &["pollable"][..]),
        ("streams", &["input-stream", "output-stream"][..]),
    ] {
        let mut instance = linker.instance(&format!("wasi:io/{interface}@{WASI}"))?;
        for name in resources {
            resource(&mut instance, name)?;
        }
    }
    Ok(())
}

/// The guest dropped its handle: free the host's entry, or a plugin that
/// asks for stdout in a loop would grow the table outside `memory_mb`.
fn drop<T: 'static>(mut store: StoreContextMut<'_, PluginState>, rep: u32) -> wasmtime::Result<()> {
    store
        .data_mut()
        .table_mut()
        .delete(wasmtime::component::Resource::<T>::new_own(rep))?;
    Ok(())
}

/// Whether `version` is on the same semver track as `ours`, as the
/// component model matches names: same major, and same minor while the
/// major is 0.
fn same_track(version: &Version, ours: &Version) -> bool {
    version.pre.is_empty()
        && version.major == ours.major
        && (ours.major != 0 || version.minor == ours.minor)
}

/// Make every import of `component` resolvable: the linker's own
/// definitions where it has a compatible one, trapping stand-ins for the
/// rest.
pub fn link(
    linker: &mut Linker<PluginState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let contract = host_version();
    let wasi = Version::parse(WASI).expect("WASI is a version");
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let parsed = name
            .split_once('@')
            .and_then(|(i, v)| Some((i, Version::parse(v).ok()?)));
        let Some((interface, version)) = parsed else {
            stub(&mut linker.root(), engine, name, &item.ty, name)?;
            continue;
        };
        if GALE.contains(&interface) && same_track(&version, &contract) {
            // The linker's own: an earlier 0.1.x finds it by semver (the
            // contract test loads a plugin built against 0.1.0).
        } else if WASI_LINKED.contains(&interface) && same_track(&version, &wasi) {
            // The linker's own.
        } else if interface.starts_with("wasi:io/") && same_track(&version, &wasi) {
            // Functions trap; the resource types are already the real ones.
            let ComponentItem::ComponentInstance(instance) = &item.ty else {
                bail!("import `{name}` is not an instance");
            };
            let mut host = linker.instance(&format!("{interface}@{WASI}"))?;
            for (export, item) in instance.exports(engine) {
                if matches!(item.ty, ComponentItem::ComponentFunc(_)) {
                    // Another import of another version may have been
                    // stubbed here already: the stub is the same.
                    let _ = stub(
                        &mut host,
                        engine,
                        export,
                        &item.ty,
                        &format!("{name}#{export}"),
                    );
                }
            }
        } else {
            stub(&mut linker.root(), engine, name, &item.ty, name)?;
        }
    }
    Ok(())
}

/// A trapping stand-in for `item`, named `name` in `linker`.
fn stub(
    linker: &mut LinkerInstance<'_, PluginState>,
    engine: &Engine,
    name: &str,
    item: &ComponentItem,
    path: &str,
) -> wasmtime::Result<()> {
    match item {
        ComponentItem::ComponentFunc(_) => {
            let what = path.to_string();
            linker.func_new(name, move |_, _, _, _| {
                bail!("unknown import: `{what}` is not granted to plugins")
            })
        }
        ComponentItem::ComponentInstance(instance) => {
            let mut nested = linker.instance(name)?;
            for (export, item) in instance.exports(engine) {
                stub(
                    &mut nested,
                    engine,
                    export,
                    &item.ty,
                    &format!("{path}#{export}"),
                )?;
            }
            Ok(())
        }
        ComponentItem::Resource(_) => resource(linker, name),
        ComponentItem::Type(_) => Ok(()),
        ComponentItem::CoreFunc(_) | ComponentItem::Module(_) | ComponentItem::Component(_) => {
            bail!("cannot stand in for the import `{path}`")
        }
    }
}

/// A resource type named `name`: WASI io's own (`input-stream`,
/// `output-stream`, `pollable`, `error`) with the host's real types and
/// handles freed on drop, anything else an opaque stand-in. Interfaces
/// such as `wasi:filesystem` re-export io's streams: stubbed, they must
/// keep the real types, or the plugin fails to load with mismatched
/// resource types instead of trapping when it calls a file function.
fn resource(linker: &mut LinkerInstance<'_, PluginState>, name: &str) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, IoError};
    match name {
        "input-stream" => linker.resource(
            name,
            ResourceType::host::<DynInputStream>(),
            drop::<DynInputStream>,
        ),
        "output-stream" => linker.resource(
            name,
            ResourceType::host::<DynOutputStream>(),
            drop::<DynOutputStream>,
        ),
        "pollable" => linker.resource(
            name,
            ResourceType::host::<DynPollable>(),
            drop::<DynPollable>,
        ),
        "error" => linker.resource(name, ResourceType::host::<IoError>(), drop::<IoError>),
        _ => linker.resource(name, ResourceType::host::<()>(), |_, _| Ok(())),
    }
}
