//! `gale plugin check FILE.wasm`: which world a component implements,
//! whether this host runs its contract version, and what it decides on
//! sample inputs, so a plugin author sees it work before writing a config.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admission::{AdmissionContext, Decision, Service};
use super::types::{
    Backend, DnsSnapshot, HealthVerdict, IpAddress, Member, MemberKind, ProbeResult, ProbeSource,
    Protocol, RequestContext,
};
use super::{
    AdmissionPlugin, BalancerPlugin, CallFailure, DnsPlugin, HealthPlugin, LiveCounters,
    PluginRuntime, PushedPool, World, contract,
};
use crate::config::{PluginSource, PluginSpec};

/// What to run the plugin with.
pub struct Options {
    pub settings: Vec<(String, String)>,
    pub deadline: Duration,
    pub memory_mb: u32,
}

/// The checks' findings as text, and whether the plugin passed.
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// Load `path` and run it on sample inputs of its world.
pub fn check(runtime: &PluginRuntime, path: &Path, options: Options) -> Report {
    let mut out = String::new();
    let ok = match run(runtime, path, &options, &mut out) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            false
        }
    };
    let _ = writeln!(out, "{}", if ok { "ok" } else { "FAILED" });
    Report { text: out, ok }
}

fn run(
    runtime: &PluginRuntime,
    path: &Path,
    options: &Options,
    out: &mut String,
) -> Result<bool, super::PluginError> {
    let source = PluginSource::File(path.to_path_buf());
    let started = Instant::now();
    let (component, sha256) = runtime.compile(&source)?;
    let (exports, others) = contract::exports(runtime.engine(), &component);
    let _ = writeln!(
        out,
        "{}: sha256 {sha256}, compiled or loaded in {} ms",
        path.display(),
        started.elapsed().as_millis()
    );
    let Some(export) = exports.first() else {
        let _ = writeln!(
            out,
            "implements no gale world; it exports {}",
            if others.is_empty() {
                "nothing".to_string()
            } else {
                others.join(", ")
            }
        );
        return Ok(false);
    };
    for other in &exports[1..] {
        let _ = writeln!(
            out,
            "also exports {} (world `{}`): not checked here",
            other.name,
            other.world.name()
        );
    }
    let host = contract::host_version();
    let _ = writeln!(
        out,
        "world `{}`: exports {}, built against contract {} (this gale speaks {host})",
        export.world.name(),
        export.name,
        export.version
    );
    let spec = PluginSpec {
        source,
        settings: options.settings.clone(),
        deadline: options.deadline,
        memory_mb: options.memory_mb,
    };
    let name = path.display().to_string();
    match export.world {
        World::Balancer => {
            let plugin =
                BalancerPlugin::load(runtime, &spec, &name, Arc::new(LiveCounters::default()))?;
            note_loaded(out, &spec);
            Ok(balancer(&plugin, out))
        }
        World::Health => {
            let plugin = HealthPlugin::load(runtime, &spec, &name)?;
            note_loaded(out, &spec);
            Ok(health(&plugin, out))
        }
        World::Dns => {
            let plugin = DnsPlugin::load(runtime, &spec, &name)?;
            note_loaded(out, &spec);
            Ok(dns(&plugin, out))
        }
        World::Admission => {
            let plugin = AdmissionPlugin::load(runtime, &spec, &name)?;
            note_loaded(out, &spec);
            Ok(admission(&plugin, out))
        }
    }
}

fn note_loaded(out: &mut String, spec: &PluginSpec) {
    let settings: Vec<String> = spec
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    let _ = writeln!(
        out,
        "loaded and initialised (settings: {}; deadline {:?}, memory {} MiB)",
        if settings.is_empty() {
            "none".to_string()
        } else {
            settings.join(", ")
        },
        spec.deadline,
        spec.memory_mb
    );
}

/// The sample pool: two primaries weighted 3:1, a standby, and a primary
/// that is down.
fn sample_backends() -> Vec<Backend> {
    [
        ("mta-a", 3, 0, true),
        ("mta-b", 1, 0, true),
        ("mta-standby", 1, 1, true),
        ("mta-down", 1, 0, false),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, weight, priority, healthy))| Backend {
        id: i as u32,
        name: name.to_string(),
        address: format!("192.0.2.{}:25", i + 10),
        weight,
        priority,
        healthy,
        draining: false,
    })
    .collect()
}

fn context(client: u32) -> RequestContext {
    RequestContext {
        protocol: Protocol::Smtp,
        listener: 0,
        client_ip: IpAddress::V4(0xc633_6400 + client),
        client_port: 40000,
        http: None,
    }
}

fn balancer(plugin: &BalancerPlugin, out: &mut String) -> bool {
    let backends = sample_backends();
    let _ = writeln!(
        out,
        "sample pool: mta-a (weight 3), mta-b (weight 1), mta-standby (priority 1), mta-down (unhealthy)"
    );
    let pool = PushedPool::new(1, backends.clone(), vec!["submission".to_string()]);
    let names = |order: &[u32]| -> String {
        order
            .iter()
            .map(|&id| backends[id as usize].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut first = BTreeMap::<String, u32>::new();
    let mut times = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let ctx = context(i % 250);
        let started = Instant::now();
        let answer = plugin.select(&pool, &ctx);
        times.push(started.elapsed());
        match answer {
            Ok(order) => {
                if i < 8 {
                    let _ = writeln!(out, "  client 198.51.100.{}: {}", i % 250, names(&order));
                }
                if let Some(&id) = order.first() {
                    *first.entry(backends[id as usize].name.clone()).or_default() += 1;
                }
            }
            Err(failure) => return failed(out, i, &failure),
        }
    }
    let shares: Vec<String> = first
        .iter()
        .map(|(name, n)| format!("{name} {:.1}%", f64::from(*n) / 10.0))
        .collect();
    let _ = writeln!(
        out,
        "first choice over 1000 decisions: {}",
        shares.join(", ")
    );
    timing(out, &mut times);
    true
}

fn failed(out: &mut String, call: u32, failure: &CallFailure) -> bool {
    let _ = writeln!(out, "call {} failed: {failure}", call + 1);
    false
}

fn timing(out: &mut String, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let _ = writeln!(
        out,
        "call time: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        times[times.len() - 1]
    );
}

fn result(ok: bool, code: Option<u16>, detail: &str) -> ProbeResult {
    ProbeResult {
        ok,
        latency_us: 800,
        code,
        detail: detail.to_string(),
        source: ProbeSource::Probe,
    }
}

fn health(plugin: &HealthPlugin, out: &mut String) -> bool {
    let backend = &sample_backends()[0];
    let ok = || result(true, Some(220), "ok");
    let refused = || result(false, None, "connect: connection refused");
    let busy = || result(false, Some(421), "greeting 421 4.3.2 busy");
    let cases: [(&str, bool, Vec<ProbeResult>); 6] = [
        ("healthy, 3 good probes", true, vec![ok(), ok(), ok()]),
        ("healthy, 1 refused", true, vec![ok(), ok(), refused()]),
        (
            "healthy, 3 refused",
            true,
            vec![refused(), refused(), refused()],
        ),
        ("healthy, 1 greeting 421", true, vec![ok(), ok(), busy()]),
        ("down, 1 good probe", false, vec![refused(), ok()]),
        (
            "down, 3 good probes",
            false,
            vec![refused(), ok(), ok(), ok()],
        ),
    ];
    let mut times = Vec::new();
    for (i, (case, healthy, recent)) in cases.iter().enumerate() {
        let started = Instant::now();
        let answer = plugin.evaluate(backend, *healthy, recent, Default::default());
        times.push(started.elapsed());
        match answer {
            Ok(HealthVerdict { healthy, weight }) => {
                let _ = writeln!(
                    out,
                    "  {case:<26} -> {}{}",
                    if healthy { "up" } else { "DOWN" },
                    weight.map_or(String::new(), |w| format!(", weight {w}"))
                );
            }
            Err(failure) => return failed(out, i as u32, &failure),
        }
    }
    timing(out, &mut times);
    true
}

fn dns(plugin: &DnsPlugin, out: &mut String) -> bool {
    let member = |name: &str, address: &str, weight, healthy| Member {
        name: name.to_string(),
        address: address.to_string(),
        weight,
        healthy,
        kind: MemberKind::Backend,
    };
    let snapshot = DnsSnapshot {
        zone: "example.test.".to_string(),
        name: "mx.example.test.".to_string(),
        ttl: 30,
        members: vec![
            member("mta-a", "192.0.2.10", 3, true),
            member("mta-b", "192.0.2.11", 1, true),
            member("mta-down", "2001:db8::12", 1, false),
        ],
        published: Vec::new(),
    };
    let _ = writeln!(
        out,
        "sample: mx.example.test. over mta-a 192.0.2.10 (weight 3), mta-b 192.0.2.11 (weight 1), mta-down 2001:db8::12 (unhealthy)"
    );
    let started = Instant::now();
    match plugin.plan(&snapshot) {
        Ok(records) => {
            for r in &records {
                let _ = writeln!(
                    out,
                    "  {} {:?} {} ttl {} weight {}",
                    r.name, r.rtype, r.value, r.ttl, r.weight
                );
            }
            let _ = writeln!(out, "call time: {:?}", started.elapsed());
            true
        }
        Err(failure) => failed(out, 0, &failure),
    }
}

/// A sample connection: client 198.51.100.`client` on an SMTP listener
/// with `open` sessions, `mine` of them the client's.
pub(crate) fn admission_context(client: u32, open: u32, mine: u32) -> AdmissionContext {
    AdmissionContext {
        client_ip: IpAddress::V4(0xc633_6400 + client),
        client_port: 40000,
        listener: "submission".to_string(),
        service: Service::Smtp,
        tls: false,
        listener_sessions: open,
        client_sessions: mine,
        queued: 0,
    }
}

fn admission(plugin: &AdmissionPlugin, out: &mut String) -> bool {
    let _ = writeln!(
        out,
        "sample: SMTP listener `submission`, clients 198.51.100.0 to .7, 0 to 7 sessions open"
    );
    let mut times = Vec::new();
    for i in 0..8u32 {
        let started = Instant::now();
        let answer = plugin.admit(&admission_context(i, i * 10, i));
        times.push(started.elapsed());
        match answer {
            Ok(decision) => {
                let said = match decision {
                    Decision::Accept => "accept".to_string(),
                    Decision::Reject(r) => format!("reject {} {}", r.code, r.text),
                    Decision::Tarpit(s) => format!("tarpit {s} s"),
                };
                let _ = writeln!(out, "  client 198.51.100.{i} ({i} open): {said}");
            }
            Err(failure) => return failed(out, i, &failure),
        }
    }
    timing(out, &mut times);
    true
}
