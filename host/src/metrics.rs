//! Prometheus metrics (text exposition via prometheus-client). Handles
//! used on hot paths are resolved once, at construction, so a decision
//! touches only atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub pool: String,
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub pool: String,
    pub hook: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub pool: String,
    /// `agreed`, `disagreed` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub listener: String,
    /// SMTP: `relayed` (joined to a backend) or `deferred` (421 sent).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    /// The status class sent to the client: `2xx` ... `5xx`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorReplyLabels {
    pub listener: String,
    /// The reply code: `421` (SMTP), `400` ... `504` (HTTP).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PregreetLabels {
    pub listener: String,
    /// What the listener's `pregreet` setting did: `rejected` or `passed`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub listener: String,
    /// Refusals: `deny` (the allow/deny networks), `rate` (client_rate)
    /// or `plugin` (the admission plugin). Plugin failures: the
    /// [`crate::plugin::CallFailure`] reason.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub listener: String,
    /// `served`, `timeout`, `full` or `gone`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    /// `up` (client to backend) or `down`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub pool: String,
    pub backend: String,
    /// What went wrong: `connect`, `timeout`, `greeting`, `full`,
    /// `exchange`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub pool: String,
    pub backend: String,
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub provider: String,
    /// `applied`, `refused`, `failed` or `unverified` (an answer that
    /// failed TSIG verification).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// `dropped`, or `slipped` (a truncated reply sent instead).
    pub action: String,
}

/// Every metric gale exports.
pub struct Metrics {
    registry: Registry,
    pub plugin_calls: Family<PluginLabels, Counter>,
    pub plugin_fallbacks: Family<FallbackLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    /// Candidate balancers' decisions compared with the active ones.
    pub shadow_decisions: Family<ShadowLabels, Counter>,
    /// Reloads undone because their plugins failed on traffic.
    pub rollbacks: Counter,
    /// Id of the generation serving new sessions.
    pub generation: Gauge,
    pub sessions: Family<SessionLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    /// Error replies gale wrote itself rather than a backend.
    pub error_replies: Family<ErrorReplyLabels, Counter>,
    /// SMTP clients that sent before they were greeted.
    pub pregreets: Family<PregreetLabels, Counter>,
    /// Client TLS handshakes that failed or timed out (SMTPS, HTTPS).
    pub tls_failures: Family<ListenerLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub http_bytes: Family<BytesLabels, Counter>,
    /// Sessions or requests a backend took.
    pub backend_sessions: Family<BackendLabels, Counter>,
    /// Attempts at a backend that failed, by reason.
    pub backend_failures: Family<FailureLabels, Counter>,
    /// Backends taken out on live-traffic evidence.
    pub backend_ejections: Family<BackendLabels, Counter>,
    /// Ejections refused by `max_ejection_percent`.
    pub ejections_capped: Family<PoolLabels, Counter>,
    /// Attempts after the first within one session or request.
    pub retries: Family<ListenerLabels, Counter>,
    /// Bytes a listener's connections hold in buffers (see `buffers`).
    pub listener_buffers: Family<ListenerLabels, Gauge>,
    /// Clients refused on accept by a listener's admission rules.
    pub admission_refusals: Family<AdmissionLabels, Counter>,
    /// Clients an admission plugin held before admitting them.
    pub admission_tarpits: Family<ListenerLabels, Counter>,
    /// Admission plugin calls that failed (the client was admitted).
    pub admission_plugin_failures: Family<AdmissionLabels, Counter>,
    /// Sessions or requests waiting for a backend slot now (`queue.rs`).
    pub queued: Family<ListenerLabels, Gauge>,
    /// How waits in the queue ended.
    pub queue_outcomes: Family<QueueLabels, Counter>,
    /// HTTP/1.1 connections switched to another protocol (WebSocket).
    pub upgrades: Family<ListenerLabels, Counter>,
    /// Of those, the ones open now.
    pub upgraded_open: Family<ListenerLabels, Gauge>,
    pub probes: Family<ProbeLabels, Counter>,
    pub plugin_call_seconds: Family<PluginLabels, Histogram>,
    pub dns_updates: Family<DnsLabels, Counter>,
    /// UDP responses of the embedded DNS server held back by its rate
    /// limit.
    pub dns_rate_limited: Family<RateLimitLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gale");
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Plugin decisions asked for, by pool and hook",
            plugin_calls.clone(),
        );
        let plugin_fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "plugin_fallbacks",
            "Decisions taken by the built-in fallback because the plugin trapped, hit its deadline or memory cap, or answered garbage",
            plugin_fallbacks.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Config and plugin reloads, by result",
            reloads.clone(),
        );
        let shadow_decisions = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_decisions",
            "Decisions of candidate balancers in shadow mode, by whether they chose the same first backend as the balancer in use",
            shadow_decisions.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "rollbacks",
            "Reloads undone because a new plugin trapped or ran out of time in too many decisions",
            rollbacks.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "generation",
            "Id of the generation serving new sessions",
            generation.clone(),
        );
        let sessions = Family::<SessionLabels, Counter>::default();
        registry.register(
            "sessions",
            "SMTP sessions by listener and outcome: relayed to a backend, deferred with 421, or refused (every backend tried refused this client with a 5xx greeting while greeting others: their reply was passed on)",
            sessions.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by listener and the status class sent (503 and 502/504 included)",
            requests.clone(),
        );
        let error_replies = Family::<ErrorReplyLabels, Counter>::default();
        registry.register(
            "error_replies",
            "Error replies gale sent itself, by code: 421 when no backend could take an SMTP session or a client is over max_sessions_per_client, 554 to an SMTP client that spoke before the greeting; HTTP 503 when no backend was available, 502 and 504 when backends failed, 400, 408, 431 and 501 for requests it refused",
            error_replies.clone(),
        );
        let pregreets = Family::<PregreetLabels, Counter>::default();
        registry.register(
            "smtp_pregreets",
            "SMTP clients that sent before the greeting reached them (Postfix postscreen's pregreet test), by what the listener's pregreet setting did: rejected (554) or passed",
            pregreets.clone(),
        );
        let tls_failures = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed or timed out (SMTPS: within banner_timeout, HTTPS: header_timeout); no backend was touched",
            tls_failures.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "smtp_bytes",
            "Bytes relayed by SMTP listeners, up (client to backend) and down",
            bytes.clone(),
        );
        let http_bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "http_bytes",
            "Bytes on HTTP client connections (TLS included), up (from clients) and down, counted every 64 KiB and when a connection ends",
            http_bytes.clone(),
        );
        let backend_sessions = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_sessions",
            "SMTP sessions and HTTP requests each backend took",
            backend_sessions.clone(),
        );
        let backend_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "backend_failures",
            "Attempts at a backend that failed: connect, timeout, greeting (not 220), full (max_sessions), exchange (HTTP: failed before a response), status (HTTP: answered 502, 503 or 504), deferred (SMTP, in the clear: a 4.3 reply to MAIL FROM, DATA or the end of a message, or a 421, after the greeting), tls (a tls = true backend: no TLS session)",
            backend_failures.clone(),
        );
        let backend_ejections = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_ejections",
            "Times a backend was taken out of rotation on live-traffic failures (out for base_ejection_time or longer, then back on a passing probe)",
            backend_ejections.clone(),
        );
        let ejections_capped = Family::<PoolLabels, Counter>::default();
        registry.register(
            "pool_ejections_capped",
            "Live-traffic verdicts that would have taken a backend out but were refused: more than max_ejection_percent of the pool would have been out",
            ejections_capped.clone(),
        );
        let retries = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "retries",
            "Attempts at a further backend within one session or request",
            retries.clone(),
        );
        let listener_buffers = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "listener_buffer_bytes",
            "Bytes a listener's connections hold in buffers, counted against its max_buffer_mb",
            listener_buffers.clone(),
        );
        let admission_refusals = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_refusals",
            "Clients refused on accept by a listener's allow/deny networks (deny), client_rate (rate) or admission plugin (plugin)",
            admission_refusals.clone(),
        );
        let admission_tarpits = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "admission_tarpits",
            "Clients an admission plugin held silently (tarpit) before admitting them",
            admission_tarpits.clone(),
        );
        let admission_plugin_failures = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_plugin_failures",
            "Admission plugin calls that trapped, hit their deadline or memory cap, or answered garbage; the client was admitted",
            admission_plugin_failures.clone(),
        );
        let queued = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "queued_sessions",
            "Sessions or requests waiting for a backend slot (every backend at max_sessions)",
            queued.clone(),
        );
        let queue_outcomes = Family::<QueueLabels, Counter>::default();
        registry.register(
            "queue_outcomes",
            "How waits for a backend slot ended: served, timeout (queue_timeout), full (queue_size), gone (the client left)",
            queue_outcomes.clone(),
        );
        let upgrades = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "http_upgrades",
            "HTTP/1.1 connections a backend switched to another protocol (101, WebSocket), joined both ways",
            upgrades.clone(),
        );
        let upgraded_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "http_upgraded_connections",
            "Switched-protocol (WebSocket) connections open now",
            upgraded_open.clone(),
        );
        let probes = Family::<ProbeLabels, Counter>::default();
        registry.register("probes", "Health probe results by backend", probes.clone());
        let plugin_call_seconds = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2])
        });
        registry.register(
            "plugin_call_seconds",
            "Time of one balancer or health plugin call, fallbacks included (balancer calls: one in 8 is timed)",
            plugin_call_seconds.clone(),
        );
        let dns_updates = Family::<DnsLabels, Counter>::default();
        registry.register(
            "dns_updates",
            "Record changes handed to the DNS provider, by result",
            dns_updates.clone(),
        );
        let dns_rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "dns_rate_limited",
            "UDP responses of the embedded DNS server past a client prefix's rate limit: dropped, or slipped (sent as a truncated reply so a real resolver retries over TCP)",
            dns_rate_limited.clone(),
        );
        Self {
            dns_rate_limited,
            registry,
            sessions,
            requests,
            error_replies,
            pregreets,
            tls_failures,
            bytes,
            http_bytes,
            backend_sessions,
            backend_failures,
            backend_ejections,
            ejections_capped,
            retries,
            listener_buffers,
            admission_refusals,
            admission_tarpits,
            admission_plugin_failures,
            queued,
            queue_outcomes,
            upgrades,
            upgraded_open,
            probes,
            plugin_call_seconds,
            dns_updates,
            plugin_calls,
            plugin_fallbacks,
            reloads,
            shadow_decisions,
            rollbacks,
            generation,
        }
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
