//! Access lines in JSON (`[log] format = "json"`), through the binary:
//! an SMTP session through Postfix after a dead backend, a tcp session,
//! HTTP/1.1 and HTTP/2 requests. Every line gale writes is one JSON
//! object, and each access line has exactly the fields the README
//! documents for its kind, with the values the peers saw.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};
use support::conf::Conf;
use support::http::{Behaviour, HttpBackend};
use support::process::{Gale, Postfix, curl, free_port, require};

/// The fields of every access line, and those of each kind (README,
/// "Access lines"). `backend` and `tls` are left out where the README
/// says so; the test passes which are present.
const COMMON: &[&str] = &[
    "ts",
    "level",
    "target",
    "message",
    "kind",
    "client",
    "listener",
    "generation",
    "attempts",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "end",
];
const SMTP: &[&str] = &["queue_ids"];
const HTTP: &[&str] = &["method", "host", "path", "status"];

/// Every line of gale's log, each parsed: a line that is not one JSON
/// object fails the test.
fn json_lines(gale: &Gale) -> Vec<Map<String, Value>> {
    gale.log_lines("")
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(map)) => map,
            _ => panic!("not a JSON object: {line}"),
        })
        .collect()
}

/// The access lines of `kind`, once there are `n`.
fn access(gale: &Gale, kind: &str, n: usize) -> Vec<Map<String, Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<_> = json_lines(gale)
            .into_iter()
            .filter(|l| l["target"] == "gale::access" && l["kind"] == kind)
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(lines.len(), n, "{kind} access lines: {lines:#?}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `line` has exactly the common fields, `extra` and `optional`.
fn has_exactly(line: &Map<String, Value>, extra: &[&str], optional: &[&str]) {
    let got: BTreeSet<&str> = line.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = COMMON
        .iter()
        .chain(extra)
        .chain(optional)
        .copied()
        .collect();
    assert_eq!(got, want, "{line:#?}");
}

/// An attempt: (backend, outcome).
fn attempts(line: &Map<String, Value>) -> Vec<(String, String)> {
    line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_object().unwrap();
            assert!(a["ms"].is_u64(), "{a:?}");
            assert!(a["detail"].is_string(), "{a:?}");
            (
                a["backend"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A tcp backend that greets with `hello\n`, reads until the client
/// half-closes and answers with how many bytes it read.
fn counting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.write_all(b"hello\n");
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_ok() {
                    let _ = s.write_all(format!("{}\n", got.len()).as_bytes());
                }
            });
        }
    });
    address
}

#[test]
fn every_line_is_json_and_access_lines_have_the_documented_fields() {
    let postfix = Postfix::start();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tcp_backend = counting_backend();
    let web = HttpBackend::start("web", Behaviour::Respond);
    let gale = Gale::start(
        &Conf::new()
            .set("log.format", "json")
            .smtp("mail", "mta")
            // Dead first: "dead" is the primary, Postfix the standby that
            // failover tries next; probed half an interval after the
            // start, "dead" is still in rotation when the session comes.
            .probe("mta", "tcp", "60s", "1s")
            .backend("mta", "dead", dead)
            .backend("mta", "postfix", postfix.address)
            .set("pools.mta.backends.postfix.proxy_protocol", "v2")
            .set("pools.mta.backends.postfix.role", "standby")
            .set("pools.mta.balancer.builtin", "failover")
            .listener("raw", "tcp", "counting")
            .backend("counting", "counter", tcp_backend)
            .http("web", "web")
            .backend("web", "web", web.address)
            .to_string(),
    );

    // SMTP through Postfix: the queue id its 250 gave swaks is the line's.
    let out = Command::new(require("swaks"))
        .args(["--server", &gale.address("mail").to_string()])
        .args(["--from", "a@client.test", "--to", "b@example.test"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    let queue_id = transcript
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queue id in {transcript}"))
        .trim()
        .to_string();
    postfix.wait_log(&[&queue_id], Duration::from_secs(5));
    let smtp = &access(&gale, "smtp", 1)[0];
    has_exactly(smtp, SMTP, &["backend"]);
    assert_eq!(smtp["level"], "info");
    assert_eq!(smtp["message"], "smtp session");
    assert_eq!(smtp["listener"], "mail");
    assert_eq!(smtp["generation"], 1);
    assert_eq!(smtp["backend"], "postfix");
    assert_eq!(smtp["queue_ids"], serde_json::json!([queue_id]));
    assert_eq!(smtp["end"], "closed");
    assert!(smtp["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        attempts(smtp),
        [
            ("dead".to_string(), "connect".to_string()),
            ("postfix".to_string(), "ok".to_string())
        ]
    );
    assert_eq!(smtp["attempts"][1]["detail"], "220");
    // The greeting, replies and 221 down; the commands and message up.
    assert!(smtp["bytes_up"].as_u64().unwrap() > 100, "{smtp:?}");
    assert!(smtp["bytes_down"].as_u64().unwrap() > 100, "{smtp:?}");
    assert!(smtp["duration_ms"].is_u64());

    // A tcp session: 7 bytes up, "hello\n" and "7\n" down.
    let mut s = TcpStream::connect(gale.address("raw")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"1234567").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello\n7\n");
    drop(s);
    let tcp = &access(&gale, "tcp", 1)[0];
    has_exactly(tcp, &[], &["backend"]);
    assert_eq!(tcp["message"], "tcp session");
    assert_eq!(tcp["listener"], "raw");
    assert_eq!(tcp["backend"], "counter");
    assert_eq!(tcp["bytes_up"], 7);
    assert_eq!(tcp["bytes_down"], 8);
    assert_eq!(attempts(tcp), [("counter".to_string(), "ok".to_string())]);
    assert_eq!(tcp["attempts"][0]["detail"], "connected");

    // HTTP/1.1 with a body, then HTTP/2 by prior knowledge.
    let url = format!("http://{}/page?q=1", gale.address("web"));
    let (status, body) = curl(&[
        "-s",
        "--data-binary",
        "12345",
        "-H",
        "Host: site.test",
        &url,
    ]);
    assert_eq!((status, body.as_str()), (200, "web"));
    let (status, _) = curl(&["-s", "--http2-prior-knowledge", &url]);
    assert_eq!(status, 200);
    let http = access(&gale, "http", 2);
    for (line, method, host, up) in [
        (&http[0], "POST", "site.test", 5),
        (&http[1], "GET", &*gale.address("web").to_string(), 0),
    ] {
        has_exactly(line, HTTP, &["backend"]);
        assert_eq!(line["message"], "http request");
        assert_eq!(line["level"], "info");
        assert_eq!(line["method"], method);
        assert_eq!(line["host"], host);
        assert_eq!(line["path"], "/page?q=1");
        assert_eq!(line["status"], 200);
        assert_eq!(line["backend"], "web");
        assert_eq!(line["bytes_up"], up);
        assert_eq!(line["bytes_down"], 3, "the body, \"web\": {line:?}");
        assert_eq!(line["end"], "done");
        assert_eq!(attempts(line), [("web".to_string(), "ok".to_string())]);
        assert_eq!(line["attempts"][0]["detail"], "answered 200");
    }
    // Every other line is JSON too (checked by `json_lines`), with the
    // fixed fields first.
    for line in gale.log_lines("") {
        let at = |key: &str| line.find(&format!("\"{key}\":"));
        let fixed = [at("ts"), at("level"), at("target"), at("message")];
        assert_eq!(fixed[0], Some(1), "{line}");
        assert!(fixed.windows(2).all(|w| w[0] < w[1]), "{line}");
    }
}

#[test]
fn with_http_sample_0_a_2xx_request_has_no_line_and_a_503_still_has() {
    let web = HttpBackend::start("web", Behaviour::Respond);
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gale = Gale::start(
        &Conf::new()
            .set("log.format", "json")
            .set("log.http_sample", 0.0)
            .http("web", "web")
            .set("listeners.web.header_timeout", "1s")
            .backend("web", "web", web.address)
            .http("gone", "gone")
            // Probed half an interval after the start: still in rotation.
            .probe("gone", "tcp", "60s", "1s")
            .backend("gone", "dead", dead)
            .to_string(),
    );
    for _ in 0..20 {
        let url = format!("http://{}/ok", gale.address("web"));
        assert_eq!(curl(&["-s", &url]).0, 200);
    }
    let url = format!("http://{}/fails", gale.address("gone"));
    assert_eq!(curl(&["-s", &url]).0, 503);
    let failed = &access(&gale, "http", 1)[0];
    has_exactly(failed, HTTP, &[]);
    assert_eq!(failed["level"], "warn");
    assert_eq!(failed["message"], "http request failed");
    assert_eq!(failed["listener"], "gone");
    assert_eq!(failed["status"], 503);
    assert_eq!(
        failed["end"],
        "no backend can take the request, try again later"
    );
    assert_eq!(
        attempts(failed),
        [("dead".to_string(), "connect".to_string())]
    );
    assert_eq!(
        web.requests(),
        20,
        "the 2xx requests were served, and not logged"
    );

    // A head that never ends gets 408 after `header_timeout`; its line
    // (gale's own reply: always) is timed from when gale began to wait.
    let mut slow = TcpStream::connect(gale.address("web")).unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: web.test\r\n")
        .unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let refused = &access(&gale, "http", 2)[1];
    has_exactly(refused, &["status"], &[]);
    assert_eq!(refused["message"], "http request refused");
    assert_eq!(refused["status"], 408);
    let waited = refused["duration_ms"].as_u64().unwrap();
    assert!((1000..5000).contains(&waited), "{refused:#?}");
}

/// `gale run` on `toml`, which must fail: its stderr.
fn failed_run(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gale.toml");
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gale"))
        .args(["run", "--config"])
        .arg(&config)
        .env("GALE_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "gale ran with {toml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_error_is_a_json_line_too_and_an_unreadable_log_section_falls_back_to_text() {
    // JSON asked for, and a listener naming a pool that does not exist:
    // the reason gale stops is a JSON line like the others.
    let stderr = failed_run(
        "[log]\nformat = \"json\"\n\n\
         [listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"mtas\"\n\n\
         [pools.mta]\n",
    );
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let last = lines.last().expect("a line on stderr");
    assert_eq!(last["level"], "error", "{stderr}");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.starts_with("gale: ")
            && message.ends_with(
                "gale.toml:7:8: listeners.in.pool: no pool named \"mtas\" (defined pools: mta)"
            ),
        "{message}"
    );

    // A format gale does not know: text, and the error names file, line
    // and key.
    let stderr = failed_run("[log]\nformat = \"xml\"\n");
    assert!(
        stderr.starts_with("gale: ")
            && stderr.trim_end().ends_with(
                "gale.toml:2:10: log.format: unknown variant `xml`, expected `text` or `json`"
            ),
        "{stderr}"
    );
}
