//! The HTTP/2 path's backend side: HTTP/1.1 to backends through hyper's
//! client, its idle connections kept in an [`IdlePool`], the pool type
//! (and eviction rule) of the HTTP/1 engine's own.
//!
//! Why not gale's own HTTP/1.1 writer here too (one client for both
//! engines)? Measured under h2load (32 connections x 10 streams, gale on
//! one core, perf with DWARF stacks): an HTTP/2 request costs 24.7 µs of
//! gale's CPU against 15.4 µs for HTTP/1; hyper's client is 3.8 µs of it
//! (15 %: dispatch channels, its connection task, response parsing),
//! the h2 server and a task per stream 6.2 µs. The writer would still
//! have to build a header map for the h2 server from each response, so
//! it would save ~2-3 µs (~10 %) at most. Kept for now; the HTTP/2
//! costs are issue 19's.
//!
//! hyper's low-level client connections rather than hyper-util's pooled
//! client: the proxy needs to know whether a request left gale (to decide
//! on a retry) and gets the request back when a pooled connection turns
//! out closed before it was sent; and the generic pool's checkout (a
//! hashed key, a lazy connector future per request) measured ~7 % of the
//! CPU per proxied request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::body::SharedBody;
use super::idle::IdlePool;

#[derive(Default)]
pub struct Upstreams {
    idle: IdlePool<SendRequest<SharedBody>>,
}

/// Why a request got no response.
pub enum Failure {
    /// No connection could be made: the backend saw nothing.
    Connect(crate::connect::ConnectError),
    /// A fresh connection closed before the request went out: the
    /// backend saw nothing either.
    NotSent(String),
    /// The request was (maybe partly) sent, then the exchange failed.
    Exchange(hyper::Error),
}

/// A connection lent to one request; goes back to the pool when the
/// response body was read to the end.
pub struct Lease {
    pool: Arc<Upstreams>,
    addr: SocketAddr,
    keepalive: Duration,
    sender: SendRequest<SharedBody>,
}

impl Lease {
    pub fn release(self) {
        if !self.sender.is_closed() {
            (self.pool.idle).release(self.addr, self.sender, self.keepalive);
        }
    }
}

impl Upstreams {
    /// Send `req` to `addr` on a connection idle for less than
    /// `keepalive`, or a new one.
    pub async fn request(
        self: &Arc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
        keepalive: Duration,
        mut req: Request<SharedBody>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        loop {
            let (mut sender, pooled) = match self.idle.checkout(addr, keepalive) {
                Some(sender) => (sender, true),
                None => (connect(addr, connect_timeout).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self.clone(),
                        addr,
                        keepalive,
                        sender,
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection was closed before the request
                    // went out: nothing was sent, try a fresh one.
                    Some(back) if pooled => req = back,
                    Some(_) => return Err(Failure::NotSent(e.into_error().to_string())),
                    None => return Err(Failure::Exchange(e.into_error())),
                },
            }
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<SharedBody>, Failure> {
    let stream = crate::connect::connect(addr, timeout)
        .await
        .map_err(Failure::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::NotSent(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(backend = %addr, "backend connection: {e}");
        }
    });
    Ok(sender)
}
