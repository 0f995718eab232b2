//! The admin API of the running `gale` binary, called with curl:
//! `/status`, `POST /reload`, `/metrics`, the bearer token, candidate
//! balancers in shadow mode as `/status` reports them, steering a
//! backend (drain, enable, weight) with slow start, and the limits on
//! connections a client can hold.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::client::send_mail;
use support::conf::Conf;
use support::process::{Gale, SmtpSink, curl, free_port, scrape, value};

/// One SMTP listener on pool `mta` with `backends` (name, address), and
/// the admin listener; more keys with [`Conf::set`].
fn config(backends: &[(&str, SocketAddr)]) -> Conf {
    let mut conf = Conf::new().admin().smtp("in", "mta");
    for &(name, address) in backends {
        conf = conf.backend("mta", name, address);
    }
    conf
}

/// [`config`] with every backend at `weight`.
fn weighted(backends: &[(&str, SocketAddr)], weight: i64) -> Conf {
    let mut conf = config(backends);
    for (name, _) in backends {
        conf = conf.set(&format!("pools.mta.backends.{name}.weight"), weight);
    }
    conf
}

fn url(gale: &Gale, path: &str) -> String {
    format!("http://{}{path}", gale.admin_address())
}

fn status(gale: &Gale) -> Value {
    let (code, body) = curl(&[&url(gale, "/status")]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn post_reload(gale: &Gale) -> (u16, Value) {
    let (code, body) = curl(&["-X", "POST", &url(gale, "/reload")]);
    (code, serde_json::from_str(&body).unwrap())
}

/// The value of one sample in Prometheus text, e.g.
/// `gale_reloads_total{result="failed"}`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn post_reload_swaps_generations_and_status_shows_each_result() {
    let a = SmtpSink::start(free_port());
    let conf = config(&[("a", a.address)]);
    let gale = Gale::start(&conf.to_string());
    let addr = gale.address("in");

    let s = status(&gale);
    assert_eq!(s["generation"], 1);
    assert!(s["reloads"]["last_reload"].is_null(), "{s}");
    assert_eq!(s["listeners"][0]["address"], addr.to_string());
    // Without a token, only a Host that names this machine: a page whose
    // name was made to resolve to 127.0.0.1 (DNS rebinding) is refused.
    let status_url = url(&gale, "/status");
    assert_eq!(
        curl(&["-H", "Host: rebound.example:9090", &status_url]).0,
        403
    );
    assert_eq!(curl(&["-H", "Host: localhost:9090", &status_url]).0, 200);
    assert_eq!(curl(&["-H", "Host: [::1]:9090", &status_url]).0, 200);
    assert_eq!(s["pools"][0]["backends"][0]["name"], "a");
    assert_eq!(s["pools"][0]["backends"][0]["healthy"], true);

    let (code, reply) = post_reload(&gale);
    assert_eq!(
        (code, &reply["generation"]),
        (200, &Value::from(2)),
        "{reply}"
    );
    send_mail(addr);
    gale.wait_line(&["smtp session", "generation=2"], Duration::from_secs(10));
    let last = &status(&gale)["reloads"]["last_reload"];
    assert_eq!(
        (&last["trigger"], &last["ok"], &last["generation"]),
        (&Value::from("admin"), &Value::from(true), &Value::from(2)),
        "{last}"
    );

    // A typo: the file watcher's reload fails, and so does ours.
    gale.rewrite_config(&conf.set("pools.mta.backends.a.wieght", 2).to_string());
    gale.wait_line(&["reload failed", "file change"], Duration::from_secs(10));
    let (code, reply) = post_reload(&gale);
    assert_eq!(code, 422, "{reply}");
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("gale.toml:") && error.contains("wieght"),
        "{error}"
    );
    assert_eq!(reply["serving"], 2);

    let s = status(&gale);
    let last = &s["reloads"]["last_reload"];
    assert_eq!(
        (&s["generation"], &last["ok"]),
        (&Value::from(2), &Value::from(false)),
        "{s}"
    );
    assert!(last["error"].as_str().unwrap().contains("wieght"), "{last}");
    assert_eq!(s["reloads"]["events"].as_array().unwrap().len(), 3, "{s}");
    send_mail(addr);

    let (code, metrics) = curl(&[&url(&gale, "/metrics")]);
    assert_eq!(code, 200);
    assert_eq!(
        sample(&metrics, "gale_reloads_total{result=\"ok\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "gale_reloads_total{result=\"failed\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "gale_generation"), 2.0, "{metrics}");
}

#[test]
fn with_a_token_every_call_must_carry_it() {
    let a = SmtpSink::start(free_port());
    let gale = Gale::start(
        &config(&[("a", a.address)])
            .set("admin.token", "s3cret")
            .to_string(),
    );
    let status_url = url(&gale, "/status");
    assert_eq!(curl(&[&status_url]).0, 401);
    assert_eq!(
        curl(&["-H", "Authorization: Bearer s3cre", &status_url]).0,
        401
    );
    assert_eq!(curl(&["-X", "POST", &url(&gale, "/reload")]).0, 401);
    // The one exception, for health checkers (Route 53's among them): "ok"
    // and nothing else, whatever the Host.
    assert_eq!(
        curl(&["-H", "Host: checker.example", &url(&gale, "/health")]),
        (200, "ok\n".to_string())
    );
    assert_eq!(curl(&["-X", "POST", &url(&gale, "/health")]).0, 405);
    let (code, body) = curl(&["-H", "Authorization: Bearer s3cret", &status_url]);
    assert_eq!(code, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    // The refused POST reloaded nothing.
    assert_eq!(s["generation"], 1);
    assert!(s["reloads"]["last_reload"].is_null(), "{s}");

    // The status page's form sends the token to /login once; the cookie
    // it gets back is derived from the token, script cannot read it, and
    // it opens reads only.
    assert_eq!(curl(&["-X", "POST", &url(&gale, "/login")]).0, 401);
    let headers = support::process::curl_output(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer s3cret",
        &url(&gale, "/login"),
    ]);
    let set = headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {headers}"));
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let value = set.split(';').next().unwrap();
    assert!(
        value.starts_with("gale_read=") && !value.contains("s3cret"),
        "{value}"
    );
    let cookie = format!("Cookie: {value}");
    let cookie = cookie.as_str();
    assert_eq!(curl(&["-H", cookie, &status_url]).0, 200);
    assert_eq!(curl(&["-H", "Cookie: gale_read=guess", &status_url]).0, 401);
    let drain = url(&gale, "/pools/mta/backends/a/drain");
    assert_eq!(curl(&["-X", "POST", "-H", cookie, &drain]).0, 401);
    // Without the token the page is the form, and nothing of the status.
    let (code, form) = curl(&[&url(&gale, "/")]);
    assert_eq!(code, 401);
    assert!(form.contains("id=\"token\"") && !form.contains(&a.address.to_string()));
    let (code, page) = curl(&["-H", cookie, &url(&gale, "/")]);
    assert_eq!(code, 200);
    assert!(page.contains("fetch(\"/status\""), "{page}");

    // A browser page of another origin cannot steer, even with the token.
    let bearer = "Authorization: Bearer s3cret";
    let foreign = "Origin: http://attacker.example";
    assert_eq!(
        curl(&["-X", "POST", "-H", bearer, "-H", foreign, &drain]).0,
        403
    );
    let (_, body) = curl(&["-H", bearer, &status_url]);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["pools"][0]["backends"][0]["admin_state"], "enabled");
    let own = format!("Origin: http://{}", gale.admin_address());
    assert_eq!(
        curl(&["-X", "POST", "-H", bearer, "-H", &own, &drain]).0,
        200
    );
}

/// Backends `a` and `b`, equal weights (1). Round-robin alternates a, b;
/// the test plugin `first-listed` always picks a.
fn two_backends(a: &SmtpSink, b: &SmtpSink) -> Conf {
    weighted(&[("a", a.address), ("b", b.address)], 1)
}

#[test]
fn a_shadow_candidate_is_compared_but_not_obeyed_until_promoted() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let backends = two_backends(&a, &b);
    let first_listed = support::plugin("first-listed");
    let first_listed = first_listed.to_str().unwrap();
    let gale = Gale::start(
        &backends
            .clone()
            .set("pools.mta.balancer.builtin", "weighted-round-robin")
            .set("pools.mta.candidate.path", first_listed)
            .set("pools.mta.candidate.mode", "shadow")
            .to_string(),
    );
    let addr = gale.address("in");
    for _ in 0..20 {
        send_mail(addr);
    }
    gale.wait_count("smtp session", 20, Duration::from_secs(10));
    // Round-robin decided: half the sessions went to b.
    assert_eq!(gale.log_lines("backend=b ").len(), 10);

    let s = status(&gale);
    let shadow = &s["pools"][0]["candidate"];
    assert_eq!(shadow["mode"], "shadow");
    assert!(
        shadow["plugin"].as_str().unwrap().contains("first_listed"),
        "{shadow}"
    );
    assert_eq!(
        [
            &shadow["decisions"],
            &shadow["agreed"],
            &shadow["disagreed"],
            &shadow["failed"]
        ],
        [20, 10, 10, 0].map(Value::from).each_ref(),
        "{shadow}"
    );
    assert_eq!(shadow["agreement"], 0.5);
    let sample = &shadow["disagreements"][0];
    assert_eq!(sample["client"], "127.0.0.1");
    assert_eq!(sample["active"][0], "b", "{sample}");
    assert_eq!(sample["candidate"][0], "a", "{sample}");

    // Promote: the candidate becomes the balancer.
    gale.rewrite_config(
        &backends
            .set("pools.mta.balancer.path", first_listed)
            .to_string(),
    );
    gale.wait_log("reloaded generation=2", Duration::from_secs(20));
    for _ in 0..10 {
        send_mail(addr);
    }
    let sessions = gale.wait_count(
        "smtp session listener=in generation=2",
        10,
        Duration::from_secs(10),
    );
    assert!(
        sessions.iter().all(|l| l.contains("backend=a ")),
        "{sessions:#?}"
    );
    assert!(status(&gale)["pools"][0]["candidate"].is_null());
}

#[test]
fn a_failing_candidate_costs_no_session() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let sneaky = support::plugin("hostile-sneaky");
    let gale = Gale::start(
        &two_backends(&a, &b)
            .set("pools.mta.candidate.path", sneaky.display().to_string())
            .set("pools.mta.candidate.mode", "shadow")
            .to_string(),
    );
    let addr = gale.address("in");
    // It passed the self-check; on real clients it panics every time.
    for _ in 0..10 {
        send_mail(addr);
    }
    gale.wait_count("smtp session", 10, Duration::from_secs(10));
    let pool = &status(&gale)["pools"][0];
    assert_eq!(pool["candidate"]["failed"], 10, "{pool}");
    assert_eq!(pool["candidate"]["agreement"], Value::Null);
    // The balancer in charge decided every session itself.
    assert_eq!(
        (&pool["decisions"], &pool["failed_decisions"]),
        (&Value::from(10), &Value::from(0))
    );
    // /status names the candidate's build: the SHA-256 of its file.
    let plugins = status(&gale)["plugins"].as_array().unwrap().clone();
    let candidate = plugins.iter().find(|p| p["hook"] == "candidate").unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&sneaky).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(candidate["sha256"], Value::from(hex), "{candidate}");
    assert_eq!(
        candidate["source"],
        Value::from(sneaky.display().to_string())
    );
    assert_eq!(candidate["contract"], "gale:plugin/selector@0.1.3");
    let hooks: Vec<&str> = plugins
        .iter()
        .map(|p| p["hook"].as_str().unwrap())
        .collect();
    assert_eq!(hooks, ["balancer", "health", "candidate"]);
    let (_, metrics) = curl(&[&url(&gale, "/metrics")]);
    assert_eq!(
        sample(
            &metrics,
            "gale_shadow_decisions_total{pool=\"mta\",outcome=\"failed\"}"
        ),
        10.0,
        "{metrics}"
    );
}

#[test]
fn a_drained_backend_takes_no_new_sessions_until_enabled_even_across_a_reload() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let gale = Gale::start(&two_backends(&a, &b).to_string());
    let load = support::client::Load::start(gale.address("in"), 3);
    gale.wait_line(&["smtp session", "backend=b"], Duration::from_secs(10));

    let (code, body) = curl(&["-X", "POST", &url(&gale, "/pools/mta/backends/b/drain")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admin_state\": \"draining\""), "{body}");
    // The sessions b had finish; no new one starts.
    let b_status = |s: &Value| s["pools"][0]["backends"][1].clone();
    let started = std::time::Instant::now();
    while b_status(&status(&gale))["active_sessions"] != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b never drained"
        );
    }
    let to = |name: &str| gale.log_lines(&format!("backend={name} ")).len();
    let to_b = to("b");
    gale.wait_count("backend=a ", to("a") + 50, Duration::from_secs(10));
    assert_eq!(to("b"), to_b, "a drained backend got new sessions");

    // A reload keeps it drained; the weight override rides along.
    assert_eq!(post_reload(&gale).0, 200);
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-d",
        "{\"weight\": 4}",
        &url(&gale, "/pools/mta/backends/b/weight"),
    ]);
    assert_eq!(code, 200, "{body}");
    let b_now = b_status(&status(&gale));
    assert_eq!(
        (&b_now["admin_state"], &b_now["effective_weight"]),
        (&Value::from("draining"), &Value::from(4)),
        "{b_now}"
    );
    gale.wait_count("backend=a ", to("a") + 20, Duration::from_secs(10));
    assert_eq!(to("b"), to_b, "drained state lost in the reload");

    let (code, body) = curl(&["-X", "POST", &url(&gale, "/pools/mta/backends/b/enable")]);
    assert_eq!(code, 200, "{body}");
    gale.wait_count("backend=b ", to_b + 20, Duration::from_secs(10));
    let (sent, failed) = load.stop();
    assert_eq!(failed, 0, "{failed} of {sent} sessions failed");

    // Unknown names and methods.
    assert_eq!(
        curl(&["-X", "POST", &url(&gale, "/pools/mta/backends/zz/drain")]).0,
        404
    );
    assert_eq!(
        curl(&["-X", "POST", &url(&gale, "/pools/nope/backends/b/drain")]).0,
        404
    );
    assert_eq!(curl(&[&url(&gale, "/pools/mta/backends/b/drain")]).0, 405);
    assert_eq!(
        curl(&[
            "-X",
            "PUT",
            "-d",
            "lots",
            &url(&gale, "/pools/mta/backends/b/weight")
        ])
        .0,
        400
    );
}

#[test]
fn an_enabled_backend_ramps_up_to_its_weight_over_slow_start() {
    let (a, b) = (SmtpSink::start(free_port()), SmtpSink::start(free_port()));
    let toml = weighted(&[("a", a.address), ("b", b.address)], 10)
        .set("pools.mta.slow_start", "2s")
        .to_string();
    let gale = Gale::start(&toml);
    let steer = |verb: &str| {
        curl(&[
            "-X",
            "POST",
            &url(&gale, &format!("/pools/mta/backends/b/{verb}")),
        ])
        .0
    };
    assert_eq!(steer("drain"), 200);
    assert_eq!(steer("enable"), 200);
    let enabled = std::time::Instant::now();
    let mut seen = Vec::new();
    loop {
        let w = status(&gale)["pools"][0]["backends"][1]["effective_weight"]
            .as_u64()
            .unwrap();
        seen.push((enabled.elapsed().as_millis(), w));
        if w == 10 {
            break;
        }
        assert!(
            enabled.elapsed() < Duration::from_secs(4),
            "still ramping: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("effective weight over time (ms, weight): {seen:?}");
    assert!(seen[0].1 < 5, "started at {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "not rising: {seen:?}"
    );
    assert!(
        seen.last().unwrap().0 >= 1800,
        "full before slow_start: {seen:?}"
    );
    // And the sessions follow: b gets mail again.
    let addr = gale.address("in");
    for _ in 0..20 {
        send_mail(addr);
    }
    gale.wait_line(&["smtp session", "backend=b "], Duration::from_secs(5));
}

#[test]
fn gale_status_prints_the_running_state_as_tables() {
    let a = SmtpSink::start(free_port());
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = config(&[("a", a.address), ("dead", dead)])
        .set("pools.mta.probe.interval", "100ms")
        .set("admin.token", "s3cret")
        .to_string();
    let gale = Gale::start(&toml);
    gale.wait_line(&["backend=dead", "left rotation"], Duration::from_secs(5));
    let admin = gale.admin_address().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gale"))
            .args(["status", "--admin", &admin])
            .args(args)
            .env_remove("GALE_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401"), "{err}");

    let out = run(&["--token", "s3cret"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .to_string()
    };
    assert!(
        line("a").contains(" up ") && line("a").contains("enabled"),
        "{table}"
    );
    assert!(line("dead").contains(" DOWN "), "{table}");
    assert!(
        table.contains("LISTENER") && table.contains(" smtp "),
        "{table}"
    );

    let json = run(&["--token", "s3cret", "--json"]);
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["pools"][0]["backends"][1]["healthy"], false);
}

#[test]
fn metrics_parse_and_count_what_was_sent() {
    let a = SmtpSink::start(free_port());
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = weighted(&[("a", a.address), ("dead", dead)], 1)
        .set("pools.mta.probe.interval", "1h")
        // Listeners whose only backend is dead: gale answers them itself.
        .smtp("nowhere", "gone")
        .set("pools.gone.probe.interval", "1h")
        .backend("gone", "dead", dead)
        .http("web", "goneweb")
        .set("pools.goneweb.probe.kind", "http")
        .set("pools.goneweb.probe.interval", "1h")
        .backend("goneweb", "dead", dead)
        .to_string();
    let gale = Gale::start(&toml);
    let addr = gale.address("in");
    for _ in 0..30 {
        send_mail(addr);
    }
    // Two sessions deferred with 421, and two HTTP errors.
    for _ in 0..2 {
        let mut greeting = String::new();
        let stream = std::net::TcpStream::connect(gale.address("nowhere")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut greeting).unwrap();
        assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
    }
    let web = format!("http://{}/", gale.address("web"));
    let codes: Vec<u16> = (0..2).map(|_| curl(&[&web]).0).collect();
    let samples = scrape(&gale);
    let replied_421 = value(
        &samples,
        "gale_error_replies_total",
        &[("listener", "nowhere"), ("code", "421")],
    );
    assert_eq!(replied_421, 2.0);
    let deferred = value(
        &samples,
        "gale_sessions_total",
        &[("listener", "nowhere"), ("outcome", "deferred")],
    );
    assert_eq!(deferred, 2.0);
    for code in [502, 503] {
        let sent = codes.iter().filter(|&&c| c == code).count() as f64;
        let counted = value(
            &samples,
            "gale_error_replies_total",
            &[("listener", "web"), ("code", &code.to_string())],
        );
        assert_eq!(counted, sent, "{code}: curl saw {codes:?}");
    }
    assert_eq!(
        value(
            &samples,
            "gale_http_requests_total",
            &[("listener", "web"), ("status", "5xx")]
        ),
        2.0
    );
    // Bytes on the HTTP client connections are added when each closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (up, down) = loop {
        let samples = scrape(&gale);
        let bytes = |direction| {
            value(
                &samples,
                "gale_http_bytes_total",
                &[("listener", "web"), ("direction", direction)],
            )
        };
        let (up, down) = (bytes("up"), bytes("down"));
        if (up > 0.0 && down > 0.0) || std::time::Instant::now() > deadline {
            break (up, down);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Two GETs of about 80 bytes; two error answers of over 100.
    assert!(
        up >= 2.0 * 60.0 && down >= 2.0 * 100.0,
        "up {up}, down {down}"
    );
    let relayed = value(
        &samples,
        "gale_sessions_total",
        &[("listener", "in"), ("outcome", "relayed")],
    );
    assert_eq!(relayed, 30.0);
    let to_a = value(
        &samples,
        "gale_backend_sessions_total",
        &[("pool", "mta"), ("backend", "a")],
    );
    assert_eq!(to_a, 30.0);
    // Every try at the dead backend failed to connect and was retried.
    let refused = value(
        &samples,
        "gale_backend_failures_total",
        &[("pool", "mta"), ("backend", "dead"), ("reason", "connect")],
    );
    let retries = value(&samples, "gale_retries_total", &[("listener", "in")]);
    assert!(refused >= 1.0, "the dead backend was never tried");
    assert_eq!(retries, refused);
    let up = value(
        &samples,
        "gale_smtp_bytes_total",
        &[("listener", "in"), ("direction", "up")],
    );
    assert!(up > 30.0 * 50.0, "{up} bytes up for 30 messages");
    // Every decision is counted; one in 8 is timed, the first among them.
    let calls = value(
        &samples,
        "gale_plugin_calls_total",
        &[("pool", "mta"), ("hook", "balancer")],
    );
    assert!(calls >= 30.0, "{calls} balancer calls counted");
    let timed = value(
        &samples,
        "gale_plugin_call_seconds_count",
        &[("pool", "mta"), ("hook", "balancer")],
    );
    assert!(
        timed >= (calls / 8.0).floor(),
        "{timed} of {calls} balancer calls timed"
    );
    // /status has the same failures per backend.
    let s = status(&gale);
    let mta = s["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mta")
        .unwrap();
    assert_eq!(mta["backends"][1]["name"], "dead");
    assert_eq!(
        mta["backends"][1]["failures"]["connect"],
        Value::from(refused as u64)
    );
    assert_eq!(mta["backends"][0]["sessions_total"], 30);
    assert_eq!(mta["backends"][0]["failures"], serde_json::json!({}));
}

/// `GET /status` on a raw connection: the whole answer, empty when gale
/// closed the connection without one.
fn raw_status(admin: SocketAddr) -> Vec<u8> {
    let mut conn = TcpStream::connect(admin).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Refused, the connection may be closed before or during the write.
    let _ = conn.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    answer
}

#[test]
fn one_client_holds_at_most_eight_admin_connections_and_others_are_still_answered() {
    let a = SmtpSink::start(free_port());
    let gale = Gale::start(&config(&[("a", a.address)]).to_string());
    let admin = gale.admin_address();
    // Eight connections from 127.0.0.1 in the middle of a request.
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut conn = TcpStream::connect(admin).unwrap();
            conn.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            conn
        })
        .collect();
    let ninth = raw_status(admin);
    assert!(
        ninth.is_empty(),
        "a ninth connection was answered: {}",
        String::from_utf8_lossy(&ninth)
    );
    // Another client (127.0.0.2) still gets an answer.
    let (code, body) = curl(&["--interface", "127.0.0.2", &url(&gale, "/status")]);
    assert_eq!(code, 200, "{body}");
    // The eight were held all along (not closed by a timeout).
    held[0].write_all(b"Connection: close\r\n\r\n").unwrap();
    held[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    held[0].read_to_end(&mut answer).unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Once they close, 127.0.0.1 is answered again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !raw_status(admin).starts_with(b"HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "127.0.0.1 not answered again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_admin_connection_that_sends_nothing_is_closed_after_two_seconds() {
    let a = SmtpSink::start(free_port());
    let gale = Gale::start(&config(&[("a", a.address)]).to_string());
    let mut silent = TcpStream::connect(gale.admin_address()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let read = silent.read(&mut [0u8; 16]);
    let waited = started.elapsed();
    assert!(matches!(read, Ok(0)), "{read:?}");
    // The headers timeout (5 s) would close it too, but later.
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[test]
fn the_read_cookie_expires_after_twelve_hours() {
    use sha2::{Digest, Sha256};
    let a = SmtpSink::start(free_port());
    let gale = Gale::start(
        &config(&[("a", a.address)])
            .set("admin.token", "s3cret")
            .to_string(),
    );
    let headers = support::process::curl_output(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer s3cret",
        &url(&gale, "/login"),
    ]);
    let set = headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {headers}"));
    assert!(set.contains("; Max-Age=43200;"), "{set}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let value = set.split(';').next().unwrap();
    let expires: u64 = value
        .strip_prefix("gale_read=")
        .and_then(|v| v.split_once('.'))
        .and_then(|(expires, _)| expires.parse().ok())
        .unwrap_or_else(|| panic!("no expiry in {value}"));
    assert!(
        (now + 43200 - 60..=now + 43200 + 1).contains(&expires),
        "{expires} for {now}"
    );
    // gale holds the expiry too, not only the browser: a cookie made the
    // same way but an hour past it opens nothing.
    let status_url = url(&gale, "/status");
    let cookie = |expires: u64| {
        let key = Sha256::digest("gale admin read cookie\0s3cret");
        let mac = Sha256::new()
            .chain_update(key)
            .chain_update(expires.to_be_bytes())
            .finalize();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("Cookie: gale_read={expires}.{hex}")
    };
    assert_eq!(
        curl(&["-H", &format!("Cookie: {value}"), &status_url]).0,
        200
    );
    assert_eq!(curl(&["-H", &cookie(now + 3600), &status_url]).0, 200);
    assert_eq!(curl(&["-H", &cookie(now - 3600), &status_url]).0, 401);
}
