//! Kept-alive connections to backends, pooled per address, for both
//! engines (HTTP/2 streams go through the HTTP/1 engine's backend side):
//! a connection whose response ended cleanly waits here for the next
//! request to the same backend, for at most the pool's
//! `keepalive_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept per backend address.
const MAX_IDLE: usize = 256;

/// Whether a backend connection may take a request now: the backend has
/// not closed it (nor sent anything unasked). Costs no system call unless
/// the socket was seen readable since its last read.
fn reusable(conn: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(conn.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl IdlePool {
    /// The newest idle connection to `addr` that is still reusable and
    /// was idle for less than `keepalive`.
    pub fn checkout(&self, addr: SocketAddr, keepalive: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&addr)?;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() >= keepalive {
                // Older ones are staler still.
                conns.clear();
                return None;
            }
            if reusable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keep `conn`, whose last response ended cleanly, for reuse within
    /// `keepalive`.
    pub fn release(&self, addr: SocketAddr, conn: TcpStream, keepalive: Duration) {
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
        conns.push((conn, Instant::now()));
    }
}
