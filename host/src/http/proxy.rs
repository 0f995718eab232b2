//! What both engines share of a listener: [`Proxy`] (the generation to
//! read pools from and the pooled backend connections), and the rules
//! and log lines of a proxied request ([`Line`]: its access line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::access;
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

pub(super) use crate::access::loggable;

/// The text line of a request no backend answered (in JSON its access
/// line says it).
pub(super) fn log_failure(
    l: &ListenerConfig,
    peer: SocketAddr,
    method: &str,
    path: &str,
    status: u16,
    tried: Steps<'_>,
    started: Instant,
) {
    if crate::access::json() {
        return;
    }
    tracing::warn!(
        listener = %l.name,
        client = %peer,
        method = loggable(method),
        path = loggable(path),
        status,
        tried = %tried,
        ms = started.elapsed().as_millis() as u64,
        "http request failed"
    );
}

/// What one HTTP request's access line says, whichever engine served it.
pub(super) struct Line<'a> {
    pub listener: &'a str,
    pub generation: u64,
    pub client: SocketAddr,
    pub backend: Option<&'a str>,
    pub attempts: Steps<'a>,
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status: Option<u16>,
    /// Body bytes from and to the client.
    pub up: u64,
    pub down: u64,
    pub started: Instant,
    pub end: &'a str,
}

impl<'a> Line<'a> {
    /// A request of `listener` on `generation` from `client`, answered by
    /// gale (or by nobody) before any backend was tried.
    pub fn new(listener: &'a str, generation: u64, client: SocketAddr, started: Instant) -> Self {
        Line {
            listener,
            generation,
            client,
            backend: None,
            attempts: Steps::NONE,
            method: None,
            host: None,
            path: None,
            status: None,
            up: 0,
            down: 0,
            started,
            end: "",
        }
    }

    /// Write the access line, `message` at `level`, in JSON (the text
    /// lines are the engines' own).
    pub fn json(&self, level: tracing::Level, message: &str) {
        if !access::json() {
            return;
        }
        let record = access::Http {
            common: access::Common {
                kind: access::Kind::Http,
                client: self.client,
                listener: self.listener,
                generation: self.generation,
                backend: self.backend,
                attempts: self.attempts,
                bytes_up: self.up,
                bytes_down: self.down,
                duration_ms: self.started.elapsed().as_millis() as u64,
                end: self.end,
            },
            method: self.method.map(loggable),
            host: self.host.filter(|h| !h.is_empty()).map(loggable),
            path: self.path.map(loggable),
            status: self.status,
        };
        access::emit(level, message, &record);
    }
}
