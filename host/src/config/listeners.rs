//! `[listeners.NAME]`: where clients connect, which pool serves them, and
//! the limits and timeouts of their sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::admission::{self, Admission};
use super::file::{ListenerSection, Pregreet, Protocol};
use super::plugins::PluginDefaults;
use super::pools::PoolConfig;
use super::tls::{self, TlsConfig};
use super::{
    ConfigError, Errors, address_taken, parse_addr, parse_count, parse_duration, same_port,
};
use crate::attempts::MAX_QUEUE_WAIT;

/// `hostname` unless set.
pub const DEFAULT_HOSTNAME: &str = "gale";
/// `max_sessions` unless set.
pub const DEFAULT_MAX_SESSIONS: u32 = 10_000;
/// `max_sessions_per_client` unless set: no cap.
pub const DEFAULT_MAX_SESSIONS_PER_CLIENT: u32 = u32::MAX;
/// `max_attempts` unless set.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// `connect_timeout` unless set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// `banner_timeout` unless set.
pub const DEFAULT_BANNER_TIMEOUT: Duration = Duration::from_secs(10);
/// `idle_timeout` unless set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `queue_size` unless set: sessions that may wait for a backend slot.
pub const DEFAULT_QUEUE_SIZE: u32 = 1_000;
/// `queue_timeout` unless set: long enough for a burst to find the slots
/// that free within it, short against an SMTP client's 5-minute wait for
/// a greeting (RFC 5321 4.5.3.2).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// `header_timeout` unless set.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `response_timeout` unless set.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub address: SocketAddr,
    /// Index into [`super::Config::pools`].
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
    /// Sessions or requests that may wait for a backend slot (0: none);
    /// see [`crate::queue`].
    pub queue_size: u32,
    pub queue_timeout: Duration,
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
    /// Who may open sessions, and how often (checked on accept).
    pub admission: Admission,
}

/// Every `[listeners.NAME]`, in name order, each added to the
/// [`PoolConfig::listeners`] of its pool.
pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    sections: &BTreeMap<String, ListenerSection>,
    pools: &mut [PoolConfig],
) -> Result<Vec<ListenerConfig>, ConfigError> {
    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(sections.len());
    for (name, l) in sections {
        let listener = validate_listener(errors, base, defaults, name, l, &listeners, pools)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Listener `name`, after the listeners `before` it.
fn validate_listener(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    name: &str,
    l: &ListenerSection,
    before: &[ListenerConfig],
    pools: &mut [PoolConfig],
) -> Result<ListenerConfig, ConfigError> {
    let key = format!("listeners.{name}");
    refuse_other_protocol_keys(errors, l, &key)?;
    let address = parse_addr(errors, &l.address, &format!("{key}.address"))?;
    if let Some(other) = before.iter().find(|o| same_port(o.address, address)) {
        let key = format!("{key}.address");
        return Err(address_taken(errors, &l.address, &key, address, other));
    }
    let pool = pools
        .iter()
        .position(|p| &p.name == l.pool.get_ref())
        .ok_or_else(|| {
            let known = if pools.is_empty() {
                "no pools are defined".to_string()
            } else {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                format!("defined pools: {}", names.join(", "))
            };
            errors.spanned(
                &l.pool,
                &format!("{key}.pool"),
                format!("no pool named {:?} ({known})", l.pool.get_ref()),
            )
        })?;
    let served = &mut pools[pool].listeners;
    served.push(name.to_string());
    let index_in_pool = (served.len() - 1) as u32;
    Ok(ListenerConfig {
        name: name.to_string(),
        protocol: l.protocol,
        address,
        pool,
        index_in_pool,
        hostname: l
            .hostname
            .as_ref()
            .map_or(DEFAULT_HOSTNAME, |h| h.get_ref())
            .to_string(),
        max_sessions: parse_count(
            errors,
            l.max_sessions.as_ref(),
            &format!("{key}.max_sessions"),
            DEFAULT_MAX_SESSIONS,
            "to stop a listener, remove it",
        )?,
        max_sessions_per_client: parse_count(
            errors,
            l.max_sessions_per_client.as_ref(),
            &format!("{key}.max_sessions_per_client"),
            DEFAULT_MAX_SESSIONS_PER_CLIENT,
            "leave it unset for no limit",
        )?,
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
        max_attempts: parse_count(
            errors,
            l.max_attempts.as_ref(),
            &format!("{key}.max_attempts"),
            DEFAULT_MAX_ATTEMPTS,
            "the first backend tried is an attempt",
        )?,
        queue_size: l
            .queue_size
            .as_ref()
            .map_or(DEFAULT_QUEUE_SIZE, |n| *n.get_ref()),
        queue_timeout: {
            let key = format!("{key}.queue_timeout");
            let t = parse_duration(
                errors,
                l.queue_timeout.as_ref(),
                &key,
                DEFAULT_QUEUE_TIMEOUT,
            )?;
            match &l.queue_timeout {
                Some(v) if t > MAX_QUEUE_WAIT => {
                    return Err(errors.spanned(
                        v,
                        &key,
                        "at most 5m (an SMTP client waits 5 minutes for a greeting, RFC 5321 4.5.3.2)",
                    ));
                }
                _ => t,
            }
        },
        connect_timeout: parse_duration(
            errors,
            l.connect_timeout.as_ref(),
            &format!("{key}.connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        banner_timeout: parse_duration(
            errors,
            l.banner_timeout.as_ref(),
            &format!("{key}.banner_timeout"),
            DEFAULT_BANNER_TIMEOUT,
        )?,
        idle_timeout: parse_duration(
            errors,
            l.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            DEFAULT_IDLE_TIMEOUT,
        )?,
        pregreet: l
            .pregreet
            .as_ref()
            .map_or_else(Pregreet::default, |p| *p.get_ref()),
        header_timeout: parse_duration(
            errors,
            l.header_timeout.as_ref(),
            &format!("{key}.header_timeout"),
            DEFAULT_HEADER_TIMEOUT,
        )?,
        response_timeout: parse_duration(
            errors,
            l.response_timeout.as_ref(),
            &format!("{key}.response_timeout"),
            DEFAULT_RESPONSE_TIMEOUT,
        )?,
        admission: admission::validate(errors, base, defaults, l, &key)?,
        tls: match &l.tls {
            None => None,
            Some(tls) => Some(tls::load(
                errors,
                base,
                tls.get_ref(),
                &format!("{key}.tls"),
                // SMTPS has no ALPN name to offer (RFC 8314 defines none).
                match l.protocol {
                    Protocol::Http => &[b"h2", b"http/1.1"],
                    _ => &[],
                },
            )?),
        },
    })
}

/// A key of the other protocol would be ignored without a word (a
/// `response_timeout` on an SMTP listener bounds nothing), so it is an
/// error. Keys of both: `max_*`, `connect_timeout`, `idle_timeout` (an
/// SMTP session, an HTTP body or upgraded connection that stalls).
fn refuse_other_protocol_keys(
    errors: &Errors<'_>,
    l: &ListenerSection,
    key: &str,
) -> Result<(), ConfigError> {
    let keys = [
        (
            "hostname",
            l.hostname.as_ref().map(Spanned::span),
            Protocol::Smtp,
            "only SMTP listeners write replies that name them (421, 554)",
        ),
        (
            "pregreet",
            l.pregreet.as_ref().map(Spanned::span),
            Protocol::Smtp,
            "only SMTP listeners greet their clients",
        ),
        (
            "banner_timeout",
            l.banner_timeout.as_ref().map(Spanned::span),
            Protocol::Smtp,
            "only SMTP listeners wait for a backend's greeting (HTTP: response_timeout)",
        ),
        (
            "header_timeout",
            l.header_timeout.as_ref().map(Spanned::span),
            Protocol::Http,
            "only HTTP listeners read request headers (SMTP: idle_timeout)",
        ),
        (
            "response_timeout",
            l.response_timeout.as_ref().map(Spanned::span),
            Protocol::Http,
            "only HTTP listeners wait for response headers (SMTP: banner_timeout)",
        ),
    ];
    if let Some(tls) = &l.tls
        && l.protocol == Protocol::Tcp
    {
        return Err(errors.spanned(
            tls,
            &format!("{key}.tls"),
            "a tcp listener passes TLS through to its backends; to terminate it, use an smtp or http listener",
        ));
    }
    for (name, span, applies_to, message) in keys {
        if let Some(span) = span
            && l.protocol != applies_to
        {
            return Err(errors.at(span, &format!("{key}.{name}"), message));
        }
    }
    Ok(())
}
