//! Connecting to a backend: one function for SMTP and tcp sessions, both
//! HTTP engines, health probes and load agents, so every connection gale
//! makes to a backend is made, timed and described the same way; and one
//! for sessions whose backend learns the client from a PROXY header.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, or any other error of the socket.
    Failed(std::io::ErrorKind),
    /// Not established within the limit.
    TimedOut(Duration),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Failed(kind) => write!(f, "{kind}"),
            ConnectError::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
        }
    }
}

/// A connection to `address` within `limit`, with no-delay on (requests
/// and SMTP commands are small writes that must not wait for an ACK).
///
/// Without the syscalls a generic connect spends: no-delay is set before
/// connecting, and success is not confirmed with `SO_ERROR` (that is read
/// only when the connection failed); the first read or write reports
/// anything else.
pub async fn connect(address: SocketAddr, limit: Duration) -> Result<TcpStream, ConnectError> {
    let failed = |e: std::io::Error| ConnectError::Failed(e.kind());
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM.nonblocking(),
        None,
    )
    .map_err(failed)?;
    socket.set_tcp_nodelay(true).map_err(failed)?;
    match socket.connect(&address.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(failed)?;
    // ERROR too: without it the readiness tokio reports masks out a
    // failed connect's error bit, leaving only the hang-up to tell.
    match tokio::time::timeout(limit, stream.ready(Interest::WRITABLE | Interest::ERROR)).await {
        Err(_) => Err(ConnectError::TimedOut(limit)),
        Ok(Err(e)) => Err(failed(e)),
        Ok(Ok(ready)) if ready.is_error() || ready.is_write_closed() => {
            let e = stream.take_error().ok().flatten();
            Err(failed(e.unwrap_or_else(|| {
                std::io::ErrorKind::ConnectionRefused.into()
            })))
        }
        Ok(Ok(_)) => Ok(stream),
    }
}

/// Why a connection for a client's session was not made.
#[derive(Debug)]
pub enum SessionConnectError {
    Connect(ConnectError),
    /// Connected, but the PROXY header could not be written: the backend
    /// closed or reset at once, nothing reached it.
    ProxyHeader(std::io::Error),
    /// Connected, but no TLS session with a `tls = true` backend.
    Tls(crate::tls::HandshakeError),
}

/// A connection to `backend` within `limit` (and its TLS handshake, if it
/// speaks TLS, within `limit` again) for the session of `client` (at
/// `peer`), starting with the PROXY header the backend asks for;
/// `client_tls`: what the client's own handshake with gale settled.
pub async fn connect_for_session(
    backend: &crate::config::BackendConfig,
    limit: Duration,
    client: &TcpStream,
    peer: SocketAddr,
    client_tls: Option<&crate::tls::Summary>,
) -> Result<crate::tls::BackendStream, SessionConnectError> {
    let mut upstream = connect(backend.address, limit)
        .await
        .map_err(SessionConnectError::Connect)?;
    let proxy = backend.proxy_protocol;
    if proxy != crate::config::ProxyProtocol::None {
        // Where the client connected to: a syscall only PROXY needs.
        let local = crate::listener::canonical(client.local_addr().unwrap_or(peer));
        let header = crate::smtp::proxy_header::for_client(proxy, peer, local, client_tls);
        upstream
            .write_all(&header)
            .await
            .map_err(SessionConnectError::ProxyHeader)?;
    }
    match &backend.tls {
        None => Ok(Either::Left(upstream)),
        // Boxed: a handshake's state (kilobytes) would otherwise be
        // reserved in every session's task, plain backends' too.
        Some(tls) => Box::pin(crate::tls::to_backend(upstream, tls, limit))
            .await
            .map(|tls| Either::Right(Box::new(tls)))
            .map_err(SessionConnectError::Tls),
    }
}
