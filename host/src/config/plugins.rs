//! `[plugins]`: the limits every plugin call gets unless its reference
//! says otherwise, the compile cache, and the rollback rule; and plugin
//! references (`balancer = { builtin = ... }`, `path = ...`), which inherit
//! those limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::file::{PluginSection, PluginsSection};
use super::{ConfigError, Errors, parse_count, parse_duration};

/// Default CPU deadline of one plugin call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1);
/// Default memory cap of one plugin instance.
pub const DEFAULT_MEMORY_MB: u32 = 64;
/// A plugin cannot even instantiate in 0 MiB: every call would fail.
const MEMORY_MB_INSTEAD: &str = "MiB; no plugin runs in 0";
/// Default share of failing decisions that rolls a reload back.
pub const DEFAULT_ROLLBACK_SHARE: f64 = 0.5;
/// Default time a new generation is watched for failing decisions.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PluginDefaults {
    /// Compiled-plugin cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    pub deadline: Duration,
    pub memory_mb: u32,
    /// A reload whose plugins trap or hit their deadline in more than this
    /// share of a pool's decisions within `rollback_window` is undone.
    pub rollback_share: f64,
    pub rollback_window: Duration,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// Shipped inside the gale binary (see `gale plugin list`).
    Builtin(String),
    /// A component file (absolute, or resolved against the config's folder).
    File(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Builtin(name) => write!(f, "builtin:{name}"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub source: PluginSource,
    pub settings: Vec<(String, String)>,
    pub deadline: Duration,
    pub memory_mb: u32,
}

/// A candidate balancer and how it runs.
#[derive(Debug, Clone)]
pub struct CandidateSpec {
    pub plugin: PluginSpec,
    pub mode: CandidateMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateMode {
    /// Decides on every session beside the active balancer; its answer is
    /// compared, never used.
    Shadow,
}

impl CandidateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateMode::Shadow => "shadow",
        }
    }
}

/// `[plugins]`, with `cache_dir` resolved against `base` (the config's
/// folder).
pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    section: &PluginsSection,
) -> Result<PluginDefaults, ConfigError> {
    Ok(PluginDefaults {
        cache_dir: section.cache_dir.as_deref().map(|d| base.join(d)),
        deadline: parse_duration(
            errors,
            section.deadline.as_ref(),
            "plugins.deadline",
            DEFAULT_DEADLINE,
        )?,
        memory_mb: parse_count(
            errors,
            section.memory_mb.as_ref(),
            "plugins.memory_mb",
            DEFAULT_MEMORY_MB,
            MEMORY_MB_INSTEAD,
        )?,
        rollback_share: match &section.rollback_share {
            None => DEFAULT_ROLLBACK_SHARE,
            Some(v) if *v.get_ref() > 0.0 && *v.get_ref() <= 1.0 => *v.get_ref(),
            Some(v) => {
                return Err(errors.spanned(
                    v,
                    "plugins.rollback_share",
                    "must be above 0 and at most 1 (a share of decisions, e.g. 0.5)",
                ));
            }
        },
        rollback_window: parse_duration(
            errors,
            section.rollback_window.as_ref(),
            "plugins.rollback_window",
            DEFAULT_ROLLBACK_WINDOW,
        )?,
    })
}

/// A plugin reference at `key`; unset, the built-in `default_builtin`
/// with the `[plugins]` limits.
pub(super) fn plugin_spec(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    section: Option<&Spanned<PluginSection>>,
    key: &str,
    default_builtin: &str,
) -> Result<PluginSpec, ConfigError> {
    let Some(spanned) = section else {
        return Ok(PluginSpec {
            source: PluginSource::Builtin(default_builtin.to_string()),
            settings: Vec::new(),
            deadline: defaults.deadline,
            memory_mb: defaults.memory_mb,
        });
    };
    let s = spanned.get_ref();
    if let Some(mode) = &s.mode
        && !key.ends_with(".candidate")
    {
        return Err(errors.spanned(
            mode,
            &format!("{key}.mode"),
            "only a pool's `candidate` has a mode",
        ));
    }
    let source = match (&s.builtin, &s.path) {
        (Some(name), None) => {
            if crate::plugin::builtin::bytes(name.get_ref()).is_none() {
                return Err(errors.spanned(
                    name,
                    &format!("{key}.builtin"),
                    format!(
                        "no built-in plugin {:?} (built-in: {})",
                        name.get_ref(),
                        crate::plugin::builtin::names()
                    ),
                ));
            }
            PluginSource::Builtin(name.get_ref().clone())
        }
        (None, Some(p)) => PluginSource::File(base.join(p.get_ref())),
        (Some(name), Some(_)) => {
            return Err(errors.spanned(name, key, "set either `builtin` or `path`, not both"));
        }
        (None, None) => {
            return Err(errors.spanned(
                spanned,
                key,
                "set `builtin = \"NAME\"` or `path = \"FILE.wasm\"`",
            ));
        }
    };
    Ok(PluginSpec {
        source,
        settings: s
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_string()))
            .collect(),
        deadline: parse_duration(
            errors,
            s.deadline.as_ref(),
            &format!("{key}.deadline"),
            defaults.deadline,
        )?,
        memory_mb: parse_count(
            errors,
            s.memory_mb.as_ref(),
            &format!("{key}.memory_mb"),
            defaults.memory_mb,
            MEMORY_MB_INSTEAD,
        )?,
    })
}

/// A candidate's `mode`: required, so adding modes later never changes
/// what an existing config means.
pub(super) fn candidate_mode(
    errors: &Errors<'_>,
    section: &Spanned<PluginSection>,
    key: &str,
) -> Result<CandidateMode, ConfigError> {
    match &section.get_ref().mode {
        None => Err(errors.spanned(
            section,
            key,
            "set `mode = \"shadow\"` (the candidate decides beside the balancer without acting)",
        )),
        Some(mode) if mode.get_ref() == "shadow" => Ok(CandidateMode::Shadow),
        Some(mode) => Err(errors.spanned(
            mode,
            &format!("{key}.mode"),
            format!("unknown mode {:?} (modes: shadow)", mode.get_ref()),
        )),
    }
}
