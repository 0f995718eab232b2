//! The `/status` document: what is running, how healthy it is, and what
//! the last reloads did.

use serde::Serialize;

use super::Admin;
use crate::plugin::PluginInfo;
use crate::pool::{BackendReport, ShadowReport};
use crate::reload::history::HistoryReport;

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: String,
    /// When this document was made (Unix ms), for the ages of the times
    /// in it.
    pub now_ms: u64,
    /// The generation new sessions start on.
    pub generation: u64,
    pub reloads: HistoryReport,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    /// Every plugin of the running generation.
    pub plugins: Vec<PluginStatus>,
    /// Records wanted and published, when `[dns]` is configured.
    pub dns: Option<DnsStatus>,
}

#[derive(Debug, Serialize)]
pub struct DnsStatus {
    pub zone: String,
    pub name: String,
    pub pool: String,
    pub plugin: String,
    pub provider: &'static str,
    #[serde(flatten)]
    pub records: crate::dns::Report,
}

#[derive(Debug, Serialize)]
pub struct PluginStatus {
    /// `balancer`, `health`, `candidate`, `dns` or `admission`.
    pub hook: &'static str,
    /// The pool it decides for (the DNS plugin's is the published pool;
    /// an admission plugin's, the pool of its listener).
    pub pool: String,
    /// An admission plugin's listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(flatten)]
    pub info: PluginInfo,
}

#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: &'static str,
    /// The bound address (with port 0 in the config, the kernel's choice);
    /// absent when the listener is not bound.
    pub address: Option<String>,
    pub pool: String,
    pub max_sessions: u32,
    /// Sessions or requests waiting now for a backend slot, and how many
    /// may (`queue_size`) for how long (`queue_timeout`).
    pub queued: i64,
    pub queue_size: u32,
    pub queue_timeout_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub balancer: String,
    pub health: String,
    /// Decisions by this generation's balancer, and how many of them it
    /// failed (the fallback decided those).
    pub decisions: u64,
    pub failed_decisions: u64,
    /// Decisions since gale started, across reloads (for rates).
    pub decisions_total: u64,
    pub backends: Vec<BackendReport>,
    /// A candidate balancer deciding beside `balancer` without acting.
    pub candidate: Option<ShadowReport>,
}

impl Status {
    pub fn of(admin: &Admin) -> Status {
        let generation = admin.server.current.load_full();
        let bound = admin.server.addresses();
        let config = &generation.config;
        let listeners = config
            .listeners
            .iter()
            .zip(&generation.listener_counters)
            .map(|(l, counters)| ListenerStatus {
                name: l.name.clone(),
                protocol: l.protocol.name(),
                address: bound
                    .iter()
                    .find(|(name, _)| name == &l.name)
                    .map(|(_, a)| a.to_string()),
                pool: config.pool_of(l).name.clone(),
                max_sessions: l.max_sessions,
                queued: counters.queue.waiting.get(),
                queue_size: l.queue_size,
                queue_timeout_ms: l.queue_timeout.as_millis() as u64,
            })
            .collect();
        let pools = generation
            .pools
            .iter()
            .map(|pool| {
                let (decisions, failed_decisions) = pool.decision_counts();
                PoolStatus {
                    name: pool.name.clone(),
                    balancer: pool.balancer_name().to_string(),
                    health: pool.health_name().to_string(),
                    decisions,
                    failed_decisions,
                    decisions_total: pool.decisions_total(),
                    backends: pool.backend_reports(),
                    candidate: pool.shadow_report(),
                }
            })
            .collect();
        let mut plugins: Vec<PluginStatus> = generation
            .pools
            .iter()
            .flat_map(|pool| {
                pool.plugins().into_iter().map(|(hook, info)| PluginStatus {
                    hook,
                    pool: pool.name.clone(),
                    listener: None,
                    info: info.clone(),
                })
            })
            .collect();
        if let (Some(plugin), Some(dns)) = (&generation.dns, &config.dns) {
            plugins.push(PluginStatus {
                hook: "dns",
                pool: config.pools[dns.pool].name.clone(),
                listener: None,
                info: plugin.info().clone(),
            });
        }
        for (l, hook) in config.listeners.iter().zip(&generation.admission) {
            if let Some(hook) = hook {
                plugins.push(PluginStatus {
                    hook: "admission",
                    pool: config.pools[l.pool].name.clone(),
                    listener: Some(l.name.clone()),
                    info: hook.info().clone(),
                });
            }
        }
        Status {
            plugins,
            version: env!("CARGO_PKG_VERSION"),
            started_at: admin.started_at.clone(),
            now_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            generation: generation.id,
            reloads: admin.history.report(),
            listeners,
            pools,
            dns: config.dns.as_ref().map(|d| DnsStatus {
                zone: d.zone.clone(),
                name: d.name.clone(),
                pool: config.pools[d.pool].name.clone(),
                plugin: d.plugin.source.to_string(),
                provider: d.provider.kind(),
                records: admin.server.dns.report(),
            }),
        }
    }
}
