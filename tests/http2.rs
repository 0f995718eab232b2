//! HTTP/2 streams through an in-process gale, driven by the h2 crate's
//! client over real sockets against in-test backends: streams of one
//! connection served side by side, a reset stream ending its exchange at
//! once, and bodies both ways under the client's flow control.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use support::http::{Behaviour, HttpBackend, web};
use support::in_process::InProcess;

/// An h2c connection by prior knowledge to listener `web`, driven in a
/// task of its own.
async fn connect(gale: &InProcess) -> SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(gale.address("web"))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn get() -> http::Request<()> {
    http::Request::get("http://mail.test/open")
        .body(())
        .unwrap()
}

/// The client's runtime: its connection tasks run while the test thread
/// waits.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Until `done` holds, at most `limit`; whether it did.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn streams_of_one_connection_are_served_side_by_side() {
    // Every response takes 400 ms: 20 streams one after another would
    // take 8 s, side by side a little over 0.4.
    let backend = HttpBackend::start("slow", Behaviour::Slow(400));
    let gale = InProcess::start(&web(&[("slow", backend.address, 1)]).to_string());
    let started = Instant::now();
    let statuses = runtime().block_on(async {
        let client = connect(&gale).await;
        let mut responses = Vec::new();
        for _ in 0..20 {
            let mut client = client.clone().ready().await.unwrap();
            let (response, _) = client.send_request(get(), true).unwrap();
            responses.push(response);
        }
        let mut statuses = Vec::new();
        for response in responses {
            let response = response.await.unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    });
    let took = started.elapsed();
    assert_eq!(statuses, vec![200; 20]);
    assert!(took < Duration::from_secs(4), "20 streams took {took:?}");
    assert_eq!(backend.requests(), 20);
}

#[test]
fn a_reset_stream_ends_its_exchange_at_once() {
    // The backend never answers: only the client's reset ends the
    // exchange before the response timeout (30 s).
    let backend = HttpBackend::start("hang", Behaviour::Hang);
    let gale = InProcess::start(&web(&[("hang", backend.address, 1)]).to_string());
    let active = || gale.running.server.current.load().pools[0].live().active(0);
    let rt = runtime();
    let mut streams = rt.block_on(async {
        let client = connect(&gale).await;
        let mut streams = Vec::new();
        for _ in 0..10 {
            let mut client = client.clone().ready().await.unwrap();
            streams.push(client.send_request(get(), true).unwrap());
        }
        streams
    });
    let reached = wait_until(Duration::from_secs(5), || backend.requests() == 10);
    assert!(
        reached,
        "{} requests reached the backend",
        backend.requests()
    );
    assert_eq!(active(), 10);
    for (_, stream) in &mut streams {
        stream.send_reset(h2::Reason::CANCEL);
    }
    let gone = wait_until(Duration::from_secs(2), || active() == 0);
    assert!(gone, "{} exchanges still hold the backend", active());
}

#[test]
fn bodies_cross_both_ways_within_the_flow_control_windows() {
    // 3 MB up without a length (chunked to the backend), echoed back
    // chunked: both far beyond the 64 KiB windows of either side.
    let backend = HttpBackend::start("echo", Behaviour::Echo);
    let gale = InProcess::start(&web(&[("echo", backend.address, 1)]).to_string());
    let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (status, echoed) = runtime().block_on(async {
        let client = connect(&gale).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post("http://mail.test/upload")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        let upload = {
            let sent = sent.clone();
            async move {
                for chunk in sent.chunks(100_000) {
                    body.reserve_capacity(chunk.len());
                    let mut chunk = Bytes::copy_from_slice(chunk);
                    while !chunk.is_empty() {
                        let room = std::future::poll_fn(|cx| body.poll_capacity(cx))
                            .await
                            .unwrap()
                            .unwrap();
                        let part = chunk.split_to(room.min(chunk.len()));
                        body.send_data(part, false).unwrap();
                    }
                }
                body.send_data(Bytes::new(), true).unwrap();
            }
        };
        let download = async {
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut stream = response.into_body();
            let mut echoed = Vec::new();
            while let Some(data) = stream.data().await {
                let data = data.unwrap();
                stream.flow_control().release_capacity(data.len()).unwrap();
                echoed.extend_from_slice(&data);
            }
            (status, echoed)
        };
        tokio::join!(upload, download).1
    });
    assert_eq!(status, 200);
    let split = echoed
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("no blank line");
    let head = String::from_utf8_lossy(&echoed[..split]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        echoed[split + 2..] == sent[..],
        "the body came back altered"
    );
}
