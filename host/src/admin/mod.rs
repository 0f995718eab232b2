//! The admin listener: the live status page at `GET /` ([`page`]),
//! `GET /status` (JSON), `GET /metrics` (Prometheus text), `POST /reload`,
//! and steering of one backend ([`steer`]: drain, enable, disable,
//! weight). On loopback by default; when the config sets
//! a token every call must carry it as `Authorization: Bearer TOKEN`.
//!
//! Owns: the admin socket and its HTTP/1 connections. Does not touch:
//! reloading itself (it asks the main loop, which owns the reloader, over
//! a channel, so a reload from here and one from SIGHUP are the same).

mod page;
pub mod status;
mod steer;
pub mod table;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, AdminToken};
use crate::listener::Clients;
use crate::metrics::Metrics;
use crate::reload::History;
use crate::reload::history::rfc3339;
use crate::server::Server;

/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// Admin connections at once from one client (one IPv6 /64): past it a
/// new one is closed unanswered, so that one client, token or not,
/// cannot take every one of the `MAX_CONNECTIONS` slots. Room for a
/// browser (6 connections per host) and `gale status` from one machine.
const MAX_CONNECTIONS_PER_CLIENT: u32 = 8;
/// A new connection that sends nothing for this long is closed: clients
/// of an admin API send their request as soon as they connect, and a
/// slot held silently should be given back well before
/// `HEADER_TIMEOUT`.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client has this long to send a request's headers (counted by hyper
/// from the start of each request's wait, the connection's first included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `POST /reload` waits for the reload to finish.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection is closed after this long (once its request in flight is
/// answered, or 5 s later): a client that sends a body slowly or never
/// reads its answer cannot keep one of the `MAX_CONNECTIONS` slots.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// A reload asked for over the admin API; the answer is the new
/// generation's id or why the reload failed.
pub type ReloadRequest = oneshot::Sender<Result<u64, String>>;

/// What the admin endpoints read from.
pub struct Admin {
    pub server: Arc<Server>,
    pub history: Arc<History>,
    pub metrics: Arc<Metrics>,
    pub reloads: mpsc::Sender<ReloadRequest>,
    pub started_at: String,
}

impl Admin {
    pub fn new(
        server: Arc<Server>,
        history: Arc<History>,
        metrics: Arc<Metrics>,
        reloads: mpsc::Sender<ReloadRequest>,
    ) -> Self {
        Admin {
            server,
            history,
            metrics,
            reloads,
            started_at: rfc3339(SystemTime::now()),
        }
    }
}

/// The token a listener checks. It belongs to the listener, not to the
/// generation being served: the address and the token always come from
/// one config, so a rollback to a config without a token can never leave
/// an address that needed one open.
type Token = Arc<ArcSwap<Option<AdminToken>>>;

/// A running admin listener.
pub struct Handle {
    pub address: SocketAddr,
    /// The address in the config (port 0 stays 0 here).
    pub configured: SocketAddr,
    token: Token,
    stop: CancellationToken,
    /// The listening socket, duplicated, for a binary upgrade to hand
    /// over.
    socket: Arc<std::os::fd::OwnedFd>,
}

impl Handle {
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Another descriptor of the listening socket (a binary upgrade
    /// hands it over).
    pub fn socket(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.socket.try_clone()
    }

    /// The token this listener checks from now on.
    pub fn set_token(&self, token: Option<AdminToken>) {
        self.token.store(Arc::new(token));
    }

    pub fn token(&self) -> Option<AdminToken> {
        (*self.token.load_full()).clone()
    }
}

/// Bind `config.address` (or take the socket the service manager passed
/// as `admin`) and serve the admin API on it, checking `config.token`,
/// until the handle stops.
pub async fn start(config: &AdminConfig, admin: Arc<Admin>) -> anyhow::Result<Handle> {
    let address = config.address;
    let passed = admin.server.sockets().for_admin(address)?;
    let socket = match passed {
        Some(socket) => {
            socket.set_nonblocking(true)?;
            let socket = TcpListener::from_std(socket)?;
            let from = admin.server.sockets().source();
            tracing::info!(address = %socket.local_addr()?, socket = ?format!("passed by {from}"), "admin listening");
            socket
        }
        None => {
            let socket = TcpListener::bind(address)
                .await
                .with_context(|| format!("admin listener: cannot bind {address}"))?;
            tracing::info!(address = %socket.local_addr()?, "admin listening");
            socket
        }
    };
    let bound = socket.local_addr()?;
    let duplicate = Arc::new(std::os::fd::AsFd::as_fd(&socket).try_clone_to_owned()?);
    let stop = CancellationToken::new();
    let token: Token = Arc::new(ArcSwap::from_pointee(config.token.clone()));
    tokio::spawn(serve(socket, admin, token.clone(), stop.clone()));
    Ok(Handle {
        address: bound,
        configured: address,
        token,
        stop,
        socket: duplicate,
    })
}

async fn serve(socket: TcpListener, admin: Arc<Admin>, token: Token, stop: CancellationToken) {
    // After a binary upgrade's take-over, the old gale answers until it
    // stops (see `Server::open`).
    tokio::select! {
        _ = admin.server.opened() => {}
        _ = stop.cancelled() => return,
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(Clients::default());
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = socket.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(from_client) = clients.enter(peer.ip(), MAX_CONNECTIONS_PER_CLIENT) else {
            tracing::debug!(client = %peer, "admin connection refused: {MAX_CONNECTIONS_PER_CLIENT} open from this client");
            continue;
        };
        let admin = admin.clone();
        let stop = stop.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let _held = (permit, from_client);
            if !first_byte(&stream).await {
                tracing::debug!(client = %peer, "admin connection closed: nothing sent in {FIRST_BYTE_TIMEOUT:?}");
                return;
            }
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                let token = token.load_full();
                async move { Ok::<_, Infallible>(route(&admin, token.as_ref().as_ref(), req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!("admin connection: {e}");
                },
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                }
            }
        });
    }
    tracing::info!("admin listener stopped");
}

/// Whether the client sends a byte within `FIRST_BYTE_TIMEOUT` (hyper
/// reads it afterwards: the byte is only peeked).
async fn first_byte(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut byte)).await,
        Ok(Ok(1))
    )
}

type Reply = Response<Full<Bytes>>;

async fn route(admin: &Admin, token: Option<&AdminToken>, req: Request<Incoming>) -> Reply {
    // What a load balancer's or Route 53's health checker asks: whether
    // this gale is up, and nothing else, so it needs no token and no
    // particular Host.
    if req.uri().path() == "/health" {
        return match *req.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
            _ => not_allowed("GET, HEAD"),
        };
    }
    let token = token.map(AdminToken::expose);
    if token.is_none() && !page::local_host(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: without a token the admin API answers only to an IP address or localhost in Host\n",
        );
    }
    if !authorized(token, &req) {
        if req.uri().path() == "/" && req.method() == Method::GET {
            return page::login();
        }
        let mut reply = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
        reply
            .headers_mut()
            .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("valid header"));
        return reply;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if !matches!(method, Method::GET | Method::HEAD) && page::cross_origin(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: a request from a page of another origin\n",
        );
    }
    match (path.as_str(), &method) {
        ("/", &Method::GET) => page::page(),
        ("/login", &Method::POST) => page::logged_in(token),
        ("/status", &Method::GET) => json(StatusCode::OK, &status::Status::of(admin)),
        ("/metrics", &Method::GET) => {
            let mut reply = text(StatusCode::OK, admin.metrics.encode());
            reply.headers_mut().insert(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    .parse()
                    .expect("valid header"),
            );
            reply
        }
        ("/reload", &Method::POST) => reload(admin).await,
        ("/" | "/status" | "/metrics", _) => not_allowed("GET"),
        ("/reload" | "/login", _) => not_allowed("POST"),
        _ => match steer::route(admin, req, &path).await {
            Some(reply) => reply,
            None => text(StatusCode::NOT_FOUND, "no such endpoint (try /status)\n"),
        },
    }
}

/// With a token in the config, the request must carry it as a bearer
/// header, or for reads the status page's cookie.
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return true;
    }
    matches!(*req.method(), Method::GET | Method::HEAD) && page::has_read_cookie(req, token)
}

/// Compares the SHA-256 digests of the two, all 32 bytes whatever they
/// hold, so response time tells neither how long the token is nor how
/// much of a guess was right (and a guess cannot steer which bytes of a
/// digest match).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn reload(admin: &Admin) -> Reply {
    let (tx, rx) = oneshot::channel();
    if admin.reloads.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "gale is shutting down\n");
    }
    match tokio::time::timeout(RELOAD_TIMEOUT, rx).await {
        Ok(Ok(Ok(generation))) => json(
            StatusCode::OK,
            &serde_json::json!({ "ok": true, "generation": generation }),
        ),
        Ok(Ok(Err(error))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({
                "ok": false,
                "serving": admin.server.current.load().id,
                "error": error,
            }),
        ),
        Ok(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "gale is shutting down\n"),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            "the reload is still running; see /status\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    reply
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"error\": \"cannot encode the status: {e}\"}}").into_bytes()
    });
    body.push(b'\n');
    let mut reply = text(status, body);
    reply.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    reply
}

fn not_allowed(allow: &'static str) -> Reply {
    let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}\n"));
    reply
        .headers_mut()
        .insert(ALLOW, allow.parse().expect("valid header"));
    reply
}
