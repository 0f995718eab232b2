//! Real WebSocket peers: Debian's python3-websockets as echo backends and
//! as the client (`tests/support/websocket.py`), driven line by line.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Debian's interpreter, which has the `websockets` package (a pyenv or
/// venv `python3` earlier in PATH may not).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> std::path::PathBuf {
    super::workspace().join("tests/support/websocket.py")
}

/// Lines a child prints, read on a thread so a wait can time out.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// An echo server answering each message with "NAME: message".
pub struct WsBackend {
    pub address: SocketAddr,
    child: Child,
}

impl WsBackend {
    pub fn start(name: &str) -> WsBackend {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(["serve", name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with websockets (apt install python3-websockets)");
        let port = lines(child.stdout.take().unwrap())
            .recv_timeout(Duration::from_secs(10))
            .expect("the WebSocket backend did not start");
        WsBackend {
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            child,
        }
    }

    /// SIGKILL: its connections die without a close frame.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A WebSocket client connection.
pub struct WsClient {
    child: Child,
    stdin: Option<ChildStdin>,
    said: mpsc::Receiver<String>,
}

impl WsClient {
    /// Connect to `url` (`ws://host:port/path`); `Err` with what the
    /// client said when the handshake failed.
    pub fn connect(url: &str) -> Result<WsClient, String> {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(["client", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with websockets (apt install python3-websockets)");
        let said = lines(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let mut client = WsClient { child, stdin, said };
        match client.next_line() {
            line if line == "open" => Ok(client),
            line => Err(line),
        }
    }

    fn next_line(&mut self) -> String {
        self.said
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| "(nothing within 15 s)".to_string())
    }

    /// Send `message`; the reply, or "closed CODE".
    pub fn send(&mut self, message: &str) -> String {
        let stdin = self.stdin.as_mut().expect("closed");
        // A client whose connection died may have exited already.
        let _ = writeln!(stdin, "{message}");
        let _ = stdin.flush();
        self.next_line()
    }

    /// Close cleanly; what the client said ("closed 1000").
    pub fn close(&mut self) -> String {
        drop(self.stdin.take());
        self.next_line()
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
