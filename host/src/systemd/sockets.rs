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

/// Sockets the service manager passed, until gale exits.
#[derive(Debug, Default)]
pub struct PassedSockets {
    sockets: Vec<Passed>,
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
    Environment(#[source] std::io::Error),
    #[error(
        "the service manager passed {count} socket(s) without names (no LISTEN_FDNAMES): name each after the listener it is for with FileDescriptorName= in the .socket unit"
    )]
    Unnamed { count: usize },
    #[error(
        "socket `{name}` passed by the service manager (fd {fd}) {why}; gale takes listening TCP sockets only"
    )]
    Invalid {
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
        "no listener takes {sockets} passed by the service manager ({listeners}): FileDescriptorName= must be the name of a listener, or `admin` for [admin]"
    )]
    Unclaimed { sockets: String, listeners: String },
    #[error(
        "the socket `admin` passed by the service manager could be [admin]'s or [listeners.admin]'s: rename the listener"
    )]
    Ambiguous,
    #[error(
        "listener {listener}: the service manager passed its socket bound to {passed}, but the config says address = \"{configured}\": make the config and the .socket unit's ListenStream= agree"
    )]
    Address {
        listener: String,
        passed: SocketAddr,
        configured: SocketAddr,
    },
    #[error("duplicating the socket `{name}` passed by the service manager: {source}")]
    Duplicate {
        name: String,
        #[source]
        source: std::io::Error,
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
        let named = std::env::var_os("LISTEN_FDNAMES").is_some();
        // SAFETY: the caller's (no other thread reads the environment).
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
            .map_err(SocketError::Environment)?;
        let mut passed = Vec::with_capacity(fds.len());
        for (fd, name) in fds {
            // SAFETY: LISTEN_PID is this process, so these descriptors
            // were passed for it to own (sd_listen_fds(3)), and the caller
            // guarantees nothing else took them. One that is not open
            // fails the checks in `take` below.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            passed.push((owned, name));
        }
        if !named && !passed.is_empty() {
            return Err(SocketError::Unnamed {
                count: passed.len(),
            });
        }
        PassedSockets::take(passed)
    }

    /// Check each descriptor and keep the listening TCP sockets.
    fn take(fds: Vec<(OwnedFd, String)>) -> Result<PassedSockets, SocketError> {
        let mut sockets: Vec<Passed> = Vec::with_capacity(fds.len());
        for (owned, name) in fds {
            let fd = owned.as_raw_fd();
            let invalid = |why: String| SocketError::Invalid {
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
        Ok(PassedSockets { sockets })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// A duplicate of the socket passed for listener `name` (or
    /// [`ADMIN`]), or `None` when none was: the listener binds its
    /// address itself. An error when the socket is bound elsewhere than
    /// `configured`.
    pub fn for_listener(
        &self,
        name: &str,
        configured: SocketAddr,
    ) -> Result<Option<std::net::TcpListener>, SocketError> {
        let Some(passed) = self.sockets.iter().find(|s| s.name == name) else {
            return Ok(None);
        };
        // The IP and port: the flow label of an IPv6 address is no part
        // of where a socket listens.
        if (passed.address.ip(), passed.address.port()) != (configured.ip(), configured.port()) {
            return Err(SocketError::Address {
                listener: name.to_string(),
                passed: passed.address,
                configured,
            });
        }
        let socket = passed
            .socket
            .try_clone()
            .map_err(|source| SocketError::Duplicate {
                name: name.to_string(),
                source,
            })?;
        Ok(Some(socket))
    }

    /// Check `config` against the sockets: the names no listener of it
    /// takes (`name (address, fd N)` each), or an error when a socket
    /// named [`ADMIN`] could go to two listeners.
    pub fn unclaimed(&self, config: &Config) -> Result<Vec<String>, SocketError> {
        let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
        self.unclaimed_by(&listeners, config.admin.is_some())
    }

    /// [`Self::unclaimed`] for these listener names, with or without an
    /// `[admin]` listener.
    fn unclaimed_by(&self, listeners: &[&str], admin: bool) -> Result<Vec<String>, SocketError> {
        let has_listener = |name: &str| listeners.contains(&name);
        if admin && has_listener(ADMIN) && self.sockets.iter().any(|s| s.name == ADMIN) {
            return Err(SocketError::Ambiguous);
        }
        Ok(self
            .sockets
            .iter()
            .filter(|s| !(has_listener(&s.name) || admin && s.name == ADMIN))
            .map(|s| format!("`{}` ({}, fd {})", s.name, s.address, s.fd))
            .collect())
    }

    /// At start: every socket must be claimed by a listener of `config`.
    pub fn check_all_claimed(&self, config: &Config) -> Result<(), SocketError> {
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

/// The address of a listening TCP socket; why it is not one otherwise.
fn check(socket: &Socket) -> Result<SocketAddr, String> {
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
            unclaimed[0].starts_with("`typo` (127.0.0.1:"),
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
