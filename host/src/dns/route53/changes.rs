//! What gale changes in a hosted zone: the wanted weighted records against
//! the ones gale owns there, as a list of UPSERTs and DELETEs. Pure, so
//! the rules (ownership, never empty, who writes what among peers) are
//! tested here and shared by the provider and `gale dns plan`.
//!
//! Among peers (`pool = "peers"`), each instance writes only its own
//! record. Without health checks, an instance removes another's record
//! only when all of these hold:
//! - the other is a configured peer whose probes have failed for
//!   `peer_hold` (a record that reappears starts a new hold);
//! - this instance sees a strict majority of the instances (itself and
//!   the peers whose last probe passed), so one split off from the rest
//!   removes nobody;
//! - its own record is in the same batch, as read or written back (so of
//!   two instances removing each other at once, the later stays in);
//! - a record of the fleet stays (this holds for every plan).
//!
//! An instance whose own record is missing writes it back only when it
//! sees a majority and has seen every peer that still has a record pass a
//! probe, or when every record left is one it may remove. If others
//! remove it again, the next write-back waits twice the hold, then four
//! times, up to 32. With health checks, each instance keeps its own
//! record and Route 53's checkers decide; nobody removes anybody.

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

/// An address as gale writes and compares it: Route 53 keeps the text a
/// value was first written with (`2001:0db8::a`), so values read are
/// compared in one form.
pub fn canonical(value: &str) -> String {
    value
        .parse::<std::net::IpAddr>()
        .map_or_else(|_| value.to_string(), |ip| ip.to_string())
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
    /// The owned record at this index written again exactly as read
    /// (an UPSERT): a batch that removes others always leaves this
    /// instance's own record in, so two instances removing each other at
    /// once leave the later one in, never neither.
    Keep(usize),
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
            Some(set) => set.values.push(canonical(&r.value)),
            None => sets.push(Weighted {
                health_check: config
                    .peers
                    .as_ref()
                    .filter(|p| p.me == set_id)
                    .and(health_check.map(str::to_string)),
                set_id,
                rtype: r.rtype,
                values: vec![canonical(&r.value)],
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
    /// Peers whose probes fail (their pool verdict is "down"): not those
    /// merely drained or weighted 0 on this instance.
    pub failing: Vec<String>,
    /// Peers whose last probe passed. Not the same as "healthy": a peer
    /// never probed yet counts as healthy, but has not been seen.
    pub probed: Vec<String>,
    /// Failing peers' records in the zone, since when.
    down: HashMap<String, Instant>,
    /// This instance's own record, written back by it: when; how many
    /// times in a row others removed it again; when it may next.
    written_back: Option<Instant>,
    undone: u32,
    write_back_after: Option<Instant>,
}

/// The longest a write-back waits after others undid it, in holds.
const MAX_BACKOFF_HOLDS: u32 = 32;

impl PeerView {
    /// A view that has seen `probed` pass their probes, and nothing else
    /// (what `gale dns plan` knows from a running gale).
    pub fn seeing(probed: Vec<String>) -> Self {
        PeerView {
            probed,
            ..PeerView::default()
        }
    }

    /// Update from a read of the zone. A failing peer's record starts (or
    /// keeps) its hold; one that is gone or healthy again forgets it, so a
    /// record that comes back gets a whole hold. An own record written
    /// back and then removed by others backs off the next write-back
    /// (twice the hold, four times, ... up to 32); it counts as kept once
    /// it has stayed for `settle` (a hold and a reconcile: long enough
    /// for every peer to have read it), and the backoff ends when every
    /// peer passes its probes (the split healed).
    pub fn read(&mut self, rules: &PeerRules, settle: Duration, owned: &[Weighted], now: Instant) {
        let failing = |id: &str| self.failing.iter().any(|f| f == id);
        let there = |id: &str| owned.iter().any(|o| o.set_id == id);
        let keep: Vec<String> = self
            .down
            .keys()
            .filter(|id| failing(id) && there(id))
            .cloned()
            .collect();
        self.down.retain(|id, _| keep.contains(id));
        for id in self.failing.clone() {
            if there(&id) {
                self.down.entry(id).or_insert(now);
            }
        }
        match self.written_back {
            Some(_) if !there(&rules.me) => {
                self.undone += 1;
                let wait = rules
                    .hold
                    .saturating_mul(2u32.saturating_pow(self.undone).min(MAX_BACKOFF_HOLDS));
                self.write_back_after = now.checked_add(wait);
                self.written_back = None;
                tracing::warn!(
                    times = self.undone,
                    "route53: others removed this instance's record again; the next write-back waits {wait:?}"
                );
            }
            Some(at) if now.saturating_duration_since(at) >= settle => {
                self.written_back = None;
                self.undone = 0;
            }
            _ => {}
        }
        if rules.peers.iter().all(|p| self.probed.contains(p)) {
            self.write_back_after = None;
            self.undone = 0;
        }
    }

    /// `changes` were applied: a deleted peer's record, if it comes back,
    /// gets a whole hold; an own record written back is watched.
    pub fn sent(&mut self, me: &str, changes: &[Change], owned: &[Weighted], now: Instant) {
        for c in changes {
            if let Change::Delete(i) = c {
                self.down.remove(&owned[*i].set_id);
            }
        }
        let own_missing = !owned.iter().any(|o| o.set_id == me);
        let writes_own = changes
            .iter()
            .any(|c| matches!(c, Change::Upsert(w) if w.set_id == me));
        if own_missing && writes_own {
            self.written_back = Some(now);
        }
    }

    /// How many instances this one sees, itself included, and whether
    /// that is a strict majority.
    fn sees(&self, rules: &PeerRules) -> (usize, bool) {
        let seen = 1 + rules
            .peers
            .iter()
            .filter(|p| self.probed.contains(p))
            .count();
        (seen, seen * 2 > rules.instances)
    }

    /// A peer's record may go: it is a configured peer whose probes have
    /// failed for the hold.
    fn due(&self, rules: &PeerRules, id: &str, now: Instant) -> Result<(), Option<Instant>> {
        if !rules.peers.iter().any(|p| p == id) {
            return Err(None);
        }
        match self.down.get(id) {
            None => Err(None),
            Some(since) => match since.checked_add(rules.hold) {
                Some(due) if now < due => Err(Some(due)),
                None => Err(None),
                Some(_) => Ok(()),
            },
        }
    }
}

/// How soon an instance that keeps its own record out looks again (a
/// read; the fleet shares five requests a second).
const HELD_LOOK: Duration = Duration::from_secs(5);

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
    let me = config.peers.as_ref().map(|p| p.me.as_str());
    let wanted = &group_ttl(&mut plan, wanted, owned, foreign, me);
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
        Some(peers) => among_peers(&mut plan, peers, wanted, owned, view, now),
    }
    keep_one(&mut plan, owned);
    plan
}

/// The plan of one instance among peers: its own record, and failed
/// peers' records.
fn among_peers(
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
    let own_there = owned.iter().any(|o| o.set_id == peers.me);
    let (seen, majority) = view.sees(peers);
    // Failed peers' records this instance may remove.
    let mut removable = Vec::new();
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me || peers.health_check.is_some() {
            continue;
        }
        match view.due(peers, &o.set_id, now) {
            Ok(()) if majority => removable.push(i),
            Ok(()) => plan.held.push(format!(
                "{} fails its probes, but this instance sees only {seen} of {} instances: it removes nobody",
                o.set_id, peers.instances
            )),
            Err(Some(due)) => {
                plan.wake = Some(plan.wake.map_or(due, |w| w.min(due)));
                plan.held.push(format!(
                    "{} fails its probes: its record goes in {}",
                    o.set_id,
                    seconds(due - now)
                ));
            }
            Err(None) if !peers.peers.contains(&o.set_id) => plan.held.push(format!(
                "{} is not a configured peer: its record is left alone",
                o.set_id
            )),
            Err(None) => {}
        }
    }
    // Its own record: updated when it changed; written back when missing
    // only where the rules allow.
    let why_not = if own_there
        || mine.is_empty()
        || peers.health_check.is_some()
        || owned
            .iter()
            .enumerate()
            .all(|(i, _)| removable.contains(&i))
    {
        None
    } else if let Some(after) = view.write_back_after.filter(|t| now < *t) {
        Some(format!(
            "others removed it again after it was written back: next try in {}",
            seconds(after - now)
        ))
    } else if !majority {
        Some(format!(
            "it sees {seen} of {} instances, not a majority",
            peers.instances
        ))
    } else {
        owned
            .iter()
            .enumerate()
            .find(|(i, o)| {
                o.set_id != peers.me && !removable.contains(i) && !view.probed.contains(&o.set_id)
            })
            .map(|(_, unseen)| format!("{} has a record and has not passed a probe", unseen.set_id))
    };
    let writes_back = !own_there && why_not.is_none() && !mine.is_empty();
    match why_not {
        None => upsert_changed(plan, &mine, owned),
        Some(why) => {
            plan.held
                .push(format!("{}'s own record stays out: {why}", peers.me));
            let look = now + HELD_LOOK;
            plan.wake = Some(plan.wake.map_or(look, |w| w.min(look)));
        }
    }
    for (i, o) in owned.iter().enumerate() {
        if o.set_id == peers.me && !wanted.iter().any(|w| w.key() == o.key()) {
            // This instance's own record of another type or address.
            plan.changes.push(Change::Delete(i));
        }
    }
    if removable.is_empty() {
        return;
    }
    // Removing others only with its own record in the same batch: as read
    // (a Touch, which fails if someone removed it meanwhile) or written
    // back; never beside an update of it (one change per set a batch).
    let own_untouched = own_there
        && !plan.changes.iter().any(|c| match c {
            Change::Upsert(w) => w.set_id == peers.me,
            Change::Delete(i) | Change::Keep(i) => owned[*i].set_id == peers.me,
        });
    if own_untouched {
        for (i, o) in owned.iter().enumerate() {
            if o.set_id == peers.me {
                plan.changes.push(Change::Keep(i));
            }
        }
    } else if !writes_back {
        plan.held.push(format!(
            "{} removes nobody while its own record is out or changing",
            peers.me
        ));
        return;
    }
    plan.changes
        .extend(removable.into_iter().map(Change::Delete));
}

/// Route 53 gives every weighted set of one name and type the TTL last
/// written: a set gale writes with its own TTL would change the TTL of
/// sets others own. So where others' sets are there, gale writes theirs;
/// among peers, everybody takes the TTL of the peer first by name, so
/// instances whose `ttl` differ do not rewrite each other.
fn group_ttl(
    plan: &mut Plan,
    wanted: &[Weighted],
    owned: &[Weighted],
    foreign: &[Weighted],
    me: Option<&str>,
) -> Vec<Weighted> {
    let mut wanted = wanted.to_vec();
    for w in &mut wanted {
        let first_peer = me.and_then(|me| {
            owned
                .iter()
                .filter(|o| o.rtype == w.rtype && o.set_id.as_str() < me)
                .min_by(|a, b| a.set_id.cmp(&b.set_id))
        });
        let Some(other) = foreign.iter().find(|f| f.rtype == w.rtype).or(first_peer) else {
            continue;
        };
        if other.ttl != w.ttl {
            let note = format!(
                "the {} group's TTL is {} ({}'s): gale writes {}, not its ttl = {}",
                rtype_name(w.rtype),
                other.ttl,
                other.set_id,
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
        PeerView::seeing(probed.iter().map(|p| p.to_string()).collect())
    }

    const HOLD: Duration = Duration::from_secs(10);

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
    fn a_failed_peer_goes_after_its_hold_with_the_remover_s_own_record_as_read() {
        let rules = rules("g2", false);
        let config = config(Some(rules.clone()));
        let owned = [g(2), g(3), g(4)];
        let wanted = [g(2), g(3)];
        let mut view = view(&["g3"]);
        view.failing = vec!["g4".into()];
        let start = Instant::now();
        view.read(&rules, HOLD, &owned, start);
        let early = plan(&config, &wanted, &owned, &[], &view, start);
        assert!(early.changes.is_empty());
        assert_eq!(early.wake, Some(start + HOLD));
        let due = start + HOLD;
        assert_eq!(
            plan(&config, &wanted, &owned, &[], &view, due).changes,
            vec![Change::Keep(0), Change::Delete(2)]
        );
        // Split off alone: it sees 1 of 3, and removes nobody.
        view.probed.clear();
        let alone = plan(&config, &wanted[..1], &owned, &[], &view, due);
        assert!(alone.changes.is_empty(), "{alone:?}");
    }

    #[test]
    fn a_drained_peer_is_not_a_failed_one() {
        let rules = rules("g2", false);
        let config = config(Some(rules.clone()));
        let owned = [g(2), g(3), g(4)];
        let mut view = view(&["g3", "g4"]);
        let start = Instant::now();
        view.read(&rules, HOLD, &owned, start);
        // g4 is not wanted (drained here), but its probes pass.
        let later = plan(
            &config,
            &[g(2), g(3)],
            &owned,
            &[],
            &view,
            start + HOLD * 10,
        );
        assert!(later.changes.is_empty(), "{later:?}");
    }

    #[test]
    fn a_record_that_comes_back_gets_a_whole_hold_again() {
        let rules = rules("g2", false);
        let mut view = view(&["g3"]);
        view.failing = vec!["g4".into()];
        let start = Instant::now();
        view.read(&rules, HOLD, &[g(2), g(3), g(4)], start);
        assert!(view.down.contains_key("g4"));
        // Gone from the zone (or deleted by this instance): forgotten.
        view.read(&rules, HOLD, &[g(2), g(3)], start + HOLD);
        assert!(view.down.is_empty());
        view.read(&rules, HOLD, &[g(2), g(3), g(4)], start + HOLD * 2);
        assert_eq!(view.down["g4"], start + HOLD * 2);
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
    fn a_live_instance_replaces_a_dead_last_record() {
        // Only g4's record is left, and g4 is dead; g2 sees g3.
        let rules = rules("g2", false);
        let config = config(Some(rules.clone()));
        let mut view = view(&["g3"]);
        view.failing = vec!["g4".into()];
        let start = Instant::now();
        view.read(&rules, HOLD, &[g(4)], start);
        let plan = plan(&config, &[g(2), g(3)], &[g(4)], &[], &view, start + HOLD);
        assert_eq!(plan.changes, vec![Change::Upsert(g(2)), Change::Delete(0)]);
    }

    #[test]
    fn a_write_back_others_undo_backs_off_until_the_split_heals() {
        let rules = rules("g4", false);
        let config = config(Some(rules.clone()));
        let owned = [g(2), g(3)];
        let all = [g(2), g(3), g(4)];
        let mut view = view(&["g2", "g3"]);
        let start = Instant::now();
        view.sent("g4", &[Change::Upsert(g(4))], &owned, start);
        // Read again: it is gone; g3 cannot be reached any more.
        view.probed = vec!["g2".into()];
        view.read(&rules, HOLD, &owned, start + HOLD);
        assert_eq!(view.undone, 1);
        view.probed = vec!["g2".into(), "g3".into()];
        let waits = plan(&config, &all, &owned, &[], &view, start + HOLD);
        assert!(waits.changes.is_empty(), "{waits:?}");
        let later = start + HOLD * 3;
        assert_eq!(
            plan(&config, &all, &owned, &[], &view, later).changes,
            vec![Change::Upsert(g(4))]
        );
        // Every peer passes its probes again: the backoff ends.
        view.read(&rules, HOLD, &owned, start + HOLD);
        assert_eq!(view.write_back_after, None);
    }

    #[test]
    fn records_of_names_that_are_not_peers_are_left_alone() {
        let rules = rules("g2", false);
        let config = config(Some(rules.clone()));
        let owned = [g(2), g(3), set("g5", "192.0.2.5", 1)];
        let mut view = view(&["g3"]);
        view.failing = vec!["g5".into()];
        let start = Instant::now();
        view.read(&rules, HOLD, &owned, start);
        let plan = plan(
            &config,
            &[g(2), g(3)],
            &owned,
            &[],
            &view,
            start + HOLD * 100,
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
    fn peers_take_the_ttl_of_the_first_peer_by_name() {
        let config = config(Some(rules("g3", false)));
        let mut g2 = g(2);
        g2.ttl = 60;
        let mut g3 = g(3);
        g3.ttl = 60;
        let plan = plan(
            &config,
            &[g(3)],
            &[g2, g3],
            &[],
            &view(&["g2"]),
            Instant::now(),
        );
        assert!(plan.changes.is_empty(), "{plan:?}");
    }

    #[test]
    fn addresses_are_compared_in_one_form() {
        assert_eq!(canonical("2001:0db8::000a"), "2001:db8::a");
        assert_eq!(canonical("192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn with_health_checks_nobody_removes_anybody() {
        let config = config(Some(rules("g2", true)));
        let owned = [g(3), g(4)];
        let mut me = g(2);
        me.health_check = Some("hc-2".into());
        let mut view = view(&[]);
        let long_ago = Instant::now();
        view.failing = vec!["g3".into(), "g4".into()];
        view.read(&rules("g2", true), HOLD, &owned, long_ago);
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
