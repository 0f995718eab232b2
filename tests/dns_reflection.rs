//! The embedded DNS server against reflection and amplification, run
//! in-process on 127.0.0.1:0 with real UDP clients bound to other loopback
//! addresses: responses (QR=1) get no answer, a flood from one client
//! prefix is rate limited with every other response slipped as a
//! truncated reply while another prefix and TCP are answered, and the
//! amplification factor is measured (the numbers are in SECURITY.md).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gale::generation::Generation;
use gale::server::Server;
use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::rr::{Name, RecordType};
use support::conf::Conf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

/// `n` TCP backends on 127.0.2.1, 127.0.2.2, ... that accept and close,
/// so the probes find them healthy; kept while the returned tasks live.
async fn backends(n: u8) -> (Vec<SocketAddr>, Vec<tokio::task::JoinHandle<()>>) {
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..=n {
        let listener = TcpListener::bind((IpAddr::from([127, 0, 2, i]), 0))
            .await
            .unwrap();
        addresses.push(listener.local_addr().unwrap());
        tasks.push(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }));
    }
    (addresses, tasks)
}

/// gale publishing `backends` as mx.example.test with the embedded server
/// (`embedded`: more `dns.embedded` keys and their values); returned once
/// every backend is published.
async fn start(backends: &[SocketAddr], embedded: &[(&str, i64)]) -> Server {
    let mut conf = Conf::new()
        .smtp("smtp", "mta")
        .probe("mta", "tcp", "1s", "500ms")
        .set("dns.zone", "example.test.")
        .set("dns.name", "mx.example.test.")
        .set("dns.ttl", 60)
        .set("dns.pool", "mta")
        .set("dns.debounce", "100ms")
        .set("dns.max_changes", 1000)
        .set("dns.embedded.address", "127.0.0.1:0");
    for &(key, value) in embedded {
        conf = conf.set(&format!("dns.embedded.{key}"), value);
    }
    for (i, &b) in backends.iter().enumerate() {
        conf = conf.backend("mta", &format!("b{i}"), b);
    }
    let config = support::parse(&conf);
    let (runtime, _cache) = support::runtime();
    let generation = Generation::build(1, &runtime, config, &Default::default()).unwrap();
    let server = Server::start(generation).await.unwrap();
    let dns = server.dns.clone();
    support::wait_until(
        || dns.published.load().len() == backends.len(),
        Duration::from_secs(10),
        "every backend published",
    )
    .await;
    server
}

/// A query for mx.example.test A, with EDNS offering `edns` bytes.
fn query(id: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(Query::query(
        Name::from_ascii("mx.example.test.").unwrap(),
        RecordType::A,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn client(ip: [u8; 4], server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind((IpAddr::from(ip), 0)).await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

/// The next datagram on `socket`, within 2 s.
async fn reply(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .expect("no reply within 2 s")
        .unwrap();
    buf.truncate(n);
    buf
}

fn dns_address(server: &Server) -> SocketAddr {
    server.dns_address().expect("the embedded server runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_qr_set_is_never_answered() {
    let (addresses, _tasks) = backends(1).await;
    let server = start(&addresses, &[]).await;
    let socket = client([127, 0, 0, 1], dns_address(&server)).await;

    // A well-formed response, and a malformed one (it claims five
    // questions and has none) that a FORMERR would otherwise answer.
    let mut response = query(1, None);
    response[2] |= 0x80;
    socket.send(&response).await.unwrap();
    let malformed = [0, 2, 0x80, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0xff];
    socket.send(&malformed).await.unwrap();
    // The server answers in order: the first reply to come back is the
    // query's only if the two before it got none.
    socket.send(&query(3, None)).await.unwrap();
    let first = Message::from_vec(&reply(&socket).await).unwrap();
    assert_eq!(first.metadata.id, 3, "{first:?}");
    assert_eq!(first.answers.len(), 1);
    server.shutdown().await;
}

/// Replies counted by kind.
#[derive(Default, Debug)]
struct Tally {
    full: usize,
    slipped: usize,
    bytes: usize,
}

impl Tally {
    fn add(&mut self, bytes: &[u8], query_len: usize) {
        let m = Message::from_vec(bytes).unwrap();
        assert_eq!(m.metadata.message_type, MessageType::Response);
        if m.metadata.truncation {
            assert!(m.answers.is_empty(), "a slipped reply carries records");
            assert!(bytes.len() <= query_len, "slipped {} bytes", bytes.len());
            self.slipped += 1;
        } else {
            assert!(!m.answers.is_empty(), "{m:?}");
            self.full += 1;
        }
        self.bytes += bytes.len();
    }
}

/// Every datagram already waiting on `socket`.
fn drain(socket: &UdpSocket, tally: &mut Tally, query_len: usize) {
    let mut buf = vec![0u8; 65535];
    while let Ok(n) = socket.try_recv(&mut buf) {
        tally.add(&buf[..n], query_len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_prefix_is_limited_and_slipped_while_others_are_answered() {
    let (addresses, _tasks) = backends(1).await;
    let server = start(&addresses, &[("rate_limit", 5), ("rate_limit_burst", 5)]).await;
    let address = dns_address(&server);
    let flood = client([127, 0, 0, 2], address).await;
    // Another /24: its own bucket.
    let other = client([127, 0, 1, 3], address).await;
    let q = query(0, None);

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut others = Vec::new();
    for i in 0..100u16 {
        flood.send(&query(i, None)).await.unwrap();
        if i % 25 == 24 {
            other.send(&query(1000 + i, None)).await.unwrap();
            others.push(reply(&other).await);
        }
        // Keep the flood socket's buffer from filling.
        drain(&flood, &mut tally, q.len());
    }
    let elapsed = started.elapsed();
    // The other prefix's last reply comes after every flood reply was
    // sent (one task answers UDP in order): what is not here was dropped.
    other.send(&query(2000, None)).await.unwrap();
    others.push(reply(&other).await);
    drain(&flood, &mut tally, q.len());

    for r in &others {
        let m = Message::from_vec(r).unwrap();
        assert!(!m.metadata.truncation && m.answers.len() == 1, "{m:?}");
    }
    let limit = 5 + (5.0 * elapsed.as_secs_f64()).ceil() as usize;
    eprintln!("100 queries in {elapsed:?}: {tally:?}, limit {limit}");
    assert!(tally.full <= limit, "{tally:?} past {limit}");
    let metrics = server.current.load().metrics.clone();
    let count = |action| {
        support::counter(
            &metrics,
            "gale_dns_rate_limited_total",
            &[("action", action)],
        ) as usize
    };
    let (slipped, dropped) = (count("slipped"), count("dropped"));
    assert_eq!(slipped, tally.slipped);
    assert_eq!(tally.full + slipped + dropped, 100, "{tally:?}");
    assert!(
        dropped == slipped || dropped == slipped + 1,
        "{dropped} dropped"
    );

    // TCP from the flooding address is not limited.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut answer = vec![0u8; u16::from_be_bytes(len).into()];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
    server.shutdown().await;
}

/// Bytes sent and answered for a flood of `n` queries from 127.0.0.4 at
/// about 1000 a second.
async fn flood(address: SocketAddr, n: u16, q: &[u8]) -> (usize, Tally) {
    let socket = Arc::new(client([127, 0, 0, 4], address).await);
    let witness = client([127, 0, 3, 1], address).await;
    let mut tally = Tally::default();
    let mut sent = 0;
    for i in 0..n {
        socket.send(q).await.unwrap();
        sent += q.len();
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drain(&socket, &mut tally, q.len());
    }
    witness.send(q).await.unwrap();
    reply(&witness).await;
    drain(&socket, &mut tally, q.len());
    (sent, tally)
}

/// The size of gale's answer to one query over the size of the query.
async fn one_query(address: SocketAddr, edns: Option<u16>) -> f64 {
    let q = query(7, edns);
    let socket = client([127, 0, 0, 5], address).await;
    socket.send(&q).await.unwrap();
    let r = reply(&socket).await;
    let m = Message::from_vec(&r).unwrap();
    assert!(!m.metadata.truncation, "{} bytes truncated", r.len());
    assert!(r.len() <= usize::from(edns.unwrap_or(512)));
    let ratio = r.len() as f64 / q.len() as f64;
    eprintln!(
        "one query, EDNS {edns:?}: {} bytes asked, {} answered ({} records): {ratio:.1}x",
        q.len(),
        r.len(),
        m.answers.len()
    );
    ratio
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amplification_over_udp_is_bounded_by_the_rate_limit() {
    // The largest replies a query can draw for this name: 29 A records
    // fill 512 bytes (no EDNS), 74 fill 1232 (one more and the answer is
    // truncated to the question).
    let (addresses, _tasks) = backends(74).await;
    let plain = start(&addresses[..29], &[]).await;
    let without_edns = one_query(dns_address(&plain), None).await;
    plain.shutdown().await;
    let limited = start(&addresses, &[]).await;
    let address = dns_address(&limited);
    let with_edns = one_query(address, Some(1232)).await;
    assert!(without_edns < 16.0 && with_edns < 29.0);

    let q = query(9, Some(1232));
    let (sent, tally) = flood(address, 1000, &q).await;
    let with_limit = tally.bytes as f64 / sent as f64;
    eprintln!(
        "1000 queries in 1 s from one source, default rate limit: {sent} bytes asked, {} answered \
         ({} full, {} slipped): {with_limit:.2}x",
        tally.bytes, tally.full, tally.slipped
    );
    limited.shutdown().await;

    let open = start(&addresses, &[("rate_limit", 0)]).await;
    let (sent, tally) = flood(dns_address(&open), 1000, &q).await;
    let without = tally.bytes as f64 / sent as f64;
    eprintln!(
        "the same without a limit: {sent} bytes asked, {} answered ({} full): {without:.2}x",
        tally.bytes, tally.full
    );
    open.shutdown().await;
    // 20/s with a burst of 40 over about a second: ~60 full answers.
    assert!(with_limit < 3.0, "{with_limit:.2}x with the limit");
    assert!(without > 10.0 * with_limit, "{without:.2}x without");
}
