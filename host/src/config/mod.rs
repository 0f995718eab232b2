//! Configuration: the TOML file ([`file`]) parsed strictly, then validated
//! into the typed [`Config`] the rest of gale uses.
//!
//! Owns: reading and checking the file. Does not touch: sockets, plugins
//! (a plugin *reference* is checked for shape here; loading it is
//! [`crate::plugin`]'s job, and `gale check` does both).
//!
//! Every error names the file, the line and the key, so an operator fixes a
//! typo from the message alone.

pub mod dns;
mod file;
mod health;
mod tls;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dns::{DnsConfig, PeersConfig, Provider as DnsProvider};
use file::{FileConfig, PluginSection};
pub use file::{Pregreet, ProbeKind, Protocol, ProxyProtocol, Role};
pub use health::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME,
    EjectionConfig, ProbeConfig, RetryOn,
};
use health::{ejection, probe_config, retry_on};
use toml::Spanned;

/// Default CPU deadline of one plugin call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1);
/// Default memory cap of one plugin instance.
pub const DEFAULT_MEMORY_MB: u32 = 64;
/// Default share of failing decisions that rolls a reload back.
pub const DEFAULT_ROLLBACK_SHARE: f64 = 0.5;
/// Default time a new generation is watched for failing decisions.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(30);

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
}

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

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<AdminToken>,
}

/// The admin bearer token; its `Debug` does not show it, so no log line
/// or error that prints the config can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub address: SocketAddr,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// Index into that pool's [`PoolConfig::listeners`], as balancer
    /// plugins see it in `request-context.listener`.
    pub index_in_pool: u32,
    pub hostname: String,
    pub max_sessions: u32,
    /// Sessions at once from one client IP (`u32::MAX`: no cap); past it
    /// an SMTP client gets 421 4.7.0, an HTTP connection is closed.
    pub max_sessions_per_client: u32,
    /// Bytes the listener's connections may hold in buffers (`None`: no
    /// limit); see [`crate::buffers`].
    pub max_buffer: Option<u64>,
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    pub banner_timeout: Duration,
    pub idle_timeout: Duration,
    /// SMTP: what to do with a client that sends before the greeting.
    pub pregreet: Pregreet,
    /// HTTP: time allowed for a client's request headers.
    pub header_timeout: Duration,
    /// HTTP: time allowed for a backend's response headers.
    pub response_timeout: Duration,
    /// HTTP: serve HTTPS (ALPN h2 and http/1.1).
    pub tls: Option<TlsConfig>,
}

/// A listener's certificate, loaded and checked when the config is.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    /// Names of the listeners this pool serves.
    pub listeners: Vec<String>,
    pub balancer: PluginSpec,
    pub health: PluginSpec,
    /// A balancer that decides beside `balancer` without acting.
    pub candidate: Option<CandidateSpec>,
    /// HTTP: how long an idle backend connection may wait for reuse.
    pub keepalive_timeout: Duration,
    /// Ramp time for a backend that returns; `None`: full weight at once.
    pub slow_start: Option<Duration>,
    /// What live traffic alone may do to the pool's backends.
    pub ejection: EjectionConfig,
    /// HTTP: which failures send a request on to the next backend.
    pub retry_on: RetryOn,
    pub probe: ProbeConfig,
    pub backends: Vec<BackendConfig>,
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

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// 0 = primary; standby tiers are higher.
    pub priority: u32,
    pub proxy_protocol: ProxyProtocol,
    /// At most this many sessions at once (u32::MAX: no limit).
    pub max_sessions: u32,
    /// Where the backend's load agent answers (its address, this port),
    /// asked at every probe.
    pub agent_port: Option<u16>,
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
            // A `Spanned` value that is not a string (an enum, a number)
            // is deserialized as a map, whose private field name would
            // otherwise end the key.
            let key = e.path().to_string();
            let key = key.trim_end_matches(".$__serde_spanned_private_value");
            errors.toml(key, e.into_inner())
        })?;
        validate(file, path, &errors)
    }

    /// The pool serving `listener`.
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

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

fn validate(file: FileConfig, path: &Path, errors: &Errors<'_>) -> Result<Config, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let defaults = PluginDefaults {
        cache_dir: file.plugins.cache_dir.as_deref().map(|d| base.join(d)),
        deadline: parse_duration(
            errors,
            file.plugins.deadline.as_ref(),
            "plugins.deadline",
            DEFAULT_DEADLINE,
        )?,
        memory_mb: file.plugins.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        rollback_share: match &file.plugins.rollback_share {
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
            file.plugins.rollback_window.as_ref(),
            "plugins.rollback_window",
            DEFAULT_ROLLBACK_WINDOW,
        )?,
    };

    let admin = match &file.admin {
        None => None,
        Some(a) => {
            let address = parse_addr(errors, &a.address, "admin.address")?;
            let token = a.token.clone().filter(|t| !t.is_empty()).map(AdminToken);
            // The admin API can reload and will steer backends: off the
            // host only with a token.
            if !address.ip().is_loopback() && token.is_none() {
                return Err(errors.spanned(
                    &a.address,
                    "admin.address",
                    format!("{address} is not a loopback address; set admin.token to expose the admin API"),
                ));
            }
            Some(AdminConfig { address, token })
        }
    };

    let pool_names: Vec<&String> = file.pools.keys().collect();
    let mut pools = Vec::with_capacity(file.pools.len());
    for (name, pool) in &file.pools {
        let key = format!("pools.{name}");
        let plugin = |section: Option<&Spanned<PluginSection>>, hook: &str, builtin: &str| {
            plugin_spec(
                errors,
                base,
                &defaults,
                section,
                &format!("{key}.{hook}"),
                builtin,
            )
        };
        let balancer = plugin(pool.balancer.as_ref(), "balancer", "weighted-round-robin")?;
        let health = plugin(pool.health.as_ref(), "health", "threshold-health")?;
        let candidate = match &pool.candidate {
            None => None,
            Some(section) => Some(CandidateSpec {
                plugin: plugin(Some(section), "candidate", "")?,
                mode: candidate_mode(errors, section, &format!("{key}.candidate"))?,
            }),
        };

        let probe = probe_config(errors, &pool.probe, &format!("{key}.probe"))?;

        let mut backends: Vec<BackendConfig> = Vec::with_capacity(pool.backends.len());
        for (i, b) in pool.backends.iter().enumerate() {
            let bkey = format!("{key}.backends[{i}]");
            let bname = b.name.get_ref();
            if bname.is_empty() {
                return Err(errors.spanned(&b.name, &format!("{bkey}.name"), "must not be empty"));
            }
            if backends.iter().any(|other| &other.name == bname) {
                return Err(errors.spanned(
                    &b.name,
                    &format!("{bkey}.name"),
                    format!("duplicate backend {bname:?} in pool {name:?}"),
                ));
            }
            backends.push(BackendConfig {
                name: bname.clone(),
                address: parse_addr(errors, &b.address, &format!("{bkey}.address"))?,
                weight: b.weight,
                priority: b.priority.unwrap_or(match b.role {
                    Role::Primary => 0,
                    Role::Standby => 1,
                }),
                proxy_protocol: b.proxy_protocol,
                max_sessions: b.max_sessions.unwrap_or(u32::MAX),
                agent_port: match &b.agent_port {
                    Some(port) if *port.get_ref() == 0 => {
                        return Err(errors.spanned(
                            port,
                            &format!("{bkey}.agent_port"),
                            "must be a port from 1 to 65535",
                        ));
                    }
                    port => port.as_ref().map(|p| *p.get_ref()),
                },
            });
        }

        pools.push(PoolConfig {
            name: name.clone(),
            listeners: Vec::new(),
            balancer,
            health,
            candidate,
            slow_start: match &pool.slow_start {
                None => None,
                Some(_) => Some(parse_duration(
                    errors,
                    pool.slow_start.as_ref(),
                    &format!("{key}.slow_start"),
                    Duration::ZERO,
                )?),
            },
            keepalive_timeout: parse_duration(
                errors,
                pool.keepalive_timeout.as_ref(),
                &format!("{key}.keepalive_timeout"),
                Duration::from_secs(60),
            )?,
            ejection: ejection(errors, pool, &key)?,
            retry_on: retry_on(errors, pool.retry_on.as_ref(), &format!("{key}.retry_on"))?,
            probe,
            backends,
        });
    }

    let mut listeners = Vec::with_capacity(file.listeners.len());
    for (name, l) in &file.listeners {
        let key = format!("listeners.{name}");
        let address = parse_addr(errors, &l.address, &format!("{key}.address"))?;
        if let Some(other) = listeners
            .iter()
            // Port 0 asks the kernel for a free port each time: no clash.
            .find(|o: &&ListenerConfig| o.address == address && address.port() != 0)
        {
            return Err(errors.spanned(
                &l.address,
                &format!("{key}.address"),
                format!("{address} is already used by listener {:?}", other.name),
            ));
        }
        let pool = pool_names
            .iter()
            .position(|p| *p == l.pool.get_ref())
            .ok_or_else(|| {
                let known = if pool_names.is_empty() {
                    "no pools are defined".to_string()
                } else {
                    let names: Vec<&str> = pool_names.iter().map(|s| s.as_str()).collect();
                    format!("defined pools: {}", names.join(", "))
                };
                errors.spanned(
                    &l.pool,
                    &format!("{key}.pool"),
                    format!("no pool named {:?} ({known})", l.pool.get_ref()),
                )
            })?;
        let served: &mut Vec<String> = &mut pools[pool].listeners;
        served.push(name.clone());
        listeners.push(ListenerConfig {
            name: name.clone(),
            protocol: l.protocol,
            address,
            pool,
            index_in_pool: (served.len() - 1) as u32,
            hostname: l.hostname.clone().unwrap_or_else(|| "gale".to_string()),
            max_sessions: l.max_sessions.unwrap_or(10_000).max(1),
            max_sessions_per_client: l.max_sessions_per_client.unwrap_or(u32::MAX).max(1),
            max_buffer: match &l.max_buffer_mb {
                Some(mb) if *mb.get_ref() == 0 => {
                    return Err(errors.spanned(
                        mb,
                        &format!("{key}.max_buffer_mb"),
                        "must be at least 1 (leave it unset for no limit)",
                    ));
                }
                Some(mb) => Some(mb.get_ref().saturating_mul(1 << 20)),
                None => None,
            },
            max_attempts: l.max_attempts.unwrap_or(3).max(1),
            connect_timeout: parse_duration(
                errors,
                l.connect_timeout.as_ref(),
                &format!("{key}.connect_timeout"),
                Duration::from_secs(3),
            )?,
            banner_timeout: parse_duration(
                errors,
                l.banner_timeout.as_ref(),
                &format!("{key}.banner_timeout"),
                Duration::from_secs(10),
            )?,
            idle_timeout: parse_duration(
                errors,
                l.idle_timeout.as_ref(),
                &format!("{key}.idle_timeout"),
                Duration::from_secs(300),
            )?,
            pregreet: match &l.pregreet {
                None => Pregreet::default(),
                Some(p) if l.protocol == Protocol::Http => {
                    return Err(errors.spanned(
                        p,
                        &format!("{key}.pregreet"),
                        "only SMTP listeners greet their clients",
                    ));
                }
                Some(p) => *p.get_ref(),
            },
            header_timeout: parse_duration(
                errors,
                l.header_timeout.as_ref(),
                &format!("{key}.header_timeout"),
                Duration::from_secs(10),
            )?,
            response_timeout: parse_duration(
                errors,
                l.response_timeout.as_ref(),
                &format!("{key}.response_timeout"),
                Duration::from_secs(30),
            )?,
            tls: match &l.tls {
                None => None,
                Some(tls) if l.protocol == Protocol::Smtp => {
                    return Err(errors.spanned(
                        tls,
                        &format!("{key}.tls"),
                        "only HTTP listeners terminate TLS (SMTP's STARTTLS passes through to the MTA)",
                    ));
                }
                Some(tls) => Some(tls::load(errors, base, tls.get_ref(), &format!("{key}.tls"))?),
            },
        });
    }

    // `[peers]` is the pool `peers`, after the configured ones.
    let mut pool_names = pool_names;
    let peers_name = "peers".to_string();
    let peers = match &file.peers {
        None => None,
        Some(section) => {
            if file.pools.contains_key("peers") {
                return Err(errors.spanned(
                    &section.address,
                    "peers",
                    "[peers] makes a pool named \"peers\" and [pools.peers] exists: rename that pool",
                ));
            }
            let (me, pool) = dns::peers(errors, &defaults, section, pools.len())?;
            pools.push(pool);
            pool_names.push(&peers_name);
            Some(me)
        }
    };

    let run_as = match (&file.server.user, &file.server.group) {
        (None, None) => None,
        (None, Some(group)) => {
            return Err(errors.at(group.span(), "server.group", "needs server.user"));
        }
        (Some(user), group) => {
            let (uid, own_gid) = crate::privileges::user_ids(user.get_ref())
                .map_err(|e| errors.at(user.span(), "server.user", e))?;
            let gid = match group {
                None => own_gid,
                Some(group) => crate::privileges::group_id(group.get_ref())
                    .map_err(|e| errors.at(group.span(), "server.group", e))?,
            };
            Some(crate::privileges::RunAs {
                user: user.get_ref().clone(),
                uid,
                gid,
            })
        }
    };

    Ok(Config {
        source: path.to_path_buf(),
        run_as,
        drain_timeout: parse_duration(
            errors,
            file.server.drain_timeout.as_ref(),
            "server.drain_timeout",
            Duration::from_secs(30),
        )?,
        dns: match &file.dns {
            None => None,
            Some(section) => Some(dns::validate(
                errors,
                base,
                &defaults,
                section,
                &pool_names,
            )?),
        },
        peers,
        plugins: defaults,
        admin,
        listeners,
        pools,
    })
}

fn plugin_spec(
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
            if !crate::plugin::builtin::NAMES.contains(&name.get_ref().as_str()) {
                return Err(errors.spanned(
                    name,
                    &format!("{key}.builtin"),
                    format!(
                        "no built-in plugin {:?} (built-in: {})",
                        name.get_ref(),
                        crate::plugin::builtin::NAMES.join(", ")
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
        memory_mb: s.memory_mb.unwrap_or(defaults.memory_mb),
    })
}

/// A candidate's `mode`: required, so adding modes later never changes
/// what an existing config means.
fn candidate_mode(
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
