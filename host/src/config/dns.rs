//! `[dns]`: which pool's members are published, under which name, by
//! which plugin, through which provider.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::file::{DnsProvider, DnsSection, PeersSection, ProxyProtocol, Rfc2136Section};
use super::health::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_MAX_EJECTION_TIME, EjectionConfig, RetryOn, probe_config,
};
use super::plugins::{PluginDefaults, PluginSource, PluginSpec, plugin_spec};
use super::pools::{
    BackendConfig, DEFAULT_BACKEND_MAX_SESSIONS, DEFAULT_BALANCER, DEFAULT_HEALTH,
    DEFAULT_KEEPALIVE_TIMEOUT, PRIMARY_PRIORITY, PoolConfig,
};
pub use super::route53::Route53Config;
use super::{ConfigError, Errors, parse_addr, parse_count, parse_duration};
use toml::Spanned;

/// Where the embedded server answers when `[dns.embedded]` does not say
/// (loopback: a resolver or a test on the same host asks it).
const DEFAULT_EMBEDDED_PORT: u16 = 5353;
/// `ttl` unless set.
pub const DEFAULT_TTL: u32 = 30;
/// `debounce` unless set.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);
/// `max_changes` unless set.
pub const DEFAULT_MAX_CHANGES: u32 = 60;
/// The DNS plugin when `plugin` is not set.
pub const DEFAULT_DNS_PLUGIN: &str = "weighted-dns";
/// `[dns.rfc2136] timeout` unless set.
pub const DEFAULT_RFC2136_TIMEOUT: Duration = Duration::from_secs(2);
/// `[dns.rfc2136] reconcile` unless set.
pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(30);
/// `[peers] name` unless set.
pub const DEFAULT_PEER_NAME: &str = "self";
/// `[peers] weight` unless set (the members' `weight` too).
pub const DEFAULT_PEER_WEIGHT: u32 = 1;

#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Lower case, with the final dot.
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    /// Index into `Config::pools`.
    pub pool: usize,
    pub debounce: Duration,
    /// Records added or removed per minute, at most.
    pub max_changes: u32,
    pub plugin: PluginSpec,
    pub provider: Provider,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// gale answers for the zone on `address` (UDP and TCP).
    Embedded {
        address: SocketAddr,
        ns: String,
        rate_limit: RateLimit,
    },
    /// gale sends DNS UPDATEs to a server.
    Rfc2136(Rfc2136Config),
    /// gale writes weighted records to Amazon Route 53.
    Route53(Box<Route53Config>),
}

impl Provider {
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Embedded { .. } => "embedded",
            Provider::Rfc2136(_) => "rfc2136",
            Provider::Route53(_) => "route53",
        }
    }
}

/// `[dns.embedded] rate_limit` and `rate_limit_burst`: UDP responses per
/// client /24 (IPv6 /56), see `dns::rrl`.
pub use crate::rate::RateLimit;

/// `rate_limit` unless set: far above what a resolver asks one zone for
/// (it caches for the TTL).
pub const DEFAULT_RATE_LIMIT: u32 = 20;
/// `rate_limit_burst` unless set (and `rate_limit` is not lower): lets a
/// resolver farm behind one /24 start cold.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 40;

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: DEFAULT_RATE_LIMIT,
            burst: DEFAULT_RATE_LIMIT_BURST,
        }
    }
}

/// Above this a limit stops nothing a flood could not do without it.
const MAX_RATE: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc2136Config {
    pub server: SocketAddr,
    /// With the final dot.
    pub key_name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Secret,
    pub timeout: Duration,
    pub reconcile: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// Key material: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    section: &DnsSection,
    pools: &[PoolConfig],
    peers: Option<&PeersConfig>,
) -> Result<DnsConfig, ConfigError> {
    let zone = dns_name(errors, &section.zone, "dns.zone")?;
    let name = dns_name(errors, &section.name, "dns.name")?;
    if !(name == zone || name.ends_with(&format!(".{zone}"))) {
        return Err(errors.spanned(
            &section.name,
            "dns.name",
            format!("{name} is not in zone {zone}"),
        ));
    }
    let pool = pools
        .iter()
        .position(|p| &p.name == section.pool.get_ref())
        .ok_or_else(|| {
            errors.spanned(
                &section.pool,
                "dns.pool",
                format!(
                    "no pool named {:?} (defined pools: {})",
                    section.pool.get_ref(),
                    pools
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let provider = match section.provider {
        DnsProvider::Embedded => {
            let embedded = section.embedded.as_ref();
            let ns = match embedded.and_then(|e| e.ns.as_ref()) {
                Some(ns) => dns_name(errors, ns, "dns.embedded.ns")?,
                None => format!("gale.{zone}"),
            };
            let address = match embedded.and_then(|e| e.address.as_ref()) {
                Some(a) => parse_addr(errors, a, "dns.embedded.address")?,
                None => SocketAddr::from(([127, 0, 0, 1], DEFAULT_EMBEDDED_PORT)),
            };
            Provider::Embedded {
                address,
                ns,
                rate_limit: rate_limit(errors, embedded)?,
            }
        }
        DnsProvider::Rfc2136 => {
            let Some(r) = &section.rfc2136 else {
                return Err(errors.spanned(
                    &section.zone,
                    "dns.rfc2136",
                    "provider \"rfc2136\" needs [dns.rfc2136] with a server and a TSIG key",
                ));
            };
            Provider::Rfc2136(rfc2136(errors, base, r)?)
        }
        DnsProvider::Route53 => {
            let Some(r) = &section.route53 else {
                return Err(errors.spanned(
                    &section.zone,
                    "dns.route53",
                    "provider \"route53\" needs [dns.route53] with the hosted_zone_id",
                ));
            };
            let publishes_peers = peers.is_some_and(|p| p.pool == pool);
            if let Some(me) = peers.filter(|p| publishes_peers && !p.named) {
                return Err(errors.spanned(
                    &section.pool,
                    "peers.name",
                    format!(
                        "with provider \"route53\" each instance writes the record named after it: set [peers] name (the default {:?} would be every instance's)",
                        me.name
                    ),
                ));
            }
            Provider::Route53(Box::new(super::route53::validate(
                errors,
                r,
                peers,
                publishes_peers,
            )?))
        }
    };
    Ok(DnsConfig {
        zone,
        name,
        ttl: section.ttl.unwrap_or(DEFAULT_TTL),
        pool,
        debounce: parse_duration(
            errors,
            section.debounce.as_ref(),
            "dns.debounce",
            DEFAULT_DEBOUNCE,
        )?,
        max_changes: parse_count(
            errors,
            section.max_changes.as_ref(),
            "dns.max_changes",
            DEFAULT_MAX_CHANGES,
            "records added or removed a minute; 0 would never change them",
        )?,
        plugin: plugin_spec(
            errors,
            base,
            defaults,
            section.plugin.as_ref(),
            "dns.plugin",
            DEFAULT_DNS_PLUGIN,
        )?,
        provider,
    })
}

fn rate_limit(
    errors: &Errors<'_>,
    section: Option<&super::file::EmbeddedDnsSection>,
) -> Result<RateLimit, ConfigError> {
    let default = RateLimit::default();
    let Some(section) = section else {
        return Ok(default);
    };
    let per_second = match &section.rate_limit {
        Some(r) if *r.get_ref() > MAX_RATE => {
            return Err(errors.spanned(
                r,
                "dns.embedded.rate_limit",
                format!("at most {MAX_RATE} responses a second (0 turns the limit off)"),
            ));
        }
        Some(r) => *r.get_ref(),
        None => default.per_second,
    };
    let burst = match &section.rate_limit_burst {
        Some(b) if !(1..=MAX_RATE).contains(b.get_ref()) => {
            return Err(errors.spanned(
                b,
                "dns.embedded.rate_limit_burst",
                format!("expected 1 to {MAX_RATE} responses"),
            ));
        }
        Some(b) => *b.get_ref(),
        // A lower rate without its own burst: two seconds' worth.
        None => default.burst.min(per_second.saturating_mul(2)).max(1),
    };
    Ok(RateLimit { per_second, burst })
}

/// A fully qualified name: labels of letters, digits, `-` and `_`, at most
/// 63 bytes each and 253 in all; returned in lower case with its final dot.
fn dns_name(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, ConfigError> {
    let text = value.get_ref().to_ascii_lowercase();
    let bare = text.strip_suffix('.').unwrap_or(&text);
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(errors.spanned(
            value,
            key,
            format!(
                "{:?} is not a domain name (e.g. \"mx.example.com.\")",
                value.get_ref()
            ),
        ));
    }
    Ok(format!("{bare}."))
}

fn rfc2136(
    errors: &Errors<'_>,
    base: &Path,
    r: &Rfc2136Section,
) -> Result<Rfc2136Config, ConfigError> {
    use base64::Engine;
    // The key file's `algorithm` counts when key_algorithm is not set.
    let mut file_algorithm = None;
    let (text, at, key) = match (&r.key_secret, &r.key_file) {
        (Some(secret), None) => (secret.get_ref().clone(), secret, "dns.rfc2136.key_secret"),
        (None, Some(file)) => {
            let path = base.join(file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                errors.spanned(
                    file,
                    "dns.rfc2136.key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let secret = key_file_statement(&text, "secret")
                .map(|s| s.trim_matches('"').to_string())
                .unwrap_or_else(|| text.trim().to_string());
            file_algorithm = key_file_statement(&text, "algorithm");
            (secret, file, "dns.rfc2136.key_file")
        }
        _ => {
            return Err(errors.spanned(
                &r.key_name,
                "dns.rfc2136",
                "set exactly one of key_secret and key_file",
            ));
        }
    };
    let algorithm = match (&r.key_algorithm, file_algorithm) {
        (Some(a), _) => algorithm(a.get_ref())
            .ok_or_else(|| errors.spanned(a, "dns.rfc2136.key_algorithm", ALGORITHMS))?,
        (None, Some(a)) => algorithm(&a).ok_or_else(|| {
            let file = r.key_file.as_ref().expect("read from the key file");
            errors.spanned(
                file,
                "dns.rfc2136.key_file",
                format!("algorithm {a}: {ALGORITHMS}"),
            )
        })?,
        (None, None) => TsigAlgorithm::HmacSha256,
    };
    // The message names the key, never the secret.
    let secret = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            errors.spanned(
                at,
                key,
                "the TSIG secret is not base64 (as tsig-keygen prints it)",
            )
        })?;
    Ok(Rfc2136Config {
        server: parse_addr(errors, &r.server, "dns.rfc2136.server")?,
        key_name: dns_name(errors, &r.key_name, "dns.rfc2136.key_name")?,
        algorithm,
        secret: Secret(secret),
        timeout: parse_duration(
            errors,
            r.timeout.as_ref(),
            "dns.rfc2136.timeout",
            DEFAULT_RFC2136_TIMEOUT,
        )?,
        reconcile: parse_duration(
            errors,
            r.reconcile.as_ref(),
            "dns.rfc2136.reconcile",
            DEFAULT_RECONCILE,
        )?,
    })
}

/// This instance as a member of its own `[peers]` set.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    pub name: String,
    pub address: std::net::IpAddr,
    pub weight: u32,
    /// Index into `Config::pools` of the pool `peers` (the other
    /// instances, probed like backends).
    pub pool: usize,
    /// The other instances' names.
    pub members: Vec<String>,
    /// `name` was set (not the default).
    pub named: bool,
}

/// The name of the pool `[peers]` becomes.
pub const PEERS_POOL: &str = "peers";

/// `[peers]`, if present: the pool `peers` (probed and judged like any
/// other, shown in `/status`) is added after the configured ones, and this
/// instance's own record returned.
pub(super) fn add_peers(
    errors: &Errors<'_>,
    defaults: &PluginDefaults,
    section: Option<&PeersSection>,
    pools: &mut Vec<PoolConfig>,
) -> Result<Option<PeersConfig>, ConfigError> {
    let Some(section) = section else {
        return Ok(None);
    };
    if pools.iter().any(|p| p.name == PEERS_POOL) {
        return Err(errors.spanned(
            &section.address,
            "peers",
            "[peers] makes a pool named \"peers\" and [pools.peers] exists: rename that pool",
        ));
    }
    let (me, pool) = peers(errors, defaults, section, pools.len())?;
    pools.push(pool);
    Ok(Some(me))
}

fn peers(
    errors: &Errors<'_>,
    defaults: &PluginDefaults,
    section: &PeersSection,
    pool: usize,
) -> Result<(PeersConfig, PoolConfig), ConfigError> {
    let address = section.address.get_ref().parse().map_err(|_| {
        errors.spanned(
            &section.address,
            "peers.address",
            "expected this instance's IP address, e.g. \"192.0.2.10\"",
        )
    })?;
    let mut backends: Vec<BackendConfig> = Vec::new();
    for (i, m) in section.members.iter().enumerate() {
        let key = format!("peers.members[{i}]");
        if backends.iter().any(|b| &b.name == m.name.get_ref()) {
            return Err(errors.spanned(&m.name, &format!("{key}.name"), "duplicate peer name"));
        }
        backends.push(BackendConfig {
            name: m.name.get_ref().clone(),
            address: parse_addr(errors, &m.address, &format!("{key}.address"))?,
            weight: m.weight,
            priority: PRIMARY_PRIORITY,
            proxy_protocol: ProxyProtocol::None,
            xclient: false,
            max_sessions: DEFAULT_BACKEND_MAX_SESSIONS,
            agent_port: None,
            tls: None,
        });
    }
    let builtin = |name: &str| PluginSpec {
        source: PluginSource::Builtin(name.to_string()),
        settings: Vec::new(),
        deadline: defaults.deadline,
        memory_mb: defaults.memory_mb,
    };
    let pool_config = PoolConfig {
        name: PEERS_POOL.to_string(),
        listeners: Vec::new(),
        balancer: builtin(DEFAULT_BALANCER),
        health: builtin(DEFAULT_HEALTH),
        candidate: None,
        keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        slow_start: None,
        // Peers carry no traffic through gale: only probes judge them.
        ejection: EjectionConfig {
            max_percent: 0,
            base_time: DEFAULT_BASE_EJECTION_TIME,
            max_time: DEFAULT_MAX_EJECTION_TIME,
        },
        retry_on: RetryOn::default(),
        probe: probe_config(errors, &section.probe, "peers.probe")?,
        backends,
    };
    let me = PeersConfig {
        name: section
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_PEER_NAME.to_string()),
        address,
        weight: section.weight.unwrap_or(DEFAULT_PEER_WEIGHT),
        pool,
        members: pool_config
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect(),
        named: section.name.is_some(),
    };
    if me.members.contains(&me.name) {
        return Err(errors.spanned(
            &section.address,
            "peers.name",
            format!(
                "this instance is named {:?}, like one of its members: each instance needs its own name",
                me.name
            ),
        ));
    }
    Ok((me, pool_config))
}

const ALGORITHMS: &str = "expected hmac-sha256, hmac-sha384 or hmac-sha512";

fn algorithm(name: &str) -> Option<TsigAlgorithm> {
    match name.to_ascii_lowercase().as_str() {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

/// The value of statement `name` in tsig-keygen's block (`key "k" {
/// algorithm hmac-sha256; secret "BASE64"; };`), matched as a statement,
/// not inside a key name that happens to contain the word.
fn key_file_statement(text: &str, name: &str) -> Option<String> {
    text.split(';').find_map(|statement| {
        let statement = statement.rsplit('{').next()?.trim();
        let value = statement.strip_prefix(name)?;
        value
            .starts_with(char::is_whitespace)
            .then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tsig_keygen_block_gives_its_secret_and_algorithm() {
        let text = "key \"gale-secret.\" {\n\talgorithm hmac-sha512;\n\tsecret \"c2VjcmV0\";\n};\n";
        assert_eq!(
            key_file_statement(text, "secret").as_deref(),
            Some("\"c2VjcmV0\"")
        );
        assert_eq!(
            key_file_statement(text, "algorithm").as_deref(),
            Some("hmac-sha512")
        );
        assert_eq!(key_file_statement("c2VjcmV0\n", "secret"), None);
    }
}
