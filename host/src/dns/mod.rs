//! DNS publishing: when the health of the `[dns]` pool changes and holds
//! still for `debounce`, the DNS plugin plans the records and gale
//! publishes them through the provider ([`embedded`]: gale answers for
//! the zone itself).
//!
//! Guardrails, whatever the plugin says: never an empty record set (the
//! last records stay), at most `max_changes` records added or removed
//! per minute (a change that does not fit waits for the next minute; one
//! larger than the whole budget goes through alone at a minute's start),
//! every change logged.
//!
//! Owns: the wanted and published records. Does not touch: health
//! verdicts (read from the pool) or the plan (the plugin's).

pub mod embedded;
pub mod plan;
pub mod rfc2136;
pub mod route53;
pub mod rrl;
mod signed;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::DnsConfig;
use crate::generation::Generation;
use crate::plugin::types::{DnsRecord, DnsSnapshot, Member, MemberKind, RecordType};

/// How often the pool's health is looked at.
const TICK: Duration = Duration::from_millis(100);
/// The window `max_changes` counts in.
const CHANGE_WINDOW: Duration = Duration::from_secs(60);
/// A failed plan is tried again after this.
const PLUGIN_RETRY: Duration = Duration::from_secs(1);

/// Records as gale wants them and as published, shared with `/status`
/// and the embedded server.
#[derive(Default)]
pub struct DnsState {
    /// The last plan, after the guardrails.
    pub wanted: ArcSwap<Vec<DnsRecord>>,
    /// Woken when `wanted` changes.
    pub wanted_changed: tokio::sync::Notify,
    /// What the provider has (the embedded server answers with this).
    pub published: ArcSwap<Vec<DnsRecord>>,
    report: Mutex<Report>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// The last plan, after the guardrails.
    pub wanted: Vec<RecordView>,
    pub published: Vec<RecordView>,
    pub changes: u64,
    pub last_change: Option<String>,
    /// Why the last plan was not (fully) applied.
    pub held_back: Option<String>,
    /// The provider's last failure, until it succeeds again.
    pub last_error: Option<String>,
    /// The provider's last change and its status (`route53`: PENDING
    /// until Route 53 says INSYNC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<route53::ChangeView>,
    /// What the provider leaves as it is for now, and why (`route53`
    /// among peers: a failed peer's hold, no majority seen).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub provider_held: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordView {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: &'static str,
    pub value: String,
    pub ttl: u32,
    pub weight: u32,
    /// Which member's record it is (Route 53 keeps it as the set
    /// identifier, after the owner).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub set_id: String,
}

impl RecordView {
    fn of(r: &DnsRecord) -> Self {
        RecordView {
            name: r.name.clone(),
            rtype: r.rtype.name(),
            value: r.value.clone(),
            ttl: r.ttl,
            weight: r.weight,
            set_id: r.set_id.clone(),
        }
    }
}

impl DnsState {
    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The provider now has `records`.
    pub fn set_published(&self, records: Arc<Vec<DnsRecord>>) {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.published = records.iter().map(RecordView::of).collect();
        report.last_error = None;
        self.published.store(records);
    }

    /// The provider sent change `id`, or learnt its status.
    pub fn change_status(&self, id: &str, status: &str) {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).change =
            Some(route53::ChangeView::new(id, status));
    }

    /// What the provider leaves as it is for now, and why.
    pub fn set_provider_held(&self, held: Vec<String>) {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .provider_held = held;
    }

    /// The provider failed; the published records are as they were.
    pub fn failed(&self, why: String) {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(why);
    }
}

/// Count one `gale_dns_updates_total{provider, result}`.
pub(crate) fn count_update(generation: &Generation, provider: &str, result: &str) {
    generation
        .metrics
        .dns_updates
        .get_or_create(&crate::metrics::DnsLabels {
            provider: provider.to_string(),
            result: result.to_string(),
        })
        .inc();
}

/// What a self-check asks a DNS plugin: two members, one healthy.
pub fn sample_snapshot(config: &DnsConfig) -> DnsSnapshot {
    let member = |name: &str, address: &str, healthy| Member {
        name: name.to_string(),
        address: address.to_string(),
        weight: 1,
        healthy,
        kind: MemberKind::Backend,
    };
    DnsSnapshot {
        zone: config.zone.clone(),
        name: config.name.clone(),
        ttl: config.ttl,
        members: vec![
            member("a", "192.0.2.1", true),
            member("b", "192.0.2.2", false),
        ],
        published: Vec::new(),
    }
}

/// The `[dns]` pool's backends as DNS members, as healthy as the pool
/// says.
fn members(generation: &Generation, config: &DnsConfig) -> Vec<Member> {
    let pool = &generation.pools[config.pool];
    // A drained or disabled backend leaves DNS too.
    members_as(generation, config, |id| {
        pool.is_healthy(id) && pool.takes_sessions(id)
    })
}

/// The `[dns]` pool's backends as DNS members, backend `id` healthy when
/// `in_dns(id)` (`gale dns plan` asks a running gale); for the pool
/// `peers`, the other instances and this one (healthy as far as it can
/// tell: it is running).
fn members_as(
    generation: &Generation,
    config: &DnsConfig,
    in_dns: impl Fn(usize) -> bool,
) -> Vec<Member> {
    let pool = &generation.pools[config.pool];
    let peers = generation
        .config
        .peers
        .as_ref()
        .filter(|p| p.pool == config.pool);
    let kind = if peers.is_some() {
        MemberKind::Peer
    } else {
        MemberKind::Backend
    };
    let me = peers.map(|p| Member {
        name: p.name.clone(),
        address: p.address.to_string(),
        weight: p.weight,
        healthy: true,
        kind: MemberKind::Peer,
    });
    me.into_iter()
        .chain((0..pool.len()).map(|id| {
            let b = pool.backend(id);
            Member {
                name: b.name.clone(),
                address: b.address.ip().to_string(),
                weight: b.weight,
                healthy: in_dns(id),
                kind,
            }
        }))
        .collect()
}

fn same_members(a: &[Member], b: &[Member]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.address == y.address
                && x.weight == y.weight
                && x.healthy == y.healthy
        })
}

/// Publish records for the current generation's `[dns]` until shutdown.
pub async fn run(
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
    shutdown: CancellationToken,
) {
    let mut seen: Vec<Member> = Vec::new();
    let mut seen_generation = 0;
    // Publish once at start, after the first debounce.
    let mut changed: Option<Instant> = Some(Instant::now());
    let mut window = (Instant::now(), 0u32);
    // No plan before this (a failed plugin call, or a change past
    // max_changes waiting for the next minute).
    let mut not_before = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let generation = current.load_full();
        let (Some(config), Some(plugin)) = (&generation.config.dns, &generation.dns) else {
            continue;
        };
        let now = members(&generation, config);
        // A reload may change the name, TTL or plugin: plan again.
        if !same_members(&now, &seen) || generation.id != seen_generation {
            seen = now;
            seen_generation = generation.id;
            changed = Some(Instant::now());
        }
        let Some(since) = changed else { continue };
        if since.elapsed() < config.debounce || Instant::now() < not_before {
            continue;
        }
        if window.0.elapsed() >= CHANGE_WINDOW {
            window = (Instant::now(), 0);
        }
        let published = state.wanted.load_full();
        let snapshot = DnsSnapshot {
            zone: config.zone.clone(),
            name: config.name.clone(),
            ttl: config.ttl,
            members: seen.clone(),
            published: (*published).clone(),
        };
        let planned = match plugin.plan(&snapshot) {
            Ok(records) => records,
            Err(failure) => {
                generation
                    .metrics
                    .plugin_fallbacks
                    .get_or_create(&crate::metrics::FallbackLabels {
                        pool: generation.pools[config.pool].name.clone(),
                        hook: "dns".to_string(),
                        reason: failure.reason().to_string(),
                    })
                    .inc();
                tracing::warn!(plugin = %plugin.name(), "dns plugin failed ({failure}); records stay as they are, trying again in {PLUGIN_RETRY:?}");
                hold(&state, format!("plugin failed: {failure}"));
                not_before = Instant::now() + PLUGIN_RETRY;
                continue;
            }
        };
        let wanted = guard(config, planned);
        let diff = difference(&published, &wanted);
        if diff == 0 {
            changed = None;
            record_wanted(&state, &wanted, None);
            continue;
        }
        // A plan larger than the whole budget goes through alone at the
        // start of a minute; anything else waits for room.
        if window.1 > 0 && window.1 + diff > config.max_changes {
            not_before = window.0 + CHANGE_WINDOW;
            record_wanted(
                &state,
                &wanted,
                Some(format!(
                    "{diff} record changes wait: {} of max_changes = {} used this minute",
                    window.1, config.max_changes
                )),
            );
            continue;
        }
        window.1 += diff;
        changed = None;
        if let crate::config::DnsProvider::Embedded { .. } = config.provider {
            count_update(&generation, "embedded", "applied");
        }
        apply(&state, config, wanted, &published);
    }
}

/// Keep what may be published: records of the configured name with a
/// value of their type, one per (type, value) (members behind one address
/// add up their weights: an RRset has no duplicates).
fn guard(config: &DnsConfig, planned: Vec<DnsRecord>) -> Vec<DnsRecord> {
    // The providers publish under the configured name only.
    let ours = |name: &str| {
        let name = name.to_ascii_lowercase();
        name == config.name || format!("{name}.") == config.name
    };
    let mut kept: Vec<DnsRecord> = Vec::with_capacity(planned.len());
    for r in planned {
        if !(ours(&r.name) && value_ok(&r)) {
            tracing::warn!(name = %r.name, value = %r.value, "dns plugin planned a record gale cannot publish; left out");
            continue;
        }
        match kept.iter_mut().find(|k| {
            k.name.eq_ignore_ascii_case(&r.name) && k.rtype == r.rtype && k.value == r.value
        }) {
            Some(same) => same.weight = same.weight.saturating_add(r.weight),
            None => kept.push(r),
        }
    }
    kept
}

fn value_ok(r: &DnsRecord) -> bool {
    match r.rtype {
        RecordType::A => r.value.parse::<std::net::Ipv4Addr>().is_ok(),
        RecordType::Aaaa => r.value.parse::<std::net::Ipv6Addr>().is_ok(),
        // Not served yet by the embedded provider.
        RecordType::Cname | RecordType::Txt => false,
    }
}

fn key(r: &DnsRecord) -> (String, u8, &str, u32, u32) {
    (
        r.name.to_ascii_lowercase(),
        r.rtype as u8,
        r.value.as_str(),
        r.ttl,
        r.weight,
    )
}

/// Records added plus records removed.
fn difference(old: &[DnsRecord], new: &[DnsRecord]) -> u32 {
    let added = new
        .iter()
        .filter(|n| !old.iter().any(|o| key(o) == key(n)))
        .count();
    let removed = old
        .iter()
        .filter(|o| !new.iter().any(|n| key(o) == key(n)))
        .count();
    (added + removed) as u32
}

fn apply(state: &DnsState, config: &DnsConfig, wanted: Vec<DnsRecord>, before: &[DnsRecord]) {
    if wanted.is_empty() {
        // Never remove the last records: a stale answer defers mail, an
        // empty one bounces it.
        record_wanted(
            state,
            &wanted,
            Some("the plan had no records; the published ones stay".into()),
        );
        return;
    }
    let added: Vec<String> = wanted
        .iter()
        .filter(|n| !before.iter().any(|o| key(o) == key(n)))
        .map(|r| format!("{} w{}", r.value, r.weight))
        .collect();
    let removed: Vec<String> = before
        .iter()
        .filter(|o| !wanted.iter().any(|n| key(o) == key(n)))
        .map(|r| format!("{} w{}", r.value, r.weight))
        .collect();
    tracing::info!(
        name = %config.name,
        added = %added.join(", "),
        removed = %removed.join(", "),
        records = wanted.len(),
        "dns records changed"
    );
    let wanted = Arc::new(wanted);
    state.wanted.store(wanted.clone());
    {
        let mut report = state.report.lock().unwrap_or_else(|p| p.into_inner());
        report.wanted = wanted.iter().map(RecordView::of).collect();
        report.changes += 1;
        report.last_change = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        report.held_back = None;
    }
    if let crate::config::DnsProvider::Embedded { .. } = config.provider {
        // Answered from the next query on.
        state.set_published(wanted);
    } else {
        state.wanted_changed.notify_one();
    }
}

fn record_wanted(state: &DnsState, wanted: &[DnsRecord], held_back: Option<String>) {
    let mut report = state.report.lock().unwrap_or_else(|p| p.into_inner());
    report.wanted = wanted.iter().map(RecordView::of).collect();
    report.held_back = held_back;
}

fn hold(state: &DnsState, why: String) {
    state
        .report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .held_back = Some(why);
}
