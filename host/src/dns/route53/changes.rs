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
            self.rtype.name(),
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
                w.rtype.name(),
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
mod tests;
