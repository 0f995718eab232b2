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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use self::api::{Api, ApiError, Read};
use self::changes::{Change, PeerView, Weighted};
use super::DnsState;
use crate::config::DnsProvider;
use crate::config::route53::Route53Config;
use crate::generation::Generation;
use crate::plugin::types::DnsRecord;

/// Longest wait between retries of a failed sync.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Reads and retries when the zone keeps changing under gale.
const MAX_RACES: usize = 3;
/// A PENDING change's status is asked after this, then twice as long
/// each time, up to `MAX_STATUS_POLL` (a change takes about a minute;
/// every instance of a fleet shares the account's five requests a
/// second).
const STATUS_POLL: Duration = Duration::from_secs(2);
const MAX_STATUS_POLL: Duration = Duration::from_secs(30);
/// After this a change still PENDING is left to the next sync.
const STATUS_GIVE_UP: Duration = Duration::from_secs(300);

/// What one sync did.
struct Synced {
    /// gale's sets in the zone now.
    owned: Vec<Weighted>,
    /// The change sent, if one was: its id and status.
    change: Option<(String, String)>,
    held: Vec<String>,
    wake: Option<Instant>,
}

/// A change still PENDING: when it was sent, when to ask next, and the
/// wait after that.
struct Pending {
    id: String,
    sent: Instant,
    next: Instant,
    wait: Duration,
}

/// The client for the config it was made for.
struct Client {
    config: Route53Config,
    name: String,
    api: Api,
    /// This instance's health check, once found or made.
    health_check: Option<String>,
}

/// Keep the zone's weighted sets as wanted until shutdown.
pub async fn run(
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
    shutdown: CancellationToken,
) {
    let mut client: Option<Client> = None;
    let mut view = PeerView::default();
    let mut backoff = Duration::from_millis(500);
    let mut next_sync: Option<Instant> = None;
    let mut pending: Option<Pending> = None;
    loop {
        let wake = [next_sync, pending.as_ref().map(|p| p.next)]
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
        if client
            .as_ref()
            .is_none_or(|c| &c.config != config || c.name != dns.name)
        {
            // Loading the credential chain may ask the network (instance
            // metadata): bounded like a call, and abandoned at shutdown.
            let made = tokio::select! {
                _ = shutdown.cancelled() => return,
                made = tokio::time::timeout(config.timeout, Api::new(config, &dns.name)) => made,
            };
            let Ok(api) = made else {
                let why = format!("route53: no SDK config within {:?}", config.timeout);
                tracing::warn!("dns update failed: {why}");
                state.failed(why);
                next_sync = Some(Instant::now() + backoff);
                continue;
            };
            client = Some(Client {
                config: config.clone(),
                name: dns.name.clone(),
                api,
                health_check: None,
            });
        }
        let client = client.as_mut().expect("set above");
        let count = |result: &str| super::count_update(&generation, "route53", result);
        let throttles = || count("throttled");
        if let Some(p) = &mut pending
            && Instant::now() >= p.next
        {
            let asked = tokio::time::timeout(config.timeout, client.api.status(&p.id, &throttles));
            let status = tokio::select! {
                _ = shutdown.cancelled() => return,
                status = asked => status,
            };
            match status {
                Ok(Ok(status)) => {
                    state.change_status(&p.id, &status);
                    if status == "INSYNC" || p.sent.elapsed() > STATUS_GIVE_UP {
                        pending = None;
                    }
                }
                Ok(Err(e)) => tracing::debug!("route53 change {}: no status: {e}", p.id),
                Err(_) => tracing::debug!("route53 change {}: no status in time", p.id),
            }
            if let Some(p) = &mut pending {
                p.wait = (p.wait * 2).min(MAX_STATUS_POLL);
                p.next = Instant::now() + p.wait;
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
        if let Some(peers) = &generation.config.peers {
            (view.probed, view.failing) = peer_health(&generation, peers.pool);
        }
        // Dropped at shutdown: the next start reads before it writes.
        let round = tokio::time::timeout(
            config.timeout * 4,
            sync(client, &mut view, &wanted, &throttles),
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = round => result,
        };
        let failure = match result {
            Ok(Ok(synced)) => {
                if let Some((id, status)) = &synced.change {
                    count("applied");
                    state.change_status(id, status);
                    pending = (status != "INSYNC").then(|| Pending {
                        id: id.clone(),
                        sent: Instant::now(),
                        next: Instant::now() + STATUS_POLL,
                        wait: STATUS_POLL,
                    });
                }
                state.set_provider_held(synced.held);
                state.set_published(Arc::new(records(&synced.owned, &dns.name)));
                backoff = Duration::from_millis(500);
                let reconcile = Instant::now() + config.reconcile;
                next_sync = Some(synced.wake.map_or(reconcile, |w| w.min(reconcile)));
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => ApiError::Unreachable(format!("no answer within {:?}", config.timeout * 4)),
        };
        // The check may be gone (deleted by hand): find or make it again
        // on the next try.
        client.health_check = None;
        let retry = match failure {
            ApiError::Refused(_) => config.reconcile.min(MAX_BACKOFF),
            _ => backoff,
        };
        count(failure.label());
        let why = format!("route53 zone {}: {failure}", config.hosted_zone_id);
        if let ApiError::Refused(_) = failure {
            tracing::error!(retry_in = ?retry, "dns update refused: {why}");
        } else {
            tracing::warn!(retry_in = ?retry, "dns update failed: {why}");
        }
        state.failed(why);
        next_sync = Some(Instant::now() + retry);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The peers whose last probe passed, and those whose probes fail, as
/// set-ids.
fn peer_health(generation: &Generation, pool: usize) -> (Vec<String>, Vec<String>) {
    let pool = &generation.pools[pool];
    let id = |b: usize| crate::config::route53::set_id(&pool.backend(b).name);
    let probed = (0..pool.len())
        .filter(|&b| pool.last_probe_passed(b))
        .map(id)
        .collect();
    let failing = (0..pool.len())
        .filter(|&b| !pool.is_healthy(b))
        .map(id)
        .collect();
    (probed, failing)
}

/// Read the zone, plan, send the changes; again if the zone changed in
/// between.
async fn sync(
    client: &mut Client,
    view: &mut PeerView,
    wanted: &[DnsRecord],
    throttles: &(dyn Fn() + Sync),
) -> Result<Synced, ApiError> {
    let config = &client.config;
    let check = config
        .peers
        .as_ref()
        .and_then(|p| Some((p, p.health_check.as_ref()?)));
    if let Some((peers, check)) = check
        && client.health_check.is_none()
    {
        let id = client.api.health_check(&peers.me, check, throttles).await?;
        tracing::info!(health_check = %id, "route53 health check of this instance");
        client.health_check = Some(id);
    }
    let wanted = changes::wanted_sets(config, wanted, client.health_check.as_deref());
    for race in 0.. {
        let read = client.api.read(throttles).await?;
        if let Some(peers) = &config.peers {
            // Kept once every peer has had a hold and a read to see it.
            let settle = peers
                .hold
                .saturating_add(config.reconcile)
                .saturating_mul(2);
            view.read(peers, settle, &read.owned, Instant::now());
        }
        let plan = changes::plan(
            config,
            &wanted,
            &read.owned,
            &read.foreign,
            view,
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
        match client.api.submit(&plan.changes, &read, throttles).await {
            Ok(change) => {
                log(&plan.changes, &read, &change.0);
                if let Some(peers) = &config.peers {
                    view.sent(&peers.me, &plan.changes, &read.owned, Instant::now());
                }
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
            // Its own record as read: no change.
            Change::Keep(_) => {}
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
