//! `[dns.route53]`: which hosted zone gale writes its weighted records
//! to, how it marks them as its own, and (with `[peers]`) how instances
//! leave the answer: by a Route 53 health check of each instance, or by
//! the others removing a peer that failed its probes for `peer_hold`.

use std::net::IpAddr;
use std::time::Duration;

use super::dns::PeersConfig;
use super::file::{HealthCheckSection, Route53Section};
use super::{ConfigError, Errors, parse_duration};
use toml::Spanned;

/// `owner` unless set.
pub const DEFAULT_OWNER: &str = "gale";
/// `timeout` unless set: one attempt of one API call (a throttled call
/// is tried up to 6 times; a whole sync is cut at 4 × `timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `reconcile` unless set: reads are cheap, but Route 53 allows five
/// requests a second per account, shared by every instance.
pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(60);
/// `peer_hold` unless set.
pub const DEFAULT_PEER_HOLD: Duration = Duration::from_secs(30);
/// `health_check.path` unless set (the admin listener answers it).
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// `health_check.failure_threshold` unless set (Route 53's own default).
pub const DEFAULT_FAILURE_THRESHOLD: u8 = 3;
/// The longest `timeout`, `reconcile` and `peer_hold` (a hold doubled
/// 32 times stays far from any overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_PERIOD: Duration = Duration::from_secs(3600);

/// Route 53 takes weights up to this.
pub const MAX_WEIGHT: u32 = 255;
/// A set identifier is at most 128 characters: the owner leaves room for
/// a member's name.
const MAX_OWNER: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route53Config {
    pub hosted_zone_id: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Set identifiers of gale's records start with `OWNER/`.
    pub owner: String,
    pub timeout: Duration,
    pub reconcile: Duration,
    /// Set when the published pool is `peers`: this instance writes only
    /// its own record, and removes others' as [`PeerRules`] says.
    pub peers: Option<PeerRules>,
}

impl Route53Config {
    /// The set identifier gale writes for a planned record's `set_id`.
    pub fn set_identifier(&self, set_id: &str) -> String {
        format!("{}/{set_id}", self.owner)
    }

    /// The planned `set_id` of a set identifier gale wrote; `None` for a
    /// record gale does not own.
    pub fn owned<'a>(&self, set_identifier: &'a str) -> Option<&'a str> {
        set_identifier
            .strip_prefix(self.owner.as_str())?
            .strip_prefix('/')
    }
}

/// Who writes what when several instances publish `pool = "peers"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRules {
    /// This instance's name: its own record's set-id.
    pub me: String,
    /// The other instances' names (as set-ids).
    pub peers: Vec<String>,
    /// How many instances there are, this one included.
    pub instances: usize,
    /// With a health check, no instance removes another's record.
    pub health_check: Option<HealthCheck>,
    pub hold: Duration,
}

/// A Route 53 health check of this instance, attached to its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub address: IpAddr,
    pub port: u16,
    /// `None` for TCP; the path for HTTP.
    pub http_path: Option<String>,
    /// 10 or 30 seconds.
    pub interval: u8,
    pub failure_threshold: u8,
}

/// A planned set-id as gale writes it after the owner: letters, digits
/// and `-_.:` as they are, any other byte as `%XX` (so two names never
/// meet); past 64 characters (Route 53 takes 128 in all), the first 47
/// and a hash of the whole.
pub fn set_id(planned: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for b in planned.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.:".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() > 64 {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(planned.as_bytes());
        out.truncate(47);
        out.push('~');
        for b in &hash[..8] {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

pub(super) fn validate(
    errors: &Errors<'_>,
    section: &Route53Section,
    peers: Option<&PeersConfig>,
    publishes_peers: bool,
) -> Result<Route53Config, ConfigError> {
    let zone = section.hosted_zone_id.get_ref();
    let zone = zone.strip_prefix("/hostedzone/").unwrap_or(zone);
    if zone.is_empty() || zone.len() > 32 || !zone.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(errors.spanned(
            &section.hosted_zone_id,
            "dns.route53.hosted_zone_id",
            "expected a hosted zone id, e.g. \"Z0123456789ABCDEFGHIJ\"",
        ));
    }
    let owner = match &section.owner {
        None => DEFAULT_OWNER.to_string(),
        Some(o) => {
            let text = o.get_ref();
            let fine = !text.is_empty()
                && text.len() <= MAX_OWNER
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !fine {
                return Err(errors.spanned(
                    o,
                    "dns.route53.owner",
                    format!("expected 1 to {MAX_OWNER} letters, digits, '-', '_' or '.'"),
                ));
            }
            text.clone()
        }
    };
    let endpoint_url = match &section.endpoint_url {
        None => None,
        Some(u) => {
            let text = u.get_ref();
            if !(text.starts_with("https://") || text.starts_with("http://"))
                || text.parse::<http::Uri>().is_err()
            {
                return Err(errors.spanned(
                    u,
                    "dns.route53.endpoint_url",
                    "expected a URL, e.g. \"https://route53.amazonaws.com\"",
                ));
            }
            Some(text.clone())
        }
    };
    let peers = match (publishes_peers, peers) {
        (true, Some(me)) => Some(PeerRules {
            me: set_id(&me.name),
            peers: me.members.iter().map(|m| set_id(m)).collect(),
            instances: me.members.len() + 1,
            health_check: match &section.health_check {
                Some(h) => Some(health_check(errors, h, me.address)?),
                None => None,
            },
            hold: bounded(
                errors,
                section.peer_hold.as_ref(),
                "dns.route53.peer_hold",
                DEFAULT_PEER_HOLD,
                MAX_PERIOD,
            )?,
        }),
        _ => {
            if let Some(h) = &section.health_check {
                return Err(errors.spanned(
                    h,
                    "dns.route53.health_check",
                    "a health check is of this instance: it needs [peers] and dns.pool = \"peers\"",
                ));
            }
            None
        }
    };
    Ok(Route53Config {
        hosted_zone_id: zone.to_string(),
        region: section.region.as_ref().map(|r| r.get_ref().clone()),
        endpoint_url,
        owner,
        timeout: bounded(
            errors,
            section.timeout.as_ref(),
            "dns.route53.timeout",
            DEFAULT_TIMEOUT,
            MAX_TIMEOUT,
        )?,
        reconcile: bounded(
            errors,
            section.reconcile.as_ref(),
            "dns.route53.reconcile",
            DEFAULT_RECONCILE,
            MAX_PERIOD,
        )?,
        peers,
    })
}

fn bounded(
    errors: &Errors<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(errors, value, key, default)?;
    match value {
        Some(v) if d > max => Err(errors.spanned(
            v,
            key,
            format!("at most {}", humantime::format_duration(max)),
        )),
        _ => Ok(d),
    }
}

fn health_check(
    errors: &Errors<'_>,
    section: &Spanned<HealthCheckSection>,
    address: IpAddr,
) -> Result<HealthCheck, ConfigError> {
    let h = section.get_ref();
    let http_path = match h.kind.get_ref().as_str() {
        "tcp" => {
            if let Some(path) = &h.path {
                return Err(errors.spanned(
                    path,
                    "dns.route53.health_check.path",
                    "a path is for kind = \"http\"",
                ));
            }
            None
        }
        "http" => {
            let path = h
                .path
                .as_ref()
                .map_or(DEFAULT_HEALTH_PATH, |p| p.get_ref().as_str());
            if !path.starts_with('/') || path.len() > 255 {
                let at = h.path.as_ref().expect("the default is valid");
                return Err(errors.spanned(
                    at,
                    "dns.route53.health_check.path",
                    "expected a path starting with '/', at most 255 characters",
                ));
            }
            Some(path.to_string())
        }
        _ => {
            return Err(errors.spanned(
                &h.kind,
                "dns.route53.health_check.kind",
                "expected \"tcp\" or \"http\"",
            ));
        }
    };
    if *h.port.get_ref() == 0 {
        return Err(errors.spanned(
            &h.port,
            "dns.route53.health_check.port",
            "expected the port Route 53's checkers connect to",
        ));
    }
    let interval = match &h.interval {
        None => 30,
        Some(i) => match humantime::parse_duration(i.get_ref()).map(|d| d.as_secs()) {
            Ok(10) => 10,
            Ok(30) => 30,
            _ => {
                return Err(errors.spanned(
                    i,
                    "dns.route53.health_check.interval",
                    "Route 53 checks every \"10s\" or \"30s\"",
                ));
            }
        },
    };
    let failure_threshold = match &h.failure_threshold {
        None => DEFAULT_FAILURE_THRESHOLD,
        Some(f) if (1..=10).contains(f.get_ref()) => *f.get_ref(),
        Some(f) => {
            return Err(errors.spanned(
                f,
                "dns.route53.health_check.failure_threshold",
                "expected 1 to 10 checks",
            ));
        }
    };
    Ok(HealthCheck {
        address,
        port: *h.port.get_ref(),
        http_path,
        interval,
        failure_threshold,
    })
}
