//! Which version of the `gale:plugin` contract a component was built
//! against, and whether this host runs it. Names follow the component
//! model's semver rules (rule 1 at the top of `wit/types.wit`): while the
//! major version is 0, every 0.1.x is one compatible track, and wasmtime
//! matches a plugin's `@0.1.0` imports and exports with this host's.

use semver::Version;
use wasmtime::Engine;
use wasmtime::component::{Component, types::ComponentItem};

use super::bindings::{CONTRACT, WORLDS};
use super::{PluginError, World};

/// The contract this host speaks.
pub fn host_version() -> Version {
    Version::parse(CONTRACT).expect("CONTRACT is a version")
}

/// An exported interface of a gale world, e.g. `gale:plugin/selector@0.1.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub world: World,
    /// The name as the component exports it.
    pub name: String,
    pub version: Version,
}

/// Interfaces `component` exports: those of gale worlds (any version),
/// and the names of any others.
pub fn exports(engine: &Engine, component: &Component) -> (Vec<Export>, Vec<String>) {
    let mut ours = Vec::new();
    let mut others = Vec::new();
    let ty = component.component_type();
    for (name, item) in ty.exports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let found = name.split_once('@').and_then(|(interface, version)| {
            let (world, _) = WORLDS
                .iter()
                .find(|(_, export)| export.split_once('@').map(|(i, _)| i) == Some(interface))?;
            Some(Export {
                world: World::named(world)?,
                name: name.to_string(),
                version: Version::parse(version).ok()?,
            })
        });
        match found {
            Some(export) => ours.push(export),
            None => others.push(name.to_string()),
        }
    }
    (ours, others)
}

/// The export of `world` in `component`, if it was built against a
/// contract this host runs; otherwise an error that says which world and
/// version it has and what this host speaks.
pub fn check(
    plugin: &str,
    engine: &Engine,
    component: &Component,
    world: World,
) -> Result<Export, PluginError> {
    let host = host_version();
    let (ours, others) = exports(engine, component);
    let wrong = |message: String| PluginError::WrongWorld {
        plugin: plugin.to_string(),
        message,
    };
    let Some(export) = ours.iter().find(|e| e.world == world) else {
        let mut found: Vec<String> = ours
            .iter()
            .map(|e| format!("{} (world `{}`)", e.name, e.world.name()))
            .collect();
        found.extend(others);
        let found = if found.is_empty() {
            "no interfaces".to_string()
        } else {
            found.join(", ")
        };
        return Err(wrong(format!(
            "does not implement world `gale:plugin/{}@{host}` (expected an export of `{}`); it exports {found}",
            world.name(),
            world.export()
        )));
    };
    let v = &export.version;
    let same_track = v.major == host.major && (host.major != 0 || v.minor == host.minor);
    if !same_track || !v.pre.is_empty() {
        return Err(wrong(format!(
            "built against contract gale:plugin@{v} (it exports {}); this gale speaks {host} and runs plugins built against {}.{}.0 to {host}",
            export.name, host.major, host.minor
        )));
    }
    if *v > host {
        return Err(wrong(format!(
            "built against contract gale:plugin@{v}, newer than this gale's {host}: it may call host functions this gale does not have; upgrade gale or build the plugin against {host}"
        )));
    }
    Ok(export.clone())
}
