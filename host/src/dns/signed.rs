//! Signed reads for the `rfc2136` provider. hickory's client signs only
//! UPDATE, NOTIFY and zone transfers (`TSigner::should_sign_message`), so
//! a query sent through it goes out unsigned and its answer is taken on
//! trust: whoever can answer in the server's place (on path, or spoofing
//! its address) could tell gale the records are already there, and gale
//! would call them published without sending the update.
//!
//! The reads that decide whether to update are therefore signed here with
//! the update key, and their answers verified with hickory's
//! `TSigVerifier` (RFC 8945 §5.3: the MAC covers the whole answer and the
//! query's MAC, so it answers this query and no other, and the signing time
//! must be within the key's fudge of ours). An answer that does not verify
//! is ignored and gale keeps waiting for the real one until the timeout;
//! with none, the read fails with what was wrong with the last forged
//! answer. UDP first, then TCP when the verified answer is truncated.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType, TSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// The UDP size gale offers (the DNS flag day value); a larger set comes
/// over TCP.
const UDP_PAYLOAD: u16 = 1232;
/// Datagrams looked at per query: a flood of wrong answers cannot keep
/// gale reading past this.
const MAX_DATAGRAMS: usize = 64;

/// Why a read has no trusted answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No answer, or a network error: worth retrying soon.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered, signed, and said no; or it refused the key
    /// (RFC 8945 sends that unsigned: BADKEY, BADSIG, BADTIME).
    #[error("{0}")]
    Refused(String),
    /// Only answers that failed TSIG verification came back.
    #[error("{0}")]
    Unverified(String),
}

/// The server's verified answer to `name` `rtype`.
pub async fn query(
    server: SocketAddr,
    signer: &TSigner,
    timeout: Duration,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, ReadError> {
    let answer = over_udp(server, signer, timeout, name, rtype).await?;
    if answer.metadata.truncation {
        return over_tcp(server, signer, timeout, name, rtype).await;
    }
    Ok(answer)
}

/// A signed query and what checks its answer.
struct Signed {
    id: u16,
    bytes: Vec<u8>,
    verifier: hickory_proto::rr::TSigVerifier,
}

fn sign(signer: &TSigner, name: &Name, rtype: RecordType) -> Result<Signed, ReadError> {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    message.set_edns(edns);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verifier = message
        .finalize(signer, now)
        .map_err(|e| ReadError::Refused(format!("cannot sign the query: {e}")))?
        .ok_or_else(|| ReadError::Refused("signing the query gave no verifier".into()))?;
    let bytes = message
        .to_vec()
        .map_err(|e| ReadError::Refused(format!("cannot encode the query: {e}")))?;
    Ok(Signed {
        id: message.metadata.id,
        bytes,
        verifier,
    })
}

async fn over_udp(
    server: SocketAddr,
    signer: &TSigner,
    timeout: Duration,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, ReadError> {
    let mut query = sign(signer, name, rtype)?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let net = |e: std::io::Error| ReadError::Unreachable(format!("{server}: {e}"));
    let socket = UdpSocket::bind(local).await.map_err(net)?;
    // Connected: the kernel drops datagrams from any other address.
    socket.connect(server).await.map_err(net)?;
    socket.send(&query.bytes).await.map_err(net)?;
    let deadline = Instant::now() + timeout;
    let mut rejected = None;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD)];
    // Only datagrams with the query's id count towards the limit: junk
    // sent to the port cannot end the wait before the real answer.
    let mut candidates = 0;
    while candidates < MAX_DATAGRAMS {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(net(e)),
            Err(_) => break,
        };
        let answer = &buf[..n];
        if answer.len() < 2 || u16::from_be_bytes([answer[0], answer[1]]) != query.id {
            continue;
        }
        candidates += 1;
        match check(&mut query, answer, name, rtype) {
            Ok(message) => return Ok(message),
            Err(e) => rejected = Some(e),
        }
    }
    Err(rejected.unwrap_or_else(|| {
        ReadError::Unreachable(format!(
            "no answer from {server} to {name} {rtype} within {timeout:?}"
        ))
    }))
}

async fn over_tcp(
    server: SocketAddr,
    signer: &TSigner,
    timeout: Duration,
    name: &Name,
    rtype: RecordType,
) -> Result<Message, ReadError> {
    let mut query = sign(signer, name, rtype)?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = u16::try_from(query.bytes.len())
            .map_err(std::io::Error::other)?
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&query.bytes);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(ReadError::Unreachable(format!("{server} (TCP): {e}"))),
        Err(_) => {
            return Err(ReadError::Unreachable(format!(
                "no answer from {server} (TCP) to {name} {rtype} within {timeout:?}"
            )));
        }
    };
    check(&mut query, &answer, name, rtype)
}

/// The answer if its TSIG verifies; else why not.
fn check(
    query: &mut Signed,
    answer: &[u8],
    name: &Name,
    rtype: RecordType,
) -> Result<Message, ReadError> {
    match query.verifier.verify(answer) {
        Ok(response) => {
            let message = response.into_message();
            if message.metadata.message_type != MessageType::Response {
                return Err(ReadError::Unverified(format!(
                    "the answer to {name} {rtype} is not a response"
                )));
            }
            Ok(message)
        }
        Err(e) => Err(unverified(answer, name, rtype, &e.to_string())),
    }
}

/// A server that refuses the key says so unsigned (RFC 8945 §5.2): name
/// that case, since the fix is in the key; anything else is an answer
/// that may have been forged or altered on the way.
fn unverified(answer: &[u8], name: &Name, rtype: RecordType, why: &str) -> ReadError {
    let parsed = Message::from_vec(answer).ok();
    let refusal = parsed.as_ref().and_then(|m| {
        let error = m.signature()?.data.error?;
        (m.metadata.response_code == ResponseCode::NotAuth).then_some(error)
    });
    match refusal {
        Some(error) => ReadError::Refused(format!(
            "NOTAUTH ({error:?}) to a signed query for {name} {rtype}: the server refused the key"
        )),
        None => ReadError::Unverified(format!(
            "the answer to {name} {rtype} failed TSIG verification ({why}); not trusted"
        )),
    }
}
