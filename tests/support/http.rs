//! In-test HTTP backends (hyper servers on 127.0.0.1:0, each on its own
//! thread and runtime) that count what they see and misbehave on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::conf::Conf;

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// `200` with the backend's name as the body, after reading the whole
    /// request body.
    Respond,
    /// Read the request, then close the connection without a response.
    DropAfterReading,
    /// Read the request headers and never answer.
    Hang,
    /// Like `Respond`, after this many milliseconds.
    Slow(u64),
    /// `200` with a chunked body: the request line and headers as the
    /// backend saw them, one per line, a blank line, then the request
    /// body.
    Echo,
    /// `413` at once, without reading the request body.
    RejectEarly,
}

pub struct HttpBackend {
    pub address: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Requests whose headers arrived.
    pub requests: Arc<AtomicU64>,
    /// Request body bytes read.
    pub body_bytes: Arc<AtomicU64>,
}

impl HttpBackend {
    pub fn start(name: &'static str, behaviour: Behaviour) -> HttpBackend {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let address = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (seen, bytes, accepted) = (requests.clone(), body_bytes.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = tokio::net::TcpListener::from_std(socket).unwrap();
                loop {
                    let Ok((stream, _)) = socket.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (seen, bytes) = (seen.clone(), bytes.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (seen, bytes) = (seen.clone(), bytes.clone());
                            async move { answer(name, behaviour, req, &seen, &bytes).await }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        HttpBackend {
            address,
            connections,
            requests,
            body_bytes,
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    name: &'static str,
    behaviour: Behaviour,
    req: Request<Incoming>,
    seen: &AtomicU64,
    bytes: &AtomicU64,
) -> Result<Response<EchoBody>, std::io::Error> {
    seen.fetch_add(1, Ordering::SeqCst);
    match behaviour {
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::Slow(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        Behaviour::RejectEarly => {
            return Ok(Response::builder()
                .status(413)
                .body(EchoBody::full(Bytes::from_static(b"too large")))
                .unwrap());
        }
        _ => {}
    }
    let mut seen_head = format!("{} {}\n", req.method(), req.uri());
    for (name, value) in req.headers() {
        seen_head.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    seen_head.push('\n');
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (forwarded, proto) = (header("x-forwarded-for"), header("x-forwarded-proto"));
    let mut body = req.into_body();
    let mut received = Vec::new();
    while !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                    if let Behaviour::Echo = behaviour {
                        received.extend_from_slice(data);
                    }
                }
            }
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            None => break,
        }
    }
    match behaviour {
        Behaviour::DropAfterReading => Err(std::io::Error::other("dropping the connection")),
        Behaviour::Echo => Ok(Response::builder()
            .header("x-backend", name)
            .body(EchoBody::Frames(vec![
                Bytes::from(seen_head),
                Bytes::from(received),
            ]))
            .unwrap()),
        _ => Ok(Response::builder()
            .header("x-backend", name)
            .header("x-saw-forwarded-for", forwarded)
            .header("x-saw-proto", proto)
            .body(EchoBody::full(Bytes::from(name)))
            .unwrap()),
    }
}

/// A response body: one frame of known length, or frames of unknown
/// total length (which hyper sends chunked).
pub enum EchoBody {
    Full(Full<Bytes>),
    Frames(Vec<Bytes>),
}

impl EchoBody {
    fn full(bytes: Bytes) -> Self {
        EchoBody::Full(Full::new(bytes))
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            EchoBody::Full(full) => std::pin::Pin::new(full).poll_frame(cx),
            EchoBody::Frames(frames) if frames.is_empty() => std::task::Poll::Ready(None),
            EchoBody::Frames(frames) => {
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(frames.remove(0)))))
            }
        }
    }
}

/// An HTTP listener `web` over pool `web` of `backends` (name, address,
/// weight); more keys with [`Conf::set`].
pub fn web(backends: &[(&str, SocketAddr, u32)]) -> Conf {
    let mut conf = Conf::new()
        .http("web", "web")
        .set("listeners.web.connect_timeout", "500ms")
        .set("pools.web.probe.kind", "tcp")
        .set("pools.web.probe.interval", "10s");
    for &(name, address, weight) in backends {
        conf = conf.backend("web", name, address).set(
            &format!("pools.web.backends.{name}.weight"),
            i64::from(weight),
        );
    }
    conf
}
