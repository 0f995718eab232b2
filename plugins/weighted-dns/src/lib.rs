//! One weighted record per healthy member (A for IPv4, AAAA for IPv6), the
//! member's name as the set identifier.
//!
//! Never removes the last record: when no member is healthy the records
//! already published stay (a stale answer defers mail to a balancer that
//! answers 421; an empty answer bounces it). If nothing is published yet,
//! every member is published.

use gale_sdk::{DnsPolicy, DnsRecord, DnsSnapshot, Member, RecordType, Settings};

struct WeightedDns;

fn record(snapshot: &DnsSnapshot, m: &Member) -> DnsRecord {
    let rtype = if m.address.contains(':') {
        RecordType::Aaaa
    } else {
        RecordType::A
    };
    DnsRecord {
        name: snapshot.name.clone(),
        rtype,
        value: m.address.clone(),
        ttl: snapshot.ttl,
        weight: m.weight,
        set_id: m.name.clone(),
    }
}

impl DnsPolicy for WeightedDns {
    fn new(_settings: &Settings) -> Result<Self, String> {
        Ok(WeightedDns)
    }

    fn plan(&mut self, snapshot: &DnsSnapshot) -> Vec<DnsRecord> {
        let healthy: Vec<DnsRecord> = snapshot
            .members
            .iter()
            .filter(|m| m.healthy && m.weight > 0)
            .map(|m| record(snapshot, m))
            .collect();
        if !healthy.is_empty() {
            healthy
        } else if !snapshot.published.is_empty() {
            snapshot.published.clone()
        } else {
            snapshot
                .members
                .iter()
                .map(|m| record(snapshot, m))
                .collect()
        }
    }
}

gale_sdk::export_dns!(WeightedDns);
