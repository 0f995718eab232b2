//! TLS on the wire for sessions: a client's handshake on an SMTPS
//! listener, a backend's (`tls = true`), the streams either may be, and
//! what a client's handshake settled, which a PROXY v2 header passes on.
//!
//! Certificates and verification are set up with the config
//! ([`crate::config::tls`]); this is the per-connection half.

use std::time::Duration;

use rustls::ProtocolVersion;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server};
use tokio_util::either::Either;

use crate::config::BackendTls;

/// A client's connection: plain, or TLS gale terminates. Boxed: a TLS
/// session's state is kilobytes, not to be reserved in every plain
/// session's task.
pub type ClientStream = Either<TcpStream, Box<server::TlsStream<TcpStream>>>;

/// A connection to a backend: plain, or TLS gale speaks to it.
pub type BackendStream = Either<TcpStream, Box<client::TlsStream<TcpStream>>>;

/// The TCP connection under a client's stream.
pub fn socket(stream: &ClientStream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// What a client's handshake settled: PROXY v2's TLS fields (HAProxy's
/// `PP2_SUBTYPE_SSL_VERSION`, `PP2_SUBTYPE_SSL_CIPHER` and the SNI as
/// `PP2_TYPE_AUTHORITY`), and the session's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// "TLSv1.3", as OpenSSL (and so HAProxy and Postfix) name versions.
    pub version: &'static str,
    /// The IANA name of the cipher suite ("TLS13_AES_256_GCM_SHA384").
    pub cipher: &'static str,
    /// The host name the client asked for, if any.
    pub sni: Option<Box<str>>,
}

impl Summary {
    pub fn of(connection: &rustls::ServerConnection) -> Summary {
        Summary {
            version: match connection.protocol_version() {
                Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            cipher: connection
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            sni: connection.server_name().map(Box::from),
        }
    }
}

/// Why no TLS session was set up with a backend.
#[derive(Debug)]
pub enum HandshakeError {
    Failed(std::io::Error),
    TimedOut(Duration),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Failed(e) => write!(f, "TLS handshake: {e}"),
            HandshakeError::TimedOut(limit) => write!(f, "TLS handshake timed out after {limit:?}"),
        }
    }
}

/// The TLS session with a backend over `stream`, within `limit`.
pub async fn to_backend(
    stream: TcpStream,
    tls: &BackendTls,
    limit: Duration,
) -> Result<client::TlsStream<TcpStream>, HandshakeError> {
    let name: ServerName<'static> = tls.name.clone();
    match tokio::time::timeout(limit, tls.connector.connect(name, stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut(limit)),
    }
}
