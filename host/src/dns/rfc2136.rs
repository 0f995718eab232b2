//! Provider `rfc2136`: the wanted records go to a DNS server as UPDATE
//! messages (RFC 2136) signed with TSIG (RFC 8945), by hickory's client.
//!
//! Each sync reads the server's A and AAAA sets for the name (queries
//! signed with the same key, answers verified: [`super::signed`]) and changes
//! only what differs, with prerequisites (RFC 2136 §2.4): the old set must
//! still be exactly what gale read (compare and swap), or must not exist
//! (create). A writer that got there first makes the prerequisite fail;
//! gale reads again and retries, so concurrent writers cannot clobber
//! each other. While the server is unreachable gale retries with a
//! backoff (capped at `MAX_BACKOFF`); every `reconcile` it reads the
//! server back and corrects any drift, so a missed update is not lost.
//! A server that refuses the key or the update is an error in the log and
//! `/status`, and nothing changes; so is an answer that fails TSIG
//! verification (result `unverified` in `gale_dns_updates_total`), which
//! gale retries like an unreachable server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm as HickoryAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio_util::sync::CancellationToken;

use super::DnsState;
use super::signed::{self, ReadError};
use crate::config::dns::{Rfc2136Config, TsigAlgorithm};
use crate::config::{DnsConfig, DnsProvider};
use crate::generation::Generation;
use crate::plugin::types::{DnsRecord, RecordType as PlannedType};

/// Longest wait between retries while the server cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Reads and retries when another writer keeps changing the set.
const MAX_RACES: usize = 5;

#[derive(Debug)]
pub(super) enum SyncError {
    /// Worth retrying soon: no answer, a network error.
    Unreachable(String),
    /// The server said no: wrong key, no update permission, bad zone.
    Refused(String),
    /// Only answers that failed TSIG verification: forged or altered on
    /// the way, or a server that does not sign.
    Unverified(String),
}

impl From<ReadError> for SyncError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Unreachable(why) => SyncError::Unreachable(why),
            ReadError::Refused(why) => SyncError::Refused(why),
            ReadError::Unverified(why) => SyncError::Unverified(why),
        }
    }
}

/// Keep the server's records equal to the wanted ones until shutdown.
pub async fn run(
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(250);
    let mut wait = None::<Duration>;
    loop {
        if let Some(wait) = wait {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = state.wanted_changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = state.wanted_changed.notified() => {}
            }
        }
        let generation = current.load_full();
        let Some(config) = &generation.config.dns else {
            continue;
        };
        let DnsProvider::Rfc2136(server) = &config.provider else {
            continue;
        };
        let wanted = state.wanted.load_full();
        if wanted.is_empty() {
            // Nothing planned yet (gale never publishes an empty set).
            wait = None;
            continue;
        }
        let count = |result: &str| super::count_update(&generation, "rfc2136", result);
        match tokio::time::timeout(server.timeout * 4, sync(config, server, &wanted)).await {
            Ok(Ok(changed)) => {
                if changed {
                    count("applied");
                    tracing::info!(server = %server.server, name = %config.name, records = wanted.len(), "dns update applied");
                }
                state.set_published(wanted);
                backoff = Duration::from_millis(250);
                wait = Some(server.reconcile);
            }
            Ok(Err(SyncError::Refused(why))) => {
                count("refused");
                tracing::error!(server = %server.server, key = %server.key_name, "dns update refused: {why}");
                state.failed(why);
                wait = Some(server.reconcile);
            }
            Ok(Err(SyncError::Unverified(why))) => {
                count("unverified");
                tracing::error!(server = %server.server, retry_in = ?backoff, "dns answer not trusted: {why}");
                state.failed(why);
                wait = Some(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(Err(SyncError::Unreachable(why))) => {
                count("failed");
                tracing::warn!(server = %server.server, retry_in = ?backoff, "dns update failed: {why}");
                state.failed(why);
                wait = Some(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) => {
                count("failed");
                let why = format!("no answer within {:?}", server.timeout * 4);
                tracing::warn!(server = %server.server, retry_in = ?backoff, "dns update failed: {why}");
                state.failed(why);
                wait = Some(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

pub(super) fn signer(server: &Rfc2136Config) -> Result<TSigner, SyncError> {
    let algorithm = match server.algorithm {
        TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha384 => HickoryAlgorithm::HmacSha384,
        TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
    };
    let name = Name::from_ascii(&server.key_name).map_err(|e| SyncError::Refused(e.to_string()))?;
    TSigner::new(server.secret.0.clone(), algorithm, name, 300)
        .map_err(|e| SyncError::Refused(e.to_string()))
}

/// Make the server's A and AAAA sets for the name equal `wanted`;
/// whether anything had to change.
async fn sync(
    config: &DnsConfig,
    server: &Rfc2136Config,
    wanted: &[DnsRecord],
) -> Result<bool, SyncError> {
    let signer = signer(server)?;
    let stream = UdpClientStream::builder(server.server, TokioRuntimeProvider::default())
        .with_timeout(Some(server.timeout))
        .with_signer(Some(signer.clone()))
        .build();
    let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let background = tokio::spawn(background);
    let result = sync_with(&mut client, server, &signer, config, wanted).await;
    background.abort();
    result
}

async fn sync_with(
    client: &mut Client<TokioRuntimeProvider>,
    server: &Rfc2136Config,
    signer: &TSigner,
    config: &DnsConfig,
    wanted: &[DnsRecord],
) -> Result<bool, SyncError> {
    let name = Name::from_ascii(&config.name).map_err(|e| SyncError::Refused(e.to_string()))?;
    let zone = Name::from_ascii(&config.zone).map_err(|e| SyncError::Refused(e.to_string()))?;
    let mut changed = false;
    for rtype in [RecordType::A, RecordType::AAAA] {
        let want = set(&name, rtype, wanted);
        for race in 0.. {
            let have = read(server, signer, &name, rtype).await?;
            if same(&have, &want) {
                break;
            }
            if race == MAX_RACES {
                return Err(SyncError::Unreachable(format!(
                    "the {rtype} set kept changing under gale ({MAX_RACES} tries)"
                )));
            }
            let reply = match (have.is_empty(), want.is_empty()) {
                (true, _) => client.create(want.clone(), zone.clone()).await,
                // Only the records gale read: one another writer added
                // meanwhile stays.
                (false, true) => client.delete_by_rdata(have.clone(), zone.clone()).await,
                (false, false) => {
                    client
                        .compare_and_swap(have.clone(), want.clone(), zone.clone())
                        .await
                }
            }
            .map_err(|e| classify(e.to_string()))?;
            match reply.metadata.response_code {
                ResponseCode::NoError => {
                    changed = true;
                    break;
                }
                // Another writer changed the set since it was read.
                ResponseCode::YXRRSet
                | ResponseCode::NXRRSet
                | ResponseCode::YXDomain
                | ResponseCode::NXDomain => {
                    continue;
                }
                code => {
                    return Err(SyncError::Refused(format!(
                        "{code} to the update of {name} {rtype} (check the key and the zone's update policy)"
                    )));
                }
            }
        }
    }
    Ok(changed)
}

/// An update's answer that fails hickory's TSIG check is not trusted; a
/// TSIG error or a refusal is the server saying no; the rest may pass if
/// tried again.
fn classify(error: String) -> SyncError {
    let lower = error.to_ascii_lowercase();
    if [
        "hmac validation failure",
        "missing tsig",
        "tsig signature record not found",
        "outdated response",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return SyncError::Unverified(error);
    }
    if ["tsig", "notauth", "refused", "badkey", "badsig", "badtime"]
        .iter()
        .any(|w| lower.contains(w))
    {
        SyncError::Refused(error)
    } else {
        SyncError::Unreachable(error)
    }
}

/// The server's `rtype` set for `name`, from a verified answer.
pub(super) async fn read(
    server: &Rfc2136Config,
    signer: &TSigner,
    name: &Name,
    rtype: RecordType,
) -> Result<RecordSet, SyncError> {
    let reply = signed::query(server.server, signer, server.timeout, name, rtype).await?;
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => {
            return Err(SyncError::Refused(format!(
                "{code} to a query for {name} {rtype}"
            )));
        }
    }
    let mut have = RecordSet::with_ttl(name.clone(), rtype, 0);
    for r in reply
        .answers
        .iter()
        .filter(|r| r.record_type() == rtype && &r.name == name)
    {
        have.set_ttl(r.ttl);
        have.insert(r.clone(), 0);
    }
    Ok(have)
}

pub(super) fn set(name: &Name, rtype: RecordType, wanted: &[DnsRecord]) -> RecordSet {
    let mut set = RecordSet::with_ttl(name.clone(), rtype, 0);
    for r in wanted {
        let data = match (r.rtype, rtype, r.value.parse::<IpAddr>()) {
            (PlannedType::A, RecordType::A, Ok(IpAddr::V4(v4))) => RData::A(A(v4)),
            (PlannedType::Aaaa, RecordType::AAAA, Ok(IpAddr::V6(v6))) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        set.set_ttl(r.ttl);
        set.insert(Record::from_rdata(name.clone(), r.ttl, data), 0);
    }
    set
}

/// Same addresses and TTL (DNS carries no weights: every address is
/// published once).
pub(super) fn same(a: &RecordSet, b: &RecordSet) -> bool {
    addresses(a) == addresses(b) && (a.is_empty() || a.ttl() == b.ttl())
}

/// A set's addresses, sorted.
pub(super) fn addresses(set: &RecordSet) -> Vec<String> {
    let mut v: Vec<String> = set
        .records_without_rrsigs()
        .map(|r| r.data.to_string())
        .collect();
    v.sort();
    v
}
