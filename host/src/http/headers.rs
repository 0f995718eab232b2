//! Proxy header rules (RFC 9110 §7.6): hop-by-hop headers stay on their
//! hop, the client's address and scheme are passed on in
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`, `Host` is kept.
//! Both engines (gale's HTTP/1 in `h1/head.rs`, hyper's HTTP/2 here) take
//! the tables below, so a rule holds for a client whatever it speaks.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::{CONNECTION, HOST, HeaderName, HeaderValue};

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

/// Remove hop-by-hop headers, including those the `Connection` header
/// names. `Transfer-Encoding` is left to hyper, which re-frames the body
/// for the next hop itself. One pass over the (few) headers present
/// rather than a hashed lookup per hop-by-hop name: most requests have
/// none.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| hop_by_hop(k.as_str().as_bytes())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| connection_may_name(name.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

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

/// Prepare a client's request headers for a backend.
pub fn forward_request(headers: &mut HeaderMap, origin: &ClientOrigin, host: &str) {
    strip_hop_by_hop(headers);
    // Any spelling of a claim (`X_Real_IP` too): one pass over the names,
    // allocating only when a client sent one.
    let claims: Vec<HeaderName> = headers
        .keys()
        .filter(|k| client_claim(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for claim in claims {
        headers.remove(claim);
    }
    // HTTP/2 clients send :authority instead of Host; HTTP/1.1 backends
    // need Host.
    if !headers.contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        headers.insert(HOST, v);
    }
    match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => {
            let xff = format!("{earlier}, {}", origin.addr.ip());
            insert(headers, "x-forwarded-for", &xff);
        }
        None => {
            insert(headers, "x-forwarded-for", &origin.addr.ip().to_string());
        }
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(proto(origin.https)),
    );
    let earlier = headers.get("forwarded").and_then(|v| v.to_str().ok());
    let mut forwarded = Vec::with_capacity(64 + host.len() + earlier.map_or(0, str::len));
    if let Some(earlier) = earlier {
        forwarded.extend_from_slice(earlier.as_bytes());
        forwarded.extend_from_slice(b", ");
    }
    origin.write_forwarded(&mut forwarded);
    if !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        forwarded.extend_from_slice(b";host=\"");
        forwarded.extend_from_slice(host.as_bytes());
        forwarded.push(b'"');
    }
    if let Ok(v) = HeaderValue::from_bytes(&forwarded) {
        headers.insert("forwarded", v);
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn forwarded_headers_append_to_what_earlier_proxies_wrote() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.7"));
        h.insert("forwarded", HeaderValue::from_static("for=192.0.2.7"));
        let peer = ClientOrigin::new("[2001:db8::1]:5000".parse().unwrap(), false);
        forward_request(&mut h, &peer, "api.test");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, 2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7, for=\"[2001:db8::1]\";proto=http;host=\"api.test\""
        );
        assert_eq!(h["host"], "api.test");
    }

    #[test]
    fn fields_that_speak_for_the_proxy_are_dropped() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-real-ip", "10.9.9.9"),
            ("x-forwarded-host", "admin.internal"),
            ("true-client-ip", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-kept", "yes"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let peer = ClientOrigin::new("192.0.2.7:5000".parse().unwrap(), false);
        forward_request(&mut h, &peer, "api.test");
        for gone in ["x-real-ip", "x-forwarded-host", "true-client-ip"] {
            assert!(!h.contains_key(gone), "{gone} in {h:?}");
        }
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-kept"], "yes");
    }

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
