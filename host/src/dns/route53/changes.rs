//! What gale changes in a hosted zone: the wanted weighted records against
//! the ones gale owns there, as a list of UPSERTs and DELETEs. Pure, so
//! the rules (ownership, never empty, who writes what among peers) are
//! tested here and shared by the provider and `gale dns plan`.
//!
//! Among peers (`pool = "peers"`), each instance writes only its own
//! record. Without health checks, an instance removes another's record
//! only when all of these hold:
//! - the peer has failed its probes for `peer_hold`;
//! - this instance sees a strict majority of the instances healthy,
//!   itself included, so one split off from the rest removes nobody;
//! - a record of the fleet stays.
//!
//! An instance whose own record is missing puts it back only when it sees
//! every peer that still has a record healthy (or no record of the fleet
//! is left). One the others removed while it could not reach them does
//! not fight back: it returns once it sees them again. With health
//! checks, each instance keeps its own record and Route 53's checkers
//! decide; nobody removes anyone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::route53::{PeerRules, Route53Config};
use crate::plugin::types::{DnsRecord, RecordType};

/// One weighted record set, by its planned set-id (without the owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    pub set_id: String,
    pub rtype: RecordType,
    /// Sorted.
    pub values: Vec<String>,
    pub ttl: u32,
    pub weight: u32,
    pub health_check: Option<String>,
}

impl Weighted {
    fn key(&self) -> (RecordType, &str) {
        (self.rtype, &self.set_id)
    }

    pub fn describe(&self) -> String {
        let check = self
            .health_check
            .as_deref()
            .map(|h| format!(" check {h}"))
            .unwrap_or_default();
        format!(
            "{} {} {} w{} ttl {}{check}",
            self.set_id,
            rtype_name(self.rtype),
            self.values.join(","),
            self.weight,
            self.ttl
        )
    }
}

pub fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::A => "A",
        RecordType::Aaaa => "AAAA",
        RecordType::Cname => "CNAME",
        RecordType::Txt => "TXT",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert(Weighted),
    /// The owned record at this index, exactly as read.
    Delete(usize),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Why something wanted was not changed (yet).
    pub held: Vec<String>,
    /// When the plan may change without anything else changing (a peer's
    /// hold running out).
    pub wake: Option<Instant>,
}

/// The wanted records as Route 53 sets: one per (type, set-id), weights
/// capped at what Route 53 takes, this instance's health check on its own
/// record.
pub fn wanted_sets(
    config: &Route53Config,
    wanted: &[DnsRecord],
    health_check: Option<&str>,
) -> Vec<Weighted> {
    let mut sets: Vec<Weighted> = Vec::new();
    for r in wanted {
        let set_id = crate::config::route53::set_id(&r.set_id);
        match sets
            .iter_mut()
            .find(|s| s.rtype == r.rtype && s.set_id == set_id)
        {
            Some(set) => set.values.push(r.value.clone()),
            None => sets.push(Weighted {
                health_check: config
                    .peers
                    .as_ref()
                    .filter(|p| p.me == set_id)
                    .and(health_check.map(str::to_string)),
                set_id,
                rtype: r.rtype,
                values: vec![r.value.clone()],
                ttl: r.ttl,
                weight: r.weight.min(crate::config::route53::MAX_WEIGHT),
            }),
        }
    }
    for s in &mut sets {
        s.values.sort();
        s.values.dedup();
    }
    sets
}

/// Peers' records that are not wanted (their instance fails its probes),
/// and since when; the caller keeps this between rounds.
pub fn note_down(down: &mut HashMap<String, Instant>, owned: &[Weighted], wanted: &[Weighted]) {
    let now = Instant::now();
    down.retain(|id, _| !wanted.iter().any(|w| &w.set_id == id));
    for o in owned {
        if !wanted.iter().any(|w| w.set_id == o.set_id) {
            down.entry(o.set_id.clone()).or_insert(now);
        }
    }
}

/// The changes that make the zone's owned records what `wanted` asks,
/// within the rules in the module's comment.
pub fn plan(
    config: &Route53Config,
    wanted: &[Weighted],
    owned: &[Weighted],
    foreign: &[Weighted],
    down: &HashMap<String, Instant>,
    now: Instant,
) -> Plan {
    let mut plan = Plan::default();
    let wanted = &group_ttl(&mut plan, wanted, foreign);
    if wanted.is_empty() {
        // Never publish an empty set (the guardrail upstream does not let
        // one through; this keeps the provider safe on its own).
        return plan;
    }
    let Some(peers) = &config.peers else {
        upsert_changed(&mut plan, wanted, owned);
        for (i, o) in owned.iter().enumerate() {
            if !wanted.iter().any(|w| w.key() == o.key()) {
                plan.changes.push(Change::Delete(i));
            }
        }
        return plan;
    };
    let mine: Vec<Weighted> = wanted
        .iter()
        .filter(|w| w.set_id == peers.me)
        .cloned()
        .collect();
    let own_missing = mine
        .iter()
        .any(|m| !owned.iter().any(|o| o.key() == m.key()));
    let others_seen = owned
        .iter()
        .filter(|o| o.set_id != peers.me)
        .all(|o| wanted.iter().any(|w| w.set_id == o.set_id));
    if own_missing && !(peers.health_check.is_some() || others_seen || owned.is_empty()) {
        plan.held.push(format!(
            "{}'s own record stays out until it sees the peers that have records healthy",
            peers.me
        ));
        upsert_changed(
            &mut plan,
            &mine
                .into_iter()
                .filter(|m| owned.iter().any(|o| o.key() == m.key()))
                .collect::<Vec<_>>(),
            owned,
        );
    } else {
        upsert_changed(&mut plan, &mine, owned);
    }
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me && !wanted.iter().any(|w| w.key() == o.key()) {
            // This instance's own record of another type or address.
            plan.changes.push(Change::Delete(i));
        }
    }
    if peers.health_check.is_none() {
        remove_failed_peers(&mut plan, peers, wanted, owned, down, now);
    }
    plan
}

/// Route 53 gives every weighted set of one name and type the TTL last
/// written: a set gale writes with its own TTL would change the TTL of
/// sets others own. So where others' sets are there, gale writes theirs.
fn group_ttl(plan: &mut Plan, wanted: &[Weighted], foreign: &[Weighted]) -> Vec<Weighted> {
    let mut wanted = wanted.to_vec();
    for w in &mut wanted {
        let Some(other) = foreign.iter().find(|f| f.rtype == w.rtype) else {
            continue;
        };
        if other.ttl != w.ttl {
            let note = format!(
                "the {} group's TTL is {} (sets gale does not own have it): gale writes {}, not its ttl = {}",
                rtype_name(w.rtype),
                other.ttl,
                other.ttl,
                w.ttl
            );
            if !plan.held.contains(&note) {
                plan.held.push(note);
            }
            w.ttl = other.ttl;
        }
    }
    wanted
}

fn upsert_changed(plan: &mut Plan, wanted: &[Weighted], owned: &[Weighted]) {
    for w in wanted {
        if !owned.iter().any(|o| o == w) {
            plan.changes.push(Change::Upsert(w.clone()));
        }
    }
}

fn remove_failed_peers(
    plan: &mut Plan,
    peers: &PeerRules,
    wanted: &[Weighted],
    owned: &[Weighted],
    down: &HashMap<String, Instant>,
    now: Instant,
) {
    let mut seen: Vec<&str> = wanted.iter().map(|w| w.set_id.as_str()).collect();
    seen.sort();
    seen.dedup();
    let majority = seen.len() * 2 > peers.instances;
    let mut removals = Vec::new();
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me || wanted.iter().any(|w| w.set_id == o.set_id) {
            continue;
        }
        let since = down.get(&o.set_id).copied().unwrap_or(now);
        let due = since + peers.hold;
        if now < due {
            plan.wake = Some(plan.wake.map_or(due, |w| w.min(due)));
            plan.held.push(format!(
                "{} fails its probes: its record goes in {}",
                o.set_id,
                seconds(due - now)
            ));
        } else if !majority {
            plan.held.push(format!(
                "{} fails its probes, but this instance sees only {} of {} instances: it removes nobody",
                o.set_id,
                seen.len(),
                peers.instances
            ));
        } else {
            removals.push(i);
        }
    }
    // A record of the fleet stays: count what is left after the plan.
    let deleted = |i: usize| plan.changes.contains(&Change::Delete(i)) || removals.contains(&i);
    let left = (0..owned.len()).filter(|&i| !deleted(i)).count()
        + plan
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Upsert(u) if !owned.iter().any(|o| o.key() == u.key())))
            .count();
    if left == 0 {
        plan.held
            .push("removing the failed peers would leave no record: they stay".into());
        return;
    }
    plan.changes
        .extend(removals.into_iter().map(Change::Delete));
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route53::HealthCheck;

    fn config(peers: Option<PeerRules>) -> Route53Config {
        Route53Config {
            hosted_zone_id: "Z1".into(),
            region: None,
            endpoint_url: None,
            owner: "gale".into(),
            timeout: Duration::from_secs(1),
            reconcile: Duration::from_secs(1),
            peers,
        }
    }

    fn rules(me: &str, health_check: bool) -> PeerRules {
        PeerRules {
            me: me.into(),
            instances: 3,
            health_check: health_check.then(|| HealthCheck {
                address: "192.0.2.1".parse().unwrap(),
                port: 25,
                http_path: None,
                interval: 30,
                failure_threshold: 3,
            }),
            hold: Duration::from_secs(10),
        }
    }

    fn set(id: &str, value: &str, weight: u32) -> Weighted {
        Weighted {
            set_id: id.into(),
            rtype: RecordType::A,
            values: vec![value.into()],
            ttl: 30,
            weight,
            health_check: None,
        }
    }

    #[test]
    fn a_lone_publisher_upserts_what_changed_and_deletes_what_is_not_wanted() {
        let owned = [set("a", "192.0.2.1", 1), set("b", "192.0.2.2", 1)];
        let wanted = [set("a", "192.0.2.1", 2), set("c", "192.0.2.3", 1)];
        let plan = plan(
            &config(None),
            &wanted,
            &owned,
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert_eq!(
            plan.changes,
            vec![
                Change::Upsert(wanted[0].clone()),
                Change::Upsert(wanted[1].clone()),
                Change::Delete(1)
            ]
        );
        let same = super::plan(
            &config(None),
            &owned,
            &owned,
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert!(same.changes.is_empty());
        let empty = super::plan(
            &config(None),
            &[],
            &owned,
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert!(empty.changes.is_empty(), "never an empty set");
    }

    #[test]
    fn a_peer_writes_only_its_own_record() {
        let owned = [set("g2", "192.0.2.2", 1), set("g3", "192.0.2.3", 1)];
        let wanted = [
            set("g2", "192.0.2.2", 1),
            set("g3", "192.0.2.3", 5),
            set("g4", "192.0.2.4", 1),
        ];
        let plan = plan(
            &config(Some(rules("g4", false))),
            &wanted,
            &owned,
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert_eq!(plan.changes, vec![Change::Upsert(wanted[2].clone())]);
    }

    #[test]
    fn a_failed_peer_goes_after_its_hold_when_a_majority_is_seen() {
        let config = config(Some(rules("g2", false)));
        let owned = [
            set("g2", "192.0.2.2", 1),
            set("g3", "192.0.2.3", 1),
            set("g4", "192.0.2.4", 1),
        ];
        let wanted = [set("g2", "192.0.2.2", 1), set("g3", "192.0.2.3", 1)];
        let mut down = HashMap::new();
        note_down(&mut down, &owned, &wanted);
        let start = down["g4"];
        let early = plan(&config, &wanted, &owned, &[], &down, start);
        assert!(early.changes.is_empty());
        assert_eq!(early.wake, Some(start + Duration::from_secs(10)));
        let due = plan(
            &config,
            &wanted,
            &owned,
            &[],
            &down,
            start + Duration::from_secs(10),
        );
        assert_eq!(due.changes, vec![Change::Delete(2)]);
        // Split off alone: sees 1 of 3, removes nobody.
        let alone = plan(
            &config,
            &wanted[..1],
            &owned,
            &[],
            &down,
            start + Duration::from_secs(60),
        );
        assert!(alone.changes.is_empty(), "{alone:?}");
    }

    #[test]
    fn a_removed_instance_returns_only_when_it_sees_the_peers_with_records() {
        let config = config(Some(rules("g4", false)));
        let owned = [set("g2", "192.0.2.2", 1), set("g3", "192.0.2.3", 1)];
        let me = set("g4", "192.0.2.4", 1);
        let cut_off = plan(
            &config,
            std::slice::from_ref(&me),
            &owned,
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert!(cut_off.changes.is_empty(), "{cut_off:?}");
        let all = [owned[0].clone(), owned[1].clone(), me.clone()];
        let back = plan(&config, &all, &owned, &[], &HashMap::new(), Instant::now());
        assert_eq!(back.changes, vec![Change::Upsert(me.clone())]);
        let first = plan(
            &config,
            std::slice::from_ref(&me),
            &[],
            &[],
            &HashMap::new(),
            Instant::now(),
        );
        assert_eq!(first.changes, vec![Change::Upsert(me)], "an empty zone");
    }

    #[test]
    fn with_health_checks_nobody_removes_anybody() {
        let config = config(Some(rules("g2", true)));
        let owned = [set("g3", "192.0.2.3", 1), set("g4", "192.0.2.4", 1)];
        let mut me = set("g2", "192.0.2.2", 1);
        me.health_check = Some("hc-2".into());
        let long_ago = Instant::now();
        let down: HashMap<_, _> = [("g3".to_string(), long_ago), ("g4".to_string(), long_ago)]
            .into_iter()
            .collect();
        let plan = plan(
            &config,
            std::slice::from_ref(&me),
            &owned,
            &[],
            &down,
            long_ago + Duration::from_secs(600),
        );
        assert_eq!(plan.changes, vec![Change::Upsert(me)]);
    }

    #[test]
    fn gale_writes_the_ttl_of_the_weighted_group_others_share() {
        let mut other = set("other", "192.0.2.77", 7);
        other.ttl = 60;
        let plan = plan(
            &config(None),
            &[set("a", "192.0.2.1", 1)],
            &[],
            &[other],
            &HashMap::new(),
            Instant::now(),
        );
        let mut a = set("a", "192.0.2.1", 1);
        a.ttl = 60;
        assert_eq!(plan.changes, vec![Change::Upsert(a)]);
        assert!(plan.held[0].contains("TTL is 60"), "{:?}", plan.held);
    }

    #[test]
    fn set_ids_of_different_names_never_meet() {
        use crate::config::route53::set_id;
        assert_eq!(set_id("mta-a.1"), "mta-a.1");
        assert_ne!(set_id("mta a"), set_id("mta_a"));
        assert_eq!(set_id("mta a"), "mta%20a");
        assert_ne!(set_id("mta%20a"), set_id("mta a"));
        let long = "x".repeat(100);
        assert_eq!(set_id(&long).len(), 64);
        assert_ne!(set_id(&long), set_id(&"x".repeat(101)));
    }

    #[test]
    fn owned_set_identifiers_carry_the_owner() {
        let config = config(None);
        assert_eq!(config.set_identifier("b1"), "gale/b1");
        assert_eq!(config.owned("gale/b1"), Some("b1"));
        assert_eq!(config.owned("other"), None);
        assert_eq!(config.owned("galexy/b1"), None);
    }
}
