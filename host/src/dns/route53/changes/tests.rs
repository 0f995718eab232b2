//! The planner's rules, a case each: what a lone publisher and what
//! peers write and remove.

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
