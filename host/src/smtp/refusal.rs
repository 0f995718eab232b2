//! Replies gale writes itself before it closes a client (the 421s and the
//! pregreet 554), and closing so that they arrive.
//!
//! A socket closed while it still holds bytes the client sent (an early
//! EHLO, pipelined commands) is not closed with a FIN: the kernel answers
//! with a reset (RFC 2525 section 2.17). A stack may drop a reply it has
//! not handed to its application yet when the reset comes (Linux keeps
//! it), and the client sees its session reset rather than refused. So
//! after the reply gale half-closes and reads the client's leftovers,
//! briefly and within bounds, before the socket goes.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

/// Time allowed to write the reply to a client that does not read.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long the client's leftovers are read after the reply: long enough
/// for what it sent before it saw the reply to arrive, short enough that a
/// client that keeps talking does not hold the socket. Postfix closes
/// after its 421 at once; nginx lingers up to 5 s (`lingering_time`).
const DRAIN_TIME: Duration = Duration::from_millis(100);
/// Bytes read (and dropped) after the reply, at most.
const DRAIN_BYTES: usize = 64 * 1024;

/// The 421 a client gets when no backend can take its session: the
/// sending MTA defers the message and retries later.
pub fn unavailable_reply(hostname: &str) -> String {
    format!("421 4.3.2 {hostname} Service temporarily unavailable, try again later\r\n")
}

/// The 421 a client gets past `max_sessions_per_client`.
pub fn too_many_reply(hostname: &str) -> String {
    format!("421 4.7.0 {hostname} Too many connections from your address, try again later\r\n")
}

/// The reply to a client that spoke before it was greeted, in the words
/// of Postfix's `smtpd` for the same offence.
pub fn pregreet_reply(hostname: &str) -> String {
    format!("554 5.5.1 {hostname} Error: protocol error, client spoke before the greeting\r\n")
}

/// Write `reply`, half-close, read what the client still sends for up to
/// [`DRAIN_TIME`] or [`DRAIN_BYTES`] (less if it closes first), then
/// close. Returns whether the reply was written.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, reply: &[u8]) -> bool {
    let written = timeout(WRITE_LIMIT, async {
        client.write_all(reply).await?;
        client.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return false;
    }
    drain(&mut client).await;
    true
}

/// Read and drop the client's bytes until it closes, [`DRAIN_TIME`] has
/// passed or [`DRAIN_BYTES`] have come.
async fn drain<S: AsyncRead + Unpin>(client: &mut S) {
    let deadline = Instant::now() + DRAIN_TIME;
    // On the heap: a buffer in the future would be reserved in every
    // session's task, refused or not.
    let mut buf = vec![0u8; 4096];
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            // Closed, reset or out of time: nothing more to wait for.
            _ => return,
        }
    }
}
