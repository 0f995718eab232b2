//! The embedded authoritative server: answers for the `[dns]` zone over
//! UDP and TCP from the published records. The published name's A and
//! AAAA answers come in a weighted random order per query (each record
//! first with a probability proportional to its weight), so clients that
//! take the first address spread by weight and the others still have
//! the rest to fall back on.
//!
//! Messages are parsed and written by hickory-proto; anything malformed
//! gets FORMERR (or nothing, if not even a header can be read). Nothing
//! with QR=1 is answered: it is a response, and answering responses lets
//! two servers that each think the other asked bounce packets forever
//! (or an attacker aim gale at another server). UDP answers are sized to
//! what the client offered (512 bytes without EDNS, at most 1232) and
//! rate limited per client prefix ([`super::rrl`]); TCP is not limited.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DnsState;
use super::rrl::{Limiter, RateLimit, Verdict};
use crate::config::DnsConfig;
use crate::generation::Generation;
use crate::plugin::types::{DnsRecord, RecordType as PlannedType};

/// A UDP answer larger than this without EDNS is truncated (RFC 1035).
const UDP_PLAIN: usize = 512;
/// The UDP size gale offers with EDNS (the DNS flag day value).
const UDP_EDNS: u16 = 1232;
/// TCP clients get this long per message.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once.
const TCP_MAX: usize = 256;

/// Bind UDP and TCP on `address` (with port 0, one port the kernel chose
/// for both).
pub async fn bind(address: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(address).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The kernel's UDP port choice is taken for TCP: try another.
            Err(e) if address.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// Serve on sockets a gale being upgraded bound (`crate::upgrade`).
pub fn adopt(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> std::io::Result<(UdpSocket, TcpListener)> {
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

/// Answer queries until shutdown.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
    shutdown: CancellationToken,
) {
    let answerer = Arc::new(Answerer { current, state });
    let tcp_tasks = TaskTracker::new();
    let mut limiter = Limiter::default();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = r else { continue };
                if let Some(reply) = answerer.answer_udp(&buf[..n], peer, &mut limiter) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
            r = tcp.accept() => {
                let Ok((stream, _)) = r else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if tcp_tasks.len() >= TCP_MAX {
                    continue;
                }
                let answerer = answerer.clone();
                tcp_tasks.spawn(async move { answerer.serve_tcp(stream).await });
            }
        }
    }
    tcp_tasks.close();
}

struct Answerer {
    current: Arc<ArcSwap<Generation>>,
    state: Arc<DnsState>,
}

impl Answerer {
    /// Length-prefixed messages (RFC 1035 §4.2.2) until the client closes
    /// or stays silent for `TCP_IDLE`.
    async fn serve_tcp(&self, mut stream: TcpStream) {
        loop {
            let mut len = [0u8; 2];
            let mut message = Vec::new();
            let read = async {
                stream.read_exact(&mut len).await?;
                message.resize(u16::from_be_bytes(len) as usize, 0);
                stream.read_exact(&mut message).await
            };
            if !matches!(tokio::time::timeout(TCP_IDLE, read).await, Ok(Ok(_))) {
                return;
            }
            let Some(reply) = self.answer(&message, false) else {
                return;
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if !matches!(
                tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }

    /// The UDP reply to `bytes` from `peer`, if any, after the rate limit.
    fn answer_udp(&self, bytes: &[u8], peer: SocketAddr, limiter: &mut Limiter) -> Option<Vec<u8>> {
        if !is_query(bytes) {
            // Not answered, so it spends nothing.
            return None;
        }
        let generation = self.current.load();
        let limit = match generation.config.dns.as_ref().map(|d| &d.provider) {
            Some(crate::config::DnsProvider::Embedded { rate_limit, .. }) => *rate_limit,
            _ => RateLimit::default(),
        };
        let verdict = limiter.check(limit, peer.ip(), std::time::Instant::now());
        let count = |action: &str| {
            generation
                .metrics
                .dns_rate_limited
                .get_or_create(&crate::metrics::RateLimitLabels {
                    action: action.to_string(),
                })
                .inc();
        };
        match verdict {
            Verdict::Answer => self.answer(bytes, true),
            Verdict::Slip => {
                count("slipped");
                slip(bytes)
            }
            Verdict::Drop => {
                count("dropped");
                None
            }
        }
    }

    fn answer(&self, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
        let generation = self.current.load();
        answer(
            bytes,
            udp,
            generation.config.dns.as_ref(),
            &self.state.published.load(),
        )
    }
}

/// The reply to one message (`udp`: sized for UDP), or nothing for what is
/// not a query. `config` is the zone (none: every query is refused) and
/// `published` the records to answer with. Pure, so it can be fuzzed.
pub fn answer(
    bytes: &[u8],
    udp: bool,
    config: Option<&DnsConfig>,
    published: &[DnsRecord],
) -> Option<Vec<u8>> {
    if !is_query(bytes) {
        return None;
    }
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) if bytes.len() >= 12 => {
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
        Err(_) => return None,
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    let limit = match &request.edns {
        Some(edns) => {
            let mut ours = Edns::new();
            ours.set_max_payload(UDP_EDNS);
            reply.set_edns(ours);
            usize::from(edns.max_payload().clamp(UDP_PLAIN as u16, UDP_EDNS))
        }
        None => UDP_PLAIN,
    };
    match (config, request.metadata.op_code, request.queries.as_slice()) {
        (None, _, _) => reply.metadata.response_code = ResponseCode::Refused,
        (_, op, _) if op != OpCode::Query => reply.metadata.response_code = ResponseCode::NotImp,
        (Some(config), _, [query]) => {
            reply.add_query(query.clone());
            resolve(
                config,
                published,
                query.name(),
                query.query_type(),
                &mut reply,
            );
        }
        _ => reply.metadata.response_code = ResponseCode::FormErr,
    }
    let mut bytes = reply.to_vec().ok()?;
    if udp && bytes.len() > limit {
        // The client retries over TCP.
        bytes = reply.truncate().to_vec().ok()?;
    }
    Some(bytes)
}

/// A DNS header with QR=0: a query, the only thing gale answers (a
/// malformed one included, with FORMERR).
fn is_query(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes[2] & 0x80 == 0
}

/// The reply a rate-limited client gets instead of its answer: TC=1, the
/// question and nothing else (no EDNS), so it is never larger than the
/// query and a real resolver asks again over TCP.
pub fn slip(bytes: &[u8]) -> Option<Vec<u8>> {
    if !is_query(bytes) {
        return None;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let mut reply = Message::response(id, op_code);
    reply.metadata.truncation = true;
    reply.metadata.recursion_desired = bytes[2] & 0x01 != 0;
    if let Ok(request) = Message::from_vec(bytes)
        && let [query] = request.queries.as_slice()
    {
        reply.add_query(query.clone());
    }
    reply.to_vec().ok()
}

fn resolve(
    config: &DnsConfig,
    published: &[DnsRecord],
    qname: &Name,
    qtype: RecordType,
    reply: &mut Message,
) {
    let (Ok(zone), Ok(name)) = (
        Name::from_ascii(&config.zone),
        Name::from_ascii(&config.name),
    ) else {
        reply.metadata.response_code = ResponseCode::ServFail;
        return;
    };
    let qname = qname.to_lowercase();
    if !zone.zone_of(&qname) {
        reply.metadata.response_code = ResponseCode::Refused;
        return;
    }
    reply.metadata.authoritative = true;
    let soa = soa(config, &zone);
    if qname == name {
        let mut answers = weighted_order(published, qtype, &name);
        if qtype == RecordType::ANY {
            // RFC 8482: a minimal answer, not an amplifier.
            answers.truncate(1);
        }
        if answers.is_empty() {
            reply.add_authority(soa.clone());
        }
        reply.insert_answers(std::mem::take(&mut answers));
    }
    if qname == zone {
        match qtype {
            RecordType::SOA => {
                reply.add_answer(soa);
            }
            RecordType::NS => {
                if let Ok(ns) = Name::from_ascii(ns_name(config)) {
                    reply.add_answer(Record::from_rdata(
                        zone.clone(),
                        config.ttl,
                        RData::NS(NS(ns)),
                    ));
                }
            }
            _ if qname != name => {
                reply.add_authority(soa);
            }
            _ => {}
        }
    } else if qname != name && qname.zone_of(&name) {
        // Between the zone and the name (an empty non-terminal): it
        // exists, with no data (RFC 8020).
        reply.add_authority(soa);
    } else if qname != name {
        reply.metadata.response_code = ResponseCode::NXDomain;
        reply.add_authority(soa);
    }
}

fn ns_name(config: &DnsConfig) -> String {
    match &config.provider {
        crate::config::DnsProvider::Embedded { ns, .. } => ns.clone(),
        _ => format!("gale.{}", config.zone),
    }
}

fn soa(config: &DnsConfig, zone: &Name) -> Record {
    let mname = Name::from_ascii(ns_name(config)).unwrap_or_else(|_| zone.clone());
    let rname =
        Name::from_ascii(format!("hostmaster.{}", config.zone)).unwrap_or_else(|_| zone.clone());
    // The serial only has to move forward for secondaries; gale has none.
    let serial = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32);
    let ttl = config.ttl;
    Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, serial, 3600, 600, 86400, ttl)),
    )
}

/// The published records of `qtype` in a weighted random order: each
/// record's key is `-ln(u) / weight` (Efraimidis and Spirakis), smallest
/// first, so a record comes first with probability weight / total.
fn weighted_order(records: &[DnsRecord], qtype: RecordType, name: &Name) -> Vec<Record> {
    let mut keyed: Vec<(f64, Record)> = records
        .iter()
        .filter_map(|r| {
            let data = match (r.rtype, r.value.parse::<IpAddr>().ok()?) {
                (PlannedType::A, IpAddr::V4(v4))
                    if matches!(qtype, RecordType::A | RecordType::ANY) =>
                {
                    RData::A(A(v4))
                }
                (PlannedType::Aaaa, IpAddr::V6(v6))
                    if matches!(qtype, RecordType::AAAA | RecordType::ANY) =>
                {
                    RData::AAAA(AAAA(v6))
                }
                _ => return None,
            };
            let weight = f64::from(r.weight.max(1));
            let key = -(1.0 - fastrand::f64()).ln() / weight;
            Some((key, Record::from_rdata(name.clone(), r.ttl, data)))
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.into_iter().map(|(_, r)| r).collect()
}
