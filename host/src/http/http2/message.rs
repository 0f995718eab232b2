//! An HTTP/2 request as the HTTP/1.1 head a backend gets, and a backend's
//! HTTP/1.1 response head as the fields of an HTTP/2 response: the rules
//! of the HTTP/1 engine's heads (`h1::head`, `super::super::headers`) over
//! the `http` types h2 hands over; and the requests h2 lets through that
//! those rules refuse ([`refusal`]).

use std::io::Write;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, COOKIE, HOST};
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::attempts::HttpReply;
use crate::http::h1::head::{self, Framing};
use crate::http::headers::{self, ClientOrigin};

/// How the request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestBody {
    /// The client ended the stream with its headers.
    None,
    /// As long as the client's `Content-Length` says (h2 holds the stream
    /// to it).
    Length(u64),
    /// No length given: chunked.
    Chunked,
}

/// Write the HTTP/1.1 request head for a backend into `out`: the
/// request's method and `target` (origin form), `host` first, then the
/// client's fields but hop-by-hop ones, client claims and `Expect` (gale
/// answers `100 Continue` itself), `Cookie` fields joined into one (RFC
/// 9113 §8.2.3: HTTP/1.1 allows one), the framing `body` asks for, and
/// the proxy fields.
pub(super) fn write_request(
    out: &mut Vec<u8>,
    head: &http::request::Parts,
    target: &str,
    host: &[u8],
    body: RequestBody,
    origin: &ClientOrigin,
) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    head::field(out, b"host", host);
    let (mut xff, mut forwarded) = (Vec::new(), Vec::new());
    let mut cookies = 0;
    for (name, value) in &head.headers {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        match name {
            b"x-forwarded-for" => xff.push(value),
            b"forwarded" => forwarded.push(value),
            b"cookie" => cookies += 1,
            // Written first (host) or by the framing below.
            b"host" | b"content-length" | b"expect" => {}
            _ if headers::hop_by_hop(name) || headers::client_claim(name) => {}
            _ => head::field(out, name, value),
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, value) in head.headers.get_all(COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    match body {
        RequestBody::None => {}
        RequestBody::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestBody::Chunked => head::field(out, b"transfer-encoding", b"chunked"),
    }
    head::write_proxy_fields(out, xff.into_iter(), forwarded.into_iter(), origin, host);
}

/// How the request's body goes to the backend: `ended` when the client
/// ended the stream with its headers. (A length that does not parse was
/// refused before.)
pub(super) fn request_body(head: &http::request::Parts, ended: bool) -> RequestBody {
    match head.headers.get(CONTENT_LENGTH).and_then(content_length) {
        Some(n) => RequestBody::Length(n),
        None if ended => RequestBody::None,
        None => RequestBody::Chunked,
    }
}

/// A `Content-Length` value as a number: digits only.
pub(super) fn content_length(value: &HeaderValue) -> Option<u64> {
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How many fields [`write_request`] writes of the client's, `Host`
/// among them (every `Cookie` field is one).
pub(super) fn forwarded_fields(head: &http::request::Parts) -> usize {
    let cookies = head.headers.get_all(COOKIE).iter().count();
    head.headers.len() - cookies
        + usize::from(cookies > 0)
        + usize::from(!head.headers.contains_key(HOST))
}

/// The host a request names: its `Host` field, else its `:authority`.
pub(super) fn host(head: &http::request::Parts) -> &[u8] {
    match head.headers.get(HOST) {
        Some(host) => host.as_bytes(),
        None => head.uri.authority().map_or(b"", |a| a.as_str().as_bytes()),
    }
}

/// The HTTP/2 response for the backend's head `resp`, parsed from
/// `buf` (frozen, so that field values are slices of it, not copies):
/// hop-by-hop fields dropped, and the framing ones, which HTTP/2 does not
/// use (`Content-Length` is kept when it is the length of the body).
pub(super) fn response(buf: &Bytes, resp: &head::Response) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::from_u16(resp.code).unwrap_or(StatusCode::BAD_GATEWAY);
    let fields = response.headers_mut();
    fields.reserve(resp.fields.len());
    for f in &resp.fields {
        let name = &buf[f.name.clone()];
        if resp.hop_by_hop(buf, name)
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || resp.body == Framing::Chunked && name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        // httparse let through only what HTTP/1.1 allows; HTTP/2 is
        // stricter on names (no upper case: `from_bytes` lowers it).
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(buf.slice(f.value.clone())),
        ) else {
            continue;
        };
        fields.append(name, value);
    }
    response
}

/// A request h2 let through that gale does not pass on (or cannot now:
/// without `room` in the listener's `max_buffer_mb`): `None` if it may
/// go to a backend.
pub(super) fn refusal(head: &http::request::Parts, ended: bool, room: bool) -> Option<HttpReply> {
    if !room {
        return Some(HttpReply {
            status: 503,
            text: head::Refusal::Overloaded.text(),
            retry_after: true,
        });
    }
    let bad = |text| {
        Some(HttpReply {
            status: 400,
            text,
            retry_after: false,
        })
    };
    if head.method == Method::CONNECT {
        return Some(HttpReply {
            status: 501,
            text: "CONNECT is not supported\n",
            retry_after: false,
        });
    }
    // The rules gale's HTTP/1 engine holds (`headers::framing_lookalike`):
    // a `content_length` beside the framing gale writes could frame the
    // body another way for a CGI-style backend.
    if head
        .headers
        .keys()
        .any(|k| headers::framing_lookalike(k.as_str().as_bytes()))
    {
        return bad(headers::LOOKALIKE_REFUSED);
    }
    // h2 refuses conflicting lengths only.
    if head.headers.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return bad("two Content-Length fields\n");
    }
    // gale writes the length it parsed (h2 takes an empty one for 0), and
    // a body announced but ended with the headers would leave a backend
    // waiting for it.
    match head.headers.get(CONTENT_LENGTH).map(content_length) {
        Some(None) => return bad("malformed Content-Length\n"),
        Some(Some(n)) if ended && n > 0 => return bad("Content-Length without a body\n"),
        _ => {}
    }
    if head.method.as_str().len() > crate::http::MAX_METHOD_LEN {
        return Some(HttpReply {
            status: 501,
            text: "method too long\n",
            retry_after: false,
        });
    }
    // `user:password@host`: an error (RFC 9113 §8.3.1), and a password
    // that would go on to the backend and into the access log.
    if host(head).contains(&b'@') {
        return bad("userinfo in the request's host\n");
    }
    // An absolute-form `:path` would reach an HTTP/1.1 backend as a
    // target whose authority it routes by (RFC 9112 §3.2.2), past the
    // host the balancer, `Host` and `Forwarded` name.
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if !(target.starts_with('/') || target == "*" && head.method == Method::OPTIONS) {
        return bad("the request target must be a path\n");
    }
    // What the HTTP/1 engine allows: with `Host` and the three proxy
    // fields gale writes, at most `MAX_HEADERS` (cookies go as one).
    if forwarded_fields(head) > crate::http::MAX_HEADERS - 4 {
        return Some(HttpReply {
            status: 431,
            text: "too many request header fields\n",
            retry_after: false,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> ClientOrigin {
        ClientOrigin::new("192.0.2.7:5000".parse().unwrap(), true)
    }

    #[test]
    fn a_request_becomes_an_http11_head_with_proxy_fields() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://mail.test/track?id=1")
            .header("cookie", "a=1")
            .header("x-real-ip", "10.0.0.1")
            .header("te", "trailers")
            .header("expect", "100-continue")
            .header("cookie", "b=2")
            .header("x-forwarded-for", "198.51.100.1")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (head, ()) = req.into_parts();
        let mut out = Vec::new();
        let body = request_body(&head, false);
        write_request(&mut out, &head, "/track?id=1", host(&head), body, &origin());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /track?id=1 HTTP/1.1\r\nhost: mail.test\r\naccept: */*\r\n\
             cookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\
             x-forwarded-for: 198.51.100.1, 192.0.2.7\r\nx-forwarded-proto: https\r\n\
             forwarded: for=192.0.2.7;proto=https;host=\"mail.test\"\r\n\r\n"
        );
    }

    #[test]
    fn a_response_keeps_its_fields_but_the_framing_and_hop_by_hop_ones() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
            Transfer-Encoding: chunked\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\
            Set-Cookie: b=2\r\nKeep-Alive: timeout=5\r\n\r\n";
        let mut resp = head::Response::default();
        assert!(head::parse_response(raw, false, &mut resp).unwrap());
        let response = response(&Bytes::from_static(raw), &resp);
        assert_eq!(response.status(), 200);
        let names: Vec<_> = response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["set-cookie"]);
        assert_eq!(response.headers().get_all("set-cookie").iter().count(), 2);
    }

    /// A request as h2 hands over one without `:authority` (with `Host`
    /// instead): its `:path` taken as it came. `None` where h2 could not
    /// build it either (it resets such a stream itself).
    fn parts(method: &str, path: &str, fields: &[(&str, &str)]) -> Option<http::request::Parts> {
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = Some(http::uri::PathAndQuery::try_from(path).ok()?);
        let mut request = http::Request::builder()
            .method(method)
            .uri(http::Uri::from_parts(uri).ok()?)
            .header("host", "mail.test");
        for (name, value) in fields {
            request = request.header(*name, *value);
        }
        Some(request.body(()).ok()?.into_parts().0)
    }

    fn status(head: Option<http::request::Parts>, ended: bool) -> Option<u16> {
        let head = head.expect("a request h2 hands over");
        refusal(&head, ended, true).map(|r| r.status)
    }

    #[test]
    fn only_a_path_goes_to_a_backend_as_the_target() {
        assert_eq!(status(parts("GET", "/open?id=1", &[]), true), None);
        // The backend would route by this authority, not the host gale
        // and its balancer saw: refused here if h2 lets it through.
        for (method, path) in [
            ("GET", "http://admin.internal/x"),
            ("GET", "*"),
            ("OPTIONS", "x"),
        ] {
            if let Some(head) = parts(method, path, &[]) {
                assert_eq!(status(Some(head), true), Some(400), "{method} {path}");
            }
        }
    }

    #[test]
    fn a_length_must_be_a_number_and_match_an_ended_stream() {
        assert_eq!(
            status(parts("POST", "/", &[("content-length", "0")]), true),
            None
        );
        assert_eq!(
            status(parts("POST", "/", &[("content-length", "5")]), false),
            None
        );
        assert_eq!(
            status(parts("POST", "/", &[("content-length", "5")]), true),
            Some(400)
        );
        assert_eq!(
            status(parts("POST", "/", &[("content-length", "")]), false),
            Some(400)
        );
        assert_eq!(
            status(parts("POST", "/", &[("content-length", "+5")]), false),
            Some(400)
        );
    }

    #[test]
    fn fields_past_what_the_http1_engine_takes_are_refused() {
        let names: Vec<String> = (0..97).map(|i| format!("x-field-{i}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        // Host and 95 more go; Host and 96 more do not.
        assert_eq!(status(parts("GET", "/", &fields[..95]), true), None);
        assert_eq!(status(parts("GET", "/", &fields[..96]), true), Some(431));
        // Cookies go as one field.
        let mut cookies = fields[..94].to_vec();
        cookies.extend([("cookie", "a=1"); 10]);
        assert_eq!(status(parts("GET", "/", &cookies), true), None);
    }
}
