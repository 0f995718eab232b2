//! The `/status` document: what is running, how healthy it is, and what
//! the last reloads did.

use serde::Serialize;

use super::Admin;
use crate::pool::{BackendReport, ShadowReport};
use crate::reload::history::HistoryReport;

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: String,
    /// The generation new sessions start on.
    pub generation: u64,
    pub reloads: HistoryReport,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
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
pub struct ListenerStatus {
    pub name: String,
    pub protocol: &'static str,
    /// The bound address (with port 0 in the config, the kernel's choice);
    /// absent when the listener is not bound.
    pub address: Option<String>,
    pub pool: String,
    pub max_sessions: u32,
}

#[derive(Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub balancer: String,
    pub health: String,
    /// Decisions by this generation's balancer, and how many of them it
    /// trapped on or ran out of time for (the fallback decided those).
    pub decisions: u64,
    pub failed_decisions: u64,
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
            .map(|l| ListenerStatus {
                name: l.name.clone(),
                protocol: match l.protocol {
                    crate::config::Protocol::Smtp => "smtp",
                    crate::config::Protocol::Http => "http",
                },
                address: bound
                    .iter()
                    .find(|(name, _)| name == &l.name)
                    .map(|(_, a)| a.to_string()),
                pool: config.pool_of(l).name.clone(),
                max_sessions: l.max_sessions,
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
                    backends: pool.backend_reports(),
                    candidate: pool.shadow_report(),
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_at: admin.started_at.clone(),
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
