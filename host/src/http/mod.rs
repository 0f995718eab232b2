//! HTTP listeners: a reverse proxy (hyper) for the injection API and the
//! tracking web apps, over the same pools, plugins and health as SMTP.
//! HTTP/1.1 and HTTP/2 from clients (h2c by prior knowledge, or HTTPS
//! with ALPN when the listener has a certificate); HTTP/1.1 with pooled
//! keep-alive connections to backends.
//!
//! Owns: client connections, request and response streaming, proxy
//! headers, retries ([`proxy`] has the rules). Does not touch: health
//! verdicts (failures are reported to the pool) or the choice of backend.

mod body;
mod headers;
mod proxy;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::Accept;
pub use proxy::Proxy;

/// Request headers beyond this many are refused (`431`).
const MAX_HEADERS: usize = 100;
/// Bytes buffered per connection, which bounds the size of a request's
/// headers (`431` beyond it).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Accept connections on `listener` until `accept.shutdown` is cancelled;
/// then connections finish the request in flight and close.
pub async fn serve(listener: TcpListener, accept: Accept) {
    let (name, current, shutdown) = (
        accept.name.clone(),
        accept.current.clone(),
        accept.shutdown.clone(),
    );
    let proxy = Arc::new(Proxy::new(name.clone(), current.clone()));
    accept
        .run(listener, move |client, peer| {
            let _ = client.set_nodelay(true);
            let (header_timeout, tls) = current
                .load()
                .config
                .listener(&name)
                .map_or((Duration::from_secs(10), None), |l| {
                    (l.header_timeout, l.tls.as_ref().map(|t| t.server.clone()))
                });
            let proxy = proxy.clone();
            let shutdown = shutdown.clone();
            async move {
                let Some(tls) = tls else {
                    let conn = Connection {
                        proxy,
                        peer,
                        https: false,
                        header_timeout,
                        shutdown,
                    };
                    return conn.serve(client).await;
                };
                // The handshake counts against the header timeout: a client
                // that stalls it holds a slot no longer than one that
                // stalls its headers.
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                match tokio::time::timeout(header_timeout, acceptor.accept(client)).await {
                    Ok(Ok(stream)) => {
                        let conn = Connection {
                            proxy,
                            peer,
                            https: true,
                            header_timeout,
                            shutdown,
                        };
                        conn.serve(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(client = %peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
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
}

impl Connection {
    async fn serve<IO>(self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            proxy,
            peer,
            https,
            header_timeout,
            shutdown,
        } = self;
        let client = Arc::new(headers::Peer::new(peer, https));
        let service = hyper::service::service_fn(move |req| {
            let (proxy, client) = (proxy.clone(), client.clone());
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(&client, req).await) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Also bounds how long an idle kept-alive connection waits for
            // its next request.
            .header_read_timeout(header_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .keep_alive_interval(Some(header_timeout))
            .keep_alive_timeout(header_timeout);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, "http connection: {e}");
                }
                return;
            }
            _ = shutdown.cancelled() => {}
        }
        // Draining: finish the request in flight, then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
