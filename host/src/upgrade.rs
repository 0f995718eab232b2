//! Binary upgrade: a new gale process takes over a running one's
//! listening sockets, starts serving on them, and the old one drains its
//! sessions and exits, so that upgrading the binary refuses no
//! connection (as HAProxy's `-x` and Pingora's graceful upgrade do).
//!
//! How, over the Unix socket `gale run --upgrade-socket PATH` listens on:
//!
//! 1. The new process (`gale run --upgrade-socket PATH --upgrade`)
//!    connects and says `GALE-UPGRADE 1 pid=N version=V`.
//! 2. The old one answers with one JSON line naming the sockets
//!    ([`Role`]: each listener, `[admin]`, the embedded DNS server's UDP
//!    and TCP sockets, and the Unix socket itself), their descriptors
//!    attached in the same order (`SCM_RIGHTS`). It goes on serving.
//! 3. The new process loads its config and plugins, serves on the
//!    sockets it was given (binding any its config adds), and says
//!    `READY`. If it fails instead, it exits: the old one sees the
//!    connection close, logs why it did not hand over, and serves on.
//! 4. The old one stops accepting, answers `DRAINING N` (its sessions in
//!    flight), drains them as on SIGTERM and exits. The new one then
//!    answers upgrade requests on the same Unix socket.
//!
//! No socket closes at any step: both processes hold each one until the
//! old exits, so a client connecting at any moment is accepted by one of
//! them (the kernel queues it until one calls accept).
//!
//! Who may ask: the socket file is made mode 0600, and a peer whose uid
//! is neither root's nor gale's own is refused (`SO_PEERCRED`). Only one
//! upgrade runs at a time; others wait in the socket's backlog.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::sync::{mpsc, oneshot};

pub use crate::server::Role;
use crate::systemd::PassedSockets;

/// The first line of a request; the number is the protocol's version.
const HELLO: &str = "GALE-UPGRADE 1";
/// Most descriptors one answer carries (the kernel's `SCM_MAX_FD` is 253).
const MAX_SOCKETS: usize = 250;
/// Longest line either side reads.
const MAX_LINE: u64 = 64 * 1024;
/// How long the new process waits for each answer of the old one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to say `READY`:
/// compiling plugins without a cache can take a minute.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the old process waits for a request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the old process answers a request with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Answer {
    /// These sockets, their descriptors attached in this order.
    Offer {
        pid: u32,
        version: String,
        generation: u64,
        sockets: Vec<Role>,
    },
    Refused {
        reason: String,
    },
}

/// How `gale run` takes part in upgrades.
pub enum Start {
    /// Listen for upgrade requests on a fresh socket.
    Listen(UnixListener),
    /// Take over from the gale listening on the socket.
    TakeOver(Box<TakeOver>),
}

impl Start {
    /// The sockets a take-over received (none otherwise).
    pub fn sockets(&mut self) -> PassedSockets {
        match self {
            Start::Listen(_) => PassedSockets::none(),
            Start::TakeOver(t) => std::mem::take(&mut t.sockets),
        }
    }
}

/// Bind `path` for upgrade requests. An old socket file no gale answers
/// on is removed; one a gale answers on is an error (take over from it
/// with `--upgrade` instead).
pub fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "a gale already listens for upgrades on {}: start with --upgrade to take over from it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale upgrade socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the upgrade socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    tracing::info!(path = %path.display(), "listening for binary upgrades");
    Ok(listener)
}

/// What the new process received from the old one.
pub struct TakeOver {
    /// The old process.
    pub pid: u32,
    sockets: PassedSockets,
    /// The upgrade socket, served once the old process is out.
    listener: UnixListener,
    old: BufReader<UnixStream>,
    path: PathBuf,
}

/// Ask the gale listening on `path` for its sockets.
pub fn take_over(path: &Path) -> anyhow::Result<TakeOver> {
    let context = || format!("taking over from the gale at {}", path.display());
    let stream = UnixStream::connect(path)
        .with_context(|| format!("no gale answers upgrade requests on {}", path.display()))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let asked = writeln!(
        &stream,
        "{HELLO} pid={} version={}",
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    // A gale that refuses may answer and close before the request is
    // written: its answer says why, better than the broken pipe.
    let (line, fds) = match (receive(&stream), asked) {
        (Ok(answer), _) => answer,
        (Err(_), Err(e)) => return Err(e).with_context(context),
        (Err(e), Ok(())) => return Err(e).with_context(context),
    };
    let answer: Answer = serde_json::from_slice(&line)
        .with_context(|| format!("{}: an answer gale does not understand", context()))?;
    let (pid, generation, roles) = match answer {
        Answer::Offer {
            pid,
            generation,
            sockets,
            ..
        } => (pid, generation, sockets),
        Answer::Refused { reason } => bail!("{}: refused: {reason}", context()),
    };
    if roles.len() != fds.len() {
        bail!(
            "{}: {} sockets named but {} received",
            context(),
            roles.len(),
            fds.len()
        );
    }
    let mut listeners = Vec::new();
    let (mut admin, mut udp, mut tcp, mut listener) = (None, None, None, None);
    for (role, fd) in roles.into_iter().zip(fds) {
        match role {
            Role::Listener(name) => listeners.push((name, fd.into())),
            Role::Admin => admin = Some(fd.into()),
            Role::DnsUdp => udp = Some(fd.into()),
            Role::DnsTcp => tcp = Some(fd.into()),
            Role::Upgrade => listener = Some(UnixListener::from(fd)),
        }
    }
    let Some(listener) = listener else {
        bail!("{}: the upgrade socket was not handed over", context());
    };
    let names: Vec<&str> = listeners
        .iter()
        .map(|(n, _): &(String, _)| n.as_str())
        .collect();
    tracing::info!(pid, generation, listeners = ?names, admin = admin.is_some(), dns = udp.is_some(), "took the sockets of the running gale");
    let dns = udp.zip(tcp);
    let sockets = PassedSockets::handed_over(pid, listeners, admin, dns)?;
    Ok(TakeOver {
        pid,
        sockets,
        listener,
        old: BufReader::new(stream),
        path: path.to_path_buf(),
    })
}

impl TakeOver {
    /// Tell the old process this one serves, and wait until it has
    /// stopped accepting. Returns the upgrade socket to serve on.
    pub async fn ready(self) -> anyhow::Result<UnixListener> {
        let TakeOver {
            pid,
            listener,
            mut old,
            path,
            ..
        } = self;
        let draining = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            writeln!(old.get_ref(), "READY")?;
            let mut line = String::new();
            (&mut old).take(MAX_LINE).read_line(&mut line)?;
            Ok(line)
        })
        .await?
        .with_context(|| format!("telling the gale of pid {pid} that this one serves"))?;
        let Some(sessions) = draining.trim().strip_prefix("DRAINING ") else {
            bail!(
                "the gale of pid {pid} answered {:?} instead of DRAINING",
                draining.trim()
            );
        };
        tracing::info!(pid, sessions, upgrade_socket = %path.display(), "took over: the old gale stopped accepting and drains its sessions");
        Ok(listener)
    }
}

/// A request the upgrade task makes of the control loop, which owns the
/// sockets and decides when gale stops accepting.
pub enum Ask {
    /// Duplicates of the sockets to hand over.
    Sockets(oneshot::Sender<std::io::Result<Offered>>),
    /// The new process serves: stop accepting, answer with the sessions
    /// in flight, drain and exit.
    HandOver {
        to: u32,
        reply: oneshot::Sender<usize>,
    },
}

/// What the control loop hands over.
pub struct Offered {
    /// The generation serving now.
    pub generation: u64,
    pub sockets: Vec<(Role, OwnedFd)>,
}

/// Answer upgrade requests on `listener` until one hands over.
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
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("upgrade socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match one(stream, &listener, &control).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!("binary upgrade not done: {e:#}; this gale serves on"),
        }
    }
}

/// Serve one request, up to the hand-over (true) or a connection that
/// asked nothing (false: `gale run --upgrade-socket` without `--upgrade`
/// checking whether a gale answers). Blocking reads and writes (each
/// with a timeout) run off the async workers.
async fn one(
    stream: tokio::net::UnixStream,
    listener: &tokio::net::UnixListener,
    control: &mpsc::Sender<Ask>,
) -> anyhow::Result<bool> {
    let peer = stream
        .peer_cred()
        .context("reading the peer's credentials")?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let own_uid = rustix::process::geteuid().as_raw();
    if peer.uid() != 0 && peer.uid() != own_uid {
        refuse(
            &stream,
            &format!("uid {} may not upgrade a gale of uid {own_uid}", peer.uid()),
        );
        bail!(
            "refused a request from uid {} (pid {:?})",
            peer.uid(),
            peer.pid()
        );
    }
    let Some((reader, to)) = tokio::task::spawn_blocking(move || hello(stream)).await?? else {
        tracing::debug!("a connection to the upgrade socket closed without a request");
        return Ok(false);
    };
    let (tx, rx) = oneshot::channel();
    control.send(Ask::Sockets(tx)).await?;
    let Offered {
        generation,
        mut sockets,
    } = rx.await??;
    sockets.push((Role::Upgrade, listener.as_fd().try_clone_to_owned()?));
    if sockets.len() > MAX_SOCKETS {
        refuse(reader.get_ref(), "more sockets than one message carries");
        bail!("{} sockets: more than {MAX_SOCKETS}", sockets.len());
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
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        send(reader.get_ref(), &line, &fds)?;
        drop(fds);
        tracing::info!(
            pid = to,
            "handed the sockets to a new gale; serving on until it says it serves"
        );
        wait_ready(reader, to)
    })
    .await??;
    let (tx, rx) = oneshot::channel();
    control.send(Ask::HandOver { to, reply: tx }).await?;
    let sessions = rx.await?;
    tokio::task::spawn_blocking(move || writeln!(reader.get_ref(), "DRAINING {sessions}"))
        .await??;
    Ok(true)
}

/// Read the request line; the new process's pid. `None` when the peer
/// closed without a word.
fn hello(stream: UnixStream) -> anyhow::Result<Option<(BufReader<UnixStream>, u32)>> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    (&mut reader).take(256).read_line(&mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if !line.starts_with(HELLO) {
        refuse(reader.get_ref(), "not a gale upgrade request");
        bail!("a request that is not gale's: {:?}", line.trim());
    }
    let pid = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(0);
    Ok(Some((reader, pid)))
}

/// Wait for `READY`; an error when the new process ends or times out.
fn wait_ready(mut reader: BufReader<UnixStream>, to: u32) -> anyhow::Result<BufReader<UnixStream>> {
    reader.get_ref().set_read_timeout(Some(READY_TIMEOUT))?;
    let mut line = String::new();
    (&mut reader)
        .take(MAX_LINE)
        .read_line(&mut line)
        .with_context(|| format!("waiting for the new gale (pid {to}) to serve"))?;
    if line.trim() != "READY" {
        bail!(
            "the new gale (pid {to}) ended before serving{}",
            if line.is_empty() {
                String::new()
            } else {
                format!(" (it said {:?})", line.trim())
            }
        );
    }
    Ok(reader)
}

fn refuse(stream: &UnixStream, reason: &str) {
    if let Ok(mut line) = serde_json::to_vec(&Answer::Refused {
        reason: reason.to_string(),
    }) {
        line.push(b'\n');
        let _ = (&*stream).write_all(&line);
    }
}

/// Write `line` with `fds` attached to its first byte.
fn send(stream: &UnixStream, line: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(line)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The descriptors went with the first byte; the rest is plain.
    (&*stream).write_all(&line[sent..])
}

/// Read one line, and the descriptors attached to its first byte.
fn receive(stream: &UnixStream) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS + 3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 64 * 1024];
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        bail!("more descriptors than expected (truncated)");
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut line = buf[..got.bytes].to_vec();
    if got.bytes == 0 {
        bail!("the running gale closed the connection without answering");
    }
    if !line.ends_with(b"\n") {
        let mut reader = BufReader::new(stream).take(MAX_LINE);
        reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            bail!("the answer is cut short or longer than {MAX_LINE} bytes");
        }
    }
    Ok((line, fds))
}
