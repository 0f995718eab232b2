//! A listener's socket: bound, or adopted from the service manager or an
//! upgraded gale, with the TCP options every client socket of its
//! protocol needs set on the listening socket once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

/// How a listener's protocol uses its client sockets (see [`bind`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientSockets {
    /// `TCP_USER_TIMEOUT`: how long sent data may go unacknowledged.
    pub user_timeout: Option<Duration>,
    /// The client speaks first (HTTP, TLS; not SMTP, where gale greets).
    pub client_speaks_first: bool,
}

/// Seconds the kernel holds a connection that has sent nothing before it
/// hands it over anyway (`TCP_DEFER_ACCEPT`; Linux accepts it once a
/// retransmitted SYN-ACK is answered after that). HAProxy's `defer-accept`
/// and nginx's `deferred` use 1 too.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Bind a listening socket at `address` with what every client socket
/// needs set on it before `listen`: `TCP_NODELAY` (a reply goes out when
/// written, not after the client's delayed ACK) and, given, `TCP_USER_TIMEOUT`.
/// Linux copies both into each socket `accept` returns (checked by a test,
/// IPv4 and IPv6), which saves two `setsockopt` calls per connection; set
/// before `listen`, no connection can be queued without them.
///
/// Where the client speaks first, `accept` returns a connection only once
/// its first bytes are in (`TCP_DEFER_ACCEPT`): the first read finds them,
/// where it would otherwise wait for another round of epoll; and a
/// connection that sends nothing costs no task until the kernel gives up
/// holding it. Measured (bench/http.sh, `Connection: close`, gale pinned):
/// 22.2 to 17.7 µs of CPU per request.
pub fn bind(address: SocketAddr, sockets: ClientSockets) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // As tokio's own bind: a restarted gale rebinds at once.
    socket.set_reuse_address(true)?;
    // `[::]` takes IPv4 clients too, whatever the machine's default
    // (`net.ipv6.bindv6only`): the config check counts on it
    // (`config::same_port`). An IPv4-mapped address can only be bound so.
    if let std::net::IpAddr::V6(ip) = address.ip()
        && (ip.is_unspecified() || ip.to_ipv4_mapped().is_some())
    {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    set_client_options(&socket, address, sockets)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serve on a socket gale did not bind: one the service manager bound
/// and listens on (`crate::systemd::sockets`), one an upgraded gale
/// handed over, or one another listener has (a reload changed its name or
/// protocol: `Server::bind_new`). Its options stay as they are until the
/// caller sets what [`bind`] sets, with [`set_client_options`], once no
/// other listener or gale accepts on it. Connections queued before that
/// lack them (under on-demand activation, the one that started gale)
/// unless the `.socket` unit set them too (`NoDelay=true`,
/// `DeferAcceptSec=1`).
pub fn adopt(socket: std::net::TcpListener) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::from(socket);
    // The service manager passes it blocking; tokio needs it not to be.
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// What every client socket of a listener needs (see [`bind`]).
pub(crate) fn set_client_options(
    socket: &socket2::Socket,
    address: SocketAddr,
    sockets: ClientSockets,
) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    // Set either way, off included: a socket passed by the service
    // manager or an upgraded gale may carry another protocol's options
    // (an SMTP listener on a socket deferring accepts would greet each
    // client a second late).
    socket.set_tcp_user_timeout(sockets.user_timeout)?;
    let defer = if sockets.client_speaks_first {
        DEFER_ACCEPT_SECS
    } else {
        0
    };
    // Only a speed-up: a kernel without it still serves.
    if let Err(e) = set_defer_accept(socket, defer) {
        tracing::warn!(%address, "cannot set TCP_DEFER_ACCEPT to {defer} s: {e}");
    }
    Ok(())
}

/// `TCP_DEFER_ACCEPT` (socket2 has no call for it).
fn set_defer_accept(socket: &socket2::Socket, secs: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value is a c_int that outlives the call, and its
    // size is given; the descriptor is the socket's own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_tcp_options() {
        // The per-connection setsockopt calls were dropped on the strength
        // of this: a client socket gets NODELAY and the user timeout, over
        // IPv4 and IPv6 (where the machine has it).
        let sockets = ClientSockets {
            user_timeout: Some(Duration::from_secs(30)),
            client_speaks_first: true,
        };
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind(address.parse().unwrap(), sockets) else {
                assert!(address.starts_with('['), "cannot bind {address}");
                continue;
            };
            // The client speaks first: accepted once its byte is in.
            let connecting = async {
                let mut client = TcpStream::connect(listener.local_addr().unwrap()).await?;
                tokio::io::AsyncWriteExt::write_all(&mut client, b"G").await?;
                std::io::Result::Ok(client)
            };
            let (accepted, _client) = tokio::join!(listener.accept(), connecting);
            let (accepted, _) = accepted.unwrap();
            let socket = socket2::SockRef::from(&accepted);
            assert!(socket.tcp_nodelay().unwrap(), "{address}");
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(Duration::from_secs(30)),
                "{address}"
            );
        }
    }

    /// What the listening socket says of `TCP_DEFER_ACCEPT` (0: off).
    fn defer_accept(listener: &TcpListener) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut secs: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: secs and len outlive the call and len is secs's size.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut secs as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        secs
    }

    #[tokio::test]
    async fn only_listeners_whose_clients_speak_first_defer_accepting() {
        for (first, deferred) in [(true, true), (false, false)] {
            let sockets = ClientSockets {
                user_timeout: None,
                client_speaks_first: first,
            };
            let listener = bind("127.0.0.1:0".parse().unwrap(), sockets).unwrap();
            // Linux reports the seconds rounded up to its SYN-ACK
            // retransmission schedule.
            assert_eq!(defer_accept(&listener) > 0, deferred, "{sockets:?}");
        }
    }

    #[tokio::test]
    async fn an_adopted_socket_loses_options_its_new_protocol_does_not_want() {
        // A passed socket an HTTP listener had (or a .socket unit's
        // DeferAcceptSec=), taken by an SMTP listener: gale greets first,
        // so a deferred accept would hold every greeting back.
        let http = ClientSockets {
            user_timeout: Some(Duration::from_secs(30)),
            client_speaks_first: true,
        };
        let smtp = ClientSockets {
            user_timeout: None,
            client_speaks_first: false,
        };
        let listener = bind("127.0.0.1:0".parse().unwrap(), http).unwrap();
        assert!(defer_accept(&listener) > 0);
        let adopted = adopt(listener.into_std().unwrap()).unwrap();
        assert!(defer_accept(&adopted) > 0, "adopted as it was");
        let address = adopted.local_addr().unwrap();
        set_client_options(&socket2::SockRef::from(&adopted), address, smtp).unwrap();
        assert_eq!(defer_accept(&adopted), 0);
        let socket = socket2::SockRef::from(&adopted);
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
    }
}
