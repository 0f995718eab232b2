//! The old process's side: answer a request with the sockets, wait for
//! the new gale to be ready, then let the control loop stop accepting.
//! All of it async with a deadline per step, so a peer that trickles or
//! stalls holds up upgrades only that long, and nothing when gale shuts
//! down.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::{Answer, HELLO, Role, trusted, wire};

/// How long the old process waits for the whole request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for the new one to say `READY`:
/// compiling plugins without a cache can take a minute.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long sending an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request the upgrade task makes of the control loop, which owns the
/// sockets and decides when gale stops accepting.
pub enum Ask {
    /// Duplicates of the sockets to hand over.
    Sockets(oneshot::Sender<std::io::Result<Offered>>),
    /// The new process is ready: stop accepting, write `DRAINING N` to
    /// it (before draining, so the answer is out whatever the drain
    /// does), drain and exit.
    HandOver { to: u32, stream: UnixStream },
}

/// What the control loop hands over.
pub struct Offered {
    /// The generation serving now.
    pub generation: u64,
    pub sockets: Vec<(Role, OwnedFd)>,
}

impl Ask {
    /// Tell the new gale this one stopped accepting and drains
    /// `sessions`: the control loop's part of [`Ask::HandOver`].
    pub async fn draining(mut stream: UnixStream, sessions: usize) -> std::io::Result<()> {
        let line = format!("DRAINING {sessions}\n");
        tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes()))
            .await
            .map_err(|_| std::io::Error::other("timed out"))?
    }
}

/// Answer upgrade requests on `listener` until one hands over, or until
/// the control loop stops taking requests (gale drains).
pub async fn serve(listener: UnixListener, control: mpsc::Sender<Ask>) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("binary upgrades are off: the upgrade socket cannot be served: {e}");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = control.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("upgrade socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handled = tokio::select! {
            // Shutting down: whatever the request had come to, drop it.
            _ = control.closed() => return,
            handled = one(stream, &listener, &control) => handled,
        };
        match handled {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("binary upgrade not done: {e:#}; this gale serves on"),
        }
    }
}

/// Serve one request, up to the hand-over (true) or a connection that
/// asked nothing (false: `gale run --upgrade-socket` without `--upgrade`
/// checking whether a gale answers).
async fn one(
    stream: UnixStream,
    listener: &tokio::net::UnixListener,
    control: &mpsc::Sender<Ask>,
) -> anyhow::Result<bool> {
    let peer = stream
        .peer_cred()
        .context("reading the peer's credentials")?;
    let mut stream = BufReader::new(stream);
    if !trusted(peer.uid()) {
        refuse(
            &mut stream,
            &format!("uid {} may not upgrade this gale", peer.uid()),
        )
        .await;
        bail!(
            "refused a request from uid {} (pid {:?})",
            peer.uid(),
            peer.pid()
        );
    }
    let mut hello = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        (&mut stream).take(256).read_line(&mut hello),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no request line within {REQUEST_TIMEOUT:?}"))??;
    if hello.is_empty() {
        tracing::debug!("a connection to the upgrade socket closed without a request");
        return Ok(false);
    }
    let words: Vec<&str> = hello.split_whitespace().collect();
    if words.get(..2) != Some(&HELLO[..]) {
        refuse(&mut stream, "not a gale upgrade request of version 1").await;
        bail!("a request gale does not understand: {:?}", hello.trim());
    }
    let to = words
        .iter()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);

    let (tx, rx) = oneshot::channel();
    // The control loop has ended (gale drains) when it takes no request.
    let offered = match control.send(Ask::Sockets(tx)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(offered) = offered else {
        refuse(&mut stream, "this gale is shutting down").await;
        bail!("asked for the sockets while shutting down (pid {to})");
    };
    let Offered {
        generation,
        mut sockets,
    } = offered?;
    sockets.push((Role::Upgrade, listener.as_fd().try_clone_to_owned()?));
    if sockets.len() > wire::MAX_SOCKETS {
        refuse(&mut stream, "more sockets than one message carries").await;
        bail!("{} sockets: more than {}", sockets.len(), wire::MAX_SOCKETS);
    }
    let (roles, fds): (Vec<Role>, Vec<OwnedFd>) = sockets.into_iter().unzip();
    let answer = Answer::Offer {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        generation,
        sockets: roles,
    };
    let mut line = serde_json::to_vec(&answer)?;
    line.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, offer(stream.get_mut(), &line, &fds))
        .await
        .map_err(|_| anyhow::anyhow!("sending the sockets timed out"))??;
    drop(fds);
    tracing::info!(
        pid = to,
        "handed the sockets to a new gale; serving on until it is ready"
    );

    let mut ready = String::new();
    tokio::time::timeout(READY_TIMEOUT, (&mut stream).take(64).read_line(&mut ready))
        .await
        .map_err(|_| {
            anyhow::anyhow!("the new gale (pid {to}) was not ready within {READY_TIMEOUT:?}")
        })?
        .with_context(|| format!("waiting for the new gale (pid {to})"))?;
    if ready.trim() != "READY" {
        bail!(
            "the new gale (pid {to}) ended before serving{}",
            if ready.is_empty() {
                String::new()
            } else {
                format!(" (it said {:?})", ready.trim())
            }
        );
    }
    control
        .send(Ask::HandOver {
            to,
            stream: stream.into_inner(),
        })
        .await
        .map_err(|_| anyhow::anyhow!("the new gale is ready, but this one is shutting down"))?;
    Ok(true)
}

/// Send the answer line with the descriptors on its first byte, then
/// whatever the first send left.
async fn offer(stream: &mut UnixStream, line: &[u8], fds: &[OwnedFd]) -> anyhow::Result<()> {
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            wire::send(&*stream, line, fds)
        }) {
            Ok(sent) => break sent,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    };
    stream.write_all(&line[sent..]).await?;
    Ok(())
}

async fn refuse(stream: &mut BufReader<UnixStream>, reason: &str) {
    if let Ok(mut line) = serde_json::to_vec(&Answer::Refused {
        reason: reason.to_string(),
    }) {
        line.push(b'\n');
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.get_mut().write_all(&line)).await;
    }
}
