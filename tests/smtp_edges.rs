//! SMTP at the edges of the protocol, through gale's server in-process with
//! real sockets: clients that speak before the greeting (Postfix
//! postscreen's pregreet test), 421s that must survive what the client
//! sent first, and IPv4 clients of a dual-stack listener seen as IPv4.
//!
//! The backend of the pregreet tests is the test itself ([`Held`]): it
//! greets only when told, so the client's early bytes are known to be in
//! gale's socket before the greeting comes.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gale::generation::Generation;
use gale::server::Server;
use support::conf::Conf;
use support::smtp::{Backend, Behaviour, Client};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

/// One SMTP listener `in` on `address` over `backends` (address, PROXY
/// protocol) as `b0`, `b1`, ... (tcp probes once an hour: one at start);
/// more keys with [`Conf::set`].
fn config(address: &str, backends: &[(SocketAddr, &str)]) -> Conf {
    let mut conf = Conf::new()
        .set("server.drain_timeout", "10s")
        .smtp("in", "mta")
        .set("listeners.in.address", address)
        .set("listeners.in.hostname", "gale.test")
        .set("listeners.in.max_attempts", 1)
        .set("pools.mta.probe.kind", "tcp")
        .set("pools.mta.probe.interval", "1h");
    for (i, &(backend, proxy)) in backends.iter().enumerate() {
        let name = format!("b{i}");
        conf = conf
            .backend("mta", &name, backend)
            .set(&format!("pools.mta.backends.{name}.proxy_protocol"), proxy);
    }
    conf
}

/// gale of `conf`, in-process.
async fn start(conf: Conf) -> Server {
    let config = support::parse(&conf);
    let (runtime, _cache) = support::runtime();
    let generation = Generation::build(1, &runtime, config, &Default::default()).unwrap();
    Server::start(generation).await.unwrap()
}

/// A backend the test speaks for: each connection gale opens is handed
/// to the test, which greets when it chooses.
struct Held {
    address: SocketAddr,
    accepted: mpsc::UnboundedReceiver<TcpStream>,
    task: tokio::task::JoinHandle<()>,
}

impl Held {
    async fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tx, accepted) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if tx.send(stream).is_err() {
                    return;
                }
            }
        });
        Held {
            address,
            accepted,
            task,
        }
    }

    /// The next connection gale made.
    async fn next(&mut self) -> TcpStream {
        timeout(LIMIT, self.accepted.recv())
            .await
            .expect("gale connects within 5 s")
            .unwrap()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything `stream` sends until it closes.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut all))
        .await
        .expect("closed within 5 s")
        .expect("closed without a reset");
    all
}

fn counter(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    support::counter(&server.current.load().metrics, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_speaks_before_the_greeting_gets_554_and_the_backend_hears_nothing() {
    let mut held = Held::start().await;
    let server = start(config("127.0.0.1:0", &[(held.address, "none")])).await;
    drop(held.next().await); // the start-up probe
    let addr = server.address("in").unwrap();

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"EHLO early.test\r\n").await.unwrap();
    let mut upstream = held.next().await;
    upstream
        .write_all(b"220 held.test ESMTP\r\n")
        .await
        .unwrap();
    let said = read_to_close(&mut client).await;
    assert_eq!(
        String::from_utf8_lossy(&said),
        "554 5.5.1 gale.test Error: protocol error, client spoke before the greeting\r\n"
    );
    assert!(
        read_to_close(&mut upstream).await.is_empty(),
        "the early bytes reached the backend"
    );
    let rejected = [("listener", "in"), ("action", "rejected")];
    assert_eq!(
        counter(&server, "gale_smtp_pregreets_total", &rejected),
        1.0
    );
    let code = [("listener", "in"), ("code", "554")];
    assert_eq!(counter(&server, "gale_error_replies_total", &code), 1.0);

    // A client that waits for the greeting is relayed as ever.
    let mut polite = Client::connect(addr).await;
    let mut upstream = held.next().await;
    upstream
        .write_all(b"220 held.test ESMTP\r\n")
        .await
        .unwrap();
    assert_eq!(polite.reply().await, ["220 held.test ESMTP"]);
    polite.send_raw("QUIT\r\n").await;
    let mut line = String::new();
    BufReader::new(&mut upstream)
        .read_line(&mut line)
        .await
        .unwrap();
    assert_eq!(line, "QUIT\r\n");
    drop((polite, upstream));
    assert_eq!(
        counter(&server, "gale_smtp_pregreets_total", &rejected),
        1.0
    );
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pregreet_pass_early_bytes_reach_the_backend_after_the_greeting() {
    let mut held = Held::start().await;
    let server = start(
        config("127.0.0.1:0", &[(held.address, "none")]).set("listeners.in.pregreet", "pass"),
    )
    .await;
    drop(held.next().await);
    let mut client = Client::connect(server.address("in").unwrap()).await;
    client.send_raw("EHLO early.test\r\n").await;
    let mut upstream = held.next().await;
    upstream
        .write_all(b"220 held.test ESMTP\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    let mut from_gale = BufReader::new(&mut upstream);
    timeout(LIMIT, from_gale.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "EHLO early.test\r\n");
    from_gale
        .get_mut()
        .write_all(b"250 held.test\r\n")
        .await
        .unwrap();
    assert_eq!(client.reply().await, ["220 held.test ESMTP"]);
    assert_eq!(client.reply().await, ["250 held.test"]);
    let passed = [("listener", "in"), ("action", "passed")];
    assert_eq!(counter(&server, "gale_smtp_pregreets_total", &passed), 1.0);
    drop((client, upstream));
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_quit_and_hangs_up_before_the_greeting_frees_its_backend_at_once() {
    let mut held = Held::start().await;
    let server = start(config("127.0.0.1:0", &[(held.address, "none")])).await;
    drop(held.next().await);
    let mut client = TcpStream::connect(server.address("in").unwrap())
        .await
        .unwrap();
    client.write_all(b"QUIT\r\n").await.unwrap();
    drop(client);
    let mut upstream = held.next().await;
    upstream
        .write_all(b"220 held.test ESMTP\r\n")
        .await
        .unwrap();
    // Well before the idle timeout (5 minutes by default).
    assert!(read_to_close(&mut upstream).await.is_empty());
    let rejected = [("listener", "in"), ("action", "rejected")];
    assert_eq!(
        counter(&server, "gale_smtp_pregreets_total", &rejected),
        1.0
    );
    let generation = server.current.load_full();
    support::wait_until(
        || generation.pools[0].live().active(0) == 0,
        LIMIT,
        "the backend's session slot freed",
    )
    .await;
    assert_eq!(server.shutdown().await, 0);
}

/// Read one reply line, then the end of the stream; after gale's session
/// has ended (`server.shutdown`), the connection must not have been
/// reset: a reset can take the unread reply with it on the client's side.
async fn assert_reply_then_clean_close(client: &mut TcpStream, server: Server, expected: &str) {
    let mut reply = String::new();
    let mut reader = BufReader::new(&mut *client);
    timeout(LIMIT, reader.read_line(&mut reply))
        .await
        .expect("a reply within 5 s")
        .expect("the reply, not a reset");
    assert!(reply.starts_with(expected), "{reply:?}");
    assert!(reply.ends_with("\r\n"), "a whole line: {reply:?}");
    let mut rest = Vec::new();
    let end = timeout(LIMIT, reader.read_to_end(&mut rest)).await.unwrap();
    assert!(end.is_ok() && rest.is_empty(), "{end:?} {rest:?}");
    assert_eq!(server.shutdown().await, 0);
    assert_eq!(
        client.take_error().unwrap().map(|e| e.kind()),
        None,
        "gale reset the connection after its reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_reaches_a_client_that_spoke_first_without_a_reset() {
    let mut held = Held::start().await;
    let server = start(
        config("127.0.0.1:0", &[(held.address, "none")]).set("listeners.in.pregreet", "pass"),
    )
    .await;
    drop(held.next().await);
    let mut client = TcpStream::connect(server.address("in").unwrap())
        .await
        .unwrap();
    client
        .write_all(b"EHLO early.test\r\nMAIL FROM:<a@early.test>\r\n")
        .await
        .unwrap();
    // The only backend is busy: gale answers 421 with the client's bytes
    // unread in its socket.
    let mut upstream = held.next().await;
    upstream.write_all(b"421 4.3.2 busy\r\n").await.unwrap();
    drop(upstream);
    assert_reply_then_clean_close(&mut client, server, "421 4.3.2 gale.test ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_for_too_many_connections_reaches_a_client_that_spoke_first_without_a_reset() {
    let sink = Backend::start(Behaviour::Sink).await;
    let server = start(
        config("127.0.0.1:0", &[(sink.address, "none")])
            .set("listeners.in.max_sessions_per_client", 1),
    )
    .await;
    let addr = server.address("in").unwrap();
    let mut first = Client::connect(addr).await;
    first.reply().await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"EHLO second.test\r\n").await.unwrap();
    let mut reply = String::new();
    let mut reader = BufReader::new(&mut second);
    timeout(LIMIT, reader.read_line(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("421 4.7.0 gale.test "), "{reply:?}");
    assert_eq!(first.command("QUIT").await, ["221 bye"]);
    drop(first);
    let mut rest = Vec::new();
    let end = timeout(LIMIT, reader.read_to_end(&mut rest)).await.unwrap();
    assert!(end.is_ok() && rest.is_empty(), "{end:?} {rest:?}");
    assert_eq!(server.shutdown().await, 0);
    assert_eq!(
        second.take_error().unwrap().map(|e| e.kind()),
        None,
        "gale reset the connection after its 421"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_listener_reach_backends_as_ipv4() {
    let v1 = Backend::start_on("127.0.0.1:0".parse().unwrap(), Behaviour::Sink, Some(1)).await;
    let server = start(config("[::]:0", &[(v1.address, "v1")])).await;
    let port = server.address("in").unwrap().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await[1], "220 ready");
    assert!(c.send_mail().await.starts_with("250"));
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\n",
        c.local.port()
    );
    let headers: Vec<String> = v1
        .proxy_headers
        .lock()
        .unwrap()
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    assert!(
        headers.contains(&expected),
        "no {expected:?} among {headers:?}"
    );
    drop(c);
    assert_eq!(server.shutdown().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_http_listener_are_forwarded_as_ipv4() {
    use support::http::{Behaviour, HttpBackend, web};
    let backend = HttpBackend::start("echo", Behaviour::Echo);
    let server =
        start(web(&[("echo", backend.address, 1)]).set("listeners.web.address", "[::]:0")).await;
    let port = server.address("web").unwrap().port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    timeout(LIMIT, c.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\nx-forwarded-for: 127.0.0.1\n"),
        "{response}"
    );
    assert!(
        response.contains("\nforwarded: for=127.0.0.1;"),
        "{response}"
    );
    drop(c);
    server.shutdown().await;
}

/// `ip ARGS` in this thread's network namespace.
fn ip(args: &str) {
    let status = std::process::Command::new("ip")
        .args(args.split(' '))
        .status()
        .expect("running ip (iproute2)");
    assert!(status.success(), "ip {args} failed");
}

/// An SMTP connection from `source` to `to`, and the first line gale
/// says.
async fn greeting_from(source: IpAddr, to: SocketAddr) -> (TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v6().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = timeout(LIMIT, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {line:?}");
        line.push(byte[0]);
    }
    (stream, String::from_utf8(line).unwrap())
}

/// Two IPv6 addresses in one /64 need an interface that has both: the
/// test runs in a network namespace of its own (root, as the test suite
/// runs), where loopback gets them.
#[test]
fn ipv6_clients_in_one_64_share_the_per_client_limit() {
    std::thread::spawn(|| {
        // SAFETY: unshare takes no pointers; it moves this thread alone
        // into a new network namespace, and the threads it starts follow.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (the test needs root)",
            std::io::Error::last_os_error()
        );
        ip("link set lo up");
        for a in ["fd00:6a1e::2/64", "fd00:6a1e::3/64", "fd00:6a1e:0:1::4/64"] {
            ip(&format!("-6 addr add {a} dev lo nodad"));
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let sink = Backend::start(Behaviour::Sink).await;
                let server = start(
                    config("[::]:0", &[(sink.address, "none")])
                        .set("listeners.in.max_sessions_per_client", 1),
                )
                .await;
                let port = server.address("in").unwrap().port();
                let to = SocketAddr::new("fd00:6a1e::2".parse().unwrap(), port);
                let source = |s: &str| s.parse::<IpAddr>().unwrap();
                let (first, greeting) = greeting_from(source("fd00:6a1e::2"), to).await;
                assert!(greeting.starts_with("220"), "{greeting:?}");
                let (_, refused) = greeting_from(source("fd00:6a1e::3"), to).await;
                assert!(
                    refused.starts_with("421 4.7.0 gale.test "),
                    "a second address of the same /64: {refused:?}"
                );
                let (other, greeting) = greeting_from(source("fd00:6a1e:0:1::4"), to).await;
                assert!(
                    greeting.starts_with("220"),
                    "the next /64 has its own count: {greeting:?}"
                );
                drop((first, other));
                assert_eq!(server.shutdown().await, 0);
            });
    })
    .join()
    .expect("the test thread");
}
