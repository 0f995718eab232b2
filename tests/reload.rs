//! Reloads of the running `gale` binary: SIGHUP and file changes swap in a
//! new generation without costing a session; broken input keeps the
//! running generation and says why; health state carries over.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::process::{Gale, SmtpSink, free_port, signal};

fn config(backends: &[(&str, SocketAddr, u32)]) -> String {
    let mut toml = String::from(
        "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"mta\"\n\
         connect_timeout = \"500ms\"\nbanner_timeout = \"500ms\"\n\
         [pools.mta]\n[pools.mta.probe]\nkind = \"smtp\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\n",
    );
    for (name, address, weight) in backends {
        toml.push_str(&format!(
            "[[pools.mta.backends]]\nname = \"{name}\"\naddress = \"{address}\"\nweight = {weight}\n"
        ));
    }
    toml
}

/// A plain SMTP client session, one step at a time.
struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    fn open(addr: SocketAddr) -> Session {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut s = Session {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        s.expect("220");
        s
    }

    /// Read one reply (all its lines); panic unless it starts with `code`.
    fn expect(&mut self, code: &str) {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return;
            }
        }
    }

    fn command(&mut self, line: &str, code: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.expect(code);
    }

    /// Everything after the greeting: one message, then QUIT.
    fn send_mail(mut self) {
        self.command("EHLO client.test\r\n", "250");
        self.command("MAIL FROM:<a@client.test>\r\n", "250");
        self.command("RCPT TO:<b@example.test>\r\n", "250");
        self.command("DATA\r\n", "354");
        self.command("Subject: reload\r\n\r\nhello\r\n.\r\n", "250");
        self.command("QUIT\r\n", "221");
    }
}

fn send_mail(addr: SocketAddr) {
    Session::open(addr).send_mail();
}

/// Wait for a log line that contains every one of `needles`.
fn wait_line(gale: &Gale, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = gale
            .log_lines(needles[0])
            .into_iter()
            .find(|l| needles.iter().all(|n| l.contains(n)));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}; log: {:#?}",
            gale.log_lines("")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reloads_swap_generations_without_losing_a_session() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let gale = Gale::start(&config(&[("a", a.address, 1)]));
    let addr = gale.address("in");

    // A session that starts on generation 1 and ends on generation 2's watch.
    let mut open = Session::open(addr);
    open.command("EHLO client.test\r\n", "250");

    gale.rewrite_config(&config(&[("b", b.address, 1)]));
    let reloaded = gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    assert!(reloaded.contains("trigger=\"file change\""), "{reloaded}");
    for _ in 0..10 {
        send_mail(addr);
    }
    let sessions = gale.wait_count("smtp session", 10, Duration::from_secs(10));
    assert!(
        sessions.iter().all(|l| l.contains("backend=b ")),
        "{sessions:#?}"
    );

    // The old session still runs on generation 1's backend, and finishes.
    open.send_mail();
    let old = gale.wait_log("backend=a ", Duration::from_secs(10));
    assert!(old.contains("end=closed"), "{old}");

    // SIGHUP reloads too, and a file write is picked up within a second.
    gale.rewrite_config(&config(&[("a", a.address, 1), ("b", b.address, 1)]));
    let _ = gale.wait_log("reloaded generation=3", Duration::from_secs(20));
    signal(gale.child.id(), "HUP");
    let _ = wait_line(&gale, &["reloaded generation=4", "trigger=\"SIGHUP\""]);
    let written = Instant::now();
    gale.rewrite_config(&config(&[("a", a.address, 3), ("b", b.address, 1)]));
    let _ = gale.wait_log("reloaded generation=5", Duration::from_secs(20));
    let took = written.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "file change took {took:?} to apply"
    );
    send_mail(addr);
    assert!(gale.log_lines("reload failed").is_empty());
}

#[test]
fn broken_reloads_keep_the_running_generation() {
    let sink = SmtpSink::start(free_port());
    let good = config(&[("a", sink.address, 1)]);
    let gale = Gale::start(&good);
    let addr = gale.address("in");
    let not_a_component = gale.config.with_file_name("garbage.wasm");
    std::fs::write(&not_a_component, b"\0asm but not really").unwrap();
    let wrong_world = support::plugin("hostile-wrong-world");
    let cases = [
        ("[listeners.in\n".to_string(), "gale.toml:1:"),
        (
            good.replace("weight = 1", "wieght = 1"),
            "unknown field `wieght`",
        ),
        (
            good.replace(
                "[pools.mta]\n",
                &format!(
                    "[pools.mta]\nbalancer = {{ path = {:?} }}\n",
                    not_a_component
                ),
            ),
            "garbage.wasm",
        ),
        (
            good.replace(
                "[pools.mta]\n",
                &format!("[pools.mta]\nbalancer = {{ path = {:?} }}\n", wrong_world),
            ),
            "does not implement world `gale:plugin/balancer",
        ),
    ];
    for (i, (toml, reason)) in cases.iter().enumerate() {
        std::fs::write(&gale.config, toml).unwrap();
        // The write itself triggers a reload; SIGHUP asks for another.
        signal(gale.child.id(), "HUP");
        let line = wait_line(&gale, &["reload failed", reason]);
        assert!(
            line.contains("still serving generation 1"),
            "case {i}: {line}"
        );
        send_mail(addr);
    }
    assert!(gale.log_lines("reloaded generation").is_empty());
}

#[test]
fn health_state_survives_a_reload() {
    let sink = SmtpSink::start(free_port());
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gale = Gale::start(&config(&[("dead", dead, 1), ("good", sink.address, 1)]));
    let _ = gale.wait_log(
        "left rotation pool=mta backend=dead",
        Duration::from_secs(10),
    );
    // Weight 100 would send nearly every session to `dead` first if the
    // reload forgot that it is down.
    signal(gale.child.id(), "HUP");
    let _ = wait_line(&gale, &["reloaded generation=2", "SIGHUP"]);
    gale.rewrite_config(&config(&[("dead", dead, 100), ("good", sink.address, 1)]));
    let _ = gale.wait_log("reloaded generation=3", Duration::from_secs(20));
    for _ in 0..10 {
        send_mail(gale.address("in"));
    }
    let sessions = gale.wait_count("smtp session", 10, Duration::from_secs(10));
    for s in &sessions {
        assert!(
            s.contains("tried=good: 220"),
            "a dead backend was tried first: {s}"
        );
    }
}
