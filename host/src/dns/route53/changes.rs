//! What gale changes in a hosted zone: the wanted weighted records against
//! the ones gale owns there, as a list of UPSERTs and DELETEs. Pure, so
//! the rules (ownership, never empty, who writes what among peers) are
//! tested here and shared by the provider and `gale dns plan`.
//!
//! Among peers (`pool = "peers"`), each instance writes only its own
//! record. Without health checks, an instance removes another's record
//! only when all of these hold:
//! - the other is a configured peer, and has failed its probes for
//!   `peer_hold` (a record that reappears starts a new hold);
//! - this instance sees a strict majority of the instances (itself and
//!   the peers whose last probe passed), so one split off from the rest
//!   removes nobody;
//! - a record of the fleet stays (this holds for every plan).
//!
//! An instance whose own record is missing writes it back only when it
//! sees a majority and has seen every peer that still has a record pass a
//! probe (or no record of the fleet is left). If others remove it again,
//! the next write-back waits twice the hold, then four times, up to 32:
//! instances that disagree about who is up (A and B cannot reach each
//! other, C reaches both) settle instead of fighting. With health checks,
//! each instance keeps its own record and Route 53's checkers decide;
//! nobody removes anybody.

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

/// What this instance knows of its peers, kept between syncs.
#[derive(Debug, Default)]
pub struct PeerView {
    /// Peers whose record is in the zone but not wanted (they fail their
    /// probes), and since when.
    pub down: HashMap<String, Instant>,
    /// Peers whose last probe passed. Not the same as "healthy": a peer
    /// never probed yet counts as healthy, but has not been seen.
    pub probed: Vec<String>,
    /// This instance's own record, written back by it: when, how many
    /// times in a row others removed it again, and when it may next.
    pub written_back: Option<Instant>,
    pub undone: u32,
    pub write_back_after: Option<Instant>,
}

impl PeerView {
    /// Update from a read of the zone: a peer's record not wanted starts
    /// (or keeps) its hold, and one that is gone or wanted again forgets
    /// it, so a record that comes back gets a whole hold again. An own
    /// record written back and then removed by others backs off the next
    /// write-back (twice the hold, four times, ... up to 32).
    pub fn note(&mut self, me: &str, hold: Duration, owned: &[Weighted], wanted: &[Weighted]) {
        let now = Instant::now();
        let failing = |id: &str| {
            id != me
                && owned.iter().any(|o| o.set_id == id)
                && !wanted.iter().any(|w| w.set_id == id)
        };
        self.down.retain(|id, _| failing(id));
        for o in owned {
            if failing(&o.set_id) {
                self.down.entry(o.set_id.clone()).or_insert(now);
            }
        }
        let own_there = owned.iter().any(|o| o.set_id == me);
        match self.written_back {
            Some(_) if !own_there => {
                self.undone += 1;
                self.write_back_after = Some(now + hold * 2u32.pow(self.undone.min(5)));
                self.written_back = None;
                tracing::warn!(
                    times = self.undone,
                    "route53: others removed this instance's record again; the next write-back waits {:?}",
                    self.write_back_after.map(|t| t - now).unwrap_or_default()
                );
            }
            Some(at) if at.elapsed() >= hold => {
                self.written_back = None;
                self.undone = 0;
            }
            _ => {}
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
    view: &PeerView,
    now: Instant,
) -> Plan {
    let mut plan = Plan::default();
    let wanted = &group_ttl(&mut plan, wanted, foreign);
    if wanted.is_empty() {
        // Never publish an empty set (the guardrail upstream does not let
        // one through; this keeps the provider safe on its own).
        return plan;
    }
    match &config.peers {
        None => {
            upsert_changed(&mut plan, wanted, owned);
            for (i, o) in owned.iter().enumerate() {
                if !wanted.iter().any(|w| w.key() == o.key()) {
                    plan.changes.push(Change::Delete(i));
                }
            }
        }
        Some(peers) => {
            own_record(&mut plan, peers, wanted, owned, view, now);
            if peers.health_check.is_none() {
                remove_failed_peers(&mut plan, peers, wanted, owned, view, now);
            }
        }
    }
    keep_one(&mut plan, owned);
    plan
}

/// How many instances this one sees, itself included, and whether that
/// is a strict majority.
fn sees(peers: &PeerRules, view: &PeerView) -> (usize, bool) {
    let seen = 1 + peers
        .peers
        .iter()
        .filter(|p| view.probed.contains(p))
        .count();
    (seen, seen * 2 > peers.instances)
}

/// This instance's own record: updated when it changed; written back when
/// missing only where the rules allow.
fn own_record(
    plan: &mut Plan,
    peers: &PeerRules,
    wanted: &[Weighted],
    owned: &[Weighted],
    view: &PeerView,
    now: Instant,
) {
    let mine: Vec<Weighted> = wanted
        .iter()
        .filter(|w| w.set_id == peers.me)
        .cloned()
        .collect();
    let missing = !owned.iter().any(|o| o.set_id == peers.me);
    let why_not = if !missing || peers.health_check.is_some() || owned.is_empty() {
        None
    } else if let Some(after) = view.write_back_after.filter(|t| now < *t) {
        Some(format!(
            "others removed it again after it was written back: next try in {}",
            seconds(after - now)
        ))
    } else if !sees(peers, view).1 {
        let (seen, _) = sees(peers, view);
        Some(format!(
            "it sees {seen} of {} instances, not a majority",
            peers.instances
        ))
    } else {
        owned
            .iter()
            .find(|o| o.set_id != peers.me && !view.probed.contains(&o.set_id))
            .map(|unseen| format!("{} has a record and has not passed a probe", unseen.set_id))
    };
    match why_not {
        None => upsert_changed(plan, &mine, owned),
        Some(why) => plan
            .held
            .push(format!("{}'s own record stays out: {why}", peers.me)),
    }
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me && !wanted.iter().any(|w| w.key() == o.key()) {
            // This instance's own record of another type or address.
            plan.changes.push(Change::Delete(i));
        }
    }
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

/// Other instances' records whose instance has failed its probes for
/// `peer_hold`, removed by an instance that sees a majority. Records of
/// names that are not configured peers are left alone.
fn remove_failed_peers(
    plan: &mut Plan,
    peers: &PeerRules,
    wanted: &[Weighted],
    owned: &[Weighted],
    view: &PeerView,
    now: Instant,
) {
    let (seen, majority) = sees(peers, view);
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me || wanted.iter().any(|w| w.set_id == o.set_id) {
            continue;
        }
        if !peers.peers.contains(&o.set_id) {
            plan.held.push(format!(
                "{} is not a configured peer: its record is left alone",
                o.set_id
            ));
            continue;
        }
        let since = view.down.get(&o.set_id).copied().unwrap_or(now);
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
                "{} fails its probes, but this instance sees only {seen} of {} instances: it removes nobody",
                o.set_id, peers.instances
            ));
        } else {
            plan.changes.push(Change::Delete(i));
        }
    }
}

/// Never the last record: if the plan's DELETEs would leave none of
/// gale's sets, it keeps them all.
fn keep_one(plan: &mut Plan, owned: &[Weighted]) {
    let deleted = |i: usize| plan.changes.contains(&Change::Delete(i));
    let left = (0..owned.len()).filter(|&i| !deleted(i)).count()
        + plan
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Upsert(u) if !owned.iter().any(|o| o.key() == u.key())))
            .count();
    if left == 0 && !owned.is_empty() {
        plan.changes.retain(|c| !matches!(c, Change::Delete(_)));
        plan.held
            .push("the plan would leave no record of gale's: they stay".into());
    }
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

    /// Instance `me` of g2, g3, g4.
    fn rules(me: &str, health_check: bool) -> PeerRules {
        PeerRules {
            me: me.into(),
            peers: ["g2", "g3", "g4"]
                .into_iter()
                .filter(|p| *p != me)
                .map(String::from)
                .collect(),
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

    fn g(n: u8) -> Weighted {
        set(&format!("g{n}"), &format!("192.0.2.{n}"), 1)
    }

    /// Having probed `probed` (their last probe passed).
    fn view(probed: &[&str]) -> PeerView {
        PeerView {
            probed: probed.iter().map(|p| p.to_string()).collect(),
            ..PeerView::default()
        }
    }

    #[test]
    fn a_lone_publisher_upserts_what_changed_and_deletes_what_is_not_wanted() {
        let (config, none, now) = (config(None), PeerView::default(), Instant::now());
        let owned = [set("a", "192.0.2.1", 1), set("b", "192.0.2.2", 1)];
        let wanted = [set("a", "192.0.2.1", 2), set("c", "192.0.2.3", 1)];
        let changed = plan(&config, &wanted, &owned, &[], &none, now);
        assert_eq!(
            changed.changes,
            vec![
                Change::Upsert(wanted[0].clone()),
                Change::Upsert(wanted[1].clone()),
                Change::Delete(1)
            ]
        );
        assert!(
            plan(&config, &owned, &owned, &[], &none, now)
                .changes
                .is_empty()
        );
        let empty = plan(&config, &[], &owned, &[], &none, now);
        assert!(empty.changes.is_empty(), "never an empty set");
    }

    #[test]
    fn a_peer_writes_only_its_own_record() {
        let config = config(Some(rules("g4", false)));
        let owned = [g(2), g(3)];
        let mut heavier = g(3);
        heavier.weight = 5;
        let wanted = [g(2), heavier, g(4)];
        let plan = plan(
            &config,
            &wanted,
            &owned,
            &[],
            &view(&["g2", "g3"]),
            Instant::now(),
        );
        assert_eq!(plan.changes, vec![Change::Upsert(g(4))]);
    }

    #[test]
    fn a_failed_peer_goes_after_its_hold_when_a_majority_is_seen() {
        let config = config(Some(rules("g2", false)));
        let owned = [g(2), g(3), g(4)];
        let wanted = [g(2), g(3)];
        let mut view = view(&["g3"]);
        view.note("g2", Duration::from_secs(10), &owned, &wanted);
        let start = view.down["g4"];
        let early = plan(&config, &wanted, &owned, &[], &view, start);
        assert!(early.changes.is_empty());
        assert_eq!(early.wake, Some(start + Duration::from_secs(10)));
        let due = start + Duration::from_secs(10);
        assert_eq!(
            plan(&config, &wanted, &owned, &[], &view, due).changes,
            vec![Change::Delete(2)]
        );
        // Split off alone: it sees 1 of 3, and removes nobody.
        view.probed.clear();
        let alone = plan(&config, &wanted[..1], &owned, &[], &view, due);
        assert!(alone.changes.is_empty(), "{alone:?}");
    }

    #[test]
    fn a_record_that_comes_back_gets_a_whole_hold_again() {
        let mut view = view(&["g3"]);
        let hold = Duration::from_secs(10);
        view.note("g2", hold, &[g(2), g(3), g(4)], &[g(2), g(3)]);
        assert!(view.down.contains_key("g4"));
        // Gone from the zone: forgotten.
        view.note("g2", hold, &[g(2), g(3)], &[g(2), g(3)]);
        assert!(view.down.is_empty());
    }

    #[test]
    fn a_removed_instance_returns_only_when_it_has_seen_the_peers_with_records() {
        let config = config(Some(rules("g4", false)));
        let owned = [g(2), g(3)];
        let all = [g(2), g(3), g(4)];
        let now = Instant::now();
        // Just started: every peer counts as healthy, none was probed.
        let fresh = plan(&config, &all, &owned, &[], &view(&[]), now);
        assert!(fresh.changes.is_empty(), "{fresh:?}");
        let one = plan(&config, &all, &owned, &[], &view(&["g2"]), now);
        assert!(one.changes.is_empty(), "g3 has a record, unseen: {one:?}");
        let back = plan(&config, &all, &owned, &[], &view(&["g2", "g3"]), now);
        assert_eq!(back.changes, vec![Change::Upsert(g(4))]);
        let first = plan(&config, &[g(4)], &[], &[], &view(&[]), now);
        assert_eq!(first.changes, vec![Change::Upsert(g(4))], "an empty zone");
    }

    #[test]
    fn a_write_back_others_undo_backs_off() {
        let config = config(Some(rules("g4", false)));
        let hold = Duration::from_secs(10);
        let owned = [g(2), g(3)];
        let all = [g(2), g(3), g(4)];
        let mut view = view(&["g2", "g3"]);
        view.written_back = Some(Instant::now());
        // Read again: it is gone.
        view.note("g4", hold, &owned, &all);
        assert_eq!(view.undone, 1);
        let now = Instant::now();
        let waits = plan(&config, &all, &owned, &[], &view, now);
        assert!(waits.changes.is_empty(), "{waits:?}");
        let later = now + hold * 2;
        assert_eq!(
            plan(&config, &all, &owned, &[], &view, later).changes,
            vec![Change::Upsert(g(4))]
        );
    }

    #[test]
    fn records_of_names_that_are_not_peers_are_left_alone() {
        let config = config(Some(rules("g2", false)));
        let stranger = set("g5", "192.0.2.5", 1);
        let owned = [g(2), g(3), stranger];
        let plan = plan(
            &config,
            &[g(2), g(3)],
            &owned,
            &[],
            &view(&["g3"]),
            Instant::now() + Duration::from_secs(3600),
        );
        assert!(plan.changes.is_empty(), "{plan:?}");
        assert!(plan.held[0].contains("not a configured peer"), "{plan:?}");
    }

    #[test]
    fn no_plan_removes_the_last_record() {
        // This instance drains (weight 0: not planned) while its record
        // is the last; the peer it sees healthy has none.
        for health_check in [false, true] {
            let config = config(Some(rules("g2", health_check)));
            let plan = plan(
                &config,
                &[g(3)],
                &[g(2)],
                &[],
                &view(&["g3"]),
                Instant::now(),
            );
            assert!(plan.changes.is_empty(), "{plan:?}");
        }
    }

    #[test]
    fn with_health_checks_nobody_removes_anybody() {
        let config = config(Some(rules("g2", true)));
        let owned = [g(3), g(4)];
        let mut me = g(2);
        me.health_check = Some("hc-2".into());
        let mut view = view(&[]);
        let long_ago = Instant::now();
        view.down = [("g3".to_string(), long_ago), ("g4".to_string(), long_ago)].into();
        let plan = plan(
            &config,
            std::slice::from_ref(&me),
            &owned,
            &[],
            &view,
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
            &PeerView::default(),
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
