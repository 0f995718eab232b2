//! `gale demo`: in-memory SMTP sinks and small HTTP servers started in the
//! gale process on the backend addresses of the shipped config, so a
//! newcomer sees balancing and failover without installing an MTA or a web
//! server. The second backend of each pool goes down and comes back on a
//! cycle.
//!
//! Owns: the demo backends only. Not for production: the sinks keep
//! nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::Protocol;

/// How long the flapping backend stays up, then down.
pub const FLAP: Duration = Duration::from_secs(10);

/// Start a sink on every backend address of `config`; the second backend
/// of each pool flaps. Returns when `stop` is cancelled.
pub async fn run_backends(
    config: &crate::config::Config,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for pool in &config.pools {
        let http = config
            .listeners
            .iter()
            .any(|l| pool.listeners.contains(&l.name) && l.protocol == Protocol::Http);
        for (i, b) in pool.backends.iter().enumerate() {
            let name = b.name.clone();
            let address = b.address;
            let stop = stop.clone();
            let flaps = i == 1;
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve(name.clone(), address, http, flaps, stop).await {
                    tracing::error!(backend = %name, "demo backend failed: {e:#}");
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One demo backend: an SMTP sink, or with `http` an HTTP server.
async fn serve(
    name: String,
    address: SocketAddr,
    http: bool,
    flaps: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let messages = Arc::new(AtomicUsize::new(0));
    loop {
        let listener = TcpListener::bind(address).await?;
        tracing::info!(backend = %name, %address, "demo backend up");
        let up = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, messages) = (name.clone(), messages.clone());
                tokio::spawn(async move {
                    if http {
                        web(stream, name).await;
                    } else {
                        let _ = session(stream, &name, &messages).await;
                    }
                });
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = up => {}
            _ = tokio::time::sleep(FLAP), if flaps => {}
        }
        drop(listener);
        tracing::warn!(backend = %name, "demo backend down for {FLAP:?} (watch gale fail over)");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FLAP) => {}
        }
    }
}

async fn session(stream: TcpStream, name: &str, messages: &AtomicUsize) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("220 {name}.demo ESMTP gale demo sink\r\n").as_bytes())
        .await?;
    let mut in_data = false;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??
    {
        if in_data {
            if line == "." {
                in_data = false;
                let n = messages.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(backend = %name, message = n, "demo backend accepted a message");
                w.write_all(format!("250 2.0.0 queued as {name}-{n}\r\n").as_bytes())
                    .await?;
            }
            continue;
        }
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => format!("250-{name}.demo\r\n250 8BITMIME\r\n"),
            "HELO" => format!("250 {name}.demo\r\n"),
            "DATA" => {
                in_data = true;
                "354 end with <CRLF>.<CRLF>\r\n".into()
            }
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            "MAIL" | "RCPT" | "RSET" | "NOOP" => "250 2.0.0 ok\r\n".into(),
            _ => "502 5.5.2 not in the demo\r\n".into(),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// Answers every request with a line naming the backend.
async fn web(stream: TcpStream, name: String) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let body = format!(
            "hello from {name} ({} {})\n",
            req.method(),
            req.uri().path()
        );
        async move {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                hyper::body::Bytes::from(body),
            )))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}
