//! What both engines share of a listener: [`Proxy`] (the generation to
//! read pools from and the pooled backend connections), and the rules
//! and log lines of a proxied request ([`Line`]: its access line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::access;
use crate::attempts::{HttpReply, Steps};
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

/// The reply to a request on a listener the current generation no longer
/// has (a reload removed it while the connection was open), with its
/// access line.
pub(super) fn listener_removed(
    name: &str,
    generation: &Generation,
    client: SocketAddr,
    started: Instant,
) -> HttpReply {
    let reply = HttpReply {
        status: 503,
        text: "listener is being removed\n",
        retry_after: false,
    };
    let mut line = Line::new(name, generation.id, client, started);
    line.status = Some(reply.status);
    line.down = reply.text.len() as u64;
    line.end = reply.text.trim_end();
    line.json(
        access::http_level(&generation.config.log, true),
        "http request failed",
    );
    reply
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

    /// The access line of a request `backend` answered with `status`, at
    /// `level`: in JSON, or as the text line (which names the end only
    /// when it is not `done`: a response cut short).
    pub fn answered(mut self, backend: &'a str, status: u16, end: &'a str, level: tracing::Level) {
        self.backend = Some(backend);
        self.status = Some(status);
        self.end = end;
        if access::json() {
            return self.json(level, "http request");
        }
        let (method, path) = (self.method.unwrap_or(""), self.path.unwrap_or(""));
        let ms = self.started.elapsed().as_millis() as u64;
        if end == "done" {
            access::event_at!(
                level,
                listener = %self.listener, client = %self.client, backend,
                method = loggable(method), path = loggable(path), status, ms, "http request"
            );
        } else {
            access::event_at!(
                level,
                listener = %self.listener, client = %self.client, backend,
                method = loggable(method), path = loggable(path), status, ms, end, "http request"
            );
        }
    }

    /// The access line of a request no backend answered, which gale
    /// answers with `reply`: at `warn`, the attempts said.
    pub fn failed(mut self, reply: HttpReply) {
        self.status = Some(reply.status);
        self.down += reply.text.len() as u64;
        self.end = reply.text.trim_end();
        if access::json() {
            return self.json(tracing::Level::WARN, "http request failed");
        }
        tracing::warn!(
            listener = %self.listener,
            client = %self.client,
            method = loggable(self.method.unwrap_or("")),
            path = loggable(self.path.unwrap_or("")),
            status = reply.status,
            tried = %self.attempts,
            ms = self.started.elapsed().as_millis() as u64,
            "http request failed"
        );
    }

    /// The access line of a request the client failed while `backend`
    /// had it (`why`, after "client "), answered with `reply` if any: at
    /// `warn`.
    pub fn client_failed(self, backend: &'a str, reply: Option<(u16, &str)>, why: &str) {
        if !access::json() {
            tracing::warn!(
                listener = %self.listener, client = %self.client, backend,
                method = loggable(self.method.unwrap_or("")),
                path = loggable(self.path.unwrap_or("")),
                "http request failed: client {why}"
            );
            return;
        }
        let end = format!("client {why}");
        let mut line: Line<'_> = self;
        line.backend = Some(backend);
        line.status = reply.map(|(status, _)| status);
        line.down += reply.map_or(0, |(_, text)| text.len() as u64);
        line.end = &end;
        line.json(tracing::Level::WARN, "http request failed");
    }
}
