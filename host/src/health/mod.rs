//! Active health probes: one loop per backend that probes it every
//! `interval` (bounded by `timeout`) and feeds the result to its pool,
//! whose health plugin turns results into verdicts. Probes keep running
//! for unhealthy backends, which is how they come back.
//!
//! Owns: probe connections. Does not touch: verdicts (the pool's health
//! plugin) or sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BackendConfig, ProbeConfig, ProbeKind};
use crate::generation::Generation;
use crate::plugin::types::{ProbeResult, ProbeSource};
use crate::smtp::proxy_header;
use crate::smtp::reply::read_reply;
use crate::tls::BackendStream;

mod agent;
pub use agent::{AgentState, LoadReport, MAX_PERCENT};

/// Start a probe loop for every backend of every pool of `generation`.
pub fn spawn_probes(
    generation: &Arc<Generation>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    for pool in &generation.pools {
        let probe = generation
            .config
            .pools
            .iter()
            .find(|p| p.name == pool.name)
            .map(|p| p.probe.clone())
            .expect("every pool has a config");
        for id in 0..pool.len() {
            let pool = pool.clone();
            let probe = probe.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let backend = pool.backend(id).clone();
                // Spread the first probes over the interval so a large pool
                // does not probe every backend in the same instant.
                let offset = probe.interval.mul_f64(id as f64 / pool.len().max(1) as f64);
                let mut next = tokio::time::Instant::now() + offset;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                    // The agent is asked beside the probe, within the same
                    // timeout, so a silent agent delays no probe.
                    let agent = async {
                        let port = backend.agent_port?;
                        let agent = SocketAddr::new(backend.address.ip(), port);
                        Some(agent::ask(agent, probe.timeout).await)
                    };
                    let (result, report) = tokio::join!(
                        probe_once(&probe, &backend),
                        agent
                    );
                    match report {
                        Some(Ok(report)) => pool.set_load(id, report),
                        // A failed agent keeps its last word (a drain
                        // holds), as HAProxy's does.
                        Some(Err(e)) => tracing::debug!(pool = %pool.name, backend = %backend.name, "{e}"),
                        None => {}
                    }
                    tracing::debug!(pool = %pool.name, backend = %backend.name, ok = result.ok, detail = %result.detail, "probe");

                    pool.record(id, result);
                    next += probe.interval;
                    let now = tokio::time::Instant::now();
                    if next < now {
                        next = now;
                    }
                }
            });
        }
    }
}

/// One probe of `backend`, never longer than `probe.timeout`.
pub async fn probe_once(probe: &ProbeConfig, backend: &BackendConfig) -> ProbeResult {
    let started = Instant::now();
    let outcome = timeout(probe.timeout, run_probe(probe, backend)).await;
    let (ok, code, detail) = match outcome {
        Err(_) => (false, None, "timeout".to_string()),
        Ok(Ok(code)) => (true, code, "ok".to_string()),
        Ok(Err((code, detail))) => (false, code, detail),
    };
    ProbeResult {
        ok,
        latency_us: started.elapsed().as_micros() as u64,
        code,
        detail,
        source: ProbeSource::Probe,
    }
}

type ProbeOutcome = Result<Option<u16>, (Option<u16>, String)>;

async fn run_probe(probe: &ProbeConfig, backend: &BackendConfig) -> ProbeOutcome {
    let address = backend.address;
    let mut stream = crate::connect::connect(address, probe.timeout)
        .await
        .map_err(|e| (None, format!("connect: {e}")))?;
    let local = stream.local_addr().map_err(|e| (None, e.to_string()))?;
    let header = proxy_header::for_probe(backend.proxy_protocol, local, address);
    if !header.is_empty() {
        stream
            .write_all(&header)
            .await
            .map_err(|e| (None, e.to_string()))?;
    }
    if probe.kind == ProbeKind::Tcp && backend.tls.is_none() {
        // Nothing is read or written: the connect's own result decides
        // (`connect` leaves SO_ERROR for the first I/O to report).
        return match stream.take_error() {
            Ok(None) => Ok(None),
            Ok(Some(e)) | Err(e) => Err((None, format!("connect: {}", e.kind()))),
        };
    }
    // A TLS backend is probed over TLS (a tcp probe: the handshake alone),
    // its certificate checked as sessions check it: one whose certificate
    // expired fails its probes.
    let mut stream: BackendStream = match &backend.tls {
        None => Either::Left(stream),
        Some(tls) => Either::Right(Box::new(
            crate::tls::to_backend(stream, tls, probe.timeout)
                .await
                .map_err(|e| (None, e.to_string()))?,
        )),
    };
    match probe.kind {
        ProbeKind::Smtp => smtp_probe(&mut stream, probe).await,
        ProbeKind::Http => http_probe(&mut stream, probe, address).await,
        // The handshake was the probe.
        ProbeKind::Tcp => Ok(None),
    }
}

/// Banner, EHLO, then MAIL FROM, RCPT TO and RSET if the probe names
/// addresses, then QUIT: one command at a time, as a polite client does,
/// so the MTA logs nothing worse than an aborted transaction.
async fn smtp_probe(stream: &mut BackendStream, probe: &ProbeConfig) -> ProbeOutcome {
    let banner = read_reply(stream)
        .await
        .map_err(|e| (None, format!("banner: {e}")))?;
    if banner.code != 220 {
        return Err((
            Some(banner.code),
            format!("banner {:?}", banner.first_line()),
        ));
    }
    command(stream, &format!("EHLO {}", probe.ehlo), "EHLO").await?;
    if let Some(from) = &probe.mail_from {
        command(stream, &format!("MAIL FROM:<{from}>"), "MAIL FROM").await?;
        if let Some(to) = &probe.rcpt_to {
            command(stream, &format!("RCPT TO:<{to}>"), "RCPT TO").await?;
        }
        command(stream, "RSET", "RSET").await?;
    }
    let _ = stream.write_all(b"QUIT\r\n").await;
    let _ = stream.flush().await;
    let _ = timeout(Duration::from_millis(500), read_reply(stream)).await;
    Ok(Some(220))
}

/// Send one command; its reply must be 2xx.
async fn command(
    stream: &mut BackendStream,
    line: &str,
    name: &str,
) -> Result<(), (Option<u16>, String)> {
    let written = async {
        stream.write_all(format!("{line}\r\n").as_bytes()).await?;
        stream.flush().await
    };
    written.await.map_err(|e| (None, format!("{name}: {e}")))?;
    let reply = read_reply(stream)
        .await
        .map_err(|e| (None, format!("{name}: {e}")))?;
    if !(200..300).contains(&reply.code) {
        return Err((
            Some(reply.code),
            format!("{name} answered {:?}", reply.first_line()),
        ));
    }
    Ok(())
}

/// A minimal HTTP/1.0 request; the status must fall in the expected range.
async fn http_probe(
    stream: &mut BackendStream,
    probe: &ProbeConfig,
    address: SocketAddr,
) -> ProbeOutcome {
    use tokio::io::AsyncReadExt;
    let request = format!(
        "{} {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: gale-probe\r\n\r\n",
        probe.method, probe.path, address
    );
    let written = async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await
    };
    written.await.map_err(|e| (None, e.to_string()))?;
    let mut buf = [0u8; 64];
    let n = stream
        .read(&mut buf)
        .await
        .map_err(|e| (None, e.to_string()))?;
    let line = String::from_utf8_lossy(&buf[..n]);
    let status: Option<u16> = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse().ok());
    match status {
        Some(s) if (probe.expect_status.0..=probe.expect_status.1).contains(&s) => Ok(Some(s)),
        Some(s) => Err((Some(s), format!("status {s}"))),
        None => Err((None, "not an HTTP response".into())),
    }
}
