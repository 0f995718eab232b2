//! `gale plugin new --lang rust|python|js NAME`: a ready-to-build balancer
//! skeleton that passes `gale plugin check` once built. The Python and
//! JavaScript skeletons carry a copy of the contract's WIT (their binding
//! generators read it); the Rust one uses the guest SDK.

use std::path::{Path, PathBuf};

use crate::plugin::contract::host_version;

/// A plugin language `gale plugin new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "plugin name `{0}`: use lowercase letters, digits and dashes, starting with a letter (and not test, std, core, alloc, proc-macro or self)"
    )]
    BadName(String),
    #[error("{0} already exists; pick another name or directory")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

const TYPES_WIT: &str = include_str!("../../wit/types.wit");
const WORLDS_WIT: &str = include_str!("../../wit/worlds.wit");

/// (path in the new directory, template, executable)
fn templates(lang: Lang) -> Vec<(&'static str, &'static str, bool)> {
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../templates/rust/Cargo.toml"),
                false,
            ),
            (
                "src/lib.rs",
                include_str!("../templates/rust/src/lib.rs"),
                false,
            ),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/python/app.py"), false),
            (
                "build.sh",
                include_str!("../templates/python/build.sh"),
                true,
            ),
            ("wit/types.wit", TYPES_WIT, false),
            ("wit/worlds.wit", WORLDS_WIT, false),
        ],
        Lang::Js => vec![
            (
                "plugin.js",
                include_str!("../templates/js/plugin.js"),
                false,
            ),
            (
                "build.mjs",
                include_str!("../templates/js/build.mjs"),
                false,
            ),
            (
                "package.json",
                include_str!("../templates/js/package.json"),
                false,
            ),
            ("wit/types.wit", TYPES_WIT, false),
            ("wit/worlds.wit", WORLDS_WIT, false),
        ],
    }
}

/// The guest SDK of the source tree this gale was built from, if it is
/// still there.
pub fn default_sdk() -> Option<PathBuf> {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk"))
        .canonicalize()
        .ok()
}

/// Write the skeleton of `name` in `lang` into `parent/name`; the files
/// written.
pub fn create(
    lang: Lang,
    name: &str,
    parent: &Path,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    // Names Cargo refuses for a package.
    const RESERVED: [&str; 6] = ["test", "std", "core", "alloc", "proc-macro", "self"];
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !RESERVED.contains(&name);
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            // A TOML string, quoted and escaped.
            .replace(
                "{{sdk}}",
                &toml::Value::String(sdk.map(|p| p.display().to_string()).unwrap_or_default())
                    .to_string(),
            )
            .replace("{{contract}}", &host_version().to_string())
    };
    let mut written = Vec::new();
    for (file, template, executable) in templates(lang) {
        let path = dir.join(file);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, fill(template))?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        if let Err(source) = write(&path) {
            // Half a skeleton would block the next try ("already exists").
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ScaffoldError::Write { path, source });
        }
        written.push(path);
    }
    Ok(written)
}

/// How to build what `create` wrote, and where the component lands.
pub fn next_steps(lang: Lang, name: &str, dir: &Path) -> String {
    let d = format!("'{}'", dir.display());
    match lang {
        Lang::Rust => format!(
            "cd {d} && cargo build --release --target wasm32-wasip2\n\
             gale plugin check {d}/target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        Lang::Python => format!(
            "pip install componentize-py==0.25.1 && {d}/build.sh\ngale plugin check {d}/{name}.wasm"
        ),
        Lang::Js => {
            format!("cd {d} && npm install && node build.mjs\ngale plugin check {d}/{name}.wasm")
        }
    }
}
