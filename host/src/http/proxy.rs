//! One proxied HTTP/2 request (through hyper): the pool's balancer orders
//! the backends, gale tries them in that order, and never sends a request
//! twice when the first backend may have acted on it. Also what both
//! engines share of a listener: [`Proxy`], the failure log.
//!
//! The retry rules are [`crate::attempts::HttpTries`]'s, the same for
//! gale's HTTP/1 engine: a connection that could not be made moves on by
//! the pool's `retry_on` (the backend saw nothing); any other failure
//! before the response headers moves on only for an idempotent method
//! whose body has not been read (a GET, say): a POST that reached a
//! backend is answered `502`, never replayed. Once response headers
//! arrive they go to the client and no retry is possible.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::body::{BoxError, Idle, LocalBody, ProxyBody, SharedBody, UpstreamBody};
use super::headers::{self, ClientOrigin};
use super::upstream::{self, Upstreams};
use crate::attempts::{Attempts, Failure, FailureReason, HttpReply, HttpStep, HttpTries};
use crate::config::ListenerConfig;
use crate::generation::{Generation, ip_address};
use crate::plugin::types::{HttpRequest, Protocol, RequestContext};
use arc_swap::ArcSwap;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode, Uri, Version};

/// Seconds a client is asked to wait when no backend can take a request.
pub(super) const RETRY_AFTER_SECS: &str = "10";
/// One HTTP listener's proxy: the generation to read pools from and the
/// pooled keep-alive connections to backends.
pub struct Proxy {
    pub(super) name: String,
    pub(super) current: Arc<ArcSwap<Generation>>,
    /// Backend connections for HTTP/2 clients (hyper's client).
    h2_upstreams: Arc<Upstreams>,
    /// Idle backend connections for HTTP/1 clients (gale's own writer):
    /// the pool type `h2_upstreams` keeps its own in.
    pub(super) h1_idle: super::idle::IdlePool<tokio::net::TcpStream>,
}

impl Proxy {
    pub fn new(name: String, current: Arc<ArcSwap<Generation>>) -> Self {
        Proxy {
            name,
            current,
            h2_upstreams: Arc::default(),
            h1_idle: Default::default(),
        }
    }

    /// Serve one request from `client` (HTTP/2).
    pub async fn handle(
        &self,
        client: &ClientOrigin,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let response = self.exchange(client, req).await;
        if let Some((_, counters)) = self.current.load().listener(&self.name) {
            counters.status(response.status().as_u16());
            if matches!(response.body(), ProxyBody::Local(_)) {
                counters.error_reply(response.status().as_u16());
            }
        }
        response
    }

    async fn exchange(&self, client: &ClientOrigin, req: Request<Incoming>) -> Response<ProxyBody> {
        let peer = client.addr;
        let started = Instant::now();
        // Per request, not per connection: a kept-alive connection follows
        // reloads.
        let generation = self.current.load_full();
        let Some((l, counters)) = generation.listener(&self.name) else {
            let reply = HttpReply {
                status: 503,
                text: "listener is being removed\n",
                retry_after: false,
            };
            return refuse(reply, req.into_body());
        };
        let pool = &generation.pools[l.pool];
        let pool_config = generation.config.pool_of(l);
        let (keepalive, retry_on) = (pool_config.keepalive_timeout, pool_config.retry_on);
        let (mut head, body) = req.into_parts();
        // The rule gale's HTTP/1 engine holds (`headers::framing_lookalike`):
        // hyper frames the body for the backend, and a `content_length`
        // beside that framing could frame it another way.
        if head
            .headers
            .keys()
            .any(|k| headers::framing_lookalike(k.as_str().as_bytes()))
        {
            return refuse(bad_request(headers::LOOKALIKE_REFUSED), body);
        }
        // h2 refuses conflicting lengths only; hyper's HTTP/1 client would
        // pass two equal ones on, which the HTTP/1 engine refuses too.
        if head
            .headers
            .get_all(hyper::header::CONTENT_LENGTH)
            .iter()
            .count()
            > 1
        {
            return refuse(bad_request("two Content-Length fields\n"), body);
        }
        let host = head
            .headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| head.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string();
        // Origin form, as HTTP/1.1 sends it to a server; parsed once, each
        // attempt clones it.
        let target = match head.uri.path_and_query() {
            Some(p) => Uri::from(p.clone()),
            None => Uri::from_static("/"),
        };
        let path = target.to_string();
        let ctx = RequestContext {
            protocol: Protocol::Http,
            listener: l.index_in_pool,
            client_ip: ip_address(peer.ip()),
            client_port: peer.port(),
            http: Some(HttpRequest {
                method: head.method.as_str().to_string(),
                host: host.clone(),
                path: path.clone(),
            }),
        };
        let decision = pool.select(&ctx);
        headers::forward_request(&mut head.headers, client, &host);
        let body = SharedBody::new(body, l.idle_timeout);
        let replayable = is_idempotent(head.method.as_str());
        let mut attempts = Attempts::new(pool, &decision.order, l.max_attempts, &counters.retries);
        let mut tries = HttpTries::default();
        let reply = 'tried: {
            while let Some(turn) = attempts.next() {
                let backend = turn.backend;
                let mut forwarded = Request::new(body.clone());
                *forwarded.method_mut() = head.method.clone();
                *forwarded.uri_mut() = target.clone();
                *forwarded.version_mut() = Version::HTTP_11;
                *forwarded.headers_mut() = head.headers.clone();

                let exchange = self.h2_upstreams.request(
                    backend.address,
                    l.connect_timeout,
                    keepalive,
                    forwarded,
                );
                let failure = match tokio::time::timeout(l.response_timeout, exchange).await {
                    Ok(Ok((mut response, lease))) => {
                        let status = response.status().as_u16();
                        match Failure::of_status(status) {
                            None => attempts.succeeded(&turn),
                            Some(failure) => {
                                let more = attempts.remaining();
                                let unsent = replayable && !body.touched();
                                attempts.answered_but_failed(&turn, failure);
                                if HttpTries::drops(&retry_on, status, unsent, more) {
                                    // Dropped unread: its connection closes.
                                    tries.dropped(status);
                                    continue;
                                }
                            }
                        }
                        headers::strip_hop_by_hop(response.headers_mut());
                        tracing::debug!(
                            listener = %l.name, client = %peer, backend = %backend.name,
                            method = %head.method, path, status,
                            ms = started.elapsed().as_millis() as u64, "http request"
                        );
                        return response.map(|body| {
                            let body = Idle::new(body, l.idle_timeout);
                            ProxyBody::Upstream(UpstreamBody::new(body, lease, turn.in_flight))
                        });
                    }
                    Ok(Err(upstream::Failure::Connect(e))) => Failure::of_connect(&e),
                    Ok(Err(upstream::Failure::NotSent(e))) => {
                        Failure::new(FailureReason::Connect, format!("connect: {e}"))
                    }
                    Ok(Err(upstream::Failure::Exchange(e))) => Failure::new(
                        FailureReason::Exchange,
                        format!("before a response: {}", source_message(&e)),
                    ),
                    Err(_) => Failure::new(
                        FailureReason::Timeout,
                        format!("no response in {:?}", l.response_timeout),
                    ),
                };
                let step = tries.failed(&retry_on, &failure, replayable && !body.touched());
                attempts.failed(turn, failure);
                match step {
                    HttpStep::Next => continue,
                    HttpStep::Stop => break,
                    // The backend may have acted on it: never send it again.
                    HttpStep::Reply(reply) => break 'tried reply,
                }
            }
            tries.reply()
        };
        log_failure(
            l,
            peer,
            head.method.as_str(),
            &path,
            reply.status,
            attempts.tried(),
            started,
        );
        refuse(reply, body)
    }
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
pub(super) fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The innermost error message: hyper's own wrapper names only the kind
/// of failure, its cause says what happened.
fn source_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
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
    tried: &str,
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

fn bad_request(text: &'static str) -> HttpReply {
    HttpReply {
        status: 400,
        text,
        retry_after: false,
    }
}

/// A response gale writes itself, to a request whose body may still be
/// arriving: see [`LocalBody`].
fn refuse<B>(reply: HttpReply, request: B) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut response = Response::new(ProxyBody::Local(
        LocalBody::new(reply.text).draining(request),
    ));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if reply.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    response
}
