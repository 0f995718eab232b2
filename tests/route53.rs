//! Route 53 publishing, against `moto_server` on loopback as the API (see
//! `support/route53.rs`). First the harness itself: a zone, a weighted
//! record planted and read back, the proxy refusing the first change
//! calls (Throttling, PriorRequestNotComplete) and holding a change
//! PENDING, and moto refusing every key once authentication is on.

mod support;

use serde_json::{Value, json};

use support::route53::{Moto, Route53Proxy, try_change, try_records, weighted};

/// A batch of one `action` on a weighted A record of mx.example.test.
fn weighted_a(action: &str, set_id: &str, weight: u64, address: &str) -> Value {
    json!({"Changes": [{
        "Action": action,
        "ResourceRecordSet": {
            "Name": "mx.example.test.",
            "Type": "A",
            "SetIdentifier": set_id,
            "Weight": weight,
            "TTL": 60,
            "ResourceRecords": [{"Value": address}],
        },
    }]})
}

fn set(set_id: &str, address: &str, weight: u64) -> (String, String, u64, Option<String>) {
    (set_id.to_string(), address.to_string(), weight, None)
}

#[test]
fn harness_plants_reads_and_throttles_through_the_proxy() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    assert!(!zone.starts_with('/'), "{zone}");
    moto.change(&zone, weighted_a("CREATE", "other", 7, "192.0.2.77"));
    assert_eq!(
        weighted(&moto.records(&zone), "mx.example.test"),
        vec![set("other", "192.0.2.77", 7)]
    );
    assert!(moto.health_checks().is_empty());

    // The first two change calls are refused without reaching moto; the
    // third goes through, once.
    let proxy = Route53Proxy::start(&moto.endpoint(), 2, "Throttling");
    let batch = weighted_a("UPSERT", "gale-a", 5, "192.0.2.10");
    for attempt in 1..=2 {
        let refused = try_change(&proxy.endpoint(), &zone, &batch).unwrap_err();
        assert!(
            refused.contains("Throttling"),
            "attempt {attempt}: {refused}"
        );
        assert_eq!(
            weighted(&moto.records(&zone), "mx.example.test").len(),
            1,
            "a refused change reached moto"
        );
    }
    try_change(&proxy.endpoint(), &zone, &batch).unwrap();
    assert_eq!(proxy.counts(), (1, 2));
    let changes = proxy.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(
        changes[0].contains("<SetIdentifier>gale-a</SetIdentifier>"),
        "{changes:?}"
    );
    // Reads go through the proxy as they came (the signature included).
    assert_eq!(
        weighted(
            &try_records(&proxy.endpoint(), &zone).unwrap(),
            "mx.example.test."
        ),
        vec![
            set("gale-a", "192.0.2.10", 5),
            set("other", "192.0.2.77", 7)
        ]
    );
    assert_eq!(proxy.counts(), (1, 2), "a read counted as a change");
}

#[test]
fn proxy_answers_prior_request_not_complete_and_pending() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    let proxy = Route53Proxy::start_with(&moto.endpoint(), 1, "PriorRequestNotComplete", 2);
    let batch = weighted_a("UPSERT", "gale-a", 5, "192.0.2.10");
    let refused = try_change(&proxy.endpoint(), &zone, &batch).unwrap_err();
    assert!(refused.contains("PriorRequestNotComplete"), "{refused}");
    let info = try_change(&proxy.endpoint(), &zone, &batch).unwrap();
    assert_eq!(info["Status"], "PENDING", "{info}");
    let stats = proxy.stats();
    assert_eq!(stats["changes_forwarded"], 1, "{stats}");
    assert_eq!(stats["changes_throttled"], 1, "{stats}");
    assert_eq!(
        weighted(&moto.records(&zone), "mx.example.test"),
        vec![set("gale-a", "192.0.2.10", 5)]
    );
}

#[test]
fn moto_refuses_every_key_once_authentication_is_on() {
    let moto = Moto::start();
    let zone = moto.create_zone("example.test");
    moto.enforce_auth(true);
    let refused = try_records(&moto.endpoint(), &zone).unwrap_err();
    assert!(refused.contains("HTTP 403"), "{refused}");
    let refused = try_change(
        &moto.endpoint(),
        &zone,
        &weighted_a("UPSERT", "gale-a", 5, "192.0.2.10"),
    )
    .unwrap_err();
    assert!(refused.contains("HTTP 403"), "{refused}");
    moto.enforce_auth(false);
    assert!(weighted(&moto.records(&zone), "mx.example.test").is_empty());
}
