//! TLS on the wire for sessions: a client's handshake on an SMTPS
//! listener, a backend's (`tls = true`), the streams either may be, and
//! what a client's handshake settled, which a PROXY v2 header passes on.
//!
//! Certificates and verification are set up with the config
//! ([`crate::config::tls`]); this is the per-connection half.

use std::time::Duration;

use rustls::{CipherSuite, ProtocolVersion};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{client, server};
use tokio_util::either::Either;

use crate::config::BackendTls;

/// What a TLS stream may hold of bytes written to it and not yet sent, at
/// most (rustls's default is 64 KiB): past it a write takes less, and the
/// relay keeps the rest where `max_buffer_mb` counts it.
pub const SEND_BUFFER: usize = 16 * 1024;

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
    /// The cipher suite as OpenSSL names it, and so HAProxy in its PROXY
    /// v2 headers and Postfix in its logs ("TLS_AES_256_GCM_SHA384",
    /// "ECDHE-RSA-AES128-GCM-SHA256").
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
                .map_or("unknown", |s| openssl_name(s.suite())),
            sni: connection.server_name().map(Box::from),
        }
    }
}

/// OpenSSL's name for `suite`, for each suite rustls offers (TLS 1.3's
/// are the IANA names; rustls's own spelling, "TLS13_...", is its own).
fn openssl_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => other.as_str().unwrap_or("unknown"),
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
        Ok(Ok(mut stream)) => {
            stream.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
            Ok(stream)
        }
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut(limit)),
    }
}
