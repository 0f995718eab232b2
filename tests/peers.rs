//! gale against real peers from Debian: Postfix as the backend MTA (PROXY
//! protocol), swaks and smtp-source as clients, smtp-sink as fast backends.
//! The shipped demo, driven by swaks, curl and dig. `tests/run` installs them.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::process::{Gale, Postfix, SmtpSink, curl, free_port, require, signal};
use support::smtp::{Backend, Behaviour, Client};

/// An SMTP listener `in` before pool `mta` of `backends` (address, PROXY
/// protocol) as `b0`, `b1`, ..., probed over SMTP every 300 ms; more keys
/// with [`Conf::set`].
fn config(backends: &[(SocketAddr, &str)]) -> Conf {
    let mut conf = Conf::new()
        .set("server.drain_timeout", "20s")
        .smtp("in", "mta")
        .set("listeners.in.hostname", "gale.test")
        .set("listeners.in.banner_timeout", "500ms")
        .set("listeners.in.connect_timeout", "500ms")
        .set("listeners.in.max_attempts", 6)
        .probe("mta", "smtp", "300ms", "500ms");
    for (i, &(address, proxy)) in backends.iter().enumerate() {
        let name = format!("b{i}");
        conf = conf
            .backend("mta", &name, address)
            .set(&format!("pools.mta.backends.{name}.proxy_protocol"), proxy);
    }
    conf
}

#[test]
fn postfix_accepts_mail_and_logs_the_real_client_address() {
    let postfix = Postfix::start();
    for (proxy, client_ip) in [("v2", "127.0.0.2"), ("v1", "127.0.0.3")] {
        let gale = Gale::start(&config(&[(postfix.address, proxy)]).to_string());
        let out = Command::new(require("swaks"))
            .args(["--server", &gale.address("in").to_string()])
            .args(["--local-interface", client_ip])
            .args([
                "--from",
                "sender@client.test",
                "--to",
                &format!("rcpt-{proxy}@example.test"),
            ])
            .output()
            .unwrap();
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "swaks failed through gale ({proxy}):\n{transcript}"
        );
        let queued = transcript
            .lines()
            .find(|l| l.contains("250 2.0.0 Ok: queued as"))
            .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
        let queue_id = queued.rsplit(' ').next().unwrap();
        // Postfix saw the client's own address, carried by the PROXY header.
        postfix.wait_log(
            &[queue_id, &format!("client=unknown[{client_ip}]")],
            Duration::from_secs(10),
        );
        postfix.wait_log(
            &[
                queue_id,
                &format!("to=<rcpt-{proxy}@example.test>"),
                "status=sent",
            ],
            Duration::from_secs(10),
        );
    }
    // Probes (EHLO/QUIT over PROXY LOCAL/UNKNOWN) left no errors behind.
    // (cleanup's warnings about this VM's clock running behind the file
    // system's are about the machine, not the sessions.)
    let log: String = postfix
        .maillog()
        .lines()
        .filter(|l| {
            !l.contains("file system clock is") && !l.contains("resetting file time stamps")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for bad in [
        "improper command pipelining",
        "lost connection",
        "haproxy read: time limit exceeded",
        "warning",
    ] {
        assert!(!log.contains(bad), "postfix logged {bad:?}:\n{log}");
    }
}

#[test]
fn smtp_source_sees_no_errors_while_bad_backends_are_skipped() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (busy, silent) = rt.block_on(async {
        (
            Backend::start(Behaviour::Busy).await,
            Backend::start(Behaviour::Silent).await,
        )
    });
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink_a = SmtpSink::start(free_port());
    let sink_b = SmtpSink::start(free_port());
    let gale = Gale::start(
        &config(&[
            (closed, "none"),
            (busy.address, "none"),
            (silent.address, "none"),
            (sink_a.address, "none"),
            (sink_b.address, "none"),
        ])
        .to_string(),
    );
    let messages = 300;
    let out = Command::new(require("smtp-source"))
        .args([
            "-s",
            "10",
            "-m",
            &messages.to_string(),
            "-f",
            "a@client.test",
            "-t",
            "b@example.test",
        ])
        .arg(gale.address("in").to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "smtp-source reported errors:\n{stderr}"
    );
    // A session's line is written once both sides have closed, just
    // after smtp-source exits.
    let sessions = gale.wait_count("smtp session listener=in", messages, Duration::from_secs(5));
    assert_eq!(sessions.len(), messages, "one session per message");
    for s in &sessions {
        assert!(
            s.contains("backend=b3") || s.contains("backend=b4"),
            "a session landed elsewhere: {s}"
        );
    }
    assert!(
        gale.log_lines("421 not delivered").is_empty()
            && gale.log_lines("deferred with 421").is_empty()
    );
}

#[test]
fn a_killed_backend_costs_no_new_session_and_returns_after_restart() {
    let port_a = free_port();
    let mut sink_a = SmtpSink::start(port_a);
    let sink_b = SmtpSink::start(free_port());
    let gale = Gale::start(
        &config(&[(sink_a.address, "none"), (sink_b.address, "none")])
            .set("pools.mta.health.builtin", "threshold-health")
            .set("pools.mta.health.settings.rise", 2)
            .set("pools.mta.health.settings.fall", 3)
            // Traffic ejects the killed backend before its probes fail; a
            // short ejection, so that its return is up to the probes.
            .set("pools.mta.base_ejection_time", "300ms")
            .to_string(),
    );
    let addr = gale.address("in");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Bounded load: 4 clients, 6 s, one message per session.
    let kill_at = Duration::from_secs(2);
    let started = Instant::now();
    let failures = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                let mut sessions = 0;
                while started.elapsed() < Duration::from_secs(6) {
                    let began = started.elapsed();
                    // Its own task: a session cut by the kill panics in the
                    // client, which counts as a failed session.
                    let outcome =
                        tokio::spawn(tokio::time::timeout(Duration::from_secs(5), async move {
                            let mut c = Client::connect(addr).await;
                            let greeting = c.reply().await;
                            assert!(greeting.last().unwrap().starts_with("220"), "{greeting:?}");
                            c.send_mail().await
                        }))
                        .await;
                    sessions += 1;
                    let ok = matches!(&outcome, Ok(Ok(r)) if r.starts_with("250"));
                    if !ok {
                        failed.push((began, format!("{began:?}: {outcome:?}")));
                    }
                }
                (sessions, failed)
            }));
        }
        tokio::time::sleep(kill_at.saturating_sub(started.elapsed())).await;
        signal(sink_a.child.id(), "KILL");
        // When the kill happened (the sleep may wake late, and `signal`
        // runs `kill`), not when it was planned.
        let killed = started.elapsed();
        let mut all = Vec::new();
        let mut total = 0;
        for t in tasks {
            let (n, f) = t.await.unwrap();
            total += n;
            // Sessions begun before the kill may have been on the killed
            // backend; every later one must succeed.
            all.extend(
                f.into_iter()
                    .filter(|(began, _)| *began > killed + Duration::from_millis(50))
                    .map(|(_, failure)| failure),
            );
        }
        assert!(total > 100, "only {total} sessions in the load");
        all
    });
    assert!(
        failures.is_empty(),
        "new sessions failed after the kill: {failures:?}"
    );
    gale.wait_log(
        "backend left rotation pool=mta backend=b0",
        Duration::from_secs(5),
    );

    let _ = sink_a.child.wait();
    sink_a = SmtpSink::start(port_a);
    // From when it listens: starting smtp-sink is not gale's time.
    let restarted = Instant::now();
    gale.wait_log(
        "backend is back in rotation pool=mta backend=b0",
        Duration::from_secs(5),
    );
    // interval 300 ms × rise 2, plus one interval.
    assert!(
        restarted.elapsed() <= Duration::from_millis(300 * 3 + 200),
        "took {:?}",
        restarted.elapsed()
    );
    drop(sink_a);
}

#[test]
fn sigterm_drains_a_session_in_the_middle_of_data() {
    let sink = SmtpSink::start(free_port());
    let mut gale = Gale::start(&config(&[(sink.address, "none")]).to_string());
    let addr = gale.address("in");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(addr).await;
        c.reply().await;
        c.start_data().await;
        c.send_raw("Subject: drain\r\n\r\nfirst half\r\n").await;
        signal(gale.child.id(), "TERM");
        support::wait_until(
            || !gale.log_lines("shutting down").is_empty(),
            Duration::from_secs(5),
            "shutdown logged",
        )
        .await;
        support::wait_refused(addr, Duration::from_secs(2)).await;
        let end = c.command("second half\r\n.").await;
        assert!(end[0].starts_with("250"), "{end:?}");
        assert!(c.command("QUIT").await[0].starts_with("221"));
    });
    let status = gale.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "gale must exit 0 after draining");
}

#[test]
fn the_demo_balances_mail_and_web_requests() {
    let gale = Gale::demo(&support::workspace().join("config/gale.toml"));
    gale.wait_count("demo backend up", 5, Duration::from_secs(10));
    let out = Command::new(require("swaks"))
        .args(["--server", "127.0.0.1:2525", "--to", "b@example.test"])
        .output()
        .unwrap();
    let dialogue = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{dialogue}");
    assert!(dialogue.contains("250 2.0.0 queued as mta-"), "{dialogue}");
    let bodies: Vec<String> = (0..2)
        .map(|_| curl(&["http://127.0.0.1:8080/inject"]).1)
        .collect();
    assert!(
        bodies.iter().any(|b| b.starts_with("hello from web-a")),
        "{bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b.starts_with("hello from web-b")),
        "{bodies:?}"
    );
    // The README's dig: the mail pool's address (all three sinks are on
    // 127.0.0.1, so one record), once the first debounce has passed.
    gale.wait_log("dns records changed", Duration::from_secs(5));
    let dig = Command::new(require("dig"))
        .args(["@127.0.0.1", "-p", "5353", "+short", "mx.example.test", "A"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout), "127.0.0.1\n");
}

/// `[server] user`: started as root, gale binds its sockets and then runs
/// as that user, and still relays mail. Not root: only its own user is
/// accepted.
#[test]
fn gale_drops_root_after_binding_and_still_relays() {
    let sink = SmtpSink::start(free_port());
    // SAFETY: geteuid takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let config = |user: &str| {
        Conf::new()
            .set("server.user", user)
            .smtp("in", "mta")
            .backend("mta", "a", sink.address)
            .to_string()
    };
    let (user, uid) = if euid == 0 {
        ("nobody", gale::privileges::user_ids("nobody").unwrap().0)
    } else {
        (gale::privileges::current_user().leak() as &str, euid)
    };
    let gale = Gale::start(&config(user));
    gale.wait_log("running without root", Duration::from_secs(10));
    let status = std::fs::read_to_string(format!("/proc/{}/status", gale.child.id())).unwrap();
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    // Real, effective, saved and filesystem uid: all of them.
    assert_eq!(uids, [uid; 4], "{status}");
    support::client::send_mail(gale.address("in"));
    gale.wait_log("smtp session", Duration::from_secs(10));
}

/// `sessions` runs of smtp-source through gale, one message each (it
/// gives up at the first deferral): how many were deferred, and what
/// smtp-source said about them.
fn smtp_source(gale: &Gale, sessions: usize) -> (usize, String) {
    let mut said = String::new();
    let mut deferred = 0;
    for _ in 0..sessions {
        let out = Command::new(require("smtp-source"))
            .args(["-m", "1", "-f", "a@client.test", "-t", "b@example.test"])
            .arg(gale.address("in").to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stderr.trim().is_empty() {
            deferred += 1;
            said.push_str(&stderr);
        }
    }
    (deferred, said)
}

#[test]
fn a_postfix_with_a_full_spool_leaves_rotation_on_traffic_and_returns() {
    // More free space demanded than the disk has: smtpd greets 220, then
    // answers MAIL FROM with "452 4.3.1 Insufficient system storage".
    let full = Postfix::start();
    full.set("queue_minfree = 1000000000000000");
    full.reload();
    full.wait_log(&["reload"], Duration::from_secs(10));
    let normal = Postfix::start();
    // The SMTP probe stops at EHLO: only traffic sees the full spool.
    // Ejected for 3 s: the rest of the 40 sessions, on the normal
    // Postfix, end well within it.
    let gale = Gale::start(
        &config(&[(full.address, "v1"), (normal.address, "v1")])
            .set("pools.mta.base_ejection_time", "3s")
            .to_string(),
    );
    let (deferred, stderr) = smtp_source(&gale, 40);
    gale.wait_line(
        &["left rotation", "backend=b0", "traffic"],
        Duration::from_secs(5),
    );
    assert!(
        (1..=4).contains(&deferred),
        "{deferred} sessions deferred before the full Postfix left rotation:\n{stderr}"
    );
    assert!(
        full.maillog().contains("4.3.1 Insufficient system storage"),
        "{}",
        full.maillog()
    );

    // Space again (a restart: a reload lets running smtpd processes go on
    // with the old limit): back after its ejection and a passing probe.
    // Its 3 s ejection may end while Postfix is still restarting, and a
    // refused connection ejects it again: so mail is sent, a few
    // sessions at a time, until the healed Postfix has taken some.
    let returns = "backend is back in rotation pool=mta backend=b0";
    let returned = gale.log_lines(returns).len();
    // qmgr's line for a queued message (a refusal's line names the
    // sender too, followed by " proto=").
    let accepted = || {
        full.maillog()
            .matches("from=<a@client.test>, size=")
            .count()
    };
    let before = accepted();
    full.set("queue_minfree = 0");
    full.restart();
    full.wait_count("daemon started", 2, Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted() == before {
        assert!(
            Instant::now() < deadline,
            "the healed Postfix takes no mail again; log: {:#?}",
            gale.log_lines("")
        );
        let (deferred, stderr) = smtp_source(&gale, 5);
        assert_eq!(deferred, 0, "{stderr}");
    }
    assert!(gale.log_lines(returns).len() > returned, "{returns}");
}
