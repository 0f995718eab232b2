//! Idle connections cannot exhaust memory (SECURITY.md): thousands of
//! connections that send nothing, keep alive after one request, wait on
//! HTTP/2 after SETTINGS, or sit in an SMTP session, cost gale at most
//! 4 KiB of RSS each; and a
//! listener's `max_buffer_mb` holds what its connections buffer near the
//! limit when clients send large partial heads.
//!
//! The RSS figures are the `gale` process's own (`/proc/PID/status`),
//! before and after the connections are open, each kind on a gale of its
//! own. The test raises its own descriptor limit to what it needs.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::conf::Conf;
use support::http::{Behaviour, HttpBackend, web};
use support::process::{Gale, scrape, value};

/// Idle client connections per HTTP/1 case.
const HTTP_CONNECTIONS: usize = 10_000;
/// SMTP sessions: each holds a client and a backend socket in gale, and
/// the other ends of both in this test (the backend runs in it), so
/// 5,000 sessions (and the 1,000 opened first) need 12,000 descriptors on
/// each side.
const SMTP_SESSIONS: usize = 5_000;
/// Connections opened before waiting for gale to accept them.
const BATCH: usize = 500;
/// What one idle connection may cost.
const BUDGET: f64 = 4096.0;

/// Descriptors this test process may need: 12,000 for the SMTP case (see
/// [`SMTP_SESSIONS`]), and some for everything else.
const NOFILE: u64 = 13_000;

/// Raise this process's descriptor limit to [`NOFILE`] (the gales it
/// starts inherit it), once for both tests, or fail saying why.
fn raise_nofile() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write and read the struct given.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            // Root may raise the hard limit too.
            limit.rlim_max = limit.rlim_max.max(NOFILE);
            limit.rlim_cur = limit.rlim_cur.max(NOFILE);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                panic!(
                    "cannot raise the descriptor limit to {NOFILE}: {} (ulimit -Hn is lower)",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024.0
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Wait until gale holds at least `n` descriptors (it has accepted every
/// connection made), or fail after 60 s.
fn wait_descriptors(pid: u32, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_descriptors(pid) < n {
        assert!(
            Instant::now() < deadline,
            "gale holds {} descriptors, not {n}",
            open_descriptors(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connections waiting to be accepted on the IPv4 listening socket at
/// `address` (a listening socket's `rx_queue` in `/proc/net/tcp`).
fn accept_backlog(address: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = address else {
        panic!("{address} is not IPv4");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields[1] == local && fields[3] == "0A")
        .map(|fields| {
            let rx = fields[4].split(':').nth(1).expect("tx_queue:rx_queue");
            u64::from_str_radix(rx, 16).unwrap()
        })
        .unwrap_or_else(|| panic!("no listening socket at {local} in /proc/net/tcp"))
}

/// Read from `stream` until `end` has arrived.
fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(end.len()).any(|w| w == end) {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

fn get(address: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .unwrap();
    let head = read_until(&mut s, b"\r\n\r\n");
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    s
}

/// RSS per connection of `gale` for `n` connections that `open` makes
/// (each holding `descriptors` in gale). Measured after a first fifth as
/// many, so that memory the allocator holds from before (freed, not given
/// back) is used up first and cannot hide what connections cost.
fn cost(gale: &Gale, n: usize, descriptors: usize, open: impl Fn() -> TcpStream) -> f64 {
    let pid = gale.child.id();
    let base = open_descriptors(pid);
    let mut held = Vec::new();
    // In batches, each accepted before the next: connections made faster
    // than gale accepts them overflow the listen backlog, and the kernel
    // drops their SYNs to be sent again a second later.
    let mut open_more = |count: usize| {
        for _ in 0..count / BATCH {
            held.extend((0..BATCH).map(|_| open()));
            // Less a few: `base` may have counted a probe's connection.
            wait_descriptors(pid, base + held.len() * descriptors - 4);
        }
    };
    open_more(n / 5);
    let before = rss_bytes(pid);
    open_more(n);
    let after = rss_bytes(pid);
    (after - before) / n as f64
}

#[test]
fn idle_connections_cost_at_most_4_kib_each() {
    raise_nofile();
    let backend = HttpBackend::start("idle", Behaviour::Respond);
    let web = web(&[("idle", backend.address, 1)])
        .set("listeners.web.header_timeout", "5m")
        .set("listeners.web.max_sessions", 20000)
        .to_string();

    // Connections that have sent nothing yet.
    let gale = Gale::start_warm(&web);
    let address = gale.address("web");
    let silent = cost(&gale, HTTP_CONNECTIONS, 1, || {
        TcpStream::connect(address).unwrap()
    });
    drop(gale);

    // Connections kept alive after one request.
    let gale = Gale::start_warm(&web);
    let address = gale.address("web");
    let kept = cost(&gale, HTTP_CONNECTIONS, 1, || get(address));
    drop(gale);

    // HTTP/2 connections (h2c by prior knowledge) that have exchanged
    // SETTINGS and wait for a request.
    let gale = Gale::start_warm(&web);
    let address = gale.address("web");
    let h2 = cost(&gale, HTTP_CONNECTIONS, 1, || {
        let mut s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The preface, then an empty SETTINGS frame.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        let mut frame = [0u8; 9];
        s.read_exact(&mut frame).unwrap();
        assert_eq!(frame[3], 4, "gale's first frame is its SETTINGS: {frame:?}");
        // Acknowledged.
        s.write_all(b"\0\0\0\x04\x01\0\0\0\0").unwrap();
        s
    });
    drop(gale);

    // SMTP sessions waiting for the client's first command, with their
    // backend connections.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mta = runtime.block_on(support::smtp::Backend::start(
        support::smtp::Behaviour::Sink,
    ));
    let gale = Gale::start_warm(
        &Conf::new()
            .smtp("mail", "mta")
            .set("listeners.mail.idle_timeout", "5m")
            .set("listeners.mail.max_sessions", 20000)
            .set("pools.mta.probe.kind", "tcp")
            .set("pools.mta.probe.interval", "1h")
            .backend("mta", "mta", mta.address)
            .to_string(),
    );
    let address = gale.address("mail");
    let greeted = || {
        let mut s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The test backend's greeting, relayed whole.
        let greeting = read_until(&mut s, b"\r\n220 ready\r\n");
        assert!(greeting.starts_with(b"220-"), "{greeting:?}");
        s
    };
    let smtp = cost(&gale, SMTP_SESSIONS, 2, greeted);

    eprintln!(
        "RSS per idle connection: HTTP/1 silent {silent:.0} B, HTTP/1 kept alive {kept:.0} B, \
         HTTP/2 {h2:.0} B, SMTP session with its backend {smtp:.0} B"
    );
    for (what, bytes) in [
        ("silent", silent),
        ("kept alive", kept),
        ("http/2", h2),
        ("smtp", smtp),
    ] {
        assert!(
            bytes <= BUDGET,
            "an idle {what} connection costs {bytes:.0} bytes"
        );
    }
}

#[test]
fn a_listener_holds_its_buffers_near_max_buffer_mb() {
    raise_nofile();
    let backend = HttpBackend::start("capped", Behaviour::Respond);
    let toml = web(&[("capped", backend.address, 1)])
        .set("listeners.web.header_timeout", "1m")
        .set("listeners.web.max_buffer_mb", 1)
        .admin()
        .to_string();
    let gale = Gale::start_warm(&toml);
    let address = gale.address("web");
    let limit = 1024.0 * 1024.0;
    let buffered = |gale: &Gale| {
        value(
            &scrape(gale),
            "gale_listener_buffer_bytes",
            &[("listener", "web")],
        )
    };
    let refused = |gale: &Gale| {
        value(
            &scrape(gale),
            "gale_error_replies_total",
            &[("listener", "web"), ("code", "503")],
        )
    };

    // Clients that each send 20 KB of a head that never ends: gale buffers
    // them (up to 64 KiB each), so 200 of them would hold ~6 MiB.
    let partial = [
        b"GET / HTTP/1.1\r\nHost: capped.test\r\nX-Pad: ".as_slice(),
        &[b'a'; 20_000],
    ]
    .concat();
    let pid = gale.child.id();
    let base = open_descriptors(pid);
    let mut hogs = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(address).unwrap();
        s.write_all(&partial).unwrap();
        hogs.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused(&gale) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no 503 for the heads over the limit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = buffered(&gale);
    // One step of growth (a 16 KiB read, doubled by the buffer) past it.
    assert!(
        held <= limit + 64.0 * 1024.0,
        "{held} bytes buffered against a limit of {limit}"
    );
    assert!(held >= limit / 2.0, "only {held} bytes buffered");

    // Once the clients are gone, their buffers are no longer counted and
    // the listener serves again. Past the limit gale stopped accepting, so
    // most clients left from the kernel's backlog: gale accepts them once
    // the first ones' buffers are freed and reads their heads, so the
    // count rises again after a first zero. Wait for the backlog to be
    // empty, then for gale to have let every client go (its descriptors
    // back to where they were, one spare for a health probe).
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(20);
    while accept_backlog(address) > 0 || buffered(&gale) > 0.0 || open_descriptors(pid) > base + 1 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still counted, {} descriptors held ({base} before), {} clients \
             in the backlog, after every client left",
            buffered(&gale),
            open_descriptors(pid),
            accept_backlog(address)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(get(address));
}
