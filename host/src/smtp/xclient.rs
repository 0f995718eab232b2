//! XCLIENT (Postfix's extension, XCLIENT_README): how a backend with
//! `client_address = "xclient"` learns who the client is, for MTAs that
//! take it this way instead of from a PROXY header.
//!
//! After the backend's `220`, and before the client has been sent
//! anything, gale says `EHLO <hostname>`, checks that `XCLIENT` is offered
//! with `ADDR`, and sends `XCLIENT ADDR=<client> PORT=<port>
//! NAME=[UNAVAILABLE]` (PORT and NAME only when offered). The backend
//! resets its session as if the client had connected itself and greets
//! again; that `220` is what the client gets. The client then says its
//! own EHLO or HELO to the backend, which so learns HELO and PROTO from
//! the client itself: gale does not send them (nginx's mail proxy, which
//! reads the client's EHLO before it connects, sends its HELO; gale
//! holds the client before any greeting, so it has none to send).
//! NAME=[UNAVAILABLE] keeps the backend from keeping gale's own host
//! name for the client. Postfix takes it as the name `unknown` with a
//! permanent lookup failure and does no lookup of its own (behind PROXY
//! it does): `reject_unknown_client_hostname` would refuse every client,
//! and access maps by client host name never match. An MTA that judges
//! clients by name wants PROXY. (Postfix also does not count sessions
//! from an XCLIENT host in its anvil connection limits.)
//!
//! A backend that does not answer EHLO or does not offer XCLIENT fails
//! the attempt with that reason: a configuration error of the backend,
//! not a word about the client. Its reply to XCLIENT itself is the
//! greeting the client would have had from it, and judged as one: a
//! `5.7` refusal from a backend that greets other clients is its word on
//! this client (and no evidence against the backend); one that greets
//! nobody through gale, because gale is not in its
//! `smtpd_authorized_xclient_hosts` (`550 5.7.0 insufficient
//! authorization`), counts against it as any refusal of everyone does.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::reply::{Reply, read_reply};
use crate::tls::BackendStream;

/// Why the backend could not be told who the client is.
#[derive(Debug)]
pub enum XclientError {
    /// No reply, a bad one, a closed connection, or no time left.
    Exchange(String),
    /// `EHLO` answered without `XCLIENT ADDR` among the extensions.
    NotOffered,
    /// `EHLO` answered with something else than 250.
    Refused(Reply),
}

impl std::fmt::Display for XclientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XclientError::Exchange(e) => write!(f, "XCLIENT: {e}"),
            XclientError::NotOffered => write!(f, "XCLIENT not offered in its EHLO reply"),
            XclientError::Refused(reply) => write!(f, "EHLO answered {:?}", reply.first_line()),
        }
    }
}

/// Introduce `client` to the backend on `upstream`, which has just
/// greeted with `220`, within `limit` for each reply; the backend's reply
/// to XCLIENT: its greeting for the client (any code, judged by the
/// caller as a greeting).
pub async fn introduce(
    upstream: &mut BackendStream,
    hostname: &str,
    client: SocketAddr,
    limit: Duration,
) -> Result<Reply, XclientError> {
    let ehlo = exchange(upstream, format!("EHLO {hostname}\r\n"), limit).await?;
    if ehlo.code != 250 {
        return Err(XclientError::Refused(ehlo));
    }
    let offered = xclient_attributes(&ehlo.raw).ok_or(XclientError::NotOffered)?;
    if !offered.iter().any(|a| a == "ADDR") {
        return Err(XclientError::NotOffered);
    }
    exchange(upstream, command(client, &offered), limit).await
}

/// Write `line`, read the reply (nothing may follow it: the backend
/// speaks only when spoken to).
async fn exchange(
    upstream: &mut BackendStream,
    line: String,
    limit: Duration,
) -> Result<Reply, XclientError> {
    let said = async {
        let written = async {
            upstream.write_all(line.as_bytes()).await?;
            upstream.flush().await
        };
        written
            .await
            .map_err(|e| XclientError::Exchange(format!("write: {e}")))?;
        read_reply(upstream)
            .await
            .map_err(|e| XclientError::Exchange(e.to_string()))
    };
    let reply = timeout(limit, said)
        .await
        .map_err(|_| XclientError::Exchange("no reply (timeout)".into()))??;
    if !reply.rest.is_empty() {
        return Err(XclientError::Exchange("bytes after its reply".into()));
    }
    Ok(reply)
}

/// The attributes an EHLO reply offers after `XCLIENT`, upper-cased
/// (`None`: no XCLIENT line).
fn xclient_attributes(ehlo: &[u8]) -> Option<Vec<String>> {
    let text = String::from_utf8_lossy(ehlo);
    text.lines().find_map(|line| {
        let mut words = line.get(4..)?.split_ascii_whitespace();
        words
            .next()
            .filter(|w| w.eq_ignore_ascii_case("XCLIENT"))
            .map(|_| words.map(str::to_ascii_uppercase).collect())
    })
}

/// `XCLIENT ADDR=... [PORT=...] [NAME=[UNAVAILABLE]]`, with what the
/// backend offers. An IPv6 address is written `IPV6:...` (XCLIENT_README).
fn command(client: SocketAddr, offered: &[String]) -> String {
    let addr = match client.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    let mut line = format!("XCLIENT ADDR={addr}");
    if offered.iter().any(|a| a == "PORT") {
        line.push_str(&format!(" PORT={}", client.port()));
    }
    if offered.iter().any(|a| a == "NAME") {
        line.push_str(" NAME=[UNAVAILABLE]");
    }
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_is_read_from_any_line_of_the_ehlo_reply() {
        let ehlo = b"250-mx.test\r\n250-PIPELINING\r\n250-xclient name addr PROTO HELO port\r\n250 8BITMIME\r\n";
        assert_eq!(
            xclient_attributes(ehlo).unwrap(),
            ["NAME", "ADDR", "PROTO", "HELO", "PORT"]
        );
        assert_eq!(xclient_attributes(b"250-mx\r\n250 XCLIENTX ADDR\r\n"), None);
        assert_eq!(xclient_attributes(b"250 mx\r\n"), None);
    }

    #[test]
    fn the_command_sends_what_is_offered() {
        let v4: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let all = ["ADDR", "PORT", "NAME"].map(String::from);
        assert_eq!(
            command(v4, &all),
            "XCLIENT ADDR=192.0.2.7 PORT=40000 NAME=[UNAVAILABLE]\r\n"
        );
        let v6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        assert_eq!(
            command(v6, &["ADDR".to_string()]),
            "XCLIENT ADDR=IPV6:2001:db8::1\r\n"
        );
    }
}
