//! Kept-alive HTTP/1.1 connections to backends, pooled per address.
//!
//! hyper's low-level client connections rather than hyper-util's pooled
//! client: the proxy needs to know whether a request left gale (to decide
//! on a retry) and gets the request back when a pooled connection turns
//! out closed before it was sent; and the generic pool's checkout (a
//! hashed key, a lazy connector future per request) measured ~7 % of the
//! CPU per proxied request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::SharedBody;

/// Idle connections kept per backend address.
const MAX_IDLE: usize = 256;
/// Idle connections are dropped past this, whatever a pool allows.
const IDLE_MAX: Duration = Duration::from_secs(3600);

/// A connection waiting for its next request, and since when.
type IdleConnection = (SendRequest<SharedBody>, Instant);

#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<IdleConnection>>>,
}

/// Why a request got no response.
pub enum Failure {
    /// No connection could be made: the backend saw nothing.
    Connect(String),
    /// The request was (maybe partly) sent, then the exchange failed.
    Exchange(hyper::Error),
}

/// A connection lent to one request; goes back to the pool when the
/// response body was read to the end.
pub struct Lease {
    pool: Arc<Upstreams>,
    addr: SocketAddr,
    sender: SendRequest<SharedBody>,
}

impl Lease {
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(self.addr).or_default();
        if conns.len() == MAX_IDLE {
            // Full: make room by dropping what could not be reused anyway.
            conns.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_MAX);
        }
        if conns.len() < MAX_IDLE {
            conns.push((self.sender, Instant::now()));
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
            let (mut sender, pooled) = match self.checkout(addr, keepalive) {
                Some(sender) => (sender, true),
                None => (connect(addr, connect_timeout).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self.clone(),
                        addr,
                        sender,
                    };
                    return Ok((response, lease));
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection was closed before the request
                    // went out: nothing was sent, try a fresh one.
                    Some(back) if pooled => req = back,
                    Some(_) => return Err(Failure::Connect(e.into_error().to_string())),
                    None => return Err(Failure::Exchange(e.into_error())),
                },
            }
        }
    }

    fn checkout(&self, addr: SocketAddr, keepalive: Duration) -> Option<SendRequest<SharedBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        // Newest first; anything older than the newest stale one is stale
        // too.
        while let Some((sender, since)) = conns.pop() {
            if since.elapsed() >= keepalive {
                conns.clear();
                return None;
            }
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<SharedBody>, Failure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
        Err(_) => return Err(Failure::Connect(format!("timed out after {timeout:?}"))),
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(backend = %addr, "backend connection: {e}");
        }
    });
    Ok(sender)
}
