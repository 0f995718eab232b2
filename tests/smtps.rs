//! SMTPS (implicit TLS, port 465) terminated by an SMTP listener, through
//! the gale binary with real peers: `swaks --tls-on-connect` and
//! `openssl s_client` as clients, Postfix as backends (plain behind a
//! PROXY v2 header, or speaking SMTPS itself to gale's TLS), and a
//! backend of the test's own that shows the PROXY v2 header's TLS fields.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::process::{Gale, Postfix, Signed, ca_signed, require, scrape, swaks_smtps, value};
use toml::Value;

/// An SMTP listener `in` terminating TLS with `cert`, before pool `mta`
/// of `backends` sent PROXY v2; SMTP probes every 10 s, so sessions meet
/// a stopped backend first-hand.
fn smtps(cert: &Signed, backends: &[SocketAddr]) -> Conf {
    Conf::new()
        .admin()
        .smtp("in", "mta")
        .set("listeners.in.connect_timeout", "500ms")
        .set("listeners.in.tls.cert", path(&cert.cert))
        .set("listeners.in.tls.key", path(&cert.key))
        .probe("mta", "smtp", "10s", "1s")
        .proxied_backends("mta", backends)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn smtps_is_terminated_and_postfix_learns_the_client_from_proxy_v2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = ca_signed(dir.path(), "gale", "mx.example.test", &["mx.example.test"]);
    let (running, stopped) = (Postfix::start(), Postfix::start());
    let gale = Gale::start(&smtps(&cert, &[stopped.address, running.address]).to_string());
    drop(stopped);
    let addr = gale.address("in");
    for n in 0..6 {
        let transcript = swaks_smtps(addr, "127.0.0.2", &format!("rcpt-{n}@example.test"))
            .unwrap_or_else(|t| panic!("swaks over SMTPS through gale:\n{t}"));
        assert!(transcript.contains("TLS started"), "{transcript}");
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as"),
            "{transcript}"
        );
    }
    running.wait_count("client=unknown[127.0.0.2]", 6, Duration::from_secs(10));
    let sessions = gale.wait_count("smtp session listener=in", 6, Duration::from_secs(10));
    assert_eq!(sessions.len(), 6, "{sessions:#?}");
    assert!(
        sessions
            .iter()
            .all(|s| s.contains("backend=p1") && s.contains("tls=TLSv1.3")),
        "{sessions:#?}"
    );
    assert!(
        sessions.iter().any(|s| s.contains("p0: connect: ")),
        "no session tried the stopped one while holding its client: {sessions:#?}"
    );
    // A client that never finishes its handshake is counted, and costs no
    // backend anything.
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.write_all(b"EHLO not-tls\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    assert!(rest.is_empty() || !rest.starts_with(b"220"), "{rest:?}");
    // Counted just after the close the client saw.
    let deadline = Instant::now() + Duration::from_secs(5);
    let failed = |samples: &[_]| {
        value(
            samples,
            "gale_tls_handshake_failures_total",
            &[("listener", "in")],
        )
    };
    let mut samples = scrape(&gale);
    while failed(&samples) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        samples = scrape(&gale);
    }
    assert_eq!(failed(&samples), 1.0);
    assert_eq!(
        value(&samples, "gale_sessions_total", &[("outcome", "relayed")]),
        6.0
    );
    // With no backend left, the 421 is said inside the TLS.
    drop(running);
    let transcript = swaks_smtps(addr, "127.0.0.2", "late@example.test").unwrap_err();
    assert!(transcript.contains("421 4.3.2"), "{transcript}");
}

/// What a backend of the test's own saw of each session: the PROXY v2
/// header, parsed.
struct HeaderBackend {
    address: SocketAddr,
    headers: mpsc::Receiver<ppp::v2::Header<'static>>,
}

impl HeaderBackend {
    /// Reads a PROXY v2 header, greets 220 after `delay`, answers QUIT,
    /// closes.
    fn start(delay: Duration) -> HeaderBackend {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let (tx, headers) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in server.incoming() {
                let Ok(mut s) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut head = [0u8; 16];
                    if s.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    let mut whole = head.to_vec();
                    whole.resize(16 + len, 0);
                    if s.read_exact(&mut whole[16..]).is_err() {
                        return;
                    }
                    let header = ppp::v2::Header::try_from(&whole[..]).unwrap().to_owned();
                    std::thread::sleep(delay);
                    let _ = s.write_all(b"220 headers.test ESMTP\r\n");
                    let mut line = String::new();
                    let mut reader = BufReader::new(s.try_clone().unwrap());
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line.trim().eq_ignore_ascii_case("QUIT") {
                            let _ = s.write_all(b"221 bye\r\n");
                            break;
                        }
                        let _ = s.write_all(b"250 ok\r\n");
                        line.clear();
                    }
                    let _ = tx.send(header);
                });
            }
        });
        HeaderBackend { address, headers }
    }

    /// The next client session's header (probes send `LOCAL` ones).
    fn next_session(&self) -> ppp::v2::Header<'static> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let header = self.headers.recv_timeout(left).expect("a session's header");
            if header.command == ppp::v2::Command::Proxy {
                return header;
            }
        }
    }
}

/// The TLVs of `header` as (type, value); PP2_TYPE_SSL's sub-TLVs follow
/// it as their own entries.
fn tlvs(header: &ppp::v2::Header<'_>) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    for tlv in header.tlvs() {
        let tlv = tlv.unwrap();
        all.push((tlv.kind, tlv.value.to_vec()));
        if tlv.kind == ppp::v2::Type::SSL as u8 {
            let mut rest = &tlv.value[5..];
            while rest.len() >= 3 {
                let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
                all.push((rest[0], rest[3..3 + len].to_vec()));
                rest = &rest[3 + len..];
            }
        }
    }
    all
}

/// `openssl s_client` on an SMTPS port: the subject of the certificate it
/// was served, after a whole SMTP exchange (greeting, `QUIT`).
fn served_subject(addr: SocketAddr, sni: Option<&str>) -> String {
    let mut session = HeldSession::open(addr, sni, false);
    session.say("", "220");
    session.say("QUIT", "221");
    session
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or_else(|| panic!("no subject in {:#?}", session.seen))
        .to_string()
}

#[test]
fn sni_picks_the_certificate_and_proxy_v2_carries_the_tls_fields() {
    let dir = tempfile::tempdir().unwrap();
    let default = ca_signed(dir.path(), "default", "default.test", &["default.test"]);
    let submit = ca_signed(dir.path(), "submit", "submit.test", &["submit.test"]);
    // Its greeting takes 200 ms: long enough for a client that does not
    // wait for it to be seen not waiting.
    let backend = HeaderBackend::start(Duration::from_millis(200));
    let mut sni = toml::Table::new();
    sni.insert("names".into(), Value::Array(vec!["Submit.test".into()]));
    sni.insert("cert".into(), path(&submit.cert).into());
    sni.insert("key".into(), path(&submit.key).into());
    let conf = smtps(&default, &[backend.address])
        .set(
            "listeners.in.tls.sni",
            Value::Array(vec![Value::Table(sni)]),
        )
        .smtp("pass", "mta")
        .set("listeners.pass.pregreet", "pass")
        .set("listeners.pass.tls.cert", path(&default.cert))
        .set("listeners.pass.tls.key", path(&default.key));
    let gale = Gale::start(&conf.to_string());
    let addr = gale.address("in");

    let subject = served_subject(addr, Some("submit.test"));
    assert!(
        subject.contains("CN=submit.test") || subject.contains("CN = submit.test"),
        "{subject}"
    );
    let header = backend.next_session();
    let tlvs = tlvs(&header);
    let of = |kind: ppp::v2::Type| {
        tlvs.iter()
            .find(|(k, _)| *k == kind as u8)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        of(ppp::v2::Type::SSLVersion).as_deref(),
        Some("TLSv1.3"),
        "{tlvs:?}"
    );
    assert!(
        of(ppp::v2::Type::SSLCipher).is_some_and(|c| c.starts_with("TLS_AES_")),
        "{tlvs:?}"
    );
    assert_eq!(
        of(ppp::v2::Type::Authority).as_deref(),
        Some("submit.test"),
        "{tlvs:?}"
    );
    let ssl = tlvs
        .iter()
        .find(|(k, _)| *k == ppp::v2::Type::SSL as u8)
        .unwrap();
    assert_eq!(ssl.1[0], 0x01, "PP2_CLIENT_SSL");
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => assert_eq!(a.destination_port, addr.port()),
        other => panic!("{other:?}"),
    }

    // No SNI, or a name no certificate is listed for: the default one.
    for name in [None, Some("other.test")] {
        let subject = served_subject(addr, name);
        assert!(subject.contains("default.test"), "{name:?}: {subject}");
        let header = backend.next_session();
        let authority = tlvs_of(&header, ppp::v2::Type::Authority);
        assert_eq!(authority.as_deref(), name, "{name:?}");
    }

    // A client that speaks before its greeting, inside its TLS, is refused
    // as a plaintext one is.
    let mut early = HeldSession::open(addr, None, true);
    let refused = early.say("EHLO too.early", "554");
    assert!(refused.starts_with("554 5.5.1"), "{refused}");
    gale.wait_line(
        &["smtp client spoke before the greeting", "EHLO too.early"],
        Duration::from_secs(5),
    );
    // With pregreet = "pass", what was read off its TLS goes on to the
    // backend after the greeting.
    let mut early = HeldSession::open(gale.address("pass"), None, true);
    early.say("EHLO passed.early", "220");
    early.say("", "250");
    early.say("QUIT", "221");
}

fn tlvs_of(header: &ppp::v2::Header<'_>, kind: ppp::v2::Type) -> Option<String> {
    tlvs(header)
        .into_iter()
        .find(|(k, _)| *k == kind as u8)
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
}

/// An `openssl s_client` session held open, fed lines by the test.
struct HeldSession {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Every line read so far (without `quiet`, the certificate's too).
    seen: Vec<String>,
}

impl HeldSession {
    /// Asking for `sni` (or none); `quiet`: SMTP lines only.
    fn open(addr: SocketAddr, sni: Option<&str>, quiet: bool) -> HeldSession {
        let mut args = vec!["s_client".to_string(), "-connect".into(), addr.to_string()];
        match sni {
            Some(name) => args.extend(["-servername".to_string(), name.to_string()]),
            None => args.push("-noservername".into()),
        }
        // Else a line starting with Q (QUIT) quits s_client itself.
        args.extend(["-crlf".to_string(), "-nocommands".into()]);
        if quiet {
            args.push("-quiet".into());
        }
        let mut child = Command::new(require("openssl"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        HeldSession {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Send `line` (unless empty), then read lines until one starts with
    /// `code` and a space.
    fn say(&mut self, line: &str, code: &str) -> String {
        if !line.is_empty() {
            writeln!(self.stdin, "{line}").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(got) = self.lines.recv_timeout(left) else {
                panic!("no {code} reply to {line:?}; got {:#?}", self.seen);
            };
            self.seen.push(got.clone());
            if got.starts_with(&format!("{code} ")) {
                return got;
            }
            // Continuation lines ("250-"), and without `quiet` openssl's
            // own (a certificate's base64 may start with three digits).
            let b = got.as_bytes();
            let final_reply = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ';
            assert!(!final_reply, "{line:?} answered {got:?}, not {code}");
        }
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_renewed_certificate_is_served_without_dropping_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let old = ca_signed(dir.path(), "old", "old.test", &["old.test"]);
    let cert = Signed {
        ca: old.ca.clone(),
        cert: live.join("cert.pem"),
        key: live.join("key.pem"),
    };
    std::fs::copy(&old.cert, &cert.cert).unwrap();
    std::fs::copy(&old.key, &cert.key).unwrap();
    let postfix = Postfix::start();
    let gale = Gale::start(&smtps(&cert, &[postfix.address]).to_string());
    let addr = gale.address("in");

    let mut held = HeldSession::open(addr, None, true);
    held.say("", "220");
    held.say("EHLO held.test", "250");
    assert!(served_subject(addr, None).contains("old.test"));

    // Renewed as deploy tools do it: new files renamed over the old ones.
    let new = ca_signed(dir.path(), "new", "new.test", &["new.test"]);
    for (from, to) in [(&new.key, &cert.key), (&new.cert, &cert.cert)] {
        let next = to.with_extension("next");
        std::fs::copy(from, &next).unwrap();
        std::fs::rename(&next, to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !served_subject(addr, None).contains("new.test") {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The session that began before the renewal carries on to a message.
    held.say("MAIL FROM:<held@client.test>", "250");
    held.say("RCPT TO:<rcpt@example.test>", "250");
    held.say("DATA", "354");
    writeln!(held.stdin, "Subject: held across a renewal\n").unwrap();
    let queued = held.say(".", "250");
    assert!(queued.contains("queued as"), "{queued}");
    held.say("QUIT", "221");
    // 127.0.0.1 has a name, unlike the other loopback addresses.
    postfix.wait_log(&["client=", "[127.0.0.1]"], Duration::from_secs(10));
}

#[test]
fn tls_backends_are_verified_against_their_ca_or_not_at_all() {
    let (a, b) = (Postfix::start_smtps(), Postfix::start_smtps());
    let dir = tempfile::tempdir().unwrap();
    let cert = ca_signed(dir.path(), "gale", "mx.example.test", &["mx.example.test"]);
    let b_ca = path(b.ca.as_ref().unwrap());
    // p0 (a) is checked against b's CA: its handshake fails, and the
    // session moves on to p1 (b) while the client waits. Listener `lax`
    // takes a without checking its certificate.
    let conf = smtps(&cert, &[a.address, b.address])
        .set("pools.mta.backends.p0.tls", true)
        .set("pools.mta.backends.p0.tls_ca", b_ca.clone())
        .set("pools.mta.backends.p1.tls", true)
        .set("pools.mta.backends.p1.tls_ca", b_ca)
        .smtp("lax", "lax")
        .probe("lax", "smtp", "200ms", "1s")
        .backend("lax", "a", a.address)
        .set("pools.lax.backends.a.proxy_protocol", "v2")
        .set("pools.lax.backends.a.tls", true)
        .set("pools.lax.backends.a.tls_verify", false);
    let gale = Gale::start(&conf.to_string());
    for n in 0..4 {
        let transcript = swaks_smtps(
            gale.address("in"),
            "127.0.0.2",
            &format!("r{n}@example.test"),
        )
        .unwrap_or_else(|t| panic!("SMTPS to a TLS backend:\n{t}"));
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as"),
            "{transcript}"
        );
    }
    b.wait_count("client=unknown[127.0.0.2]", 4, Duration::from_secs(10));
    let sessions = gale.wait_count("smtp session listener=in", 4, Duration::from_secs(10));
    assert!(
        sessions.iter().all(|s| s.contains("backend=p1")),
        "{sessions:#?}"
    );
    assert!(
        sessions
            .iter()
            .any(|s| s.contains("p0: TLS handshake: ") && s.contains("certificate")),
        "no session met p0's certificate: {sessions:#?}"
    );

    // Not verified: taken, over TLS (Postfix encrypts or refuses).
    let (ok, transcript) =
        support::process::swaks_from("127.0.0.3", gale.address("lax"), "lax@example.test");
    assert!(ok, "{transcript}");
    // Postfix runs smtps only (wrapper mode, encryption required): the
    // message came over TLS.
    a.wait_log(&["client=unknown[127.0.0.3]"], Duration::from_secs(10));
}
