//! A listener's admission rules: `allow`, `deny`, `deny_reply`,
//! `client_rate`, `client_burst`, `admission_plugin` (see
//! [`crate::admission`]).

use std::path::Path;

use ipnet::IpNet;
use toml::Spanned;

use super::file::{ListenerSection, Protocol};
use super::plugins::{PluginDefaults, PluginSpec, plugin_spec};
use super::{ConfigError, Errors};
use crate::rate::RateLimit;

/// Who may open sessions on a listener, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Only these networks may connect (empty: every client).
    pub allow: Vec<IpNet>,
    /// These may not, whatever `allow` says.
    pub deny: Vec<IpNet>,
    /// SMTP: the reply to a client `allow`/`deny` refuse, 554 or 421.
    pub deny_reply: DenyReply,
    /// New sessions per client address (IPv6: /64); `per_second` 0: no
    /// limit.
    pub rate: RateLimit,
    /// `admission_plugin`: asked after the rules above (none: they alone
    /// decide).
    pub plugin: Option<PluginSpec>,
}

/// What an SMTP client refused by `allow`/`deny` is told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DenyReply {
    /// `554 5.7.1`: a permanent refusal, the sender gives up.
    #[default]
    Reject,
    /// `421 4.7.0`: try again later (while a list is being fixed, say).
    Defer,
}

/// `client_rate` unset.
const NO_LIMIT: RateLimit = RateLimit {
    per_second: 0,
    burst: 0,
};

pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    l: &ListenerSection,
    key: &str,
) -> Result<Admission, ConfigError> {
    let networks = |list: &Option<Vec<Spanned<String>>>, name: &str| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, net)| parse_network(errors, net, &format!("{key}.{name}[{i}]")))
            .collect::<Result<Vec<IpNet>, ConfigError>>()
    };
    let deny_reply = match &l.deny_reply {
        None => DenyReply::default(),
        Some(code) if l.protocol != Protocol::Smtp => {
            return Err(errors.spanned(
                code,
                &format!("{key}.deny_reply"),
                "only SMTP listeners reply to a refused client with a code (HTTP: 403, tcp: a close)",
            ));
        }
        Some(code) => match code.get_ref() {
            554 => DenyReply::Reject,
            421 => DenyReply::Defer,
            other => {
                return Err(errors.spanned(
                    code,
                    &format!("{key}.deny_reply"),
                    format!("{other} is not 554 (refuse) or 421 (try later)"),
                ));
            }
        },
    };
    let rate = match (&l.client_rate, &l.client_burst) {
        (None, Some(burst)) => {
            return Err(errors.spanned(
                burst,
                &format!("{key}.client_burst"),
                "set client_rate too (the burst is of a rate)",
            ));
        }
        (None, None) => NO_LIMIT,
        (Some(rate), burst) => {
            if *rate.get_ref() == 0 {
                return Err(errors.spanned(
                    rate,
                    &format!("{key}.client_rate"),
                    "must be at least 1 (leave it unset for no limit)",
                ));
            }
            let burst = match burst {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(errors.spanned(
                        b,
                        &format!("{key}.client_burst"),
                        "must be at least 1 (a client could never connect)",
                    ));
                }
                Some(b) => *b.get_ref(),
                None => *rate.get_ref(),
            };
            RateLimit {
                per_second: *rate.get_ref(),
                burst,
            }
        }
    };
    Ok(Admission {
        allow: networks(&l.allow, "allow")?,
        deny: networks(&l.deny, "deny")?,
        deny_reply,
        rate,
        plugin: match &l.admission_plugin {
            None => None,
            // Which world the component exports is checked when it loads
            // (a balancer here refuses the config or the reload then).
            Some(section) => Some(plugin_spec(
                errors,
                base,
                defaults,
                Some(section),
                &format!("{key}.admission_plugin"),
                "",
            )?),
        },
    })
}

/// "192.0.2.0/24", "2001:db8::/32", or one address (a /32 or /128);
/// "::ffff:192.0.2.0/120" is the IPv4 network it maps. IPv4 clients match
/// IPv4 networks only ("::/0" is every IPv6 client).
/// Host bits set ("192.0.2.1/24") are refused: the operator meant either
/// the address or the network, and gale cannot tell which.
fn parse_network(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    key: &str,
) -> Result<IpNet, ConfigError> {
    let text = value.get_ref().trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(errors.spanned(
                    value,
                    key,
                    format!(
                        "invalid network {text:?}: expected an address or CIDR, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""
                    ),
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(errors.spanned(
            value,
            key,
            format!(
                "{text} has host bits set: write the network {} or the address alone",
                net.trunc()
            ),
        ));
    }
    // Clients are seen as IPv4 when they come as ::ffff:a.b.c.d (see
    // `listener::canonical`): a network written that way means IPv4.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(mapped) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return Ok(IpNet::V4(mapped));
    }
    Ok(net)
}
