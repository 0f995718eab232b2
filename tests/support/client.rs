//! Blocking clients for tests against the gale binary: an SMTP session
//! driven step by step, a kept-alive HTTP/1.1 connection, and a bounded
//! multi-threaded load of either.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A plain SMTP client session, one step at a time.
pub struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    pub fn try_open(addr: SocketAddr) -> std::io::Result<Session> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = Session {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        s.expect("220")?;
        Ok(s)
    }

    /// A session on `stream`, whose greeting the caller has read.
    pub fn greeted(stream: TcpStream) -> Session {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Session {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn open(addr: SocketAddr) -> Session {
        Session::try_open(addr).unwrap()
    }

    /// Read one reply (all its lines); an error unless it starts with `code`.
    pub fn expect(&mut self, code: &str) -> std::io::Result<()> {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if !line.starts_with(code) {
                return Err(std::io::Error::other(format!(
                    "expected {code}, got {line:?}"
                )));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    pub fn try_command(&mut self, line: &str, code: &str) -> std::io::Result<()> {
        self.writer.write_all(line.as_bytes())?;
        self.expect(code)
    }

    pub fn command(&mut self, line: &str, code: &str) {
        self.try_command(line, code).unwrap();
    }

    /// Everything after the greeting: one message, then QUIT.
    pub fn try_send_mail(mut self) -> std::io::Result<()> {
        self.try_command("EHLO client.test\r\n", "250")?;
        self.try_command("MAIL FROM:<a@client.test>\r\n", "250")?;
        self.try_command("RCPT TO:<b@example.test>\r\n", "250")?;
        self.try_command("DATA\r\n", "354")?;
        self.try_command("Subject: reload\r\n\r\nhello\r\n.\r\n", "250")?;
        self.try_command("QUIT\r\n", "221")
    }

    pub fn send_mail(self) {
        self.try_send_mail().unwrap();
    }
}

/// Bounded client load: `clients` threads sending one message per session
/// until stopped, and for at most 60 s whatever happens.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// SMTP: each client sends one message per session.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::run(clients, move || {
            Session::try_open(addr).and_then(Session::try_send_mail)
        })
    }

    /// HTTP: each client sends GETs on a kept-alive connection, 20 per
    /// connection; a request is one "session".
    pub fn http(addr: SocketAddr, clients: usize) -> Load {
        Load::run(clients, move || {
            let mut conn = HttpConnection::open(addr)?;
            for _ in 0..20 {
                conn.get("/")?;
            }
            Ok(())
        })
    }

    fn run<F>(clients: usize, session: F) -> Load
    where
        F: Fn() -> std::io::Result<()> + Clone + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients = (0..clients)
            .map(|_| {
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                let session = session.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let ok = session();
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = ok {
                            eprintln!("session failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            clients,
        }
    }

    /// Stop the clients; (sessions sent, sessions failed).
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

pub fn send_mail(addr: SocketAddr) {
    Session::open(addr).send_mail();
}

/// Time from connecting to the greeting (the session then QUITs).
pub fn greeting_time(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut session = Session::open(addr);
    let took = started.elapsed();
    session.command("QUIT\r\n", "221");
    took
}

/// A kept-alive HTTP/1.1 client connection; responses must carry a
/// Content-Length (the in-test backends' do).
pub struct HttpConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpConnection {
    pub fn open(addr: SocketAddr) -> std::io::Result<HttpConnection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// GET `path`; an error unless the answer is a 200. Returns the body.
    pub fn get(&mut self, path: &str) -> std::io::Result<String> {
        // One write: pieces would meet Nagle and delayed ACKs.
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.send(request.as_bytes())?;
        let response = self.response(false)?;
        if response.status != 200 {
            return Err(std::io::Error::other(format!("got {response:?}")));
        }
        String::from_utf8(response.body).map_err(std::io::Error::other)
    }

    /// A second handle on the socket, to write from another thread.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().unwrap()
    }

    /// Write raw request bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Read one response (`head`: to a HEAD request, so without a body),
    /// framed by Content-Length, chunks, or the end of the connection.
    pub fn response(&mut self, head: bool) -> std::io::Result<HttpResponse> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head || status == 204 || status == 304 {
        } else if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size =
                    usize::from_str_radix(size.trim_end().split(';').next().unwrap_or(""), 16)
                        .map_err(|e| std::io::Error::other(format!("chunk size {size:?}: {e}")))?;
                let mut chunk = vec![0; size + 2];
                std::io::Read::read_exact(&mut self.reader, &mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = header("content-length") {
            body = vec![0; length.parse().map_err(std::io::Error::other)?];
            std::io::Read::read_exact(&mut self.reader, &mut body)?;
        } else {
            std::io::Read::read_to_end(&mut self.reader, &mut body)?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// A response as [`HttpConnection::response`] read it; header names in
/// lower case.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
