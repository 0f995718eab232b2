//! Postfix postscreen's pregreet test: an SMTP client must wait for the
//! server's greeting before it speaks. Real MTAs do; many spambots send
//! at once to save a round trip. gale holds the client while it tries
//! backends (connect and greeting, milliseconds to seconds), so whatever
//! the client sent by the time the backend's 220 is about to go out was
//! sent before it could have seen a greeting.
//!
//! The check is a `recv` with `MSG_PEEK` (the bytes stay for the backend
//! when the listener passes them), made just before the greeting is
//! forwarded, so it sees everything that reached gale by then. It adds
//! no system call to a session: tokio takes a freshly accepted socket as
//! readable until a read finds it empty, so the relay's first read of the
//! client used to make this same call and find nothing (the client waits
//! for its greeting); now the peek does, and the relay waits for the
//! event loop. Measured with strace over 100 smtp-source sessions: 1,599
//! `recvfrom` calls before, 1,602 after.
//!
//! A TLS client's bytes cannot be peeked at (they are records to
//! decrypt): one read that does not wait takes what is there (a system
//! call the relay does not save), and a client let through has them sent
//! to the backend ahead of the relay.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::either::Either;

use crate::tls::ClientStream;

/// Bytes shown in the log line, at most (escaped, so up to four times as
/// many characters).
const PREVIEW: usize = 32;
/// Bytes read off a TLS client at most, to look for a pregreet: one
/// record's worth is plenty (the rest waits for the relay).
const TLS_READ: usize = 4096;

/// What a client sent before its greeting.
pub struct Early {
    /// Bytes waiting, counted up to [`PREVIEW`] (TLS: up to `TLS_READ`).
    pub bytes: usize,
    /// Their start, escaped for a log line.
    pub preview: String,
    /// Bytes read off a TLS client, which cannot be peeked at: to go to the
    /// backend ahead of the relay if the client is let through. Empty for
    /// a plain client (the peek left them in the socket).
    pub taken: Vec<u8>,
}

/// The bytes `client` has sent and gale has not read, if any. A client
/// that has closed without a word has said nothing; one that sent `QUIT`
/// and closed has spoken.
pub async fn spoke_early(client: &mut ClientStream) -> Option<Early> {
    match client {
        Either::Left(tcp) => {
            let mut buf = [0u8; PREVIEW];
            let n = poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut buf);
                Poll::Ready(match tcp.poll_peek(cx, &mut rb) {
                    Poll::Ready(Ok(n)) => n,
                    // Nothing readable, or a reset (the greeting's write
                    // reports it).
                    Poll::Ready(Err(_)) | Poll::Pending => 0,
                })
            })
            .await;
            (n > 0).then(|| Early {
                bytes: n,
                preview: buf[..n].escape_ascii().to_string(),
                taken: Vec::new(),
            })
        }
        Either::Right(tls) => {
            // One read that does not wait: what was decrypted, or could be
            // from what has arrived.
            let mut taken = vec![0u8; TLS_READ];
            let n = poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut taken);
                Poll::Ready(match Pin::new(&mut **tls).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => rb.filled().len(),
                    Poll::Ready(Err(_)) | Poll::Pending => 0,
                })
            })
            .await;
            taken.truncate(n);
            (n > 0).then(|| Early {
                bytes: n,
                preview: taken[..n.min(PREVIEW)].escape_ascii().to_string(),
                taken,
            })
        }
    }
}
