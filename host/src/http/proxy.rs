//! What both engines share of a listener: [`Proxy`] (the generation to
//! read pools from and the pooled backend connections), and the rules
//! and log lines of a proxied request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::attempts::Steps;
use crate::config::ListenerConfig;
use crate::generation::Generation;
use arc_swap::ArcSwap;

/// Seconds a client is asked to wait when no backend can take a request.
pub(super) const RETRY_AFTER_SECS: &str = "10";
/// One HTTP listener's proxy: the generation to read pools from and the
/// pooled keep-alive connections to backends.
pub struct Proxy {
    pub(super) name: String,
    pub(super) current: Arc<ArcSwap<Generation>>,
    /// Idle backend connections, for both engines' requests.
    pub(super) idle: super::idle::IdlePool,
}

impl Proxy {
    pub fn new(name: String, current: Arc<ArcSwap<Generation>>) -> Self {
        Proxy {
            name,
            current,
            idle: Default::default(),
        }
    }
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// A request path as logs show it: its first 256 bytes, so that one
/// request cannot write a 64 KiB log line.
pub(super) fn loggable(path: &str) -> &str {
    &path[..path.floor_char_boundary(256)]
}

pub(super) fn log_failure(
    l: &ListenerConfig,
    peer: SocketAddr,
    method: &str,
    path: &str,
    status: u16,
    tried: Steps<'_>,
    started: Instant,
) {
    tracing::warn!(
        listener = %l.name,
        client = %peer,
        %method,
        path = loggable(path),
        status,
        tried = %tried,
        ms = started.elapsed().as_millis() as u64,
        "http request failed"
    );
}
