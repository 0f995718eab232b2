//! `[pools.NAME]` and their `[[pools.NAME.backends]]`: who serves a
//! listener, with which plugins deciding over them. The probe, ejection
//! and retry rules of a pool are in [`super::health`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::file::{
    BackendSection, ClientAddress, ListenerSection, PluginSection, PoolSection, ProbeKind,
    Protocol, ProxyProtocol, Role,
};
use super::health::{EjectionConfig, ProbeConfig, RetryOn, ejection, probe_config, retry_on};
use super::plugins::{CandidateSpec, PluginDefaults, PluginSpec, candidate_mode, plugin_spec};
use super::tls::BackendTls;
use super::{ConfigError, Errors, parse_addr, parse_count, parse_duration};

/// The balancer of a pool that names none.
pub const DEFAULT_BALANCER: &str = "weighted-round-robin";
/// The health plugin of a pool that names none.
pub const DEFAULT_HEALTH: &str = "threshold-health";
/// `keepalive_timeout` unless set: under nginx's 75 s, so gale drops an
/// idle connection before a default nginx backend does.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// A backend's `weight` unless set.
pub const DEFAULT_WEIGHT: u32 = 1;
/// The tier of `role = "primary"` (the default), taking sessions first.
pub const PRIMARY_PRIORITY: u32 = 0;
/// The tier of `role = "standby"`.
pub const STANDBY_PRIORITY: u32 = 1;
/// A backend's `max_sessions` unless set: no limit.
pub const DEFAULT_BACKEND_MAX_SESSIONS: u32 = u32::MAX;

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

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// 0 = primary; standby tiers are higher.
    pub priority: u32,
    pub proxy_protocol: ProxyProtocol,
    /// SMTP: tell the backend the client's address with XCLIENT after its
    /// greeting (see `smtp::xclient`).
    pub xclient: bool,
    /// At most this many sessions at once (u32::MAX: no limit).
    pub max_sessions: u32,
    /// Where the backend's load agent answers (its address, this port),
    /// asked at every probe.
    pub agent_port: Option<u16>,
    /// SMTP, tcp: TLS from the first byte after the PROXY header (an
    /// MTA's smtps port); probes speak it too.
    pub tls: Option<Arc<BackendTls>>,
}

/// Every `[pools.NAME]`, in name order; their `listeners` are filled in
/// by [`super::listeners::validate`], but are read here from the file to
/// tell which protocol a pool serves.
pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    sections: &BTreeMap<String, PoolSection>,
    listeners: &BTreeMap<String, ListenerSection>,
) -> Result<Vec<PoolConfig>, ConfigError> {
    sections
        .iter()
        .map(|(name, pool)| {
            let key = format!("pools.{name}");
            refuse_tls_behind_http(errors, pool, name, listeners, &key)?;
            if let Some(served) = Served::by(listeners, name) {
                served.refuse_other_protocol_keys(errors, pool, &key)?;
            }
            validate_pool(errors, base, defaults, name, pool, &key)
        })
        .collect()
}

/// HTTP requests go to backends in the clear: a pool behind any HTTP
/// listener (even beside SMTP ones) cannot have a TLS backend, or its
/// probes would pass while every request failed.
fn refuse_tls_behind_http(
    errors: &Errors<'_>,
    pool: &PoolSection,
    name: &str,
    listeners: &BTreeMap<String, ListenerSection>,
    key: &str,
) -> Result<(), ConfigError> {
    let http = listeners
        .iter()
        .find(|(_, l)| l.pool.get_ref() == name && l.protocol == Protocol::Http);
    let Some((listener, _)) = http else {
        return Ok(());
    };
    for (i, b) in pool.backends.iter().enumerate() {
        if let Some(tls) = &b.tls
            && *tls.get_ref()
        {
            return Err(errors.spanned(
                tls,
                &format!("{key}.backends[{i}].tls"),
                format!(
                    "HTTP listener {listener:?} serves this pool, and gale speaks TLS only to SMTP and tcp backends"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_pool(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    name: &str,
    pool: &PoolSection,
    key: &str,
) -> Result<PoolConfig, ConfigError> {
    let plugin = |section: Option<&Spanned<PluginSection>>, hook: &str, builtin: &str| {
        plugin_spec(
            errors,
            base,
            defaults,
            section,
            &format!("{key}.{hook}"),
            builtin,
        )
    };
    let balancer = plugin(pool.balancer.as_ref(), "balancer", DEFAULT_BALANCER)?;
    let health = plugin(pool.health.as_ref(), "health", DEFAULT_HEALTH)?;
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
        let backend = validate_backend(
            errors,
            base,
            b,
            &format!("{key}.backends[{i}]"),
            &backends,
            name,
        )?;
        backends.push(backend);
    }

    Ok(PoolConfig {
        name: name.to_string(),
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
            DEFAULT_KEEPALIVE_TIMEOUT,
        )?,
        ejection: ejection(errors, pool, key)?,
        retry_on: retry_on(errors, pool.retry_on.as_ref(), &format!("{key}.retry_on"))?,
        probe,
        backends,
    })
}

/// A backend of pool `pool`, whose backends before it are `before`.
fn validate_backend(
    errors: &Errors<'_>,
    base: &Path,
    b: &BackendSection,
    key: &str,
    before: &[BackendConfig],
    pool: &str,
) -> Result<BackendConfig, ConfigError> {
    let name = b.name.get_ref();
    if name.is_empty() {
        return Err(errors.spanned(&b.name, &format!("{key}.name"), "must not be empty"));
    }
    if before.iter().any(|other| &other.name == name) {
        return Err(errors.spanned(
            &b.name,
            &format!("{key}.name"),
            format!("duplicate backend {name:?} in pool {pool:?}"),
        ));
    }
    let address = parse_addr(errors, &b.address, &format!("{key}.address"))?;
    Ok(BackendConfig {
        name: name.clone(),
        address,
        tls: super::tls::backend(errors, base, b, address, key)?,
        weight: b.weight,
        priority: b.priority.unwrap_or(match b.role {
            Role::Primary => PRIMARY_PRIORITY,
            Role::Standby => STANDBY_PRIORITY,
        }),
        proxy_protocol: b
            .proxy_protocol
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or_default(),
        xclient: match (&b.client_address, &b.proxy_protocol) {
            (Some(c), Some(p))
                if *c.get_ref() == ClientAddress::Xclient
                    && *p.get_ref() != ProxyProtocol::None =>
            {
                return Err(errors.spanned(
                    c,
                    &format!("{key}.client_address"),
                    "a backend learns the client from a PROXY header or from XCLIENT, not both: drop one",
                ));
            }
            (c, _) => c
                .as_ref()
                .is_some_and(|c| *c.get_ref() == ClientAddress::Xclient),
        },
        max_sessions: parse_count(
            errors,
            b.max_sessions.as_ref(),
            &format!("{key}.max_sessions"),
            DEFAULT_BACKEND_MAX_SESSIONS,
            "leave it unset for no limit; weight = 0 takes a backend out of rotation",
        )?,
        agent_port: match &b.agent_port {
            Some(port) if *port.get_ref() == 0 => {
                return Err(errors.spanned(
                    port,
                    &format!("{key}.agent_port"),
                    "must be a port from 1 to 65535",
                ));
            }
            port => port.as_ref().map(|p| *p.get_ref()),
        },
    })
}

/// The one protocol a pool serves: every listener naming it speaks it.
/// A pool with no listener (published by `[dns]` only) or with listeners
/// of several protocols has none, and keeps every key.
struct Served<'f> {
    protocol: Protocol,
    listeners: Vec<&'f str>,
}

impl<'f> Served<'f> {
    fn by(listeners: &'f BTreeMap<String, ListenerSection>, pool: &str) -> Option<Served<'f>> {
        let of_pool: Vec<(&str, Protocol)> = listeners
            .iter()
            .filter(|(_, l)| l.pool.get_ref() == pool)
            .map(|(name, l)| (name.as_str(), l.protocol))
            .collect();
        let protocol = of_pool.first()?.1;
        of_pool.iter().all(|(_, p)| *p == protocol).then(|| Served {
            protocol,
            listeners: of_pool.into_iter().map(|(name, _)| name).collect(),
        })
    }

    /// A key for the other protocol's backends would be ignored, or worse
    /// (a probe of the wrong kind fails every backend), so it is an error.
    fn refuse_other_protocol_keys(
        &self,
        errors: &Errors<'_>,
        pool: &PoolSection,
        key: &str,
    ) -> Result<(), ConfigError> {
        let served = self.describe();
        let refuse = |span, name: &str, why: &str| {
            Err(errors.at(
                span,
                &format!("{key}.{name}"),
                format!("{served}, and {why}"),
            ))
        };
        if self.protocol != Protocol::Smtp {
            for (i, b) in pool.backends.iter().enumerate() {
                if let Some(c) = &b.client_address {
                    return refuse(
                        c.span(),
                        &format!("backends[{i}].client_address"),
                        "only SMTP backends are told the client with XCLIENT",
                    );
                }
            }
        }
        match self.protocol {
            Protocol::Smtp | Protocol::Tcp => {
                if let Some(k) = &pool.keepalive_timeout {
                    return refuse(
                        k.span(),
                        "keepalive_timeout",
                        "only HTTP reuses idle backend connections",
                    );
                }
                if let Some(r) = &pool.retry_on {
                    return refuse(
                        r.span(),
                        "retry_on",
                        "only HTTP requests follow retry_on (a session tries up to max_attempts backends)",
                    );
                }
                // A tcp listener may front anything, HTTP included.
                if let Some(kind) = &pool.probe.kind
                    && *kind.get_ref() == ProbeKind::Http
                    && self.protocol == Protocol::Smtp
                {
                    return refuse(
                        kind.span(),
                        "probe.kind",
                        "an HTTP probe of an MTA always fails (use \"smtp\" or \"tcp\")",
                    );
                }
            }
            Protocol::Http => {
                if let Some(kind) = &pool.probe.kind
                    && *kind.get_ref() == ProbeKind::Smtp
                {
                    return refuse(
                        kind.span(),
                        "probe.kind",
                        "an SMTP probe of a web server always fails (use \"http\" or \"tcp\")",
                    );
                }
                for (i, b) in pool.backends.iter().enumerate() {
                    if let Some(p) = &b.proxy_protocol {
                        return refuse(
                            p.span(),
                            &format!("backends[{i}].proxy_protocol"),
                            "only SMTP and tcp sessions start with a PROXY header (HTTP requests carry the client in X-Forwarded-For)",
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// "this pool serves SMTP listener \"in\" only", for messages.
    fn describe(&self) -> String {
        let protocol = self.protocol.name().to_uppercase();
        let names: Vec<String> = self.listeners.iter().map(|n| format!("{n:?}")).collect();
        let plural = if names.len() == 1 { "" } else { "s" };
        format!(
            "this pool serves {protocol} listener{plural} {} only",
            names.join(", ")
        )
    }
}
