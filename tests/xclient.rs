//! XCLIENT (`client_address = "xclient"`) through the gale binary: Postfix
//! takes the client's address from gale's XCLIENT and judges the client
//! by it (a `check_client_access` map rejecting 127.0.0.3); a backend that
//! does not offer XCLIENT (smtp-sink -C) is a failed attempt with that
//! reason, and the next backend takes the session.

mod support;

use std::time::Duration;

use support::conf::Conf;
use support::process::{Gale, Postfix, SmtpSink, free_port, swaks_from};

#[test]
fn postfix_judges_the_real_client_told_by_xclient() {
    let postfix = Postfix::start_xclient(&[
        "smtpd_client_restrictions = check_client_access inline:{ 127.0.0.3=REJECT }",
    ]);
    // The first backend does not offer XCLIENT: every session tries it
    // first (failover), fails there with the reason, and goes on.
    let sink = SmtpSink::start_with(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        &["-C"],
    );
    let gale = Gale::start(
        &Conf::new()
            .smtp("in", "mta")
            .set("listeners.in.hostname", "gale.test")
            .probe("mta", "smtp", "60s", "2s")
            .set("pools.mta.balancer.builtin", "failover")
            .backend("mta", "sink", sink.address)
            .set("pools.mta.backends.sink.client_address", "xclient")
            .backend("mta", "postfix", postfix.address)
            .set("pools.mta.backends.postfix.client_address", "xclient")
            .set("pools.mta.backends.postfix.role", "standby")
            .to_string(),
    );
    let addr = gale.address("in");

    let (ok, transcript) = swaks_from("127.0.0.2", addr, "rcpt@example.test");
    assert!(ok, "swaks from 127.0.0.2 failed:\n{transcript}");
    let queued = transcript
        .lines()
        .find(|l| l.contains("250 2.0.0 Ok: queued as"))
        .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
    let queue_id = queued.rsplit(' ').next().unwrap();
    // Postfix saw the client's own address, from XCLIENT.
    postfix.wait_log(
        &[queue_id, "client=unknown[127.0.0.2]"],
        Duration::from_secs(10),
    );

    // The map rejects 127.0.0.3: Postfix's own verdict reaches the client.
    let (ok, transcript) = swaks_from("127.0.0.3", addr, "other@example.test");
    assert!(!ok, "{transcript}");
    assert!(
        transcript.contains("554 5.7.1 <unknown[127.0.0.3]>: Client host rejected: Access denied"),
        "{transcript}"
    );
    postfix.wait_log(
        &[
            "reject: RCPT from unknown[127.0.0.3]",
            "Client host rejected",
        ],
        Duration::from_secs(10),
    );

    let sessions = gale.wait_count("smtp session listener=in", 2, Duration::from_secs(10));
    for s in &sessions {
        assert!(
            s.contains("backend=postfix") && s.contains("sink: XCLIENT not offered"),
            "{s}"
        );
    }
}

#[test]
fn a_postfix_that_does_not_authorize_gale_is_an_outage_not_a_verdict_on_the_client() {
    // gale is not among the hosts allowed to send XCLIENT: Postfix does
    // not offer it, for any client; the client gets the 421 of an outage.
    let postfix = Postfix::start_xclient(&["smtpd_authorized_xclient_hosts ="]);
    let gale = Gale::start(
        &Conf::new()
            .smtp("in", "mta")
            .set("listeners.in.hostname", "gale.test")
            .probe("mta", "smtp", "60s", "2s")
            .backend("mta", "postfix", postfix.address)
            .set("pools.mta.backends.postfix.client_address", "xclient")
            .to_string(),
    );
    let (ok, transcript) = swaks_from("127.0.0.2", gale.address("in"), "rcpt@example.test");
    assert!(!ok, "{transcript}");
    assert!(transcript.contains("421 4.3.2 gale.test"), "{transcript}");
    let line = gale.wait_log("no backend could take it", Duration::from_secs(10));
    assert!(line.contains("postfix: XCLIENT not offered"), "{line}");
}
