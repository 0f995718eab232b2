//! The new process's side: ask the running gale for its sockets, check
//! them, and once this gale is ready to serve, tell the old one to stop.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use socket2::{Domain, Socket, Type};

use super::{Answer, HELLO, Role, trusted, wire};
use crate::systemd::PassedSockets;

/// How long the new process waits for each answer of the old one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long it waits for `DRAINING` once it said `READY`.
const DRAINING_TIMEOUT: Duration = Duration::from_secs(300);

/// What the new process received from the old one.
pub struct TakeOver {
    /// The old process.
    pub pid: u32,
    sockets: PassedSockets,
    /// The upgrade socket, served once the old process is out.
    listener: UnixListener,
    old: UnixStream,
    path: PathBuf,
}

/// Ask the gale listening on `path` for its sockets.
pub fn take_over(path: &Path) -> anyhow::Result<TakeOver> {
    let context = || format!("taking over from the gale at {}", path.display());
    let stream = UnixStream::connect(path)
        .with_context(|| format!("no gale answers upgrade requests on {}", path.display()))?;
    // Whoever answers gets this gale's trust (it will serve on what it
    // is given): root or this user only, as the other side checks too.
    let peer = rustix::net::sockopt::socket_peercred(&stream).with_context(context)?;
    if !trusted(peer.uid.as_raw()) {
        bail!(
            "{}: it runs as uid {}, neither root nor this gale's user",
            context(),
            peer.uid.as_raw()
        );
    }
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let hello = format!(
        "{} {} pid={} version={}",
        HELLO[0],
        HELLO[1],
        std::process::id(),
        env!("CARGO_PKG_VERSION")
    );
    let asked = wire::say(&stream, hello.as_bytes());
    // A gale that refuses may answer and close before the request is
    // written: its answer says why, better than the broken pipe.
    let (line, fds) = match (wire::receive(&stream), asked) {
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
        let fd = checked(&role, fd).with_context(context)?;
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
    let sockets = PassedSockets::handed_over(pid, listeners, admin, udp.zip(tcp))?;
    Ok(TakeOver {
        pid,
        sockets,
        listener,
        old: stream,
        path: path.to_path_buf(),
    })
}

/// `fd` if it is what `role` says: a listening TCP socket for a
/// listener, `[admin]` and DNS over TCP, a UDP socket for DNS, a
/// listening Unix socket for upgrades.
fn checked(role: &Role, fd: OwnedFd) -> anyhow::Result<OwnedFd> {
    let socket = Socket::from(fd);
    let is = |domain: Domain, ty: Type| {
        socket.domain().is_ok_and(|d| d == domain) && socket.r#type().is_ok_and(|t| t == ty)
    };
    let ok = match role {
        Role::Listener(_) | Role::Admin | Role::DnsTcp => {
            crate::systemd::sockets::check(&socket).is_ok()
        }
        Role::DnsUdp => is(Domain::IPV4, Type::DGRAM) || is(Domain::IPV6, Type::DGRAM),
        Role::Upgrade => is(Domain::UNIX, Type::STREAM) && socket.is_listener().unwrap_or(false),
    };
    if !ok {
        bail!("the socket handed over for {role:?} is not one");
    }
    Ok(socket.into())
}

impl TakeOver {
    /// The sockets to serve on (once: then none).
    pub fn sockets(&mut self) -> PassedSockets {
        std::mem::take(&mut self.sockets)
    }

    /// Tell the old process this one is ready, and wait until it has
    /// stopped accepting: this gale may accept then, and answers the next
    /// upgrade on the socket returned. An error when the old process
    /// still runs without having said so (it gave up on this one, or was
    /// told to stop meanwhile): this gale must not serve beside it.
    pub async fn ready(self) -> anyhow::Result<UnixListener> {
        let TakeOver {
            pid,
            listener,
            old,
            path,
            ..
        } = self;
        let answer = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            // As long as a reload of the old gale may take (its control
            // loop answers between reloads).
            old.set_read_timeout(Some(DRAINING_TIMEOUT))?;
            wire::say(&old, b"READY")?;
            let mut line = String::new();
            BufReader::new(&old)
                .take(wire::MAX_LINE as u64)
                .read_line(&mut line)?;
            Ok(line)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|answer| answer);
        match answer {
            Ok(line) if line.starts_with("DRAINING ") => {
                let sessions = line.trim().trim_start_matches("DRAINING ");
                tracing::info!(pid, sessions, upgrade_socket = %path.display(), "took over: the old gale stopped accepting and drains its sessions");
                Ok(listener)
            }
            // It died between READY and DRAINING: nobody accepts but us.
            _ if gone(pid).await => {
                tracing::warn!(pid, "took over: the old gale ended without a word");
                Ok(listener)
            }
            Ok(line) => bail!(
                "the gale of pid {pid} did not hand over (it answered {:?}) and still runs",
                line.trim()
            ),
            Err(e) => bail!("the gale of pid {pid} did not hand over ({e:#}) and still runs"),
        }
    }
}

/// Whether process `pid` has ended, looked at for up to a second (a
/// process that closed its sockets may take a moment to be gone).
async fn gone(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    for _ in 0..20 {
        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
