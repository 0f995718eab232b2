//! In-test SMTP backends on 127.0.0.1:0 that misbehave on purpose (refuse,
//! greet 421, never greet, send garbage) or act as a small sink that
//! counts the messages it accepted, and a line-by-line SMTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Greets 220 (multi-line) and accepts mail.
    Sink,
    /// Greets `421 4.3.2 busy` and closes.
    Busy,
    /// Accepts the connection and never says anything.
    Silent,
    /// Answers with something that is not SMTP.
    Garbage,
    /// Greets `554 5.7.1` to everyone.
    Reject,
    /// Behind PROXY v1: greets `554 5.7.1 ... listed` when the client is
    /// this address (a DNSBL-listed sender, say), as a sink otherwise.
    Blocklist(std::net::IpAddr),
    /// Behind PROXY v1: a sink for this address only (gale's own, which
    /// its probes carry), `554 5.7.1` to everyone else: a blocklist that
    /// misfires for every client.
    AllowOnly(std::net::IpAddr),
}

/// What [`Behaviour::Blocklist`] greets a listed client with.
pub const LISTED: &str = "554 5.7.1 Service unavailable; client listed at bl.test";

pub struct Backend {
    pub address: SocketAddr,
    /// How it treats the connections it accepts from now on.
    behaviour: Arc<Mutex<Behaviour>>,
    pub sessions: Arc<AtomicUsize>,
    pub messages: Arc<AtomicUsize>,
    /// PROXY headers received, verbatim.
    pub proxy_headers: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nobody listens on (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

impl Backend {
    pub async fn start(behaviour: Behaviour) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour, None).await
    }

    /// `proxy`: expect a PROXY header of this version before the greeting.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour, proxy: Option<u8>) -> Backend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let address = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let messages = Arc::new(AtomicUsize::new(0));
        let proxy_headers = Arc::new(Mutex::new(Vec::new()));
        let (s, m, h) = (sessions.clone(), messages.clone(), proxy_headers.clone());
        let behaviour = Arc::new(Mutex::new(behaviour));
        let now = behaviour.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, m, h) = (s.clone(), m.clone(), h.clone());
                let behaviour = *now.lock().unwrap();
                tokio::spawn(async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(stream, behaviour, proxy, m, h).await;
                });
            }
        });
        Backend {
            address,
            behaviour,
            sessions,
            messages,
            proxy_headers,
            task,
        }
    }
}

impl Backend {
    /// Treat connections accepted from now on this way; sessions already
    /// open go on as they started.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }
}

async fn read_proxy_header(stream: &mut TcpStream, version: u8) -> std::io::Result<Vec<u8>> {
    if version == 1 {
        let mut header = Vec::new();
        let mut byte = [0u8; 1];
        while !header.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).await?;
            header.push(byte[0]);
        }
        Ok(header)
    } else {
        let mut fixed = [0u8; 16];
        stream.read_exact(&mut fixed).await?;
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        let mut all = fixed.to_vec();
        all.extend(rest);
        Ok(all)
    }
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    proxy: Option<u8>,
    messages: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut client = None;
    if let Some(v) = proxy {
        let h = read_proxy_header(&mut stream, v).await?;
        // "PROXY TCP4 <source> <destination> ...": v1 only.
        client = String::from_utf8_lossy(&h)
            .split(' ')
            .nth(2)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        headers.lock().unwrap().push(h);
    }
    match behaviour {
        Behaviour::Reject => {
            stream.write_all(b"554 5.7.1 no service here\r\n").await?;
            return Ok(());
        }
        Behaviour::Blocklist(listed) if client == Some(listed) => {
            stream.write_all(format!("{LISTED}\r\n").as_bytes()).await?;
            return Ok(());
        }
        Behaviour::Blocklist(_) => {}
        Behaviour::AllowOnly(allowed) if client != Some(allowed) => {
            stream.write_all(format!("{LISTED}\r\n").as_bytes()).await?;
            return Ok(());
        }
        Behaviour::AllowOnly(_) => {}
        Behaviour::Busy => {
            stream.write_all(b"421 4.3.2 busy\r\n").await?;
            return Ok(());
        }
        Behaviour::Silent => {
            // Never a word; the socket goes when the peer hangs up.
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3600), stream.read_to_end(&mut sink))
                .await;
            return Ok(());
        }
        Behaviour::Garbage => {
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await?;
            return Ok(());
        }
        Behaviour::Sink => {}
    }
    let (r, mut w) = stream.split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"220-sink.test ESMTP\r\n220 ready\r\n").await?;
    let mut in_data = false;
    while let Some(line) = lines.next_line().await? {
        if in_data {
            if line == "." {
                in_data = false;
                messages.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
            continue;
        }
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250 PIPELINING\r\n",
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 ok\r\n",
        };
        w.write_all(reply).await?;
    }
    Ok(())
}

/// A client speaking SMTP one command at a time.
pub struct Client {
    /// The client's own address, as a PROXY header should carry it.
    pub local: SocketAddr,
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Connect from `ip` (any of 127.0.0.0/8 on Linux).
    pub async fn connect_from(addr: SocketAddr, ip: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        Self::from_stream(socket.connect(addr).await.unwrap())
    }

    fn from_stream(stream: TcpStream) -> Client {
        let local = stream.local_addr().unwrap();
        let (r, w) = stream.into_split();
        Client {
            local,
            lines: BufReader::new(r).lines(),
            writer: w,
        }
    }

    /// Read one whole reply (all its lines).
    pub async fn reply(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
                .await
                .expect("reply within 10 s")
                .unwrap()
                .unwrap_or_else(|| panic!("connection closed after {out:?}"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            out.push(line);
            if last {
                return out;
            }
        }
    }

    pub async fn command(&mut self, line: &str) -> Vec<String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    pub async fn send_raw(&mut self, data: &str) {
        self.writer.write_all(data.as_bytes()).await.unwrap();
    }

    /// Whether the server closed the connection (EOF) next.
    pub async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.lines.next_line()).await,
            Ok(Ok(None)) | Ok(Err(_))
        )
    }

    /// EHLO, MAIL, RCPT and DATA after the greeting, each accepted: the
    /// client is then inside DATA.
    pub async fn start_data(&mut self) {
        assert!(
            self.command("EHLO client.test")
                .await
                .last()
                .unwrap()
                .starts_with("250")
        );
        assert!(self.command("MAIL FROM:<a@client.test>").await[0].starts_with("250"));
        assert!(self.command("RCPT TO:<b@example.test>").await[0].starts_with("250"));
        assert!(self.command("DATA").await[0].starts_with("354"));
    }

    /// A complete mail transaction after the greeting; returns the reply
    /// to the final dot.
    pub async fn send_mail(&mut self) -> String {
        self.start_data().await;
        self.command("Subject: t\r\n\r\nhello\r\n.").await[0].clone()
    }
}
