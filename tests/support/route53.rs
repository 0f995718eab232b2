//! Route 53 on loopback for the route53 provider's tests: `moto_server`
//! (PyPI `moto[server]`, installed by `tests/run` into
//! `target/toolchains/moto`) as the API; `route53_tool.py` (boto3) to
//! create zones, plant records "someone else" owns and read back what gale
//! wrote; `route53_proxy.py` in front of moto to throttle change calls,
//! hold changes PENDING, and count and record what reached moto.
//!
//! What moto 5.2.6 does not do like Route 53 (tests must not lean on it):
//! a DELETE is checked against any past CREATE/UPSERT of the same name,
//! type, TTL and values (not Weight, nor the current record) and then
//! removes every record of that SetIdentifier in the zone, whatever its
//! name or type; a CREATE of an existing set adds a duplicate; every
//! change answers INSYNC with the same change id and GetChange says INSYNC
//! for any id; health checks with the same CallerReference are created
//! twice, and one in use can be deleted; the zone's SOA value is garbled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::free_port;

/// The venv `tests/run` installs moto into (`$GALE_TOOLCHAINS/moto`, like
/// the plugin toolchains).
fn venv() -> PathBuf {
    std::env::var_os("GALE_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::workspace().join("target").join("toolchains"))
        .join("moto")
}

/// A program of the moto venv; fails with the install hint if missing.
fn venv_bin(name: &str) -> PathBuf {
    let path = venv().join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run tests/run (it installs moto[server] into {})",
        path.display(),
        venv().display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    super::workspace().join("tests").join("support").join(name)
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on its own connection:
/// (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {reply:?}")))?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// `route53_tool.py ARGS` against `endpoint`: its JSON output, or what
/// it said on stderr (which names the HTTP status of a refused call).
fn tool(endpoint: &str, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(venv_bin("python"))
        .arg(script("route53_tool.py"))
        .args(["--endpoint", endpoint])
        .args(args)
        .output()
        .expect("running route53_tool.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "route53_tool.py {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn list(value: Value, what: &str) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => panic!("{what}: not a list: {other}"),
    }
}

/// Every record set of `zone` at `endpoint` (all pages), as boto3 gives
/// them: `{"Name", "Type", "SetIdentifier", "Weight", "TTL",
/// "ResourceRecords": [{"Value"}], "HealthCheckId"}`.
pub fn try_records(endpoint: &str, zone: &str) -> Result<Vec<Value>, String> {
    tool(endpoint, &["records", zone]).map(|v| list(v, "records"))
}

/// One ChangeResourceRecordSets of `batch` (`{"Changes": [...]}`, as
/// boto3 takes it) to `zone` at `endpoint`: the ChangeInfo, or the error.
pub fn try_change(endpoint: &str, zone: &str, batch: &Value) -> Result<Value, String> {
    tool(endpoint, &["change", zone, &batch.to_string()])
}

/// A `moto_server` on 127.0.0.1, killed on drop.
pub struct Moto {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Moto {
    /// Start one and wait until it answers HTTP.
    pub fn start() -> Moto {
        let server = venv_bin("moto_server");
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // No authentication unless a test asks (enforce_auth).
            .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let mut moto = Moto { port, child, dir };
        // Readiness: moto's own API, which no authentication setting
        // touches (GET / would be S3's ListBuckets). About 0.5 s here.
        let started = Instant::now();
        while !matches!(http(port, "GET", "/moto-api/", ""), Ok((200, _))) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): {}", moto.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "moto_server did not answer on port {port} within 20 s: {}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// "http://127.0.0.1:PORT", for gale's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What moto_server printed (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// A new hosted zone `name`; its id without "/hostedzone/".
    pub fn create_zone(&self, name: &str) -> String {
        match tool(&self.endpoint(), &["create-zone", name]) {
            Ok(Value::String(id)) => id,
            other => panic!("create-zone {name}: {other:?}"),
        }
    }

    /// Every record set of `zone` (see [`try_records`]).
    pub fn records(&self, zone: &str) -> Vec<Value> {
        try_records(&self.endpoint(), zone).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Apply `batch` to `zone` directly (not through gale): how a test
    /// plants a record someone else owns.
    pub fn change(&self, zone: &str, batch: Value) {
        try_change(&self.endpoint(), zone, &batch).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every health check, as boto3 gives them (`{"Id",
    /// "CallerReference", "HealthCheckConfig": {"Type", "IPAddress",
    /// "Port", "ResourcePath", ...}}`).
    pub fn health_checks(&self) -> Vec<Value> {
        let checks = tool(&self.endpoint(), &["health-checks"]).unwrap_or_else(|e| panic!("{e}"));
        list(checks, "health checks")
    }

    /// From now on refuse every request with HTTP 403 (`true`), or
    /// authenticate nothing again (`false`). An unknown access key gets
    /// InvalidClientTokenId, in a body (`ErrorResponse/Errors/Error`) that
    /// neither boto3 nor the Rust SDK read a code from. No key passes:
    /// moto 5.2.6 checks IAM users' keys but miscomputes the signature of
    /// Route 53 GETs, so even a valid key's reads are refused
    /// (SignatureDoesNotMatch). This harness's own calls are refused too.
    pub fn enforce_auth(&self, on: bool) {
        let count = if on { "0" } else { "inf" };
        let (status, body) = http(self.port, "POST", "/moto-api/reset-auth", count)
            .unwrap_or_else(|e| panic!("moto reset-auth: {e}"));
        assert_eq!(status, 200, "moto reset-auth: {body}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `route53_proxy.py` in front of an endpoint, killed on drop.
pub struct Route53Proxy {
    port: u16,
    child: Child,
}

impl Route53Proxy {
    /// Refuse the first `throttle` change calls with error `code`
    /// ("Throttling" or "PriorRequestNotComplete"), forward the rest.
    pub fn start(upstream: &str, throttle: usize, code: &str) -> Route53Proxy {
        Route53Proxy::start_with(upstream, throttle, code, 0)
    }

    /// Also answer forwarded changes PENDING and the first `pending`
    /// GetChange calls PENDING (moto itself always says INSYNC).
    pub fn start_with(upstream: &str, throttle: usize, code: &str, pending: usize) -> Route53Proxy {
        let mut child = Command::new(venv_bin("python"))
            .arg(script("route53_proxy.py"))
            .args(["--upstream", upstream, "--port", "0"])
            .args(["--throttle", &throttle.to_string(), "--throttle-code", code])
            .args(["--pending", &pending.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting route53_proxy.py");
        // Its first line, read on a thread so the wait can time out.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("route53_proxy.py did not start: {line:?}");
        };
        Route53Proxy { port, child }
    }

    /// "http://127.0.0.1:PORT", for gale's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the proxy counted: changes_forwarded,
    /// changes_throttled, get_change, get_change_pending, requests.
    pub fn stats(&self) -> Value {
        let (status, body) = http(self.port, "GET", "/__counts", "")
            .unwrap_or_else(|e| panic!("route53_proxy /__counts: {e}"));
        assert_eq!(status, 200, "route53_proxy /__counts: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// (change calls forwarded to moto, change calls refused).
    pub fn counts(&self) -> (u64, u64) {
        let stats = self.stats();
        let n = |k: &str| {
            stats[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {stats}"))
        };
        (n("changes_forwarded"), n("changes_throttled"))
    }

    /// The bodies (ChangeBatch XML) of the change calls forwarded, in
    /// order.
    pub fn changes(&self) -> Vec<String> {
        let (status, body) = http(self.port, "GET", "/__changes", "")
            .unwrap_or_else(|e| panic!("route53_proxy /__changes: {e}"));
        assert_eq!(status, 200, "route53_proxy /__changes: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Route53Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The weighted A and AAAA sets of `name` (trailing dot and case do not
/// matter) in `records`: (SetIdentifier, values joined with ",", Weight,
/// HealthCheckId), sorted by set id, then value.
pub fn weighted(records: &[Value], name: &str) -> Vec<(String, String, u64, Option<String>)> {
    let wanted = name.trim_end_matches('.');
    let mut sets: Vec<_> = records
        .iter()
        .filter(|r| {
            r["Name"]
                .as_str()
                .is_some_and(|n| n.trim_end_matches('.').eq_ignore_ascii_case(wanted))
        })
        .filter(|r| matches!(r["Type"].as_str(), Some("A" | "AAAA")))
        .filter_map(|r| {
            let set_id = r["SetIdentifier"].as_str()?.to_string();
            let weight = r["Weight"].as_u64()?;
            let values: Vec<&str> = r["ResourceRecords"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x["Value"].as_str()).collect())
                .unwrap_or_default();
            let check = r["HealthCheckId"].as_str().map(str::to_string);
            Some((set_id, values.join(","), weight, check))
        })
        .collect();
    sets.sort();
    sets
}
