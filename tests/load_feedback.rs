//! Load feedback: a backend's agent, speaking HAProxy's agent-check words,
//! halves its weight, drains it, takes it out and lets it back, through
//! the health plugin (the default `threshold-health` applies the report).
//! In-process server on 127.0.0.1:0, in-test MTAs and agent.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gale::generation::Generation;
use gale::pool::Out;
use gale::server::Server;
use support::conf::Conf;
use support::smtp::{Backend, Behaviour, Client};
use support::wait_until;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An agent on 127.0.0.1 that answers each connection with what `say`
/// holds, then closes.
async fn agent(say: Arc<Mutex<&'static str>>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let line = *say.lock().unwrap();
            let _ = stream.write_all(line.as_bytes()).await;
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_halves_the_weight_drains_and_takes_the_backend_out() {
    let a = Backend::start(Behaviour::Sink).await;
    let b = Backend::start(Behaviour::Sink).await;
    let say = Arc::new(Mutex::new("up 50%\n"));
    let (agent_port, agent_task) = agent(say.clone()).await;
    let conf = Conf::new()
        .smtp("in", "mta")
        .set("pools.mta.probe.kind", "tcp")
        .set("pools.mta.probe.interval", "100ms")
        .backend("mta", "a", a.address)
        .set("pools.mta.backends.a.weight", 4)
        .set("pools.mta.backends.a.agent_port", i64::from(agent_port))
        .backend("mta", "b", b.address)
        .set("pools.mta.backends.b.weight", 4);
    let (runtime, _cache) = support::runtime();
    let generation =
        Generation::build(1, &runtime, support::parse(&conf), &Default::default()).unwrap();
    let server = Server::start(generation).await.unwrap();
    let addr = server.address("in").unwrap();
    let pool = server.current.load_full().pools[0].clone();

    wait_until(
        || pool.effective_weight(0) == 2,
        Duration::from_secs(5),
        "\"50%\" halves a's weight",
    )
    .await;
    let report = &pool.backend_reports()[0];
    assert_eq!(report.load.as_deref(), Some("up 50%"));
    assert_eq!(report.health_weight, Some(2));
    assert_eq!(pool.effective_weight(1), 4, "b has no agent");

    *say.lock().unwrap() = "drain\n";
    wait_until(
        || pool.effective_weight(0) == 0,
        Duration::from_secs(5),
        "\"drain\" takes a's weight to 0",
    )
    .await;
    let before = a.messages.load(Ordering::SeqCst);
    for _ in 0..10 {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.last().unwrap().starts_with("220"));
        assert!(c.send_mail().await.starts_with("250"));
        c.command("QUIT").await;
    }
    assert_eq!(
        a.messages.load(Ordering::SeqCst),
        before,
        "a drained backend took new sessions"
    );
    assert!(pool.is_healthy(0), "draining is not down");

    *say.lock().unwrap() = "down\n";
    wait_until(
        || pool.out(0) == Some(Out::Probe),
        Duration::from_secs(5),
        "\"down\" takes a out",
    )
    .await;

    // As HAProxy: "up" alone keeps the last share (50 %).
    *say.lock().unwrap() = "up\n";
    wait_until(
        || pool.is_healthy(0) && pool.effective_weight(0) == 2,
        Duration::from_secs(5),
        "\"up\" brings a back, at the share it last reported",
    )
    .await;
    *say.lock().unwrap() = "up 100%\n";
    wait_until(
        || pool.effective_weight(0) == 4,
        Duration::from_secs(5),
        "\"100%\": a's own weight again",
    )
    .await;
    agent_task.abort();
    assert_eq!(server.shutdown().await, 0);
}
