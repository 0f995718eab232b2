//! Who may open a session on a listener, and how often: the `allow` and
//! `deny` networks and `client_rate` new sessions a second per client,
//! checked on accept, before the session has a task and before any
//! backend is touched, so that a refused client costs one reply and a
//! close. gale is the one address every sender touches: this is where an
//! operator keeps out a network or slows down a client that opens
//! sessions in a loop.
//!
//! `deny` is checked first, then `allow` (when set, only its networks may
//! connect), then the client's rate. Clients count by address, an IPv6
//! client by its /64 (as `max_sessions_per_client`); the buckets live in
//! the listener's accept loop ([`crate::rate`], bounded), so a reload
//! that changes the rate keeps what each client has spent.
//!
//! A refused SMTP client gets `554 5.7.1` for `allow`/`deny` (`421 4.7.0`
//! with `deny_reply = 421`) and `421 4.7.0` for the rate; an HTTP client
//! `403` or `429` with `Retry-After`; a tcp client a close, and so does a
//! client of an HTTPS or SMTPS listener (the reply would first need a
//! handshake).
//!
//! After these rules and `max_sessions_per_client`, a listener's
//! `admission_plugin` (world `admission`) may refuse or tarpit the
//! client ([`PluginHook`]). It runs on a blocking thread for the
//! connection ([`MAX_CALLS`] at once per listener), never on the accept
//! loop nor on the runtime's workers, so a slow plugin delays only the
//! clients it decides about; and only on listeners that have one: the
//! others pay for nothing but a look at an empty slot.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::{Admission, DenyReply, ListenerConfig, Protocol};
use crate::metrics::{AdmissionLabels, ListenerLabels, Metrics};
use crate::plugin::{
    AdmissionContext, AdmissionDecision, AdmissionPlugin, CallFailure, PluginError, PluginRuntime,
    Service,
};
use crate::rate::Buckets;

/// Longest tarpit: a plugin's longer ones are cut to this. A tarpitted
/// client holds one of the listener's `max_sessions` (and a descriptor)
/// all along, so a plugin that tarpits everyone for long would close the
/// listener; a minute is more than a spam bot waits (most give up after
/// 10 to 30 s) and less than any MTA's greeting timeout (RFC 5321
/// 4.5.3.2.1: 5 minutes).
pub const MAX_TARPIT: Duration = Duration::from_secs(60);

/// Admission plugin calls of one listener in flight at most, each on a
/// blocking thread. The plugin has one instance, which takes one call at
/// a time: more would only wait for it, each holding a thread. The
/// clients past them wait (on their tasks, holding no thread) for a turn,
/// up to [`TURN_WAIT`]; one that waits longer is admitted and the call
/// counted as `busy`. (Admitting at once would let a burst of connections
/// past the policy.)
pub const MAX_CALLS: usize = 4;

/// How long a client waits for a turn at its listener's admission plugin,
/// at least: a burst of hundreds is decided at a fast plugin's pace
/// (tens of µs a call). A plugin whose calls take twice its deadline
/// (its run and its wait for the instance) gets that long instead.
pub const TURN_WAIT: Duration = Duration::from_secs(1);

/// Why a client was refused: the `reason` label of
/// `gale_admission_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In `deny`, or not in a set `allow`.
    Denied,
    /// Over `client_rate`.
    Rate,
    /// The listener's admission plugin said no.
    Plugin,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "deny",
            Refusal::Rate => "rate",
            Refusal::Plugin => "plugin",
        }
    }
}

/// Whether `ip` (canonical: IPv4 as IPv4) may open a session now; a
/// session admitted takes a token from its client's bucket in `rates`,
/// under `client`'s key (its address, or its /64).
pub fn check(
    admission: &Admission,
    rates: &mut Buckets<IpAddr>,
    ip: IpAddr,
    client: IpAddr,
    now: Instant,
) -> Result<(), Refusal> {
    let denied = admission.deny.iter().any(|net| net.contains(&ip))
        || (!admission.allow.is_empty() && !admission.allow.iter().any(|net| net.contains(&ip)));
    if denied {
        return Err(Refusal::Denied);
    }
    rates
        .take(admission.rate, client, now)
        .map_err(|_| Refusal::Rate)
}

/// What listener `l` writes to a client it refused before closing, with
/// the code it counts (`None`: it only closes).
pub fn reply(l: &ListenerConfig, refusal: Refusal) -> Option<(u16, String)> {
    let host = &l.hostname;
    match (l.protocol, refusal) {
        // A reply would first need a handshake (HTTPS, SMTPS).
        _ if l.tls.is_some() => None,
        (Protocol::Smtp, Refusal::Denied) => Some(match l.admission.deny_reply {
            DenyReply::Reject => (554, format!("554 5.7.1 {host} Access denied\r\n")),
            DenyReply::Defer => (
                421,
                format!("421 4.7.0 {host} Access denied, try again later\r\n"),
            ),
        }),
        (Protocol::Smtp, Refusal::Rate) => Some((
            421,
            format!("421 4.7.0 {host} Too many new sessions from your address, slow down\r\n"),
        )),
        (Protocol::Http, Refusal::Denied) => {
            Some((403, http_reply("403 Forbidden", "", "forbidden\n")))
        }
        (Protocol::Http, Refusal::Rate) => Some((
            429,
            http_reply(
                "429 Too Many Requests",
                "retry-after: 1\r\n",
                "too many new connections from your address\n",
            ),
        )),
        (Protocol::Tcp, _) => None,
        // The plugin's own words: [`plugin_reply`].
        (_, Refusal::Plugin) => None,
    }
}

/// What listener `l` writes to a client its admission plugin refused with
/// `code` and `text` (already checked: 400 to 599, one printable line),
/// with the code it counts: SMTP `code text` as one line, HTTP the status
/// with `text` as the body; on TLS and tcp listeners nothing (a close),
/// as for the built-in refusals.
pub fn plugin_reply(l: &ListenerConfig, code: u16, text: &str) -> Option<(u16, String)> {
    if l.tls.is_some() {
        return None;
    }
    match l.protocol {
        Protocol::Smtp if text.is_empty() => {
            Some((code, format!("{code} {} Access denied\r\n", l.hostname)))
        }
        Protocol::Smtp => Some((code, format!("{code} {text}\r\n"))),
        Protocol::Http => {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Refused");
            let body = if text.is_empty() { "refused" } else { text };
            Some((
                code,
                http_reply(&format!("{code} {reason}"), "", &format!("{body}\n")),
            ))
        }
        Protocol::Tcp => None,
    }
}

/// What the plugin decided, as the listener carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (also every failed call: the fallback is to admit).
    Admit,
    /// Close, after `reply` if the protocol has one.
    Refuse(Option<(u16, String)>),
    /// Hold the client silently this long (at most [`MAX_TARPIT`]), then
    /// go on.
    Tarpit(Duration),
}

/// A listener's admission plugin with its counters, resolved once per
/// generation.
pub struct PluginHook {
    plugin: AdmissionPlugin,
    /// Calls in flight, at most [`MAX_CALLS`]: each runs on a blocking
    /// thread of its own, so that a slow plugin holds no worker of the
    /// runtime (the sessions of every listener run there).
    calls: std::sync::Arc<tokio::sync::Semaphore>,
    refusals: Counter,
    tarpits: Counter,
    /// Sessions of the listener waiting for a backend slot (the
    /// listener's `gale_queued_sessions`).
    pub queued: Gauge,
    metrics: std::sync::Arc<Metrics>,
    listener: String,
    /// When a failure was last logged (ms since `LOG_ORIGIN`), and how many
    /// were not since: a plugin that fails on every call logs once a second.
    logged_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl PluginHook {
    /// Load listener `l`'s plugin (blocking) and ask it once about a
    /// sample client: a plugin that traps or answers garbage is refused
    /// here, with the generation that names it.
    pub fn load(
        runtime: &PluginRuntime,
        l: &ListenerConfig,
        metrics: &std::sync::Arc<Metrics>,
        queued: Gauge,
    ) -> Result<Option<Self>, PluginError> {
        let Some(spec) = &l.admission.plugin else {
            return Ok(None);
        };
        let name = format!("{}/admission", l.name);
        let plugin = AdmissionPlugin::load(runtime, spec, &name)?;
        plugin
            .admit(&crate::plugin::check::admission_context(1, 0, 0))
            .map_err(|failure| PluginError::SelfCheck {
                plugin: name.clone(),
                failure,
            })?;
        let labels = |reason: &str| AdmissionLabels {
            listener: l.name.clone(),
            reason: reason.to_string(),
        };
        Ok(Some(PluginHook {
            plugin,
            calls: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CALLS)),
            refusals: metrics
                .admission_refusals
                .get_or_create(&labels(Refusal::Plugin.label()))
                .clone(),
            tarpits: metrics
                .admission_tarpits
                .get_or_create(&ListenerLabels {
                    listener: l.name.clone(),
                })
                .clone(),
            queued,
            metrics: metrics.clone(),
            listener: l.name.clone(),
            logged_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }))
    }

    /// Which build runs, for `/status`.
    pub fn info(&self) -> &crate::plugin::PluginInfo {
        self.plugin.info()
    }

    /// A permit for a call, within [`TURN_WAIT`] (or twice `deadline`, the
    /// plugin's, if longer), else `None` (counted as `busy`): [`MAX_CALLS`]
    /// stayed in flight all along.
    pub async fn call_permit(
        &self,
        deadline: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let wait = TURN_WAIT.max(deadline.saturating_mul(2));
        match tokio::time::timeout(wait, self.calls.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                self.failed(&CallFailure::Busy);
                None
            }
        }
    }

    /// A call that panicked on its thread: counted, the client admitted.
    pub fn panicked(&self) {
        self.failed(&CallFailure::Trap("the call panicked".into()));
    }

    /// Ask the plugin about `ctx` on listener `l` and count what it said.
    /// Blocking for at most the plugin's deadline (twice, with a wait for
    /// the instance), like a balancer's decision.
    pub fn decide(
        &self,
        l: &ListenerConfig,
        ctx: &AdmissionContext,
        client: std::net::SocketAddr,
    ) -> Verdict {
        match self.plugin.admit(ctx) {
            Ok(AdmissionDecision::Accept) => Verdict::Admit,
            Ok(AdmissionDecision::Reject(r)) => {
                self.refusals.inc();
                tracing::debug!(listener = %l.name, %client, code = r.code, text = %r.text, "refused by the admission plugin");
                Verdict::Refuse(plugin_reply(l, r.code, &r.text))
            }
            Ok(AdmissionDecision::Tarpit(0)) => Verdict::Admit,
            Ok(AdmissionDecision::Tarpit(seconds)) => {
                self.tarpits.inc();
                let held = tarpit(seconds);
                tracing::info!(listener = %l.name, %client, seconds = held.as_secs(), asked = seconds, "tarpit by the admission plugin");
                Verdict::Tarpit(held)
            }
            Err(failure) => {
                self.failed(&failure);
                Verdict::Admit
            }
        }
    }

    fn failed(&self, failure: &CallFailure) {
        self.metrics
            .admission_plugin_failures
            .get_or_create(&AdmissionLabels {
                listener: self.listener.clone(),
                reason: failure.reason().to_string(),
            })
            .inc();
        static LOG_ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        // Offset by a second so that the first failure is always logged.
        let now = (LOG_ORIGIN.get_or_init(Instant::now).elapsed() + Duration::from_secs(1))
            .as_millis() as u64;
        let last = self.logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tracing::warn!(
            listener = %self.listener,
            plugin = self.plugin.name(),
            reason = failure.reason(),
            suppressed = self.suppressed.swap(0, Ordering::Relaxed),
            "admission plugin call failed, the client was admitted: {failure}"
        );
    }
}

/// How long a client is held for a plugin's `tarpit(seconds)`.
fn tarpit(seconds: u32) -> Duration {
    Duration::from_secs(seconds.into()).min(MAX_TARPIT)
}

/// The context an admission plugin gets for a client at `peer` of
/// listener `l`, with the listener's counts.
pub fn context(
    l: &ListenerConfig,
    peer: std::net::SocketAddr,
    listener_sessions: u32,
    client_sessions: u32,
    queued: u32,
) -> AdmissionContext {
    AdmissionContext {
        client_ip: crate::generation::ip_address(peer.ip()),
        client_port: peer.port(),
        listener: l.name.clone(),
        service: match l.protocol {
            Protocol::Smtp => Service::Smtp,
            Protocol::Http => Service::Http,
            Protocol::Tcp => Service::Tcp,
        },
        tls: l.tls.is_some(),
        listener_sessions,
        client_sessions,
        queued,
    }
}

fn http_reply(status: &str, fields: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{fields}connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateLimit;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(allow: &[&str], deny: &[&str], per_second: u32) -> Admission {
        Admission {
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
            deny_reply: DenyReply::Reject,
            rate: RateLimit {
                per_second,
                burst: per_second,
            },
            plugin: None,
        }
    }

    #[test]
    fn deny_wins_over_allow_and_allow_keeps_everyone_else_out() {
        let rules = admission(&["192.0.2.0/24", "2001:db8::/32"], &["192.0.2.128/25"], 0);
        let mut rates = Buckets::default();
        let now = Instant::now();
        let verdict =
            |rates: &mut Buckets<IpAddr>, s: &str| check(&rules, rates, ip(s), ip(s), now);
        assert_eq!(verdict(&mut rates, "192.0.2.1"), Ok(()));
        assert_eq!(verdict(&mut rates, "2001:db8:5::1"), Ok(()));
        assert_eq!(verdict(&mut rates, "192.0.2.200"), Err(Refusal::Denied));
        assert_eq!(verdict(&mut rates, "198.51.100.1"), Err(Refusal::Denied));
        assert_eq!(verdict(&mut rates, "2001:db9::1"), Err(Refusal::Denied));
        // No allow list: only deny refuses.
        let open = admission(&[], &["198.51.100.0/24"], 0);
        assert_eq!(
            check(&open, &mut rates, ip("203.0.113.9"), ip("203.0.113.9"), now),
            Ok(())
        );
        assert_eq!(
            check(
                &open,
                &mut rates,
                ip("198.51.100.7"),
                ip("198.51.100.7"),
                now
            ),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn a_network_written_ipv4_mapped_matches_ipv4_clients() {
        let toml = "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"p\"\n\
                    deny = [\"::ffff:192.0.2.0/120\"]\n[pools.p]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), toml).unwrap();
        let rules = &config.listeners[0].admission;
        let mut rates = Buckets::default();
        let now = Instant::now();
        let client = ip("192.0.2.9");
        assert_eq!(
            check(rules, &mut rates, client, client, now),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn a_plugins_refusal_is_one_smtp_line_an_http_status_or_a_close() {
        let toml = "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"p\"\n\
                    hostname = \"gale.test\"\n\
                    [listeners.web]\nprotocol = \"http\"\naddress = \"127.0.0.1:0\"\npool = \"w\"\n\
                    [listeners.raw]\nprotocol = \"tcp\"\naddress = \"127.0.0.1:0\"\npool = \"p\"\n\
                    [pools.p]\n[pools.w]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), toml).unwrap();
        let l = |name: &str| config.listener(name).unwrap();
        assert_eq!(
            plugin_reply(l("in"), 554, "5.7.1 not here"),
            Some((554, "554 5.7.1 not here\r\n".to_string()))
        );
        assert_eq!(
            plugin_reply(l("in"), 421, ""),
            Some((421, "421 gale.test Access denied\r\n".to_string()))
        );
        let (code, http) = plugin_reply(l("web"), 403, "go away").unwrap();
        assert_eq!(code, 403);
        assert!(http.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{http}");
        assert!(http.ends_with("\r\n\r\ngo away\n"), "{http}");
        let (_, odd) = plugin_reply(l("web"), 599, "").unwrap();
        assert!(odd.starts_with("HTTP/1.1 599 Refused\r\n"), "{odd}");
        assert_eq!(plugin_reply(l("raw"), 554, "x"), None);
    }

    #[test]
    fn a_tarpit_is_cut_to_a_minute() {
        assert_eq!(tarpit(5), Duration::from_secs(5));
        assert_eq!(tarpit(60), MAX_TARPIT);
        assert_eq!(tarpit(61), MAX_TARPIT);
        assert_eq!(tarpit(u32::MAX), MAX_TARPIT);
    }

    #[test]
    fn the_rate_counts_per_client_key() {
        let rules = admission(&[], &[], 2);
        let mut rates = Buckets::default();
        let now = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(check(&rules, &mut rates, a, a, now), Ok(()));
        assert_eq!(check(&rules, &mut rates, a, a, now), Ok(()));
        assert_eq!(check(&rules, &mut rates, a, a, now), Err(Refusal::Rate));
        assert_eq!(check(&rules, &mut rates, b, b, now), Ok(()));
        // A denied client spends no token.
        let strict = admission(&[], &["192.0.2.2/32"], 2);
        assert_eq!(check(&strict, &mut rates, b, b, now), Err(Refusal::Denied));
        assert_eq!(check(&rules, &mut rates, b, b, now), Ok(()));
    }
}
