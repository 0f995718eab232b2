//! `[dns]`: which pool's members are published, under which name, by
//! which plugin, through which provider.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::file::{DnsProvider, DnsSection};
use super::{
    ConfigError, Errors, PluginDefaults, PluginSpec, parse_addr, parse_duration, plugin_spec,
};
use toml::Spanned;

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
    Embedded { address: SocketAddr, ns: String },
}

pub(super) fn validate(
    errors: &Errors<'_>,
    base: &Path,
    defaults: &PluginDefaults,
    section: &DnsSection,
    pool_names: &[&String],
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
    let pool = pool_names
        .iter()
        .position(|p| *p == section.pool.get_ref())
        .ok_or_else(|| {
            errors.spanned(
                &section.pool,
                "dns.pool",
                format!(
                    "no pool named {:?} (defined pools: {})",
                    section.pool.get_ref(),
                    pool_names
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    let provider = match section.provider {
        DnsProvider::Embedded => {
            let Some(embedded) = &section.embedded else {
                return Err(errors.spanned(
                    &section.zone,
                    "dns.embedded",
                    "provider \"embedded\" needs [dns.embedded] with an address",
                ));
            };
            let ns = match &embedded.ns {
                Some(ns) => dns_name(errors, ns, "dns.embedded.ns")?,
                None => format!("gale.{zone}"),
            };
            Provider::Embedded {
                address: parse_addr(errors, &embedded.address, "dns.embedded.address")?,
                ns,
            }
        }
    };
    Ok(DnsConfig {
        zone,
        name,
        ttl: section.ttl.unwrap_or(30),
        pool,
        debounce: parse_duration(
            errors,
            section.debounce.as_ref(),
            "dns.debounce",
            Duration::from_secs(1),
        )?,
        max_changes: section.max_changes.unwrap_or(60).max(1),
        plugin: plugin_spec(
            errors,
            base,
            defaults,
            section.plugin.as_ref(),
            "dns.plugin",
            "weighted-dns",
        )?,
        provider,
    })
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
