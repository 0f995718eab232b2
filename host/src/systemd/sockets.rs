//! Socket activation (sd_listen_fds(3)): listening sockets the service
//! manager bound and passed to gale as descriptors 3, 4, ..., with
//! `LISTEN_FDS` their count, `LISTEN_PID` gale's pid and `LISTEN_FDNAMES`
//! their `FileDescriptorName=`s, colon-separated.
//!
//! Why: systemd binds port 25 (465, 587), so gale needs neither root nor
//! `CAP_NET_BIND_SERVICE`, not even for a moment; and the socket outlives
//! gale, so clients that connect while it restarts wait in the backlog
//! instead of being refused.
//!
//! The rules, and why:
//! - **By name.** A socket goes to the listener its name names:
//!   `FileDescriptorName=in` to `[listeners.in]`, `admin` to `[admin]`.
//!   A name says what the operator meant; an address alone cannot tell
//!   a socket for `in` from one for `submission` left over from an old
//!   unit. A config with both `[admin]` and `[listeners.admin]` cannot be
//!   given a socket named `admin` (which one would it be?).
//! - **The config stays the truth.** A listener's `address` must be the
//!   address its socket is bound to (`ListenStream=0.0.0.0:25` with
//!   `address = "0.0.0.0:25"`; `ListenStream=25` binds `[::]:25`). A
//!   mismatch fails the start, or the reload that brings it: gale never
//!   serves an address its config does not name, and `gale check`,
//!   `/status` and the log show the real one. The alternatives (a passed
//!   socket overriding `address`, or `address = "systemd:NAME"`) would
//!   make the same file mean something else under systemd than in a
//!   manual run or a test; as it is, a listener with no socket passed
//!   binds its address itself, so one config runs both ways.
//! - **Every socket claimed.** At start, a socket without a name or
//!   whose name no listener has (a typo in `FileDescriptorName=`) is an
//!   error naming it, rather than a port that never answers. A reload
//!   that removes a listener leaves its socket unused, and says so: its
//!   connections wait in the backlog until it comes back or the unit
//!   drops the socket.
//! - **Checked.** Each must be a listening TCP socket (`SO_DOMAIN`
//!   inet or inet6, `SO_TYPE` stream, `SO_PROTOCOL` TCP,
//!   `SO_ACCEPTCONN`): anything else (UDP, a Unix socket, a socket not
//!   listening, a descriptor that is no socket) is an error naming its
//!   descriptor and name.
//! - **Not inherited.** The variables are removed once read, as
//!   `sd_listen_fds(1)` does, and the descriptors are close-on-exec.
//! - **Kept.** gale holds each socket for its whole life and hands each
//!   listener a duplicate: a reload that keeps the listener keeps its
//!   accept loop, and one that changes its protocol, or brings it back
//!   after another removed it, gets the same socket again (only the
//!   service manager could open it anew).
//! - gale sets the options it sets on sockets it binds (`TCP_NODELAY`;
//!   `TCP_USER_TIMEOUT` and `TCP_DEFER_ACCEPT` for HTTP), see
//!   `listener::adopt`; the backlog is the unit's `Backlog=`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// The name that gives a socket to `[admin]`.
pub const ADMIN: &str = "admin";

/// Sockets the service manager passed, or the gale this one took over
/// from (`crate::upgrade`), until gale exits.
#[derive(Debug, Default)]
pub struct PassedSockets {
    from: Source,
    sockets: Vec<Passed>,
    /// `[admin]`'s socket, taken over from another gale (the service
    /// manager passes it by the name [`ADMIN`], among `sockets`).
    admin: Option<Passed>,
    /// The embedded DNS server's UDP and TCP sockets, taken over from
    /// another gale.
    dns: Option<(std::net::UdpSocket, std::net::TcpListener)>,
}

/// Who passed the sockets, for messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    #[default]
    ServiceManager,
    /// A binary upgrade: the gale of this pid handed them over.
    Upgrade { pid: u32 },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::ServiceManager => f.write_str("the service manager"),
            Source::Upgrade { pid } => write!(f, "the gale upgraded from (pid {pid})"),
        }
    }
}

#[derive(Debug)]
struct Passed {
    name: String,
    /// The descriptor number it came as, for messages.
    fd: RawFd,
    address: SocketAddr,
    socket: std::net::TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("reading the sockets passed by the service manager (LISTEN_FDS, LISTEN_FDNAMES): {0}")]
    Environment(std::io::Error),
    #[error(
        "the service manager passed {count} socket(s) without names (no LISTEN_FDNAMES): name each after the listener it is for with FileDescriptorName= in the .socket unit"
    )]
    Unnamed { count: usize },
    #[error(
        "socket `{name}` passed by {from} (fd {fd}) {why}; gale takes listening TCP sockets only"
    )]
    Invalid {
        from: Source,
        name: String,
        fd: RawFd,
        why: String,
    },
    #[error(
        "the service manager passed two sockets named `{name}` (fds {first} and {second}): a listener takes one socket"
    )]
    Twice {
        name: String,
        first: RawFd,
        second: RawFd,
    },
    #[error(
        "the service manager passed one socket twice, as `{first}` and as `{second}`: a socket serves one listener"
    )]
    SameSocket { first: String, second: String },
    #[error(
        "no listener takes {sockets} passed by the service manager ({listeners}): FileDescriptorName= must be the name of a listener, or `admin` for [admin]"
    )]
    Unclaimed { sockets: String, listeners: String },
    #[error(
        "the socket `admin` passed by the service manager could be [admin]'s or [listeners.admin]'s: rename the listener"
    )]
    Ambiguous,
    #[error(
        "listener {listener}: {from} passed its socket bound to {passed}, but the config says address = \"{configured}\": {fix}"
    )]
    Address {
        from: Source,
        fix: &'static str,
        listener: String,
        passed: SocketAddr,
        configured: SocketAddr,
    },
    #[error("duplicating the socket `{name}` passed by {from}: {error}")]
    Duplicate {
        from: Source,
        name: String,
        error: std::io::Error,
    },
}

impl PassedSockets {
    /// No sockets: gale binds every listener itself.
    pub fn none() -> PassedSockets {
        PassedSockets::default()
    }

    /// Take the sockets passed to this process, if any, and remove
    /// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the
    /// environment (whether or not they were meant for this process).
    ///
    /// # Safety
    ///
    /// No other thread may exist (it changes the environment), and
    /// nothing in the process may own descriptors 3 to 3 + `LISTEN_FDS`
    /// yet: call it first thing in `main`.
    pub unsafe fn take_from_env() -> Result<PassedSockets, SocketError> {
        // Descriptors first, names only when there are some (as
        // sd_listen_fds_with_names(3)): variables meant for another
        // process (LISTEN_PID not gale's, left by a wrapper that forked)
        // are no error, only removed.
        let fds = sd_notify::listen_fds();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // SAFETY: the caller's (no other thread reads the environment).
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        let fds: Vec<RawFd> = fds.map_err(SocketError::Environment)?.collect();
        if fds.is_empty() {
            return Ok(PassedSockets::none());
        }
        let Some(names) = names else {
            return Err(SocketError::Unnamed { count: fds.len() });
        };
        let names: Vec<&str> = names.split(':').collect();
        if names.len() != fds.len() {
            return Err(SocketError::Environment(std::io::Error::other(format!(
                "LISTEN_FDS passes {} sockets but LISTEN_FDNAMES names {}",
                fds.len(),
                names.len()
            ))));
        }
        let mut passed = Vec::with_capacity(fds.len());
        for (fd, name) in fds.into_iter().zip(names) {
            // SAFETY: LISTEN_PID is this process, so these descriptors
            // were passed for it to own (sd_listen_fds(3)), and the caller
            // guarantees nothing else took them; each is open (the
            // crate's FD_CLOEXEC on it succeeded).
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            passed.push((owned, name.to_string()));
        }
        PassedSockets::take(passed)
    }

    /// Check each descriptor and keep the listening TCP sockets.
    fn take(fds: Vec<(OwnedFd, String)>) -> Result<PassedSockets, SocketError> {
        let mut sockets: Vec<Passed> = Vec::with_capacity(fds.len());
        // (device, inode) of each: two descriptors of one socket under
        // two names would make two listeners serve it by turns.
        let mut seen: Vec<((u64, u64), String)> = Vec::with_capacity(fds.len());
        for (owned, name) in fds {
            if let Ok(stat) = rustix::fs::fstat(&owned) {
                let id = (stat.st_dev, stat.st_ino);
                if let Some((_, first)) = seen.iter().find(|(s, _)| *s == id) {
                    return Err(SocketError::SameSocket {
                        first: first.clone(),
                        second: name,
                    });
                }
                seen.push((id, name.clone()));
            }
            let fd = owned.as_raw_fd();
            let invalid = |why: String| SocketError::Invalid {
                from: Source::ServiceManager,
                name: name.clone(),
                fd,
                why,
            };
            let socket = Socket::from(owned);
            let address = check(&socket).map_err(invalid)?;
            if let Some(first) = sockets.iter().find(|s| s.name == name) {
                return Err(SocketError::Twice {
                    name,
                    first: first.fd,
                    second: fd,
                });
            }
            tracing::info!(%name, fd, %address, "socket passed by the service manager");
            sockets.push(Passed {
                name,
                fd,
                address,
                socket: socket.into(),
            });
        }
        Ok(PassedSockets {
            sockets,
            ..PassedSockets::default()
        })
    }

    /// Sockets a gale being upgraded handed over (`crate::upgrade`):
    /// listening TCP sockets by listener name, `[admin]`'s and the
    /// embedded DNS server's. They are not checked as the service
    /// manager's are (the same program bound them), and none has to be
    /// claimed: one the new config does not take stays open, unused.
    pub fn handed_over(
        pid: u32,
        listeners: Vec<(String, std::net::TcpListener)>,
        admin: Option<std::net::TcpListener>,
        dns: Option<(std::net::UdpSocket, std::net::TcpListener)>,
    ) -> std::io::Result<PassedSockets> {
        let passed = |name: String, socket: std::net::TcpListener| {
            Ok::<_, std::io::Error>(Passed {
                name,
                fd: socket.as_raw_fd(),
                address: socket.local_addr()?,
                socket,
            })
        };
        let sockets = listeners
            .into_iter()
            .map(|(name, socket)| passed(name, socket))
            .collect::<Result<_, _>>()?;
        let admin = admin.map(|s| passed(ADMIN.to_string(), s)).transpose()?;
        Ok(PassedSockets {
            from: Source::Upgrade { pid },
            sockets,
            admin,
            dns,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.admin.is_none() && self.dns.is_none()
    }

    /// Who passed them.
    pub fn source(&self) -> Source {
        self.from
    }

    /// A duplicate of the socket passed for listener `name`, or `None`
    /// when none was: the listener binds its address itself. An error
    /// when the socket is bound elsewhere than `configured`.
    pub fn for_listener(
        &self,
        name: &str,
        configured: SocketAddr,
    ) -> Result<Option<std::net::TcpListener>, SocketError> {
        let passed = self.sockets.iter().find(|s| s.name == name);
        self.duplicate(passed, name, configured)
    }

    /// [`Self::for_listener`] for `[admin]`.
    pub fn for_admin(
        &self,
        configured: SocketAddr,
    ) -> Result<Option<std::net::TcpListener>, SocketError> {
        let passed = match &self.admin {
            Some(admin) => Some(admin),
            None if self.from == Source::ServiceManager => {
                self.sockets.iter().find(|s| s.name == ADMIN)
            }
            None => None,
        };
        self.duplicate(passed, "[admin]", configured)
    }

    /// Duplicates of the embedded DNS server's sockets, when they were
    /// handed over bound to `configured`.
    pub fn for_dns(
        &self,
        configured: SocketAddr,
    ) -> std::io::Result<Option<(std::net::UdpSocket, std::net::TcpListener)>> {
        let Some((udp, tcp)) = &self.dns else {
            return Ok(None);
        };
        if !same_place(udp.local_addr()?, configured) {
            tracing::info!(was = %udp.local_addr()?, now = %configured, "dns: the server moved; binding its new address");
            return Ok(None);
        }
        Ok(Some((udp.try_clone()?, tcp.try_clone()?)))
    }

    fn duplicate(
        &self,
        passed: Option<&Passed>,
        name: &str,
        configured: SocketAddr,
    ) -> Result<Option<std::net::TcpListener>, SocketError> {
        let Some(passed) = passed else {
            return Ok(None);
        };
        if !same_place(passed.address, configured) {
            return Err(SocketError::Address {
                from: self.from,
                fix: match self.from {
                    Source::ServiceManager => {
                        "make the config and the .socket unit's ListenStream= agree"
                    }
                    Source::Upgrade { .. } => {
                        "upgrade with the config the running gale serves, and move the listener by a reload before or after"
                    }
                },
                listener: name.to_string(),
                passed: passed.address,
                configured,
            });
        }
        let socket = passed
            .socket
            .try_clone()
            .map_err(|error| SocketError::Duplicate {
                from: self.from,
                name: name.to_string(),
                error,
            })?;
        Ok(Some(socket))
    }

    /// Check `config` against the sockets: the names no listener of it
    /// takes (`name (address, fd N)` each), or an error when a socket
    /// named [`ADMIN`] could go to two listeners.
    pub fn unclaimed(&self, config: &Config) -> Result<Vec<String>, SocketError> {
        self.unclaimed_but(config, |_| false)
    }

    /// [`Self::unclaimed`], less the sockets at an address `held` says a
    /// listener serves anyway (after a reload renamed the listener that
    /// took one: it keeps the socket, see `Server::bind_new`).
    pub fn unclaimed_but(
        &self,
        config: &Config,
        held: impl Fn(SocketAddr) -> bool,
    ) -> Result<Vec<String>, SocketError> {
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut unclaimed = self.unclaimed_by(&listeners, config.admin.is_some())?;
        unclaimed.retain(|(address, _)| !held(*address));
        Ok(unclaimed.into_iter().map(|(_, what)| what).collect())
    }

    /// The sockets no listener of these names claims (nor `[admin]`, if
    /// there is one): each with its address and what the log says of it.
    fn unclaimed_by(
        &self,
        listeners: &[&str],
        admin: bool,
    ) -> Result<Vec<(SocketAddr, String)>, SocketError> {
        let has_listener = |name: &str| listeners.contains(&name);
        // Only the service manager names `[admin]`'s socket like a
        // listener's; a gale handing over keeps it apart.
        let admin = admin && self.from == Source::ServiceManager;
        if admin && has_listener(ADMIN) && self.sockets.iter().any(|s| s.name == ADMIN) {
            return Err(SocketError::Ambiguous);
        }
        Ok(self
            .sockets
            .iter()
            .filter(|s| !(has_listener(&s.name) || admin && s.name == ADMIN))
            .map(|s| {
                (
                    s.address,
                    format!("`{}` ({}, fd {})", s.name, s.address, s.fd),
                )
            })
            .collect())
    }

    /// At start: every socket must be claimed by a listener of `config`.
    /// (A gale handing over may pass sockets the new config no longer
    /// takes: they stay open, unused, as after a reload.)
    pub fn check_all_claimed(&self, config: &Config) -> Result<(), SocketError> {
        if self.from != Source::ServiceManager {
            return Ok(());
        }
        let unclaimed = self.unclaimed(config)?;
        if unclaimed.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = config
            .listeners
            .iter()
            .map(|l| format!("`{}`", l.name))
            .collect();
        if config.admin.is_some() {
            names.push(format!("`{ADMIN}` for [admin]"));
        }
        let listeners = if names.is_empty() {
            "the config has no listeners".to_string()
        } else {
            format!("listeners: {}", names.join(", "))
        };
        Err(SocketError::Unclaimed {
            sockets: unclaimed.join(", "),
            listeners,
        })
    }
}

/// A socket bound to `bound` serves a listener configured at
/// `configured`: the same IP, and the same port unless the config says 0
/// (any port). The flow label of an IPv6 address is no part of where a
/// socket listens.
fn same_place(bound: SocketAddr, configured: SocketAddr) -> bool {
    bound.ip() == configured.ip() && (configured.port() == 0 || bound.port() == configured.port())
}

/// The address of a listening TCP socket; why it is not one otherwise.
pub(crate) fn check(socket: &Socket) -> Result<SocketAddr, String> {
    let ty = socket.r#type().map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => "is not a socket".to_string(),
        Some(libc::EBADF) => "is not open".to_string(),
        _ => format!("cannot be inspected: {e}"),
    })?;
    let domain = socket
        .domain()
        .map_err(|e| format!("cannot be inspected: {e}"))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        let what = if domain == Domain::UNIX {
            "a Unix socket".to_string()
        } else {
            format!("of address family {domain:?}")
        };
        return Err(format!("is {what}, not TCP"));
    }
    if ty != Type::STREAM {
        let what = if ty == Type::DGRAM {
            "a UDP socket".to_string()
        } else {
            format!("of type {ty:?}")
        };
        return Err(format!("is {what}, not TCP"));
    }
    let protocol = socket
        .protocol()
        .map_err(|e| format!("cannot be inspected: {e}"))?;
    if protocol.is_some_and(|p| p != Protocol::TCP) {
        return Err(format!(
            "is a stream socket of protocol {protocol:?}, not TCP"
        ));
    }
    let listening = socket
        .is_listener()
        .map_err(|e| format!("cannot be inspected: {e}"))?;
    if !listening {
        return Err("is not listening (a connection, or never passed to listen())".to_string());
    }
    socket
        .local_addr()
        .map_err(|e| format!("has no address: {e}"))?
        .as_socket()
        .ok_or_else(|| "has no IP address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(fd: impl Into<OwnedFd>, name: &str) -> (OwnedFd, String) {
        (fd.into(), name.to_string())
    }

    fn listening() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn error(fds: Vec<(OwnedFd, String)>) -> String {
        PassedSockets::take(fds).unwrap_err().to_string()
    }

    #[test]
    fn a_listening_tcp_socket_is_taken_and_handed_out_by_name() {
        let socket = listening();
        let address = socket.local_addr().unwrap();
        let passed = PassedSockets::take(vec![owned(socket, "in")]).unwrap();
        assert!(passed.for_listener("other", address).unwrap().is_none());
        let dup = passed.for_listener("in", address).unwrap().unwrap();
        assert_eq!(dup.local_addr().unwrap(), address);
        // The duplicate accepts what connects to the passed socket.
        let _client = std::net::TcpStream::connect(address).unwrap();
        let (_, peer) = dup.accept().unwrap();
        assert!(peer.ip().is_loopback());
        // A second listener (a reload changing the protocol) gets it too.
        assert!(passed.for_listener("in", address).unwrap().is_some());
    }

    #[test]
    fn a_socket_bound_elsewhere_than_the_config_says_is_refused() {
        let socket = listening();
        let address = socket.local_addr().unwrap();
        let passed = PassedSockets::take(vec![owned(socket, "in")]).unwrap();
        let configured: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let e = passed
            .for_listener("in", configured)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("bound to {address}")) && e.contains("127.0.0.1:25"),
            "{e}"
        );
    }

    #[test]
    fn anything_but_a_listening_tcp_socket_is_refused_naming_it() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = error(vec![owned(udp, "dns")]);
        assert!(e.contains("`dns`") && e.contains("a UDP socket"), "{e}");

        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let e = error(vec![owned(unbound, "in")]);
        assert!(e.contains("is not listening"), "{e}");

        let listener = listening();
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let e = error(vec![owned(connected, "in")]);
        assert!(e.contains("is not listening"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let e = error(vec![owned(unix, "in")]);
        assert!(e.contains("a Unix socket"), "{e}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let e = error(vec![owned(file, "in")]);
        assert!(e.contains("is not a socket"), "{e}");
    }

    #[test]
    fn two_sockets_of_one_name_are_refused() {
        let e = error(vec![owned(listening(), "in"), owned(listening(), "in")]);
        assert!(e.contains("two sockets named `in`"), "{e}");
    }

    #[test]
    fn one_socket_under_two_names_is_refused() {
        let socket = listening();
        let twin = socket.try_clone().unwrap();
        let e = error(vec![owned(socket, "in"), owned(twin, ADMIN)]);
        assert!(
            e.contains("one socket twice, as `in` and as `admin`"),
            "{e}"
        );
    }

    #[test]
    fn sockets_no_listener_takes_are_named() {
        let passed = PassedSockets::take(vec![
            owned(listening(), "in"),
            owned(listening(), "typo"),
            owned(listening(), ADMIN),
        ])
        .unwrap();
        let unclaimed = passed.unclaimed_by(&["in", "web"], true).unwrap();
        assert_eq!(unclaimed.len(), 1, "{unclaimed:?}");
        assert!(
            unclaimed[0].1.starts_with("`typo` (127.0.0.1:"),
            "{unclaimed:?}"
        );
        // Without [admin], `admin` is unclaimed too.
        assert_eq!(
            passed.unclaimed_by(&["in", "typo"], false).unwrap().len(),
            1
        );
        // A listener named admin takes it when there is no [admin] ...
        assert!(
            passed
                .unclaimed_by(&["in", "typo", ADMIN], false)
                .unwrap()
                .is_empty()
        );
        // ... and with one, which of the two is meant cannot be told.
        assert!(matches!(
            passed.unclaimed_by(&["in", "typo", ADMIN], true),
            Err(SocketError::Ambiguous)
        ));
    }
}
