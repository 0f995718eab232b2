//! Fault-injection soak of the real binary: SMTP and HTTP clients send
//! without pause while, on a schedule, backends are killed and restarted,
//! frozen with SIGSTOP and thawed, made to greet `421` or to accept and
//! never answer; the balancer plugin is swapped, the config reloaded and
//! the DNS server (BIND, updated with RFC 2136) stopped and started.
//!
//! Every client session is counted as succeeded, deferred (a `4xx` reply:
//! the client keeps the mail and retries, nothing is lost) or failed. The
//! only failures allowed are sessions that were in flight on a backend
//! when it was killed: before each kill the backend is frozen, gale's
//! count of sessions on it read, then it is killed, so that count bounds
//! the sessions it can take down. gale's RSS and open descriptors are read
//! before the load and after it has drained.
//!
//! Bounded: `GALE_SOAK_SECS` of faults (40 by default, 300 for
//! `bench/soak.sh`), one fault every `GALE_SOAK_STEP_MS` (1500). The
//! report goes to stderr and to `target/artifacts/soak.md`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::{HttpConnection, Session};
use support::conf::Conf;
use support::named::{KEY_NAME, KEY_SECRET, Named, addresses};
use support::process::{Gale, Nginx, SmtpSink, free_port, signal};
use support::smtp::{Backend, Behaviour};

/// What a client session came to.
#[derive(Default)]
struct Tally {
    attempted: AtomicU64,
    succeeded: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the report.
    why: Mutex<Vec<String>>,
}

enum Outcome {
    Succeeded,
    Deferred,
    Failed(String),
}

impl Tally {
    fn count(&self, outcome: Outcome) {
        self.attempted.fetch_add(1, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Deferred => {
                // As an MTA does with deferred mail, try later rather than
                // at once: a client that loops on 421 measures nothing.
                std::thread::sleep(Duration::from_millis(200));
                &self.deferred
            }
            Outcome::Failed(why) => {
                let mut list = self.why.lock().unwrap();
                if list.len() < 10 {
                    list.push(why);
                }
                &self.failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One SMTP session through gale: greeting, one message, QUIT.
fn smtp_session(addr: SocketAddr) -> Outcome {
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The greeting, read line by line: nothing follows it until EHLO, so
    // the reader holds no bytes the session needs.
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if let Err(e) = reader.read_line(&mut line) {
            return Outcome::Failed(format!("greeting: {e}"));
        }
        if line.starts_with('4') {
            return Outcome::Deferred;
        }
        if !line.starts_with("220") {
            return Outcome::Failed(format!("greeting: {line:?}"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    match Session::greeted(stream).try_send_mail() {
        Ok(()) => Outcome::Succeeded,
        // A 4xx reply: the client keeps the message and tries later.
        Err(e) if e.to_string().contains("got \"4") => Outcome::Deferred,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Up to 20 GETs on one kept-alive connection through gale, each counted.
fn http_connection(addr: SocketAddr, tally: &Tally, stop: &AtomicBool) {
    let mut conn = match HttpConnection::open(addr) {
        Ok(c) => c,
        Err(e) => return tally.count(Outcome::Failed(format!("connect: {e}"))),
    };
    for _ in 0..20 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sent = conn.send(b"GET / HTTP/1.1\r\nHost: soak.test\r\n\r\n");
        let response = sent.and_then(|()| conn.response(false));
        match response {
            Ok(r) if r.status == 200 => {
                tally.count(Outcome::Succeeded);
                if r.header("connection") == Some("close") {
                    return;
                }
            }
            Ok(r) => {
                tally.count(Outcome::Failed(format!("{} {}", r.status, r.text().trim())));
                return;
            }
            Err(e) => return tally.count(Outcome::Failed(e.to_string())),
        }
    }
}

/// Client threads that run `session` until `stop` (or the hard limit).
fn load(
    clients: usize,
    stop: &Arc<AtomicBool>,
    limit: Duration,
    session: impl Fn() + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    let session = Arc::new(session);
    (0..clients)
        .map(|_| {
            let (stop, session) = (stop.clone(), session.clone());
            std::thread::spawn(move || {
                let until = Instant::now() + limit;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    session();
                }
            })
        })
        .collect()
}

/// gale's admin API.
struct Admin(SocketAddr);

impl Admin {
    fn status(&self) -> serde_json::Value {
        // The admin API answers a Host that is an address (no DNS
        // rebinding), which `HttpConnection::get` does not send.
        let request = format!("GET /status HTTP/1.1\r\nHost: {}\r\n\r\n", self.0);
        let response = HttpConnection::open(self.0)
            .and_then(|mut c| c.send(request.as_bytes()).and_then(|()| c.response(false)))
            .expect("/status answers");
        assert_eq!(response.status, 200, "{}", response.text());
        serde_json::from_slice(&response.body).unwrap()
    }

    fn generation(&self) -> u64 {
        self.status()["generation"].as_u64().unwrap()
    }

    /// Every backend of every pool, as `/status` reports it.
    fn backends(&self) -> Vec<serde_json::Value> {
        let status = self.status();
        let pools = status["pools"].as_array().unwrap();
        pools
            .iter()
            .flat_map(|p| p["backends"].as_array().unwrap().clone())
            .collect()
    }

    /// Sessions (SMTP) or requests (HTTP) gale has in flight on a backend.
    fn active(&self, backend: &str) -> u64 {
        self.backends()
            .iter()
            .find(|b| b["name"] == backend)
            .and_then(|b| b["active_sessions"].as_u64())
            .unwrap_or_else(|| panic!("no backend {backend} in /status"))
    }

    fn all_up(&self) -> bool {
        self.backends().iter().all(|b| b["state"] == "up")
    }

    fn in_flight(&self) -> u64 {
        let backends = self.backends();
        backends
            .iter()
            .map(|b| b["active_sessions"].as_u64().unwrap())
            .sum()
    }
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the descriptors of a process point at (`socket:[…]`, files, …):
/// their number, and what they are for the report.
fn descriptors(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .collect()
}

/// Resident memory of a process, KiB.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// The config for a balancer (`0`: built-in weighted round-robin, `1`:
/// the same as a Wasm plugin, `2`: the test balancer first-listed) and a weight
/// variant.
fn config(
    balancer: usize,
    weights: usize,
    mta: &[(&str, SocketAddr)],
    web: &[(&str, SocketAddr)],
    named: SocketAddr,
) -> String {
    let path = |name| support::plugin(name).display().to_string();
    let conf = Conf::new().admin();
    let conf = match balancer % 3 {
        0 => conf.set("pools.mta.balancer.builtin", "weighted-round-robin"),
        1 => conf.set("pools.mta.balancer.path", path("weighted-round-robin")),
        _ => conf.set("pools.mta.balancer.path", path("first-listed")),
    };
    let mut conf = conf
        .smtp("smtp", "mta")
        .set("listeners.smtp.max_attempts", 3)
        .set("listeners.smtp.connect_timeout", "1s")
        .set("listeners.smtp.banner_timeout", "1s")
        .set("listeners.smtp.idle_timeout", "30s")
        .http("web", "web")
        .set("listeners.web.response_timeout", "10s")
        .probe("mta", "smtp", "300ms", "300ms")
        .probe("web", "http", "300ms", "300ms")
        .set("dns.zone", "example.test.")
        .set("dns.name", "mx.example.test.")
        .set("dns.ttl", 5)
        .set("dns.pool", "mta")
        .set("dns.debounce", "300ms")
        .set("dns.provider", "rfc2136")
        .set("dns.rfc2136.server", named.to_string())
        .set("dns.rfc2136.key_name", KEY_NAME)
        .set("dns.rfc2136.key_secret", KEY_SECRET)
        .set("dns.rfc2136.timeout", "500ms")
        .set("dns.rfc2136.reconcile", "1s");
    for (i, &(name, address)) in mta.iter().enumerate() {
        let weight = 1 + (i + weights) % 3;
        conf = conf.backend("mta", name, address).set(
            &format!("pools.mta.backends.{name}.weight"),
            i64::try_from(weight).unwrap(),
        );
    }
    for &(name, address) in web {
        conf = conf.backend("web", name, address);
    }
    conf.to_string()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn under_faults_mail_is_deferred_never_lost_and_gale_stays_flat() {
    let secs = env_or("GALE_SOAK_SECS", 40);
    let step = Duration::from_millis(env_or("GALE_SOAK_STEP_MS", 1500));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Built (if need be) now, not in the middle of the faults.
    support::plugin("weighted-round-robin");
    support::plugin("first-listed");

    let mut named = Named::start(free_port());
    let a_addr: SocketAddr = format!("127.0.0.21:{}", free_port()).parse().unwrap();
    let b_addr: SocketAddr = format!("127.0.0.22:{}", free_port()).parse().unwrap();
    let mut a = SmtpSink::start_at(a_addr);
    let b = SmtpSink::start_at(b_addr);
    let c = rt.block_on(Backend::start_on(
        "127.0.0.23:0".parse().unwrap(),
        Behaviour::Sink,
        None,
    ));
    let (w1_port, w2_port) = (free_port(), free_port());
    let mut w1 = Nginx::start(w1_port, "w1");
    let w2 = Nginx::start(w2_port, "w2");
    let mta = [("a", a_addr), ("b", b_addr), ("c", c.address)];
    let web = [("w1", w1.address), ("w2", w2.address)];
    let gale = Gale::start(&config(0, 0, &mta, &web, named.address));
    let admin = Admin(gale.admin_address());
    let pid = gale.child.id();
    wait("every backend up", Duration::from_secs(10), || {
        admin.all_up()
    });
    let all: std::collections::BTreeSet<String> = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
        .map(String::from)
        .into();
    wait(
        "BIND has the three records",
        Duration::from_secs(10),
        || addresses(named.address, false) == all,
    );
    let fds_before = descriptors(pid);
    let before = (rss(pid), fds_before.len());

    let (smtp, http) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(secs + 60);
    let (smtp_addr, web_addr) = (gale.address("smtp"), gale.address("web"));
    let mut clients = {
        let tally = smtp.clone();
        load(6, &stop, limit, move || {
            tally.count(smtp_session(smtp_addr))
        })
    };
    clients.extend({
        let (tally, stop2) = (http.clone(), stop.clone());
        load(3, &stop, limit, move || {
            http_connection(web_addr, &tally, &stop2)
        })
    });

    // The schedule, repeated until the time is up. Killing a, freezing b
    // and c greeting 421 overlap, so that for a moment no backend can take
    // a session: those clients get gale's 421 and retry later.
    let faults = [
        "kill a",
        "freeze b",
        "c greets 421",
        "restart a",
        "thaw b",
        "c accepts and never answers",
        "c answers again",
        "swap the balancer plugin",
        "reload the config",
        "stop BIND",
        "start BIND",
        "kill w1",
        "restart w1",
        "freeze w2",
        "thaw w2",
    ];
    let (mut killed_smtp, mut killed_http) = (0, 0);
    let (mut reloads, mut generation) = (0, admin.generation());
    let started = Instant::now();
    let mut injected = 0;
    let mut rss_peak = before.0;
    while started.elapsed() < Duration::from_secs(secs) || injected % faults.len() != 0 {
        let fault = faults[injected % faults.len()];
        match fault {
            "kill a" => {
                // Frozen first, so no new session reaches it between the
                // count and the kill.
                signal(a.child.id(), "STOP");
                killed_smtp += admin.active("a");
                let _ = a.child.kill();
                let _ = a.child.wait();
            }
            "restart a" => a = SmtpSink::start_at(a_addr),
            "freeze b" => signal(b.child.id(), "STOP"),
            "thaw b" => signal(b.child.id(), "CONT"),
            "c greets 421" => c.set_behaviour(Behaviour::Busy),
            "c accepts and never answers" => c.set_behaviour(Behaviour::Silent),
            "c answers again" => c.set_behaviour(Behaviour::Sink),
            "swap the balancer plugin" | "reload the config" => {
                reloads += 1;
                gale.rewrite_config(&config(reloads, reloads, &mta, &web, named.address));
                generation += 1;
                wait("the reload applied", Duration::from_secs(10), || {
                    admin.generation() >= generation
                });
            }
            "stop BIND" => named.stop(),
            "start BIND" => named.resume(),
            "kill w1" => {
                signal(w1.child.id(), "STOP");
                killed_http += admin.active("w1");
                let _ = w1.child.kill();
                let _ = w1.child.wait();
            }
            "restart w1" => w1 = Nginx::start(w1_port, "w1"),
            "freeze w2" => signal(w2.child.id(), "STOP"),
            "thaw w2" => signal(w2.child.id(), "CONT"),
            _ => unreachable!(),
        }
        injected += 1;
        rss_peak = rss_peak.max(rss(pid));
        eprintln!(
            "{:>5.1} s  {fault:<28} smtp {}/{} ok, http {}/{} ok",
            started.elapsed().as_secs_f64(),
            smtp.get(&smtp.succeeded),
            smtp.get(&smtp.attempted),
            http.get(&http.succeeded),
            http.get(&http.attempted),
        );
        std::thread::sleep(step);
    }
    let faulted = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    wait("sessions drained", Duration::from_secs(20), || {
        admin.in_flight() == 0
    });
    wait("every backend up again", Duration::from_secs(10), || {
        admin.all_up()
    });
    wait(
        "BIND has the three records again",
        Duration::from_secs(10),
        || addresses(named.address, false) == all,
    );
    let fds_after = descriptors(pid);
    let after = (rss(pid), fds_after.len());
    // What the descriptors are: sockets (listeners, idle pooled backend
    // connections), plugin code (the copy-on-write images of modules'
    // initial memories, one per module with data of each generation
    // alive: the running one, the previous one kept for a rollback during
    // `rollback_window`; cache entries are verified and loaded from
    // memory, so wasmtime keeps these in memfds, not in `.cwasm` files as
    // it did when it mapped them), anything else.
    let kinds = |fds: &[String]| {
        let sockets = fds.iter().filter(|f| f.starts_with("socket:")).count();
        let code = fds
            .iter()
            .filter(|f| f.ends_with(".cwasm") || f.contains("memfd:wasm-memory-image"))
            .count();
        (sockets, code, fds.len() - sockets - code)
    };
    let (kinds_before, kinds_after) = (kinds(&fds_before), kinds(&fds_after));
    let reload_errors: Vec<String> = admin.status()["reloads"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ok"] == false)
        .map(|e| e.to_string())
        .collect();

    let row = |t: &Tally, allowed: u64| {
        [
            t.get(&t.attempted),
            t.get(&t.succeeded),
            t.get(&t.deferred),
            t.get(&t.failed),
            allowed,
        ]
    };
    let (s, h) = (row(&smtp, killed_smtp), row(&http, killed_http));
    let mib = |kib: u64| kib as f64 / 1024.0;
    let report = format!(
        "{:.0} s of faults ({injected} injected: {} of each of {} kinds, one every {:?}), \
         6 SMTP and 3 HTTP clients without pause\n\n\
         | | SMTP sessions | HTTP requests |\n|---|---:|---:|\n\
         | attempted | {} | {} |\n| succeeded | {} | {} |\n\
         | deferred with 4xx (not lost) | {} | {} |\n| failed | {} | {} |\n\
         | in flight on a backend when it was killed | {} | {} |\n\n\
         | gale | before the load | after it drained |\n|---|---:|---:|\n\
         | RSS, MiB | {:.1} | {:.1} (peak {:.1}) |\n| open file descriptors | {} | {} |\n\
         | of them sockets / plugin code / other | {} / {} / {} | {} / {} / {} |\n\n\
         {reloads} reloads by config file change (balancer swapped between built-in, Wasm \
         weighted round-robin and the test balancer first-listed, and weights changed), all applied; BIND \
         stopped and started again {} time(s), its records back to all three backends afterwards.\n",
        faulted.as_secs_f64(),
        injected / faults.len(),
        faults.len(),
        step,
        s[0],
        h[0],
        s[1],
        h[1],
        s[2],
        h[2],
        s[3],
        h[3],
        s[4],
        h[4],
        mib(before.0),
        mib(after.0),
        mib(rss_peak),
        before.1,
        after.1,
        kinds_before.0,
        kinds_before.1,
        kinds_before.2,
        kinds_after.0,
        kinds_after.1,
        kinds_after.2,
        injected / faults.len(),
    );
    eprintln!("\n{report}");
    let smtp_why = smtp.why.lock().unwrap().clone();
    let http_why = http.why.lock().unwrap().clone();
    eprintln!("SMTP failures: {smtp_why:#?}\nHTTP failures: {http_why:#?}");
    let artifacts = support::workspace().join("target").join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("soak.md"), &report).unwrap();

    assert!(reload_errors.is_empty(), "{reload_errors:#?}");
    assert!(s[1] > 0 && h[1] > 0, "{report}");
    assert!(
        s[3] <= killed_smtp,
        "SMTP sessions lost: {report}\n{smtp_why:#?}"
    );
    assert!(
        h[3] <= killed_http,
        "HTTP requests lost: {report}\n{http_why:#?}"
    );
    // Flat: idle before and after, the same descriptors but for idle
    // pooled connections to the two HTTP backends (at most one per client
    // each) and the code of at most a few generations; a leak per session
    // would show in the thousands. Memory within allocator slack.
    assert!(
        kinds_after.2 <= kinds_before.2,
        "descriptors grew: {report}"
    );
    assert!(
        kinds_after.0 <= kinds_before.0 + 6,
        "sockets grew: {report}"
    );
    assert!(kinds_after.1 <= 4 * 4, "plugin code piles up: {report}");
    assert!(
        after.0 <= before.0 * 3 / 2 + 16 * 1024,
        "RSS grew: {report}"
    );
    drop((w1, w2, a, b, c));
}
