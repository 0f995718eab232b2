//! A generation: one validated config with every pool and plugin it names,
//! built completely before anything uses it. Reload builds a new one and
//! swaps it in whole; sessions keep the generation they started with.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Protocol as ListenerProtocol;
use crate::config::{Config, ListenerConfig};
use crate::metrics::{
    AdmissionLabels, BytesLabels, ErrorReplyLabels, ListenerLabels, Metrics, PregreetLabels,
    QueueLabels, RequestLabels, SessionLabels,
};
use crate::plugin::types::{IpAddress, ProbeResult, ProbeSource, Protocol, RequestContext};
use crate::plugin::{DnsPlugin, PluginError, PluginRuntime};
use crate::pool::Pool;
use crate::queue::Queue;
use prometheus_client::metrics::counter::Counter;

pub struct Generation {
    pub id: u64,
    pub config: Config,
    pub pools: Vec<Arc<Pool>>,
    /// The `[dns]` plugin, when records are published.
    pub dns: Option<Arc<DnsPlugin>>,
    pub metrics: Arc<Metrics>,
    /// Counters of each listener (same order as `config.listeners`),
    /// resolved once.
    pub listener_counters: Vec<ListenerCounters>,
    /// Each listener's admission plugin, if it has one (same order).
    pub admission: Vec<Option<Arc<crate::admission::PluginHook>>>,
}

/// One listener's session, request and byte counters.
pub struct ListenerCounters {
    pub relayed: Counter,
    pub deferred: Counter,
    /// SMTP sessions given the backends' own refusal (see `smtp::session`).
    pub refused: Counter,
    pub retries: Counter,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    /// HTTP responses by status class, `1xx` to `5xx`.
    pub statuses: [Counter; 5],
    /// 421 replies (SMTP listeners only).
    pub replied_421: Counter,
    /// Where sessions wait while every backend is at `max_sessions`.
    pub queue: Queue,
    metrics: Arc<Metrics>,
    listener: String,
}

impl ListenerCounters {
    /// The series of a listener's protocol; the others are counters
    /// nobody exports (an SMTP listener has no HTTP statuses).
    fn new(metrics: &Arc<Metrics>, l: &ListenerConfig) -> Self {
        let listener = l.name.as_str();
        // Session counters and relayed bytes: SMTP and tcp listeners.
        let sessions = l.protocol != ListenerProtocol::Http;
        let replies_421 = l.protocol == ListenerProtocol::Smtp;
        let session = |outcome: &str| {
            if !sessions {
                return Counter::default();
            }
            metrics
                .sessions
                .get_or_create(&SessionLabels {
                    listener: listener.to_string(),
                    outcome: outcome.to_string(),
                })
                .clone()
        };
        // SMTP: bytes relayed; HTTP: bytes on the client connection.
        let bytes = |direction: &str| {
            let family = if sessions {
                &metrics.bytes
            } else {
                &metrics.http_bytes
            };
            family
                .get_or_create(&BytesLabels {
                    listener: listener.to_string(),
                    direction: direction.to_string(),
                })
                .clone()
        };
        let status = |class: u16| {
            if sessions {
                return Counter::default();
            }
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_string(),
                    status: format!("{class}xx"),
                })
                .clone()
        };
        let queue_outcome = |outcome: &str| {
            metrics
                .queue_outcomes
                .get_or_create(&QueueLabels {
                    listener: listener.to_string(),
                    outcome: outcome.to_string(),
                })
                .clone()
        };
        ListenerCounters {
            relayed: session("relayed"),
            deferred: session("deferred"),
            refused: session("refused"),
            retries: metrics
                .retries
                .get_or_create(&ListenerLabels {
                    listener: listener.to_string(),
                })
                .clone(),
            bytes_up: bytes("up"),
            bytes_down: bytes("down"),
            statuses: [status(1), status(2), status(3), status(4), status(5)],
            replied_421: if replies_421 {
                metrics
                    .error_replies
                    .get_or_create(&ErrorReplyLabels {
                        listener: listener.to_string(),
                        code: "421".to_string(),
                    })
                    .clone()
            } else {
                Counter::default()
            },
            queue: Queue {
                size: l.queue_size,
                timeout: l.queue_timeout,
                waiting: metrics
                    .queued
                    .get_or_create(&ListenerLabels {
                        listener: listener.to_string(),
                    })
                    .clone(),
                served: queue_outcome("served"),
                timed_out: queue_outcome("timeout"),
                full: queue_outcome("full"),
                gone: queue_outcome("gone"),
            },
            metrics: metrics.clone(),
            listener: listener.to_string(),
        }
    }

    /// Count an HTTP error reply gale wrote itself (rare: the series is
    /// looked up each time). Its status class is counted by `status`.
    pub fn error_reply(&self, status: u16) {
        self.metrics
            .error_replies
            .get_or_create(&ErrorReplyLabels {
                listener: self.listener.clone(),
                code: status.to_string(),
            })
            .inc();
    }

    /// Count a client whose TLS handshake failed (rare: looked up each
    /// time).
    pub fn tls_failed(&self) {
        self.metrics
            .tls_failures
            .get_or_create(&ListenerLabels {
                listener: self.listener.clone(),
            })
            .inc();
    }

    /// Count an SMTP client that sent before its greeting, and what the
    /// listener did: `rejected` or `passed` (rare: looked up each time).
    pub fn pregreet(&self, action: &str) {
        self.metrics
            .pregreets
            .get_or_create(&PregreetLabels {
                listener: self.listener.clone(),
                action: action.to_string(),
            })
            .inc();
    }

    /// Count a connection switched to another protocol, open until the
    /// guard drops (rare: the series are looked up each time).
    pub fn upgraded(&self) -> UpgradedGuard {
        let labels = ListenerLabels {
            listener: self.listener.clone(),
        };
        self.metrics.upgrades.get_or_create(&labels).inc();
        let open = self.metrics.upgraded_open.get_or_create(&labels).clone();
        open.inc();
        UpgradedGuard(open)
    }

    /// Count a client refused before its session began, with the `code`
    /// gale replied: an HTTP status, a 421 (deferred) or a 5xx (refused).
    pub fn refused_with(&self, protocol: ListenerProtocol, code: u16) {
        match (protocol, code) {
            (ListenerProtocol::Http, _) => {
                self.status(code);
                self.error_reply(code);
            }
            (_, 421) => {
                self.deferred.inc();
                self.replied_421.inc();
            }
            _ => {
                self.refused.inc();
                self.error_reply(code);
            }
        }
    }

    /// Count a client refused on admission (rare, or a flood that costs
    /// far more than the lookup: the series is looked up each time).
    pub fn admission_refused(&self, refusal: crate::admission::Refusal) {
        self.metrics
            .admission_refusals
            .get_or_create(&AdmissionLabels {
                listener: self.listener.clone(),
                reason: refusal.label().to_string(),
            })
            .inc();
    }

    /// Count a response with `status` sent to a client.
    pub fn status(&self, status: u16) {
        if let Some(c) = self.statuses.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }
}

/// An upgraded connection, counted open while it lives.
pub struct UpgradedGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for UpgradedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Generation {
    /// Load every plugin of `config` and call each once on a sample input,
    /// so a plugin that traps or answers garbage is refused here rather
    /// than discovered under traffic. Blocking.
    pub fn build(
        id: u64,
        runtime: &PluginRuntime,
        config: Config,
        metrics: &Arc<Metrics>,
    ) -> Result<Generation, PluginError> {
        Self::build_after(id, runtime, config, metrics, None)
    }

    /// Like [`Generation::build`], for a reload: backends that are also in
    /// `previous` share their session counters with it.
    pub fn build_after(
        id: u64,
        runtime: &PluginRuntime,
        config: Config,
        metrics: &Arc<Metrics>,
        previous: Option<&Generation>,
    ) -> Result<Generation, PluginError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool_config in &config.pools {
            let before = previous.and_then(|g| g.pool(&pool_config.name));
            let pool = Pool::build_after(runtime, pool_config, metrics, before.map(|p| &**p))?;
            pool.self_check(&sample_context(), &sample_result())?;
            pools.push(Arc::new(pool));
        }
        let dns = match &config.dns {
            None => None,
            Some(d) => {
                let plugin = DnsPlugin::load(runtime, &d.plugin, "dns")?;
                plugin
                    .plan(&crate::dns::sample_snapshot(d))
                    .map_err(|failure| PluginError::SelfCheck {
                        plugin: plugin.name().to_string(),
                        failure,
                    })?;
                Some(Arc::new(plugin))
            }
        };
        let listener_counters: Vec<ListenerCounters> = config
            .listeners
            .iter()
            .map(|l| ListenerCounters::new(metrics, l))
            .collect();
        let admission = config
            .listeners
            .iter()
            .zip(&listener_counters)
            .map(|(l, counters)| {
                let hook = crate::admission::PluginHook::load(
                    runtime,
                    l,
                    metrics,
                    counters.queue.waiting.clone(),
                )?;
                Ok(hook.map(Arc::new))
            })
            .collect::<Result<_, PluginError>>()?;
        Ok(Generation {
            id,
            config,
            pools,
            dns,
            metrics: metrics.clone(),
            listener_counters,
            admission,
        })
    }

    /// Carry `old`'s health state over to the pools and backends that
    /// are in both.
    pub fn inherit(&self, old: &Generation) {
        for pool in &self.pools {
            if let Some(before) = old.pool(&pool.name) {
                pool.inherit(before);
            }
        }
    }

    /// The listener named `name` and its counters, in one lookup, if it
    /// still speaks `protocol`: to a connection an SMTP listener accepted
    /// before a reload made it an HTTP one, its listener is gone (its
    /// session must not use the new protocol's pool and settings).
    pub fn listener(
        &self,
        name: &str,
        protocol: ListenerProtocol,
    ) -> Option<(&ListenerConfig, &ListenerCounters)> {
        let i = self.listener_index(name, protocol)?;
        Some((&self.config.listeners[i], &self.listener_counters[i]))
    }

    /// Where [`Generation::listener`]'s listener is in the config.
    pub fn listener_index(&self, name: &str, protocol: ListenerProtocol) -> Option<usize> {
        self.config
            .listeners
            .iter()
            .position(|l| l.name == name && l.protocol == protocol)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// What a self-check asks a balancer.
pub fn sample_context() -> RequestContext {
    RequestContext {
        protocol: Protocol::Smtp,
        listener: 0,
        client_ip: IpAddress::V4(0xc000_0201),
        client_port: 40000,
        http: None,
    }
}

fn sample_result() -> ProbeResult {
    ProbeResult {
        ok: true,
        latency_us: 1000,
        code: Some(220),
        detail: "self-check".into(),
        source: ProbeSource::Probe,
    }
}

/// A client address in the form plugins see it.
pub fn ip_address(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(v4) => IpAddress::V4(v4.to_bits()),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            IpAddress::V6(((bits >> 64) as u64, bits as u64))
        }
    }
}

/// The inverse of [`ip_address`].
pub fn ip_of(ip: &IpAddress) -> IpAddr {
    match *ip {
        IpAddress::V4(bits) => IpAddr::V4(std::net::Ipv4Addr::from_bits(bits)),
        IpAddress::V6((hi, lo)) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            ((hi as u128) << 64) | lo as u128,
        )),
    }
}
