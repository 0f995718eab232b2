//! SMTP listeners: accept a client, hold it while backends are tried in
//! the balancer's order until one greets with 220, then join the streams;
//! when none can, answer `421 4.3.2` so the sender defers the mail.
//!
//! A client that speaks before its greeting is refused with 554 unless
//! the listener says `pregreet = "pass"` ([`pregreet`]); every reply gale
//! writes itself is followed by a close that lets it arrive ([`refusal`]).
//!
//! Owns: client sockets, backend connections, greetings, PROXY headers,
//! XCLIENT ([`xclient`]).
//! Does not touch: health verdicts (it reports failures to the pool) or
//! the choice of backend (the pool's balancer makes it).

mod pregreet;
pub mod proxy_header;
pub mod refusal;
pub mod reply;
mod session;
mod transaction;
mod xclient;

use tokio::net::TcpListener;

pub use refusal::unavailable_reply;

use crate::listener::Accept;

/// Accept sessions on `listener` until `accept.shutdown` is cancelled.
pub async fn serve(listener: TcpListener, accept: Accept) {
    crate::listener::serve_sessions(listener, accept, session::run).await;
}
