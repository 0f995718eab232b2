//! HTTP listeners of the running `gale` binary, driven by curl and raw
//! sockets against in-test hyper backends: weights, h2c and HTTP/1.1,
//! dead backends skipped, no POST sent twice, every error status on cue,
//! slow headers cut off, a 100 MB upload streamed with flat memory, and
//! real nginx backends.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::http::{Behaviour, HttpBackend, web};
use support::in_process::InProcess;
use support::process::{Gale, Nginx, curl, curl_output, free_port};

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn url(gale: &Gale) -> String {
    format!("http://{}/", gale.address("web"))
}

/// `n` requests on one curl keep-alive connection: the status of each.
fn statuses(gale: &Gale, n: usize, extra: &[&str]) -> Vec<u16> {
    let url = url(gale);
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-w", "%{http_code}\\n"]);
    for _ in 0..n {
        // -o applies to one URL only.
        args.extend(["-o", "/dev/null", &url]);
    }
    curl_output(&args)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn weights_are_respected_over_http1_and_h2c() {
    let a = HttpBackend::start("a", Behaviour::Respond);
    let b = HttpBackend::start("b", Behaviour::Respond);
    let gale = Gale::start(&web(&[("a", a.address, 3), ("b", b.address, 1)]).to_string());
    assert_eq!(statuses(&gale, 40, &[]), vec![200; 40]);
    assert_eq!((a.requests(), b.requests()), (30, 10));

    let version = curl_output(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        &url(&gale),
    ]);
    assert_eq!(version, "200 2");
    // One request per curl: curl 7.88 sends nothing for the second URL on
    // a reused h2c connection (against any server; hyper's own too).
    for _ in 0..7 {
        assert_eq!(statuses(&gale, 1, &["--http2-prior-knowledge"]), vec![200]);
    }
    assert_eq!((a.requests(), b.requests()), (36, 12));

    // The backend saw the client's address; the client kept its Host.
    let headers = curl_output(&["-D", "-", "-o", "/dev/null", &url(&gale)]);
    assert!(
        headers.contains("x-saw-forwarded-for: 127.0.0.1"),
        "{headers}"
    );
}

#[test]
fn a_dead_backend_is_skipped_without_client_errors() {
    let a = HttpBackend::start("a", Behaviour::Respond);
    let gale = Gale::start(&web(&[("dead", closed_port(), 1), ("a", a.address, 1)]).to_string());
    assert_eq!(statuses(&gale, 20, &[]), vec![200; 20]);
    assert_eq!(a.requests(), 20);
    gale.wait_log("backend left rotation", Duration::from_secs(10));
}

#[test]
fn a_post_that_reached_a_backend_is_never_sent_twice() {
    let dropper = HttpBackend::start("dropper", Behaviour::DropAfterReading);
    let good = HttpBackend::start("good", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("dropper", dropper.address, 100), ("good", good.address, 1)]).to_string(),
    );
    let (code, body) = curl(&["-X", "POST", "--data", "charge=1", &url(&gale)]);
    assert_eq!(code, 502, "{body}");
    assert_eq!((dropper.requests(), good.requests()), (1, 0));
    let line = gale.wait_log("http request failed", Duration::from_secs(5));
    assert!(line.contains("dropper: before a response"), "{line}");

    // The same failure on a GET is safe to retry.
    let (code, body) = curl(&[&url(&gale)]);
    assert_eq!((code, body.as_str()), (200, "good"));
    assert_eq!((dropper.requests(), good.requests()), (2, 1));
}

#[test]
fn each_error_status_is_produced_on_cue() {
    // No backend can take it: 503 with Retry-After.
    let gale = Gale::start(&web(&[("x", closed_port(), 1), ("y", closed_port(), 1)]).to_string());
    let headers = curl_output(&["-D", "-", "-o", "/dev/null", &url(&gale)]);
    assert!(headers.starts_with("HTTP/1.1 503"), "{headers}");
    assert!(headers.contains("retry-after: 10"), "{headers}");
    drop(gale);

    // No answer within response_timeout: 504, and no retry.
    let hang = HttpBackend::start("hang", Behaviour::Hang);
    let other = HttpBackend::start("other", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("hang", hang.address, 100), ("other", other.address, 1)])
            .set("listeners.web.response_timeout", "300ms")
            .to_string(),
    );
    let (code, body) = curl(&[&url(&gale)]);
    assert_eq!(code, 504, "{body}");
    assert_eq!(other.requests(), 0);

    // Not HTTP at all: 400.
    let mut raw = TcpStream::connect(gale.address("web")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = raw.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
}

#[test]
fn slow_request_headers_are_cut_off() {
    let a = HttpBackend::start("a", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("a", a.address, 1)])
            .set("listeners.web.header_timeout", "300ms")
            .to_string(),
    );
    let mut slow = TcpStream::connect(gale.address("web")).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // ... and the rest never comes.
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "still open after {took:?}");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
    assert_eq!(a.requests(), 0);
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_100_mb_upload_streams_through_with_flat_memory() {
    let sink = HttpBackend::start("sink", Behaviour::Respond);
    let gale = Gale::start(&web(&[("sink", sink.address, 1)]).to_string());
    assert_eq!(statuses(&gale, 3, &[]), vec![200; 3]);
    let before = peak_rss_kib(gale.child.id());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&file).unwrap();
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let upload = format!("@{}", file.display());
    let (code, body) = curl(&["-X", "POST", "--data-binary", &upload, &url(&gale)]);
    assert_eq!((code, body.as_str()), (200, "sink"));
    assert_eq!(
        sink.body_bytes.load(std::sync::atomic::Ordering::SeqCst),
        100 << 20
    );
    let grew = peak_rss_kib(gale.child.id()).saturating_sub(before);
    eprintln!("peak RSS grew {grew} KiB for a 100 MiB upload");
    assert!(grew < 20 * 1024, "peak RSS grew {grew} KiB");
}

#[test]
fn real_nginx_backends_share_requests_and_a_killed_one_is_skipped() {
    let mut a = Nginx::start(free_port(), "a");
    let b = Nginx::start(free_port(), "b");
    let gale = Gale::start(&web(&[("a", a.address, 1), ("b", b.address, 1)]).to_string());
    let bodies = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let (code, body) = curl(&[&url(&gale)]);
                assert_eq!(code, 200, "{body}");
                body
            })
            .collect()
    };
    let first = bodies(10);
    assert_eq!(first.iter().filter(|b| *b == "a").count(), 5, "{first:?}");

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let after = bodies(10);
    assert!(after.iter().all(|b| b == "b"), "{after:?}");
    gale.wait_line(&["left rotation", "backend=a"], Duration::from_secs(10));
}

#[test]
fn https_offers_http2_and_http1_by_alpn() {
    let a = HttpBackend::start("a", Behaviour::Respond);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = support::process::self_signed(dir.path());
    let gale = Gale::start(
        &web(&[("a", a.address, 1)])
            .set("listeners.web.tls.cert", cert.to_str().unwrap())
            .set("listeners.web.tls.key", key.to_str().unwrap())
            .to_string(),
    );
    let https = format!("https://{}/", gale.address("web"));
    let cacert = cert.display().to_string();
    let fetch = |version: &str| {
        curl_output(&[
            "--cacert",
            &cacert,
            version,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &https,
        ])
    };
    let h2 = fetch("--http2");
    assert!(h2.ends_with("200 2"), "{h2}");
    assert!(h2.contains("x-saw-proto: https"), "{h2}");
    let h1 = fetch("--http1.1");
    assert!(h1.ends_with("200 1.1"), "{h1}");
    assert_eq!(a.requests(), 2);
}

#[test]
fn a_stalled_request_body_is_cut_off_after_the_idle_timeout() {
    let a = HttpBackend::start("a", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("a", a.address, 1)])
            .set("listeners.web.idle_timeout", "300ms")
            .to_string(),
    );
    let mut slow = TcpStream::connect(gale.address("web")).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    // ... and the other 90 bytes never come.
    let mut reply = Vec::new();
    let _ = slow.read_to_end(&mut reply);
    let took = started.elapsed();
    let reply = String::from_utf8_lossy(&reply);
    // The client is the one that stalled: 408, not a gateway error.
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    let line = gale.wait_log("http request failed", Duration::from_secs(5));
    assert!(line.contains("idle_timeout"), "{line}");
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let slow = HttpBackend::start("slow", Behaviour::Slow(700));
    let mut gale = Gale::start(&web(&[("slow", slow.address, 1)]).to_string());
    let url = url(&gale);
    let request = std::thread::spawn(move || curl(&[&url]));
    let started = Instant::now();
    while slow.requests() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the request never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    support::process::signal(gale.child.id(), "TERM");
    assert_eq!(request.join().unwrap(), (200, "slow".to_string()));
    let status = gale.child.wait().unwrap();
    assert!(status.success(), "gale exited with {status}");
}

#[test]
fn backend_connections_are_reused_within_the_keepalive_timeout_only() {
    // Backend connections opened for 5 sequential requests from separate
    // clients (the probe's own connections excluded: the first one is
    // waited for, the next comes 10 s later; counted from after the first
    // request).
    let opened = |keepalive: Option<&str>| {
        let backend = HttpBackend::start("a", Behaviour::Respond);
        let toml = web(&[("a", backend.address, 1)]);
        let toml = match keepalive {
            Some(timeout) => toml.set("pools.web.keepalive_timeout", timeout),
            None => toml,
        }
        .to_string();
        let gale = Gale::start(&toml);
        let connections = || {
            backend
                .connections
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        // The first probe (a TCP connect at start) counted before any
        // request: under load it can come after the first answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while connections() == 0 {
            assert!(std::time::Instant::now() < deadline, "no probe in 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(curl(&[&url(&gale)]).0, 200);
        let before = connections();
        for _ in 0..4 {
            assert_eq!(curl(&[&url(&gale)]).0, 200);
        }
        assert_eq!(backend.requests(), 5);
        connections() - before
    };
    assert_eq!(opened(None), 0, "kept-alive connection not reused");
    // Each curl takes longer than this to start.
    assert_eq!(opened(Some("1ms")), 4);
}

#[test]
fn an_idle_http2_connection_is_closed_though_it_answers_pings() {
    let backend = HttpBackend::start("a", Behaviour::Respond);
    let gale = Gale::start(
        &web(&[("a", backend.address, 1)])
            .set("listeners.web.header_timeout", "300ms")
            .to_string(),
    );
    // h2c by prior knowledge, frame by frame: the preface and empty
    // SETTINGS, then every SETTINGS and PING of gale's answered, as any
    // HTTP/2 library does, and no request.
    let mut s = TcpStream::connect(gale.address("web")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let started = Instant::now();
    let (mut pings, mut goaway) = (0, false);
    // Bounded: gale's pings would keep the loop going for ever.
    while started.elapsed() < Duration::from_secs(5) {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).unwrap();
        let answered = match (head[3], head[4]) {
            (4, 0) => s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]),
            (6, 0) => {
                pings += 1;
                let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                s.write_all(&ack)
            }
            (7, _) => {
                goaway = true;
                Ok(())
            }
            _ => Ok(()),
        };
        if answered.is_err() {
            break;
        }
    }
    let open = started.elapsed();
    eprintln!("closed after {open:?} ({pings} pings answered)");
    assert!(goaway, "no GOAWAY before the close");
    assert!(open < Duration::from_secs(2), "open for {open:?}");
}

#[test]
fn http2_requests_follow_the_client_field_rules_of_http1() {
    let backend = HttpBackend::start("echo", Behaviour::Echo);
    let gale = Gale::start(&web(&[("echo", backend.address, 1)]).to_string());
    let h2 = "--http2-prior-knowledge";
    let seen = curl_output(&[
        h2,
        "-H",
        "X-Real-IP: 10.6.6.6",
        "-H",
        "X-Forwarded-Host: admin.internal",
        "-H",
        "True-Client-IP: 10.6.6.6",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Kept: yes",
        &url(&gale),
    ]);
    let lines: Vec<&str> = seen.lines().take_while(|l| !l.is_empty()).collect();
    for gone in ["x-real-ip", "x-forwarded-host", "true-client-ip"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} in {seen}"
        );
    }
    assert!(lines.contains(&"x-forwarded-proto: http"), "{seen}");
    assert!(lines.contains(&"x-kept: yes"), "{seen}");

    // A refused request's body is read to its end (up to a limit), not
    // dropped: dropping it resets the stream while the client still
    // uploads, and curl then reports a stream error instead of the 400.
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload");
    std::fs::write(&upload, vec![b'x'; 2 << 20]).unwrap();
    let upload = format!("@{}", upload.display());
    for lookalike in ["Content_Length: 3", "transfer_encoding: chunked"] {
        for data in ["abc", upload.as_str()] {
            let (code, body) = curl(&[h2, "-H", lookalike, "--data-binary", data, &url(&gale)]);
            assert_eq!(code, 400, "{lookalike}: {body}");
        }
    }
    assert_eq!(
        backend.requests(),
        1,
        "a refused request reached the backend"
    );
}

#[test]
fn a_backend_answering_503_is_ejected_its_get_requests_go_elsewhere_and_a_post_never() {
    let bad_port = free_port();
    let bad = Nginx::start_with_status(bad_port, "bad", 503);
    let good = Nginx::start(free_port(), "good");
    // The bad backend weighs 100 to 1, so that each request goes to it
    // first while it is in rotation.
    let gale = Gale::start(&format!(
        "[listeners.web]\nprotocol = \"http\"\naddress = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.web]\nretry_on = [\"connect\", \"error\", \"503\"]\nbase_ejection_time = \"1s\"\n\
         [pools.web.probe]\nkind = \"tcp\"\ninterval = \"200ms\"\n\
         [[pools.web.backends]]\nname = \"bad\"\naddress = \"{}\"\nweight = 100\n\
         [[pools.web.backends]]\nname = \"good\"\naddress = \"{}\"\nweight = 1\n",
        bad.address, good.address
    ));
    // A POST is never sent twice: the client gets the backend's 503.
    let (code, body) = curl(&["-X", "POST", "--data", "charge=1", &url(&gale)]);
    assert_eq!((code, body.as_str()), (503, "bad"));
    assert_eq!((bad.wait_requests(1), good.requests()), (1, 0));
    // GETs over HTTP/2 and HTTP/1.1 go on to the good backend.
    for _ in 0..2 {
        let (code, body) = curl(&["--http2-prior-knowledge", &url(&gale)]);
        assert_eq!((code, body.as_str()), (200, "good"));
    }
    // Three 503s in a row: the bad backend is ejected (one of two is
    // within max_ejection_percent); no request goes to it any more.
    gale.wait_line(&["left rotation", "backend=bad"], Duration::from_secs(5));
    assert_eq!(bad.wait_requests(3), 3);
    assert_eq!(statuses(&gale, 10, &[]), vec![200; 10]);
    assert_eq!(good.wait_requests(12), 12);
    assert_eq!(bad.requests(), 3, "an ejected backend took requests");

    // Healed, it returns after its ejection time and a passing probe.
    drop(bad);
    let healed = Nginx::start(bad_port, "healed");
    gale.wait_line(&["back in rotation", "backend=bad"], Duration::from_secs(5));
    assert_eq!(statuses(&gale, 10, &[]), vec![200; 10]);
    assert!(
        healed.requests() > 0,
        "the healed backend takes requests again"
    );
}

/// Samples of `metric` in an in-process gale's exposition whose labels
/// include every one of `labels`: (the full line's labels, value).
fn samples(gale: &InProcess, metric: &str, labels: &[&str]) -> Vec<(String, f64)> {
    let text = gale.running.server.current.load().metrics.encode();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn http1_and_http2_count_retries_and_label_failures_alike() {
    let good = HttpBackend::start("good", Behaviour::Respond);
    let dead = closed_port();
    let mut seen = Vec::new();
    // A gale of its own per protocol, so each starts from the same
    // state: `dead` first in the order (weight 100) until traffic
    // ejects it.
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let gale =
            InProcess::start(&web(&[("dead", dead, 100), ("good", good.address, 1)]).to_string());
        let url = format!("http://{}/", gale.address("web"));
        for _ in 0..6 {
            let (code, body) = curl(&[flag, &url]);
            assert_eq!(code, 200, "{flag}: {body}");
        }
        let retries = samples(&gale, "gale_retries_total", &["listener=\"web\""]);
        let failures = samples(&gale, "gale_backend_failures_total", &["backend=\"dead\""]);
        seen.push((flag, retries, failures));
    }
    let (_, retries, failures) = &seen[0];
    assert!(retries[0].1 >= 1.0, "no retry counted: {seen:?}");
    assert_eq!(failures.len(), 1, "{seen:?}");
    assert!(failures[0].0.contains("reason=\"connect\""), "{seen:?}");
    assert_eq!(
        (&seen[1].1, &seen[1].2),
        (retries, failures),
        "HTTP/2 counted otherwise than HTTP/1: {seen:?}"
    );
}

/// An address whose connects hang: a listener with a backlog of 0 whose
/// queue one connection already fills, so Linux drops further SYNs. Kept
/// alive by what it returns.
fn blackhole() -> ((socket2::Socket, TcpStream), SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(address).unwrap();
    ((socket, filler), address)
}

#[test]
fn a_connect_that_times_out_moves_on_even_for_a_post() {
    let (_hole, hole) = blackhole();
    let good = HttpBackend::start("good", Behaviour::Respond);
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let gale = InProcess::start(
            &web(&[("hole", hole, 100), ("good", good.address, 1)])
                .set("listeners.web.connect_timeout", "200ms")
                .to_string(),
        );
        let url = format!("http://{}/", gale.address("web"));
        let (code, body) = curl(&[flag, "-X", "POST", "--data", "x=1", &url]);
        assert_eq!(code, 200, "{flag}: {body}");
        let failures = samples(&gale, "gale_backend_failures_total", &["backend=\"hole\""]);
        assert_eq!(failures.len(), 1, "{flag}: {failures:?}");
        assert!(
            failures[0].0.contains("reason=\"connect\""),
            "{flag}: {failures:?}"
        );
    }
}
