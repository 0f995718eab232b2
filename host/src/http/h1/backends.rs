//! Kept-alive connections to backends, pooled per address: a connection
//! whose response ended cleanly waits here for the next request to the
//! same backend, for at most the pool's `keepalive_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per backend address.
const MAX_IDLE: usize = 256;

#[derive(Default)]
pub struct Backends {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl Backends {
    /// The newest idle connection to `addr` that is still open and was
    /// idle for less than `keepalive`.
    pub fn checkout(&self, addr: SocketAddr, keepalive: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some((stream, since)) = conns.pop() {
            if since.elapsed() >= keepalive {
                // Older ones are staler still.
                conns.clear();
                return None;
            }
            if open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keep `stream`, whose last response ended cleanly, for reuse within
    /// `keepalive`.
    pub fn release(&self, addr: SocketAddr, stream: TcpStream, keepalive: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.entry(addr).or_default();
        // The oldest first: after a burst, the connections no request took
        // again are closed once stale instead of lingering (CLOSE_WAIT).
        if conns
            .first()
            .is_some_and(|(_, since)| since.elapsed() >= keepalive)
        {
            conns.retain(|(_, since)| since.elapsed() < keepalive);
        }
        if conns.len() == MAX_IDLE {
            // The oldest is the likeliest to have been closed by now.
            conns.remove(0);
        }
        conns.push((stream, Instant::now()));
    }
}

/// Whether an idle connection can take a request: the backend has not
/// closed it (nor sent anything unasked). Costs no system call unless
/// the socket was seen readable since its last read.
fn open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A new connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}
