//! Proxy header rules (RFC 9110 §7.6): hop-by-hop headers stay on their
//! hop, the client's address and scheme are passed on in
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`, `Host` is kept.
//! Both engines (gale's HTTP/1 in `h1/head.rs`, HTTP/2 in
//! `http2/message.rs`) take the tables below, so a rule holds for a
//! client whatever it speaks.

use std::net::{IpAddr, SocketAddr};

/// Fields that describe one connection (RFC 9110 §7.6.1), never
/// forwarded: the one table both engines drop by.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    // The settings of an h2c upgrade, which gale never passes on.
    "http2-settings",
];

/// Whether `name` is a hop-by-hop field (any case).
pub fn hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
}

/// Whether a `Connection` field may make `name` hop-by-hop too. Framing
/// fields and `Host` stay whatever `Connection` says: gale frames the
/// body and routes by them, so must the next hop (`Connection:
/// content-length` would otherwise smuggle a body past the backend as a
/// request).
pub fn connection_may_name(name: &[u8]) -> bool {
    const KEPT: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];
    !KEPT.iter().any(|k| k.eq_ignore_ascii_case(name))
}

/// Fields in which a client would speak for the proxy: who the client is,
/// which host it asked for, which scheme it used. gale writes
/// `X-Forwarded-Proto` itself and drops the others, so that a backend
/// reading any of them learns what gale saw, not what a client claims.
/// (`X-Forwarded-For` and `Forwarded` are appended to instead: a backend
/// that trusts them reads the last element, which gale wrote.)
const CLIENT_CLAIMS: [&str; 4] = [
    "x-forwarded-proto",
    "x-real-ip",
    "x-forwarded-host",
    "true-client-ip",
];

/// Whether `name` is `wanted` (lower case), in any case, and with any of
/// its dashes written as underscores: a CGI-style gateway behind a backend
/// maps both to `_`, so the two spellings mean the same field there.
fn same_field_for_cgi(name: &[u8], wanted: &[u8]) -> bool {
    wanted.len() == name.len()
        && wanted
            .iter()
            .zip(name)
            .all(|(&w, &n)| w == n.to_ascii_lowercase() || w == b'-' && n == b'_')
}

/// Whether a client's field is one gale drops because it speaks for the
/// proxy ([`CLIENT_CLAIMS`]), however its dashes are spelled; and
/// `X_Forwarded_For` with underscores, which gale does not append to but
/// which a CGI-style backend would read as the same variable, with the
/// client's words in it.
pub fn client_claim(name: &[u8]) -> bool {
    CLIENT_CLAIMS
        .iter()
        .any(|c| same_field_for_cgi(name, c.as_bytes()))
        || name.contains(&b'_') && same_field_for_cgi(name, b"x-forwarded-for")
}

/// Whether `name` spells `Content-Length` or `Transfer-Encoding` with an
/// underscore for a dash (any case). gale does not frame a body by it,
/// but a backend behind a CGI-style gateway, which maps both `-` and `_`
/// to `_`, may: the two would then disagree on where a request ends
/// (request smuggling). Such a request is refused.
pub fn framing_lookalike(name: &[u8]) -> bool {
    const FRAMING: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];
    name.contains(&b'_') && FRAMING.iter().any(|f| same_field_for_cgi(name, f))
}

/// The answer's text when [`framing_lookalike`] refuses a request.
pub const LOOKALIKE_REFUSED: &str = "Content_Length or Transfer_Encoding (with an underscore)\n";

/// The client of one connection as proxy headers name it. Formatted per
/// request (tens of nanoseconds) rather than kept formatted: three
/// strings per connection were a tenth of what an idle connection cost.
#[derive(Clone, Copy, Debug)]
pub struct ClientOrigin {
    pub addr: SocketAddr,
    pub https: bool,
}

impl ClientOrigin {
    pub fn new(addr: SocketAddr, https: bool) -> Self {
        ClientOrigin { addr, https }
    }

    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub fn proto(&self) -> &'static str {
        proto(self.https)
    }

    /// Append the client's address as `X-Forwarded-For` lists it.
    pub fn write_ip(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(out, "{}", self.addr.ip());
    }

    /// Append this hop's `Forwarded` element without the host:
    /// `for=NODE;proto=SCHEME`.
    pub fn write_forwarded(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = match self.addr.ip() {
            IpAddr::V4(v4) => write!(out, "for={v4};proto={}", self.proto()),
            IpAddr::V6(v6) => write!(out, "for=\"[{v6}]\";proto={}", self.proto()),
        };
    }
}

fn proto(https: bool) -> &'static str {
    if https { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_dropped_however_their_dashes_are_spelled() {
        for name in [
            "X-Real-IP",
            "x_real_ip",
            "X_Forwarded_Proto",
            "True_Client-IP",
            "x_forwarded_for",
        ] {
            assert!(client_claim(name.as_bytes()), "{name}");
        }
        for name in [
            "X-Forwarded-For",
            "Forwarded",
            "X-Real-IPs",
            "content_length",
        ] {
            assert!(!client_claim(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn framing_names_with_an_underscore_are_lookalikes() {
        for name in [
            "Content_Length",
            "content_length",
            "TRANSFER_ENCODING",
            "Transfer_encoding",
        ] {
            assert!(framing_lookalike(name.as_bytes()), "{name}");
        }
        for name in [
            "Content-Length",
            "transfer-encoding",
            "content_lengths",
            "x_content_length",
            "content_type",
        ] {
            assert!(!framing_lookalike(name.as_bytes()), "{name}");
        }
    }
}
