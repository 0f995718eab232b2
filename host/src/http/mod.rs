//! HTTP listeners: a reverse proxy for the injection API and the
//! tracking web apps, over the same pools, plugins and health as SMTP.
//! HTTP/1.x from clients is proxied by gale's own engine ([`h1`]);
//! HTTP/2 (h2c by prior knowledge, or HTTPS with ALPN when the listener
//! has a certificate) is framed by h2 and each stream proxied through
//! the same engine's backend side ([`http2`]). Backends get HTTP/1.1 on
//! pooled keep-alive connections.
//!
//! Owns: client connections, request and response streaming, proxy
//! headers, retries (the rules are [`crate::attempts::HttpTries`]'s).
//! Does not touch: health
//! verdicts (failures are reported to the pool) or the choice of backend.

pub mod h1;
pub mod headers;
mod http2;
mod idle;
mod metered;
mod proxy;
mod rewind;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::buffers::Buffers;
use crate::config::Protocol;
use crate::listener::Accept;
pub use proxy::Proxy;

/// Request headers beyond this many are refused (`431`).
const MAX_HEADERS: usize = 100;
/// Bytes buffered per connection, which bounds the size of a request's
/// headers (`431` beyond it).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The longest request method gale takes (501 past it): WebDAV's are up
/// to 16 bytes, and a longer one would go into every log line of the
/// request.
pub const MAX_METHOD_LEN: usize = 32;
/// How long data sent to a client may go unacknowledged before its
/// connection is dropped (`TCP_USER_TIMEOUT`, set on the listening socket:
/// see `listener::bind`): a client that vanishes (no FIN, no RST) with a
/// response in flight is given up then, rather than after TCP's ~15
/// minutes of retransmissions. HTTP/2 relies on it: gale sends no
/// keep-alive PINGs (a connection without requests is closed after
/// `header_timeout` anyway).
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept connections on `listener` until `accept.shutdown` is cancelled;
/// then connections finish the request in flight and close.
pub async fn serve(listener: TcpListener, accept: Accept) {
    let (name, current, shutdown) = (
        accept.name.clone(),
        accept.current.clone(),
        accept.shutdown.clone(),
    );
    let proxy = Arc::new(Proxy::new(name.clone(), current.clone()));
    let buffers = accept.buffers.clone();
    accept
        .run(listener, move |client, peer| {
            let generation = current.load();
            let (header_timeout, tls) = generation
                .listener(&name, Protocol::Http)
                .map_or((Duration::from_secs(10), None), |(l, _)| {
                    (l.header_timeout, l.tls.as_ref().map(|t| t.server.clone()))
                });
            let client = match generation.listener(&name, Protocol::Http) {
                Some((_, c)) => {
                    metered::Metered::new(client, c.bytes_up.clone(), c.bytes_down.clone())
                }
                None => metered::Metered::new(client, Counter::default(), Counter::default()),
            };
            let conn = Connection {
                proxy: proxy.clone(),
                peer,
                https: tls.is_some(),
                header_timeout,
                shutdown: shutdown.clone(),
                buffers: buffers.clone(),
            };
            match tls {
                None => Either::Left(conn.serve_http1(client, true)),
                // Boxed: a TLS session's state would otherwise be
                // reserved in every plain connection's task. HTTP/2 over
                // TLS stays in the TLS task (already boxed apart).
                Some(tls) => {
                    let tls = Box::pin(conn.serve_tls(client, tls));
                    Either::Right(async move {
                        tls.await;
                        None
                    })
                }
            }
        })
        .await;
}

/// One client connection, plain or TLS.
struct Connection {
    proxy: Arc<Proxy>,
    peer: std::net::SocketAddr,
    https: bool,
    header_timeout: Duration,
    shutdown: CancellationToken,
    buffers: Buffers,
}

impl Connection {
    /// A TLS connection: the handshake, then HTTP/2 if ALPN chose it,
    /// else HTTP/1.x.
    async fn serve_tls(
        self,
        client: metered::Metered<tokio::net::TcpStream>,
        tls: Arc<rustls::ServerConfig>,
    ) {
        let (peer, header_timeout) = (self.peer, self.header_timeout);
        // The handshake counts against the header timeout: a client that
        // stalls it holds a slot no longer than one that stalls its
        // headers.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        match tokio::time::timeout(header_timeout, acceptor.accept(client)).await {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                self.serve_http2(stream).await;
            }
            Ok(Ok(stream)) => {
                // Without h2c, HTTP/1 never hands over to HTTP/2.
                let next = self.serve_http1(stream, false).await;
                debug_assert!(next.is_none());
            }
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::debug!(client = %peer, "TLS handshake failed: {e}"),
                    _ => tracing::debug!(client = %peer, "TLS handshake timed out"),
                }
                if let Some((_, counters)) = self
                    .proxy
                    .current
                    .load()
                    .listener(&self.proxy.name, Protocol::Http)
                {
                    counters.tls_failed();
                }
            }
        }
    }

    /// HTTP/1.x, by gale's own engine; `h2c`: a plain connection that may
    /// open with the HTTP/2 preface instead, which ends with the HTTP/2
    /// connection to run as a task of its own (see
    /// [`crate::listener::Outcome`]), made of what the client hands over.
    /// Not an `async fn`: its future would keep its arguments beside the
    /// client made of them, in every idle connection's task.
    fn serve_http1<IO>(
        self,
        io: IO,
        h2c: bool,
    ) -> impl Future<Output = Option<impl Future<Output = ()> + Send + 'static>> + Send
    where
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + h1::ClientStream
            + Unpin
            + Send
            + 'static,
    {
        let charge = self.buffers.charge();
        let mut client = h1::Client::new(
            io,
            headers::ClientOrigin::new(self.peer, self.https),
            self.proxy,
            self.header_timeout,
            self.shutdown,
            h2c,
            charge,
        );
        async move {
            match client.serve().await {
                h1::Served::Http2 => {
                    let h = client.into_http2();
                    let conn = Connection {
                        proxy: h.proxy,
                        peer: h.origin.addr,
                        https: h.origin.https,
                        header_timeout: h.header_timeout,
                        shutdown: h.shutdown,
                        buffers: h.buffers,
                    };
                    Some(conn.serve_http2(rewind::Rewind::new(h.read, h.io)))
                }
                h1::Served::Closed => None,
            }
        }
    }

    /// HTTP/2: see [`http2`].
    fn serve_http2<IO>(self, io: IO) -> impl Future<Output = ()> + Send
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let setup = http2::Setup {
            proxy: self.proxy,
            origin: headers::ClientOrigin::new(self.peer, self.https),
            header_timeout: self.header_timeout,
            shutdown: self.shutdown,
            buffers: self.buffers,
        };
        http2::serve(io, setup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_return<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An HTTP/1 connection's future is most of what an idle connection
    /// costs (bench/idle.py). At 448 bytes (release build, as the tests
    /// run), its task fits the allocator's 640-byte class: the listener's
    /// wrappers (`Admitted`, `Either`: 56 bytes) and tokio's task header
    /// and trailer (~120) come on top, and tokio aligns a task to 128
    /// bytes. 0.8-1.0 KiB of RSS per idle connection, against HAProxy's
    /// 1.1. A field or a future kept across the wait for the next request
    /// that pushes it past 464 puts every idle connection in the 768
    /// class; a tokio upgrade that grows its task header could too, which
    /// this does not see (bench/idle.py does).
    #[test]
    fn an_idle_http1_connection_keeps_a_small_future() {
        type Io = metered::Metered<tokio::net::TcpStream>;
        let size = size_of_return(|(c, io): (Connection, Io)| c.serve_http1(io, true));
        assert!(size <= 464, "an HTTP/1 connection's future is {size} bytes");
    }

    /// An idle HTTP/2 connection's future is most of what it costs beside
    /// h2's own state (bench/idle.py): h2's connection is 1,312 bytes of
    /// its 1,776 (release build, as the tests run). Its task (tokio's
    /// header and trailer, ~120 bytes more) fits the allocator's 2,048
    /// class up to ~1,900; kept the handshake beside the connection (not
    /// boxed) it was 2,984.
    #[test]
    fn an_idle_http2_connection_keeps_a_small_future() {
        type Io = metered::Metered<tokio::net::TcpStream>;
        let size = size_of_return(|(io, setup): (Io, http2::Setup)| http2::serve(io, setup));
        assert!(
            size <= 1_800,
            "an HTTP/2 connection's future is {size} bytes"
        );
    }
}
