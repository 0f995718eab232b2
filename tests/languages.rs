//! Plugins written in Python, JavaScript and C (`plugins/*-python`,
//! `*-js`, `*-c`), built by their own `build.sh` with their own
//! toolchains, each in front of SMTP sessions through the real `gale`
//! binary, each checked for its policy: least active sessions, sticky by
//! client IP, down at once on a 4xx greeting. All three are built against
//! contract 0.1.0 and run in this host of a later 0.1.x.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::conf::Conf;
use support::process::{Gale, curl};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// An SMTP backend that greets with its own name (`220 NAME ESMTP`), or
/// with `421 4.3.2` while `busy` is set, and accepts anything after.
struct Named {
    address: SocketAddr,
    busy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Named {
    async fn start(name: &str) -> Named {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let busy = Arc::new(AtomicBool::new(false));
        let (flag, name) = (busy.clone(), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (busy, name) = (flag.load(Ordering::SeqCst), name.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &name, busy).await;
                });
            }
        });
        Named {
            address,
            busy,
            task,
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, name: &str, busy: bool) -> std::io::Result<()> {
    if busy {
        return stream.write_all(b"421 4.3.2 shutting down\r\n").await;
    }
    let (r, mut w) = stream.split();
    w.write_all(format!("220 {name} ESMTP\r\n").as_bytes())
        .await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        if line.eq_ignore_ascii_case("QUIT") {
            return w.write_all(b"221 bye\r\n").await;
        }
        w.write_all(b"250 ok\r\n").await?;
    }
    Ok(())
}

/// A session through gale from `source` (an address on 127/8), held open;
/// the backend that took it is the name in its greeting.
struct Held {
    backend: String,
    _stream: TcpStream,
}

async fn open(gale: SocketAddr, source: IpAddr) -> Held {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(gale).await.unwrap();
    let mut greeting = String::new();
    let mut reader = BufReader::new(&mut stream);
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut greeting))
        .await
        .expect("a greeting within 10 s")
        .unwrap();
    let backend = greeting
        .strip_prefix("220 ")
        .and_then(|g| g.split_whitespace().next())
        .unwrap_or_else(|| panic!("not a 220 greeting: {greeting:?}"))
        .to_string();
    Held {
        backend,
        _stream: stream,
    }
}

/// One SMTP listener `in` on pool `p` with `backends`, an admin listener,
/// fast probes, and a compile cache shared by the tests so each component
/// is compiled once per run; the plugins with [`Conf::set`].
fn config(backends: &[(&str, SocketAddr)]) -> Conf {
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("languages-cache");
    let mut conf = Conf::new()
        .set("plugins.cache_dir", cache.display().to_string())
        .admin()
        .smtp("in", "p")
        .probe("p", "smtp", "150ms", "1s");
    for &(name, address) in backends {
        conf = conf.backend("p", name, address);
    }
    conf
}

fn status(gale: &Gale) -> Value {
    let (code, body) = curl(&[&format!("http://{}/status", gale.admin_address())]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backend<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap()
}

async fn wait_state(gale: &Gale, name: &str, healthy: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    while backend(&status(gale), name)["healthy"] != healthy {
        assert!(
            started.elapsed() < limit,
            "{name} not healthy={healthy} in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Every decision so far was the plugin's: no fallback.
fn assert_no_fallback(gale: &Gale) {
    let s = status(gale);
    assert_eq!(s["pools"][0]["failed_decisions"], 0, "{}", s["pools"][0]);
    let (_, metrics) = curl(&[&format!("http://{}/metrics", gale.admin_address())]);
    assert!(
        !metrics.contains("gale_plugin_fallbacks_total{"),
        "fallbacks: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_least_active_sessions_sends_new_sessions_to_the_idle_backend() {
    let plugin = support::foreign_plugin("least-active-python");
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let gale = Gale::start(
        &config(&[("a", a.address), ("b", b.address)])
            .set("pools.p.balancer.path", plugin.display().to_string())
            .set("pools.p.balancer.memory_mb", 32)
            .to_string(),
    );
    let (addr, here) = (gale.address("in"), "127.0.0.1".parse().unwrap());
    let drain = format!("http://{}/pools/p/backends/b/drain", gale.admin_address());
    let enable = drain.replace("/drain", "/enable");
    // Three sessions held on a while b is drained...
    assert_eq!(curl(&["-X", "POST", &drain]).0, 200);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(addr, here).await);
    }
    assert!(held.iter().all(|h| h.backend == "a"));
    // ...then the next three go to b, which has fewer in flight (a
    // round-robin would alternate).
    assert_eq!(curl(&["-X", "POST", &enable]).0, 200);
    for _ in 0..3 {
        held.push(open(addr, here).await);
    }
    let next: Vec<&str> = held[3..].iter().map(|h| h.backend.as_str()).collect();
    assert_eq!(next, ["b", "b", "b"]);
    // Level: the next alternate, ties rotating.
    let more = [open(addr, here).await, open(addr, here).await];
    let mut split: Vec<&str> = more.iter().map(|h| h.backend.as_str()).collect();
    split.sort();
    assert_eq!(split, ["a", "b"]);
    let s = status(&gale);
    assert_eq!(backend(&s, "a")["active_sessions"], 4);
    assert_eq!(backend(&s, "b")["active_sessions"], 4);
    assert_eq!(
        s["plugins"][0]["contract"], "gale:plugin/selector@0.1.0",
        "built against the previous contract"
    );
    assert_no_fallback(&gale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_ip_hash_keeps_each_client_on_one_backend_and_moves_only_the_dead_ones() {
    let plugin = support::foreign_plugin("ip-hash-js");
    let names = ["a", "b", "c"];
    let mut backends = Vec::new();
    for name in names {
        backends.push(Named::start(name).await);
    }
    let listed: Vec<(&str, SocketAddr)> = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| (*n, b.address))
        .collect();
    let gale = Gale::start(
        &config(&listed)
            .set("pools.p.balancer.path", plugin.display().to_string())
            .set("pools.p.balancer.memory_mb", 96)
            .set("pools.p.balancer.deadline", "5ms")
            .to_string(),
    );
    let addr = gale.address("in");
    let clients: Vec<IpAddr> = (2..22)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    // Each of 20 clients, three sessions: always the same backend.
    let mut home = std::collections::HashMap::new();
    for &client in &clients {
        for _ in 0..3 {
            let backend = open(addr, client).await.backend;
            let first = home.entry(client).or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "{client} moved");
        }
    }
    let mut used: Vec<&String> = home.values().collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "20 clients all on {used:?}");
    // b dies: its clients move, nobody else does.
    let dead = home.values().next().unwrap().clone();
    let index = names.iter().position(|n| *n == dead).unwrap();
    drop(backends.remove(index));
    wait_state(&gale, &dead, false, Duration::from_secs(10)).await;
    for &client in &clients {
        let now = open(addr, client).await.backend;
        if home[&client] == dead {
            assert_ne!(now, dead);
        } else {
            assert_eq!(
                now, home[&client],
                "{client} moved though its backend lives"
            );
        }
    }
    assert_no_fallback(&gale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_strict_greeting_takes_a_backend_down_on_its_first_421() {
    let plugin = support::foreign_plugin("strict-greeting-c");
    let (a, b) = (Named::start("a").await, Named::start("b").await);
    let gale = Gale::start(
        &config(&[("a", a.address), ("b", b.address)])
            .set("pools.p.health.path", plugin.display().to_string())
            .set("pools.p.health.settings.rise", 2)
            .set("pools.p.health.settings.fall", 3)
            .to_string(),
    );
    wait_state(&gale, "b", true, Duration::from_secs(5)).await;
    // A 421 greeting: down on that probe, not after fall = 3 of them.
    b.busy.store(true, Ordering::SeqCst);
    wait_state(&gale, "b", false, Duration::from_secs(5)).await;
    let s = status(&gale);
    let timeline = backend(&s, "b")["timeline"].as_array().unwrap().clone();
    // The probes that failed up to the first mark down (later probes may
    // have failed too by now).
    let first_down = timeline
        .iter()
        .rposition(|m| m["healthy"] == true)
        .map_or(0, |i| i + 1);
    let failed = timeline[..=first_down]
        .iter()
        .rev()
        .take_while(|m| m["ok"] == false)
        .count();
    assert_eq!(failed, 1, "down after one 421: {timeline:?}");
    // Sessions meanwhile all go to a.
    let here = "127.0.0.1".parse().unwrap();
    for _ in 0..4 {
        assert_eq!(open(gale.address("in"), here).await.backend, "a");
    }
    // Back after rise = 2 good greetings.
    b.busy.store(false, Ordering::SeqCst);
    wait_state(&gale, "b", true, Duration::from_secs(5)).await;
    // A refused connection is an ordinary failure: fall = 3 probes.
    drop(b);
    wait_state(&gale, "b", false, Duration::from_secs(5)).await;
    let s = status(&gale);
    let timeline = backend(&s, "b")["timeline"].as_array().unwrap().clone();
    let failures = timeline
        .iter()
        .rev()
        .skip_while(|m| m["healthy"] == false)
        .take_while(|m| m["ok"] == false)
        .count()
        + 1;
    assert_eq!(failures, 3, "down after three refusals: {timeline:?}");
    assert_eq!(s["plugins"][1]["contract"], "gale:plugin/evaluator@0.1.0");
}

#[test]
fn the_big_components_are_compiled_once_and_then_start_from_the_cache() {
    let python = support::foreign_plugin("least-active-python");
    let js = support::foreign_plugin("ip-hash-js");
    let cache = tempfile::tempdir().unwrap();
    let discard: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let toml = Conf::new()
        .set("plugins.cache_dir", cache.path().display().to_string())
        .smtp("in", "p")
        .smtp("in2", "q")
        .set("pools.p.balancer.path", python.display().to_string())
        .set("pools.p.balancer.memory_mb", 32)
        .backend("p", "a", discard)
        .set("pools.q.balancer.path", js.display().to_string())
        .set("pools.q.balancer.memory_mb", 96)
        .set("pools.q.balancer.deadline", "5ms")
        .backend("q", "a", discard)
        .to_string();
    let compiled = |gale: &Gale| {
        gale.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("compiled plugin")
                    && (l.contains("least-active-python") || l.contains("ip-hash-js"))
            })
            .count()
    };
    let started = Instant::now();
    let cold = Gale::start(&toml);
    let cold_time = started.elapsed();
    assert_eq!(compiled(&cold), 2, "both compiled on the first start");
    drop(cold);
    let started = Instant::now();
    let warm = Gale::start(&toml);
    let warm_time = started.elapsed();
    assert_eq!(compiled(&warm), 0, "nothing compiled on a restart");
    println!("start with the Python and JS plugins: cold {cold_time:?}, cached {warm_time:?}");
    assert!(warm_time < cold_time);
}

/// `gale plugin ...` with `args`: (success, stdout + stderr).
fn gale_plugin(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gale"))
        .arg("plugin")
        .args(args)
        .env(
            "GALE_CACHE_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("languages-cache"),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn plugin_check_names_the_world_runs_samples_and_fails_what_would_not_load() {
    let wrr = support::plugin("weighted-round-robin");
    let (ok, out) = gale_plugin(&["check", wrr.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("world `balancer`: exports gale:plugin/selector@0.1.3"),
        "{out}"
    );
    // Primaries 3:1; the standby only follows them, for retries.
    assert!(
        out.contains("first choice over 1000 decisions: mta-a 75.0%, mta-b 25.0%\n"),
        "{out}"
    );
    assert!(out.contains("mta-a, mta-b, mta-standby\n"), "{out}");

    let c = support::foreign_plugin("strict-greeting-c");
    let (ok, out) = gale_plugin(&["check", c.to_str().unwrap(), "--setting", "rise=3"]);
    assert!(ok, "{out}");
    assert!(out.contains("built against contract 0.1.0"), "{out}");
    assert!(out.contains("healthy, 1 greeting 421    -> DOWN"), "{out}");
    let (ok, out) = gale_plugin(&["check", c.to_str().unwrap(), "--setting", "bogus=1"]);
    assert!(!ok && out.contains("unknown setting `bogus`"), "{out}");

    let trap = support::plugin("hostile-trap");
    let (ok, out) = gale_plugin(&["check", trap.to_str().unwrap()]);
    assert!(!ok && out.contains("FAILED"), "{out}");
    let future = support::plugin("contract-0-2-0");
    let (ok, out) = gale_plugin(&["check", future.to_str().unwrap()]);
    assert!(
        !ok && out.contains("built against contract gale:plugin@0.2.0"),
        "{out}"
    );
}

#[test]
fn plugin_new_writes_skeletons_that_build_and_pass_check() {
    // The toolchains tests/run installs for the plugins in plugins/.
    support::foreign_plugin("least-active-python");
    support::foreign_plugin("ip-hash-js");
    let root = support::workspace();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();

    let (ok, out) = gale_plugin(&["new", "--lang", "rust", "my-rust", "--dir", d]);
    assert!(ok, "{out}");
    let built = std::process::Command::new(env!("CARGO"))
        .current_dir(dir.path().join("my-rust"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        // Shared across runs, so wit-bindgen is compiled once.
        .env("CARGO_TARGET_DIR", root.join("target/scaffold"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(built.success());
    let wasm = root.join("target/scaffold/wasm32-wasip2/release/my_rust.wasm");
    let (ok, out) = gale_plugin(&["check", wasm.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Its policy: primaries by weight, the standby last, the dead one never.
    assert!(out.contains("mta-a, mta-b, mta-standby\n"), "{out}");

    let (ok, out) = gale_plugin(&["new", "--lang", "python", "my-python", "--dir", d]);
    assert!(ok, "{out}");
    let built = std::process::Command::new(dir.path().join("my-python/build.sh"))
        .env(
            "COMPONENTIZE_PY",
            root.join("target/toolchains/python/bin/componentize-py"),
        )
        .status()
        .unwrap();
    assert!(built.success());
    let wasm = dir.path().join("my-python/my-python.wasm");
    let (ok, out) = gale_plugin(&["check", wasm.to_str().unwrap(), "--memory-mb", "32"]);
    assert!(ok, "{out}");
    assert!(out.contains("mta-a, mta-b, mta-standby\n"), "{out}");

    let (ok, out) = gale_plugin(&["new", "--lang", "js", "my-js", "--dir", d]);
    assert!(ok, "{out}");
    // npm install would fetch componentize-js again: borrow ip-hash-js's.
    std::os::unix::fs::symlink(
        root.join("plugins/ip-hash-js/node_modules"),
        dir.path().join("my-js/node_modules"),
    )
    .unwrap();
    let built = std::process::Command::new("node")
        .arg(dir.path().join("my-js/build.mjs"))
        .status()
        .unwrap();
    assert!(built.success());
    let wasm = dir.path().join("my-js/my-js.wasm");
    let (ok, out) = gale_plugin(&[
        "check",
        wasm.to_str().unwrap(),
        "--memory-mb",
        "96",
        "--deadline",
        "5ms",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("mta-a, mta-b, mta-standby\n"), "{out}");

    // An existing directory is never overwritten.
    let (ok, out) = gale_plugin(&["new", "--lang", "rust", "my-rust", "--dir", d]);
    assert!(!ok && out.contains("already exists"), "{out}");
}
