//! Provider `route53`: the wanted records become weighted record sets in
//! an Amazon Route 53 hosted zone, one per member (`SetIdentifier`
//! `OWNER/SET-ID`, its `Weight`, the config's TTL).
//!
//! Each sync reads the name's sets back ([`api::Api::read`]), works out
//! the changes ([`changes::plan`]: only sets whose identifier starts with
//! `OWNER/` are gale's; everybody else's are never touched) and sends
//! them as one `ChangeResourceRecordSets` batch of UPSERTs and DELETEs.
//! A DELETE carries the set exactly as read, so one changed meanwhile
//! makes Route 53 refuse the batch (`InvalidChangeBatch`); gale then reads
//! again and recomputes. The change is then polled until `INSYNC`, shown
//! in `/status`. The zone is read back every `reconcile` and any drift
//! corrected; a failure is retried with a backoff, and is an error in
//! the log and `/status` while it lasts.

pub mod api;
pub mod changes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use self::api::{Api, ApiError, Read};
use self::changes::{Change, Weighted};
use super::DnsState;
use crate::config::DnsProvider;
use crate::config::route53::Route53Config;
use crate::generation::Generation;
use crate::plugin::types::DnsRecord;

/// Longest wait between retries of a failed sync.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Reads and retries when the zone keeps changing under gale.
const MAX_RACES: usize = 3;
/// How often a PENDING change's status is asked.
const STATUS_POLL: Duration = Duration::from_secs(2);
/// After this a change still PENDING is left to the next sync.
const STATUS_GIVE_UP: Duration = Duration::from_secs(300);

/// What one sync did.
struct Synced {
    /// gale's sets in the zone now.
    owned: Vec<Weighted>,
    /// The change sent, if one was.
    change: Option<(String, String)>,
    held: Vec<String>,
    wake: Option<Instant>,
}

/// Keep the zone's weighted sets as wanted until shutdown.
pub async fn run(
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
    shutdown: CancellationToken,
) {
    let mut api: Option<(Route53Config, String, Api)> = None;
    let mut health_check: Option<String> = None;
    let mut down: HashMap<String, Instant> = HashMap::new();
    let mut backoff = Duration::from_millis(500);
    let mut next_sync: Option<Instant> = None;
    // A change still PENDING, and when to ask its status next.
    let mut pending: Option<(String, Instant, Instant)> = None;
    loop {
        let wake = [next_sync, pending.as_ref().map(|p| p.2)]
            .into_iter()
            .flatten()
            .min();
        let notified = async {
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = state.wanted_changed.notified() => true,
                        _ = tokio::time::sleep_until(at.into()) => false,
                    }
                }
                None => {
                    state.wanted_changed.notified().await;
                    true
                }
            }
        };
        let woken = tokio::select! {
            _ = shutdown.cancelled() => return,
            woken = notified => woken,
        };
        let generation = current.load_full();
        let Some(dns) = &generation.config.dns else {
            continue;
        };
        let DnsProvider::Route53(config) = &dns.provider else {
            continue;
        };
        let config: &Route53Config = config;
        if api
            .as_ref()
            .is_none_or(|(c, name, _)| c != config || name != &dns.name)
        {
            api = Some((
                config.clone(),
                dns.name.clone(),
                Api::new(config, &dns.name).await,
            ));
            health_check = None;
        }
        let (_, _, client) = api.as_ref().expect("set above");
        let count = |result: &str| {
            generation
                .metrics
                .dns_updates
                .get_or_create(&crate::metrics::DnsLabels {
                    provider: "route53".to_string(),
                    result: result.to_string(),
                })
                .inc();
        };
        let throttles = || count("throttled");
        if let Some((id, since, next)) = &mut pending
            && Instant::now() >= *next
        {
            match tokio::time::timeout(config.timeout * 2, client.status(id, &throttles)).await {
                Ok(Ok(status)) => {
                    state.change_status(id, &status);
                    if status == "INSYNC" || since.elapsed() > STATUS_GIVE_UP {
                        pending = None;
                    } else {
                        *next = Instant::now() + STATUS_POLL;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!("route53 change {id}: no status: {e}");
                    *next = Instant::now() + STATUS_POLL;
                }
                Err(_) => {
                    tracing::debug!("route53 change {id}: no status in time");
                    *next = Instant::now() + STATUS_POLL;
                }
            }
        }
        if !woken && next_sync.is_none_or(|s| Instant::now() < s) {
            continue;
        }
        let wanted = state.wanted.load_full();
        if wanted.is_empty() {
            // Nothing planned yet (gale never publishes an empty set).
            next_sync = None;
            continue;
        }
        let round = sync(
            config,
            client,
            &mut health_check,
            &mut down,
            &wanted,
            &throttles,
        );
        match tokio::time::timeout(config.timeout * 4, round).await {
            Ok(Ok(synced)) => {
                if let Some((id, status)) = &synced.change {
                    count("applied");
                    state.change_status(id, status);
                    pending = (status != "INSYNC")
                        .then(|| (id.clone(), Instant::now(), Instant::now() + STATUS_POLL));
                }
                state.set_provider_held(synced.held);
                state.set_published(Arc::new(records(&synced.owned, &dns.name)));
                backoff = Duration::from_millis(500);
                let reconcile = Instant::now() + config.reconcile;
                next_sync = Some(synced.wake.map_or(reconcile, |w| w.min(reconcile)));
            }
            Ok(Err(e)) => {
                // The check may be gone (deleted by hand): find or make
                // it again on the next try.
                health_check = None;
                let (result, retry) = match &e {
                    ApiError::Refused(_) => ("refused", config.reconcile.min(MAX_BACKOFF)),
                    ApiError::Throttled(_) => ("failed", backoff),
                    ApiError::Unreachable(_) | ApiError::Conflict(_) => ("failed", backoff),
                };
                count(result);
                let why = format!("route53 zone {}: {e}", config.hosted_zone_id);
                if result == "refused" {
                    tracing::error!(retry_in = ?retry, "dns update refused: {why}");
                } else {
                    tracing::warn!(retry_in = ?retry, "dns update failed: {why}");
                }
                state.failed(why);
                next_sync = Some(Instant::now() + retry);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) => {
                count("failed");
                let why = format!(
                    "route53 zone {}: no answer within {:?}",
                    config.hosted_zone_id,
                    config.timeout * 4
                );
                tracing::warn!(retry_in = ?backoff, "dns update failed: {why}");
                state.failed(why);
                next_sync = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Read the zone, plan, send the changes; again if the zone changed in
/// between.
async fn sync(
    config: &Route53Config,
    api: &Api,
    health_check: &mut Option<String>,
    down: &mut HashMap<String, Instant>,
    wanted: &[DnsRecord],
    throttles: &(dyn Fn() + Sync),
) -> Result<Synced, ApiError> {
    if let Some(check) = config.peers.as_ref().and_then(|p| {
        p.health_check
            .as_ref()
            .map(|c| (p.me.as_str(), c))
            .filter(|_| health_check.is_none())
    }) {
        let id = api.health_check(check.0, check.1, throttles).await?;
        tracing::info!(health_check = %id, "route53 health check of this instance");
        *health_check = Some(id);
    }
    let wanted = changes::wanted_sets(config, wanted, health_check.as_deref());
    for race in 0.. {
        let read = api.read(throttles).await?;
        changes::note_down(down, &read.owned, &wanted);
        let plan = changes::plan(
            config,
            &wanted,
            &read.owned,
            &read.foreign,
            down,
            Instant::now(),
        );
        if plan.changes.is_empty() {
            return Ok(Synced {
                owned: read.owned,
                change: None,
                held: plan.held,
                wake: plan.wake,
            });
        }
        match api.submit(&plan.changes, &read, throttles).await {
            Ok(change) => {
                log(&plan.changes, &read, &change.0);
                return Ok(Synced {
                    owned: after(&read, &plan.changes),
                    change: Some(change),
                    held: plan.held,
                    wake: plan.wake,
                });
            }
            Err(ApiError::Conflict(why)) if race < MAX_RACES => {
                tracing::info!("route53 refused the batch ({why}); reading the zone again");
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

fn log(changes: &[Change], read: &Read, id: &str) {
    let mut upserted = Vec::new();
    let mut deleted = Vec::new();
    for c in changes {
        match c {
            Change::Upsert(w) => upserted.push(w.describe()),
            Change::Delete(i) => deleted.push(read.owned[*i].describe()),
        }
    }
    tracing::info!(
        change = %id,
        upserted = %upserted.join("; "),
        deleted = %deleted.join("; "),
        "route53 records changed"
    );
}

/// gale's sets once `changes` are applied to what was read.
fn after(read: &Read, changes: &[Change]) -> Vec<Weighted> {
    let mut owned: Vec<Weighted> = read
        .owned
        .iter()
        .enumerate()
        .filter(|(i, _)| !changes.contains(&Change::Delete(*i)))
        .map(|(_, w)| w.clone())
        .collect();
    for c in changes {
        if let Change::Upsert(w) = c {
            owned.retain(|o| !(o.rtype == w.rtype && o.set_id == w.set_id));
            owned.push(w.clone());
        }
    }
    owned
}

/// Sets as records, for `/status` and the next plan.
fn records(sets: &[Weighted], name: &str) -> Vec<DnsRecord> {
    sets.iter()
        .flat_map(|s| {
            s.values.iter().map(|v| DnsRecord {
                name: name.to_string(),
                rtype: s.rtype,
                value: v.clone(),
                ttl: s.ttl,
                weight: s.weight,
                set_id: s.set_id.clone(),
            })
        })
        .collect()
}

/// A change as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeView {
    pub id: String,
    pub status: String,
    /// When gale last learnt the status (RFC 3339).
    pub at: String,
}

impl ChangeView {
    pub fn new(id: &str, status: &str) -> Self {
        ChangeView {
            id: id.to_string(),
            status: status.to_string(),
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}
