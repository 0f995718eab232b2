//! `gale dns plan`: the records the `[dns]` config and the fleet's health
//! would publish now, and the changes against what the provider has,
//! written nowhere.
//!
//! Each step is the publishing loop's own, run once: the members
//! ([`super::members_as`], each backend's health from a running gale's
//! `/status`, or every one counted healthy when no gale answers), the
//! plugin's plan, [`super::guard`]; then the provider's read and diff:
//! Route 53's [`changes::plan`] on the sets read back (the exact UPSERTs
//! and DELETEs gale would send), RFC 2136's signed read and comparison
//! (`rfc2136::same`), and for the embedded server what the running gale
//! answers. What the loops add over time is not modelled: the debounce,
//! `max_changes` per minute, and a failed peer's `peer_hold` (counted
//! from now, as by a gale just started).
//!
//! Owns: the printed report. Does not touch: the provider (reads only: no
//! UPDATE, no ChangeResourceRecordSets, no CreateHealthCheck) or the
//! running gale (one GET `/status`).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::rr::{Name, RecordType as RrType};
use serde::Deserialize;

use super::rfc2136::{self, SyncError};
use super::route53::api::Api;
use super::route53::changes::{self, Change, PeerView};
use crate::config::dns::Rfc2136Config;
use crate::config::route53::Route53Config;
use crate::config::{DnsConfig, DnsProvider};
use crate::generation::Generation;
use crate::plugin::types::{DnsRecord, DnsSnapshot, RecordType};

/// How long a gale has to accept a connection on its admin address before
/// none is taken to be running.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where health comes from.
#[derive(Debug, Default)]
pub struct Options {
    /// A running gale's admin listener (default: the config's `[admin]`).
    pub admin: Option<SocketAddr>,
    /// Its bearer token (default: the config's `admin.token`).
    pub token: Option<String>,
}

/// What `gale dns plan` prints, and what kept it from finishing.
pub struct Report {
    pub text: String,
    /// The provider could not be read (or the plugin failed, or the
    /// running gale refused to say): the plan is incomplete.
    pub error: Option<String>,
}

/// Plan the config's `[dns]` once and compare with the provider. Blocking
/// (the plugin call; the reads run on a runtime of their own).
pub fn plan(generation: &Generation, options: &Options) -> Report {
    let mut text = String::new();
    let error = report(generation, options, &mut text).err();
    Report { text, error }
}

/// The parts of a running gale's `/status` a plan needs.
#[derive(Debug, Deserialize)]
struct Status {
    generation: u64,
    pools: Vec<PoolStatus>,
    dns: Option<DnsStatus>,
}

#[derive(Debug, Deserialize)]
struct PoolStatus {
    name: String,
    backends: Vec<BackendStatus>,
}

#[derive(Debug, Deserialize)]
struct BackendStatus {
    name: String,
    /// `up` is healthy and taking sessions (`pool::report`): the members
    /// DNS keeps.
    state: String,
}

#[derive(Debug, Deserialize)]
struct DnsStatus {
    wanted: Vec<RecordStatus>,
    published: Vec<RecordStatus>,
}

/// A record as `/status` shows it (`dns::RecordView`).
#[derive(Debug, Deserialize)]
struct RecordStatus {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    value: String,
    ttl: u32,
    weight: u32,
    #[serde(default)]
    set_id: String,
}

impl RecordStatus {
    fn record(&self) -> Option<DnsRecord> {
        let rtype = match self.rtype.as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::Aaaa,
            "CNAME" => RecordType::Cname,
            "TXT" => RecordType::Txt,
            _ => return None,
        };
        Some(DnsRecord {
            name: self.name.clone(),
            rtype,
            value: self.value.clone(),
            ttl: self.ttl,
            weight: self.weight,
            set_id: self.set_id.clone(),
        })
    }
}

fn records(list: &[RecordStatus]) -> Vec<DnsRecord> {
    list.iter().filter_map(RecordStatus::record).collect()
}

/// Where the members' health comes from.
enum Health {
    /// A running gale answered `/status`.
    Running { admin: SocketAddr, status: Status },
    /// No gale to ask (why): every member counted healthy.
    Assumed(String),
}

impl Health {
    /// Backend `backend` of `pool` in the running gale: its state.
    fn state(&self, pool: &str, backend: &str) -> Option<&str> {
        let Health::Running { status, .. } = self else {
            return None;
        };
        let pool = status.pools.iter().find(|p| p.name == pool)?;
        let b = pool.backends.iter().find(|b| b.name == backend)?;
        Some(b.state.as_str())
    }
}

fn report(generation: &Generation, options: &Options, out: &mut String) -> Result<(), String> {
    let (Some(config), Some(plugin)) = (&generation.config.dns, &generation.dns) else {
        return Err("the config has no [dns]: gale publishes no records".into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let pool = &generation.pools[config.pool];
    let _ = writeln!(
        out,
        "{} (zone {}, provider {}, pool {}, plugin {})",
        config.name,
        config.zone,
        config.provider.kind(),
        pool.name,
        config.plugin.source
    );
    let health = rt.block_on(ask(generation, options))?;
    let _ = match &health {
        Health::Running { admin, status } => writeln!(
            out,
            "health: from the gale at {admin} (generation {})",
            status.generation
        ),
        Health::Assumed(why) => writeln!(out, "health: {why}: every member counted healthy"),
    };

    let states: Vec<Option<&str>> = (0..pool.len())
        .map(|id| health.state(&pool.name, &pool.backend(id).name))
        .collect();
    // A backend the running gale does not have (the config changed since
    // it loaded) is counted healthy, as at a gale's start.
    let members = super::members_as(generation, config, |id| {
        states[id].is_none_or(|s| s == "up")
    });
    let _ = writeln!(out, "members:");
    for m in &members {
        let state = match (0..pool.len()).find(|&id| pool.backend(id).name == m.name) {
            // With `pool = "peers"`, the instance itself is no backend.
            None => "healthy (this instance)".to_string(),
            Some(id) => match (states[id], &health) {
                (Some(state), _) if !m.healthy => format!("out ({state})"),
                (None, Health::Running { .. }) => {
                    "healthy (not in the running gale: counted healthy)".into()
                }
                _ => "healthy".into(),
            },
        };
        let _ = writeln!(out, "  {} {} w{} {state}", m.name, m.address, m.weight);
    }

    // The loop hands the plugin its last plan as what is published.
    let snapshot = DnsSnapshot {
        zone: config.zone.clone(),
        name: config.name.clone(),
        ttl: config.ttl,
        members,
        published: match &health {
            Health::Running {
                status: Status { dns: Some(dns), .. },
                ..
            } => records(&dns.wanted),
            _ => Vec::new(),
        },
    };
    let planned = plugin
        .plan(&snapshot)
        .map_err(|failure| format!("the dns plugin {} failed: {failure}", plugin.name()))?;
    let wanted = super::guard(config, planned);
    if wanted.is_empty() {
        let _ = writeln!(out, "wanted: none");
    } else {
        let _ = writeln!(out, "wanted:");
        for r in &wanted {
            let _ = writeln!(out, "  {}", record(r));
        }
    }

    let changes = match &config.provider {
        DnsProvider::Embedded { .. } => embedded(out, &health, &wanted),
        DnsProvider::Rfc2136(server) => rt.block_on(from_rfc2136(out, config, server, &wanted))?,
        DnsProvider::Route53(route53) => {
            rt.block_on(from_route53(out, config, route53, &wanted))?
        }
    };
    if wanted.is_empty() {
        // Never an empty set: the providers keep what they have.
        let _ = writeln!(out, "changes: none");
        let _ = writeln!(
            out,
            "held: the plan had no records; the published ones stay"
        );
        return Ok(());
    }
    if changes.changes.is_empty() {
        let _ = writeln!(out, "changes: none");
    } else {
        let _ = writeln!(out, "changes:");
        for c in &changes.changes {
            let _ = writeln!(out, "  {c}");
        }
    }
    for why in &changes.held {
        let _ = writeln!(out, "held: {why}");
    }
    Ok(())
}

/// The running gale's `/status`, or why there is none to ask.
async fn ask(generation: &Generation, options: &Options) -> Result<Health, String> {
    let configured = generation.config.admin.as_ref();
    let Some(admin) = options.admin.or(configured.map(|a| a.address)) else {
        return Ok(Health::Assumed(
            "no admin address to ask (no [admin] in the config, no --admin)".into(),
        ));
    };
    if admin.port() == 0 {
        return Ok(Health::Assumed(format!(
            "the config's admin address {admin} has port 0 (pass --admin)"
        )));
    }
    // A listener on every address answers on loopback.
    let admin = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port())
        }
        _ => admin,
    };
    // Whether anything listens, apart from whether it answers: a gale
    // that refuses the token or fails is an error, not a reason to count
    // every member healthy.
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(admin)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Ok(Health::Assumed(format!("no gale at {admin} ({e})"))),
        Err(_) => {
            return Ok(Health::Assumed(format!(
                "no gale at {admin} (no connection within {CONNECT_TIMEOUT:?})"
            )));
        }
    }
    let token = options.token.as_deref().or_else(|| {
        configured
            .and_then(|a| a.token.as_ref())
            .map(|t| t.expose())
    });
    let doc = crate::admin::table::fetch(admin, token)
        .await
        .map_err(|e| format!("asking the gale at {admin} for health: {e:#}"))?;
    let status = serde_json::from_value(doc).map_err(|e| {
        format!("the gale at {admin} answered a /status this gale cannot read: {e}")
    })?;
    Ok(Health::Running { admin, status })
}

/// The changes a provider would make, and what it would hold back.
#[derive(Default)]
struct Changes {
    changes: Vec<String>,
    held: Vec<String>,
}

fn record(r: &DnsRecord) -> String {
    let set = if r.set_id.is_empty() {
        String::new()
    } else {
        format!(" set {}", r.set_id)
    };
    format!(
        "{} {} w{} ttl {}{set}",
        r.rtype.name(),
        r.value,
        r.weight,
        r.ttl
    )
}

/// The embedded server answers with the last plan: records in one list
/// and not in the other are added or removed.
fn embedded(out: &mut String, health: &Health, wanted: &[DnsRecord]) -> Changes {
    let published = match health {
        Health::Running {
            admin,
            status: Status { dns: Some(dns), .. },
        } => {
            let _ = writeln!(out, "provider has: (what the gale at {admin} answers)");
            records(&dns.published)
        }
        Health::Running { admin, .. } => {
            let _ = writeln!(
                out,
                "provider has: nothing published: the gale at {admin} has no [dns]"
            );
            Vec::new()
        }
        Health::Assumed(_) => {
            let _ = writeln!(out, "provider has: nothing published: no gale answering");
            Vec::new()
        }
    };
    for r in &published {
        let _ = writeln!(out, "  {}", record(r));
    }
    let key = super::key;
    let mut changes = Changes::default();
    for r in wanted {
        if !published.iter().any(|p| key(p) == key(r)) {
            changes.changes.push(format!("ADD {}", record(r)));
        }
    }
    for r in &published {
        if !wanted.iter().any(|w| key(w) == key(r)) {
            changes.changes.push(format!("REMOVE {}", record(r)));
        }
    }
    changes
}

/// The server's A and AAAA sets, read signed as the provider reads them;
/// a set `rfc2136::same` finds different is what gale would update.
async fn from_rfc2136(
    out: &mut String,
    config: &DnsConfig,
    server: &Rfc2136Config,
    wanted: &[DnsRecord],
) -> Result<Changes, String> {
    let failed = |e: SyncError| {
        let why = match e {
            SyncError::Unreachable(why) => why,
            SyncError::Refused(why) => format!("refused: {why}"),
            SyncError::Unverified(why) => format!("answer not trusted: {why}"),
        };
        format!("rfc2136 server {}: {why}", server.server)
    };
    let signer = rfc2136::signer(server).map_err(failed)?;
    let name = Name::from_ascii(&config.name).map_err(|e| format!("{}: {e}", config.name))?;
    let mut have_sets = Vec::new();
    for rtype in [RrType::A, RrType::AAAA] {
        let read = rfc2136::read(server, &signer, &name, rtype);
        let have = match tokio::time::timeout(server.timeout * 4, read).await {
            Ok(read) => read.map_err(failed)?,
            Err(_) => {
                return Err(format!(
                    "rfc2136 server {}: no answer within {:?}",
                    server.server,
                    server.timeout * 4
                ));
            }
        };
        have_sets.push((rtype, have));
    }
    let data = rfc2136::addresses;
    let _ = writeln!(
        out,
        "provider has: (server {}, read signed with key {})",
        server.server, server.key_name
    );
    if have_sets.iter().all(|(_, s)| s.is_empty()) {
        let _ = writeln!(out, "  nothing");
    }
    let mut changes = Changes::default();
    for (rtype, have) in &have_sets {
        for value in data(have) {
            let _ = writeln!(out, "  {rtype} {value} ttl {}", have.ttl());
        }
        let want = rfc2136::set(&name, *rtype, wanted);
        if rfc2136::same(have, &want) {
            continue;
        }
        let (had, wants) = (data(have), data(&want));
        let before = changes.changes.len();
        for value in wants.iter().filter(|v| !had.contains(v)) {
            changes
                .changes
                .push(format!("ADD {rtype} {value} ttl {}", want.ttl()));
        }
        for value in had.iter().filter(|v| !wants.contains(v)) {
            changes
                .changes
                .push(format!("REMOVE {rtype} {value} ttl {}", have.ttl()));
        }
        if changes.changes.len() == before {
            changes
                .changes
                .push(format!("TTL {rtype} {} -> {}", have.ttl(), want.ttl()));
        }
    }
    Ok(changes)
}

/// The name's weighted sets as the provider reads them, and the batch
/// [`changes::plan`] makes of them.
async fn from_route53(
    out: &mut String,
    config: &DnsConfig,
    route53: &Route53Config,
    wanted: &[DnsRecord],
) -> Result<Changes, String> {
    let zone = &route53.hosted_zone_id;
    // Region and credentials may come from the instance metadata service:
    // bounded as the provider loop bounds it.
    let Ok(api) = tokio::time::timeout(route53.timeout, Api::new(route53, &config.name)).await
    else {
        return Err(format!(
            "route53 zone {zone}: no region or credentials within {:?}",
            route53.timeout
        ));
    };
    let read = match tokio::time::timeout(route53.timeout * 4, api.read(&|| {})).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return Err(format!("route53 zone {zone}: {e}")),
        Err(_) => {
            return Err(format!(
                "route53 zone {zone}: no answer within {:?}",
                route53.timeout * 4
            ));
        }
    };
    let _ = writeln!(
        out,
        "provider has: (hosted zone {zone}, gale's sets are {}/...)",
        route53.owner
    );
    if read.owned.is_empty() && read.foreign.is_empty() {
        let _ = writeln!(out, "  nothing");
    }
    for w in &read.owned {
        let _ = writeln!(out, "  {}", w.describe());
    }
    for other in &read.foreign {
        let _ = writeln!(out, "  {} (not gale's)", other.describe());
    }
    let mut held = Vec::new();
    // The provider finds or creates this instance's health check before
    // its first sync; a plan may not create one: it takes the one on the
    // instance's record.
    let check_wanted = route53.peers.as_ref().filter(|p| p.health_check.is_some());
    let health_check = check_wanted
        .and_then(|p| read.owned.iter().find(|o| o.set_id == p.me))
        .and_then(|o| o.health_check.as_deref());
    if let Some(peers) = check_wanted
        && health_check.is_none()
    {
        held.push(format!(
            "{}'s record has no health check yet: gale finds or creates one, and its UPSERT carries it",
            peers.me
        ));
    }
    let sets = changes::wanted_sets(route53, wanted, health_check);
    let plan = changes::plan(
        route53,
        &sets,
        &read.owned,
        &read.foreign,
        // The members the running gale reports healthy stand in for
        // those whose last probe passed.
        &PeerView::seeing(sets.iter().map(|w| w.set_id.clone()).collect()),
        Instant::now(),
    );
    held.extend(plan.held);
    Ok(Changes {
        changes: plan
            .changes
            .iter()
            .map(|c| match c {
                Change::Upsert(w) => format!("UPSERT {}", w.describe()),
                Change::Delete(i) => format!("DELETE {}", read.owned[*i].describe()),
                Change::Keep(i) => format!("KEEP {} (as read)", read.owned[*i].describe()),
            })
            .collect(),
        held,
    })
}
