//! Configuration: the TOML file ([`file`]) parsed strictly, then validated
//! into the typed [`Config`] the rest of gale uses.
//!
//! Owns: reading and checking the file. Does not touch: sockets, plugins
//! (a plugin *reference* is checked for shape here; loading it is
//! [`crate::plugin`]'s job, and `gale check` does both).
//!
//! Every error names the file, the line and the key, so an operator fixes a
//! typo from the message alone.
//!
//! One module per section, each with its typed values, the defaults as
//! named constants beside them, and its `validate`: [`plugins`] (and plugin
//! references), [`admin`], [`pools`] (with [`health`]: probes, ejection,
//! retries), [`listeners`] (with [`tls`]), [`dns`] (and `[peers]`),
//! [`server`]. This module holds what they share: the error positions
//! (`Errors`), durations and addresses.

pub mod admin;
pub mod admission;
pub mod dns;
mod file;
pub mod health;
pub mod listeners;
pub mod log;
pub mod plugins;
pub mod pools;
pub mod route53;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::{AdminConfig, AdminToken};
pub use admission::{Admission, DenyReply};
pub use dns::{DnsConfig, PeersConfig, Provider as DnsProvider};
use file::FileConfig;
pub use file::{LogFormat, Pregreet, ProbeKind, Protocol, ProxyProtocol, Role};
pub use health::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME,
    EjectionConfig, ProbeConfig, RetryOn,
};
pub use listeners::ListenerConfig;
pub use log::LogConfig;
pub use plugins::{
    CandidateMode, CandidateSpec, DEFAULT_DEADLINE, DEFAULT_MEMORY_MB, DEFAULT_ROLLBACK_SHARE,
    DEFAULT_ROLLBACK_WINDOW, PluginDefaults, PluginSource, PluginSpec,
};
pub use pools::{BackendConfig, PoolConfig};
pub use tls::{BackendTls, TlsConfig};
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// Sessions may run this long after a shutdown signal.
    pub drain_timeout: Duration,
    /// `[server] user`: who gale becomes once its sockets are bound.
    pub run_as: Option<crate::privileges::RunAs>,
    pub plugins: PluginDefaults,
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub dns: Option<DnsConfig>,
    /// `[peers]`: this instance among the others behind its DNS name.
    pub peers: Option<PeersConfig>,
    /// `[log]`.
    pub log: LogConfig,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Dotted path of the offending key, e.g. `pools.mta.backends[1].address`.
        key: String,
        message: String,
    },
}

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validate `text` as if read from `path` (used for messages and for
    /// resolving relative plugin paths).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let errors = Errors { file: path, text };
        let de = toml::Deserializer::parse(text).map_err(|e| errors.toml("syntax", e))?;
        let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // A `Spanned` value that is not a string (an enum, a number, a
            // table) is deserialized as a map, whose private field name
            // would otherwise sit in the key: at its end, or in the middle
            // for a key inside a spanned table (`balancer = { ... }`).
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            errors.toml(&key, e.into_inner())
        })?;
        validate(file, path, &errors)
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The pool serving `listener`.
    pub fn pool_of(&self, listener: &ListenerConfig) -> &PoolConfig {
        &self.pools[listener.pool]
    }
}

/// Builds [`ConfigError::Invalid`] from spans of the source text.
struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Errors<'_> {
    fn at(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn toml(&self, key: &str, e: toml::de::Error) -> ConfigError {
        let key = if key.is_empty() || key == "." {
            "(top level)"
        } else {
            key
        };
        // toml's own message repeats the line in a snippet; keep the first line.
        let message = e.message().lines().next().unwrap_or("invalid").to_string();
        self.at(e.span().unwrap_or(0..0), key, message)
    }

    fn spanned<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.at(value.span(), key, message)
    }
}

fn parse_duration(
    errors: &Errors<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(value.get_ref()).map_err(|e| {
        errors.spanned(
            value,
            key,
            format!("{e} (write a duration like \"500ms\", \"2s\" or \"1m\")"),
        )
    })?;
    if d.is_zero() {
        return Err(errors.spanned(value, key, "must be greater than zero"));
    }
    Ok(d)
}

/// A count for which 0 would stop everything (no session, no attempt, no
/// memory) or was once quietly read as 1: unset is `default`; 0 is an
/// error, and `instead` tells the operator what to write.
fn parse_count(
    errors: &Errors<'_>,
    value: Option<&Spanned<u32>>,
    key: &str,
    default: u32,
    instead: &str,
) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => {
            Err(errors.spanned(v, key, format!("must be at least 1 ({instead})")))
        }
        Some(v) => Ok(*v.get_ref()),
    }
}

fn parse_addr(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<SocketAddr, ConfigError> {
    value.get_ref().parse().map_err(|_| {
        errors.spanned(
            value,
            key,
            format!(
                "invalid address {:?}: expected ip:port, e.g. \"127.0.0.1:2525\" or \"[::1]:25\"",
                value.get_ref()
            ),
        )
    })
}

/// Whether listening sockets at `a` and `b` cannot both be bound: the
/// same port (not 0, which asks the kernel for a free one each time) on
/// the same address (an IPv4-mapped one, `[::ffff:a.b.c.d]`, is the IPv4
/// address), or on an address the other's wildcard covers (`0.0.0.0`
/// every IPv4 one; `[::]`, dual-stack as `listener::bind` makes it, every
/// one).
pub fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (x == y || covers(x, y) || covers(y, x))
}

/// The error for `key` at `address`, which listener `other` has (see
/// [`same_port`]).
fn address_taken(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    key: &str,
    address: SocketAddr,
    other: &ListenerConfig,
) -> ConfigError {
    let why = if address == other.address {
        format!("{address} is already used by listener {:?}", other.name)
    } else {
        format!(
            "{address} takes the port of listener {:?} ({}): both cannot be bound",
            other.name, other.address
        )
    };
    errors.spanned(value, key, why)
}

/// Each section in turn; a section that refers to another (a listener to
/// its pool, `[dns]` to the pool it publishes) comes after it.
fn validate(file: FileConfig, path: &Path, errors: &Errors<'_>) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let plugins = plugins::validate(errors, base, &file.plugins)?;
    let admin = admin::validate(errors, file.admin.as_ref())?;
    let mut pools = pools::validate(errors, base, &plugins, &file.pools, &file.listeners)?;
    let listeners = listeners::validate(errors, base, &plugins, &file.listeners, &mut pools)?;
    if let (Some(a), Some(section)) = (&admin, &file.admin)
        && let Some(l) = listeners.iter().find(|l| same_port(l.address, a.address))
    {
        return Err(address_taken(
            errors,
            &section.address,
            "admin.address",
            a.address,
            l,
        ));
    }
    let peers = dns::add_peers(errors, &plugins, file.peers.as_ref(), &mut pools)?;
    let server = server::validate(errors, &file.server)?;
    let log = log::validate(errors, &file.log)?;
    let dns = match &file.dns {
        None => None,
        Some(section) => Some(dns::validate(
            errors,
            base,
            &plugins,
            section,
            &pools,
            peers.as_ref(),
        )?),
    };
    Ok(Config {
        source: path.to_path_buf(),
        run_as: server.run_as,
        drain_timeout: server.drain_timeout,
        dns,
        peers,
        plugins,
        admin,
        listeners,
        pools,
        log,
    })
}
