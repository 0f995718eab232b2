//! Resource limits of the running binary: out of file descriptors, gale
//! backs off instead of spinning, sessions already joined go on, and it
//! recovers once descriptors are free.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::client::Session;
use support::conf::Conf;
use support::process::{Gale, SmtpSink, free_port};

/// A connection through gale and its greeting, if one came within 1 s.
fn connect(addr: SocketAddr) -> (TcpStream, Option<String>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut line = String::new();
    let greeting = BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .ok()
        .filter(|&n| n > 0)
        .map(|_| line);
    (stream, greeting)
}

/// One message on a session that has had its greeting.
fn send_mail(stream: &TcpStream) {
    Session::greeted(stream.try_clone().unwrap()).send_mail();
}

/// CPU time gale has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_gale_backs_off_keeps_sessions_and_recovers() {
    let sink = SmtpSink::start(free_port());
    let toml = Conf::new()
        .smtp("in", "mta")
        .set("pools.mta.probe.interval", "1h")
        .backend("mta", "a", sink.address)
        .to_string();
    let gale = Gale::start_with_nofile(&toml, 64);
    let addr = gale.address("in");

    // Sessions until gale cannot take one more: no greeting (the
    // connection waits in the kernel's backlog), or a 421 (accepted, but
    // no descriptor left for the backend).
    let mut held = Vec::new();
    let pending = loop {
        assert!(held.len() < 64, "64 sessions and still no limit");
        let (stream, greeting) = connect(addr);
        match greeting {
            Some(g) if g.starts_with("220") => held.push(stream),
            Some(g) => {
                assert!(g.starts_with("421 4.3.2"), "{g:?}");
                break None;
            }
            None => break Some(stream),
        }
    };
    let exhausted = Instant::now();
    assert!(
        held.len() >= 5,
        "only {} sessions before the limit",
        held.len()
    );
    println!("{} sessions held at 64 descriptors", held.len());

    // Out of descriptors, gale does not spin.
    let pid = gale.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent <= 30,
        "{spent} ticks of CPU in 2 s while out of descriptors"
    );

    // A session joined before goes on.
    send_mail(&held.remove(0));

    // Descriptors free again: the waiting client (or a new one) is served.
    held.clear();
    let freed = Instant::now();
    let greeting = match pending {
        Some(stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            line
        }
        // Gale frees a session's two descriptors once it has seen both
        // sides close, a few turns of its event loop after this test
        // closed its end: until then a new client may still get the 421.
        None => {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let greeting = connect(addr).1.unwrap_or_default();
                if greeting.starts_with("220") || Instant::now() > deadline {
                    break greeting;
                }
            }
        }
    };
    assert!(greeting.starts_with("220"), "{greeting:?}");
    println!(
        "served again {:?} after descriptors were freed",
        freed.elapsed()
    );
    let warnings = gale
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    // One warning a second at most, each with the count it stands for.
    let seconds = exhausted.elapsed().as_secs() + 1;
    assert!(
        warnings as u64 <= seconds + 1,
        "{warnings} accept warnings in about {seconds} s"
    );
}

/// A connection through gale from `source` and its first line.
fn connect_from(addr: SocketAddr, source: &str) -> (TcpStream, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    (stream, line)
}

#[test]
fn sessions_per_client_ip_are_capped_with_a_421() {
    let sink = SmtpSink::start(free_port());
    let toml = Conf::new()
        .smtp("in", "mta")
        .set("listeners.in.hostname", "mx.test")
        .set("listeners.in.max_sessions_per_client", 2)
        .backend("mta", "a", sink.address)
        .to_string();
    let gale = Gale::start(&toml);
    let addr = gale.address("in");
    let mut held = Vec::new();
    for _ in 0..2 {
        let (stream, greeting) = connect_from(addr, "127.0.0.1");
        assert!(greeting.starts_with("220"), "{greeting:?}");
        held.push(stream);
    }
    // The third from the same address is told to come back later.
    let (_, refused) = connect_from(addr, "127.0.0.1");
    assert!(refused.starts_with("421 4.7.0 mx.test "), "{refused:?}");
    // Another address is not affected.
    let (other, greeting) = connect_from(addr, "127.0.0.2");
    assert!(greeting.starts_with("220"), "{greeting:?}");
    send_mail(&other);
    // One session ends: the first address has room again.
    send_mail(&held.pop().unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (stream, greeting) = connect_from(addr, "127.0.0.1");
        if greeting.starts_with("220") {
            send_mail(&stream);
            break;
        }
        // The ended session's slot is freed when gale sees it close.
        assert!(Instant::now() < deadline, "still refused: {greeting:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
