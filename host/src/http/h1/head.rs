//! HTTP/1.x message heads: parsed in place (httparse) into ranges of the
//! connection's read buffer, then rewritten for the next hop with the
//! proxy rules of RFC 9110 §7.6 (hop-by-hop fields dropped, the client
//! named in `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded`, `Host`
//! kept) and the framing rules of RFC 9112 §6.

use std::io::Write;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::super::headers::{self, ClientOrigin};
use super::super::{MAX_HEADER_BYTES, MAX_HEADERS};

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// No body.
    #[default]
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Why a request head was refused; each maps to a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed(&'static str),
    TooLarge,
    TimedOut,
    BodyTimedOut,
    NotImplemented(&'static str),
    /// The listener's connections hold `max_buffer_mb` already.
    Overloaded,
}

impl Refusal {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::Malformed(_) => (400, "Bad Request"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
            Refusal::TimedOut | Refusal::BodyTimedOut => (408, "Request Timeout"),
            Refusal::NotImplemented(_) => (501, "Not Implemented"),
            Refusal::Overloaded => (503, "Service Unavailable"),
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Refusal::Malformed(why) | Refusal::NotImplemented(why) => why,
            Refusal::TooLarge => "request headers too large\n",
            Refusal::TimedOut => "request headers not received in time\n",
            Refusal::BodyTimedOut => "request body not received in time\n",
            Refusal::Overloaded => {
                "gale holds too much data for this listener's clients, try again later\n"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// The fields a proxy treats specially, found in one pass.
#[derive(Debug, Default)]
struct Special {
    content_length: Option<u64>,
    /// `Content-Length` fields seen: a request may have one.
    content_lengths: usize,
    /// A `Content_Length` or `Transfer_Encoding` field seen.
    framing_lookalike: bool,
    chunked: bool,
    /// `Connection: close` / `keep-alive` / `upgrade` seen.
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// A `Connection` field names fields (other than `close` and
    /// `keep-alive`): those are hop-by-hop too. Rare, so the common case
    /// skips the search.
    connection: bool,
}

/// A parsed request head; ranges point into the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct Request {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub method: Range<usize>,
    /// Origin-form target (`/path?query`, or `*`).
    pub target: Range<usize>,
    /// The `Host` field, or the authority of an absolute-form target.
    pub host: Option<Range<usize>>,
    pub http10: bool,
    pub fields: Vec<Field>,
    pub body: Framing,
    /// Whether the client wants the connection kept after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The `Upgrade` field's value when the client opens a WebSocket
    /// (RFC 6455 §4.1: GET over HTTP/1.1, `Connection: upgrade`,
    /// `Upgrade: websocket`, no body).
    pub upgrade: Option<Range<usize>>,
    connection: bool,
}

/// A parsed response head.
#[derive(Debug, Default)]
pub struct Response {
    pub len: usize,
    pub code: u16,
    pub reason: Range<usize>,
    pub fields: Vec<Field>,
    pub body: Framing,
    /// Whether the backend keeps the connection open after the body.
    pub reusable: bool,
    connection: bool,
}

impl Response {
    /// Whether the field `name` of this head (parsed from `buf`) stays on
    /// its hop: hop-by-hop, or named by a `Connection` field.
    pub fn hop_by_hop(&self, buf: &[u8], name: &[u8]) -> bool {
        dropped(buf, &self.fields, self.connection, name)
    }
}

/// Where `part` lies in `buf`. httparse hands back slices of the buffer,
/// except for some empty ones (a status line without a reason phrase is a
/// static ""): those are the empty range.
fn range(buf: &[u8], part: &[u8]) -> Range<usize> {
    let (start, base) = (part.as_ptr() as usize, buf.as_ptr() as usize);
    match start.checked_sub(base) {
        Some(offset) if offset + part.len() <= buf.len() && !part.is_empty() => {
            offset..offset + part.len()
        }
        _ => 0..0,
    }
}

fn fields(buf: &[u8], headers: &[httparse::Header<'_>], out: &mut Vec<Field>) {
    out.clear();
    out.extend(headers.iter().map(|h| Field {
        name: range(buf, h.name.as_bytes()),
        value: range(buf, h.value),
    }));
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// One pass over the fields for framing and connection management.
fn special(buf: &[u8], fields: &[Field]) -> Result<Special, &'static str> {
    let mut s = Special::default();
    for f in fields {
        let (name, value) = (&buf[f.name.clone()], &buf[f.value.clone()]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("invalid Content-Length\n")?;
            if s.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length fields\n");
            }
            s.content_length = Some(n);
            s.content_lengths += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides whether the body is chunked.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            s.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            if !s.chunked {
                return Err("a Transfer-Encoding must end in chunked\n");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            s.connection |= value.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                !(t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive"))
            });
            s.close |= lists(value, "close");
            s.keep_alive |= lists(value, "keep-alive");
            s.upgrade |= lists(value, "upgrade");
        } else {
            s.framing_lookalike |= headers::framing_lookalike(name);
        }
    }
    Ok(s)
}

/// Fields `write_request` may add to a request.
const PROXY_FIELDS: usize = 3;

/// Parse a request head at the start of `buf`: `Ok(false)` when more
/// bytes are needed.
pub fn parse_request(buf: &[u8], req: &mut Request) -> Result<bool, Refusal> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(Refusal::Malformed("unsupported HTTP version\n"));
        }
        Err(_) => return Err(Refusal::Malformed("malformed request\n")),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refusal::Malformed("malformed request\n"));
    };
    // Exact limits on what is forwarded: a head read in one large read
    // may pass the buffer check, and gale adds up to three fields
    // (X-Forwarded-For, X-Forwarded-Proto, Forwarded) that must still fit
    // the limit it holds clients to.
    if len > MAX_HEADER_BYTES || parsed.headers.len() > MAX_HEADERS - PROXY_FIELDS {
        return Err(Refusal::TooLarge);
    }
    fields(buf, parsed.headers, &mut req.fields);
    let s = special(buf, &req.fields).map_err(Refusal::Malformed)?;
    // Equal values frame the body one way for gale, but RFC 9110 §8.6
    // leaves a recipient free to refuse them or merge them, and a backend
    // that does neither the way gale does would frame it another way.
    if s.content_lengths > 1 {
        return Err(Refusal::Malformed("more than one Content-Length\n"));
    }
    if s.framing_lookalike {
        return Err(Refusal::Malformed(headers::LOOKALIKE_REFUSED));
    }
    if method.len() > crate::http::MAX_METHOD_LEN {
        return Err(Refusal::NotImplemented("method too long\n"));
    }
    req.len = len;
    req.method = range(buf, method.as_bytes());
    req.http10 = minor == 0;
    req.connection = s.connection;
    req.keep_alive = if req.http10 { s.keep_alive } else { !s.close };
    if method == "CONNECT" {
        return Err(Refusal::NotImplemented("CONNECT is not supported\n"));
    }
    req.body = match (s.chunked, s.content_length) {
        // Both would let gale and the backend disagree on where the body
        // ends (request smuggling, RFC 9112 §6.3).
        (true, Some(_)) => {
            return Err(Refusal::Malformed(
                "both Transfer-Encoding and Content-Length\n",
            ));
        }
        (true, None) if req.http10 => {
            return Err(Refusal::Malformed("Transfer-Encoding in HTTP/1.0\n"));
        }
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    let mut hosts = req
        .fields
        .iter()
        .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"host"));
    req.host = hosts.next().map(|f| f.value.clone());
    if hosts.next().is_some() {
        return Err(Refusal::Malformed("more than one Host\n"));
    }
    // Without a Host field gale writes one (from an absolute target, or
    // the backend's address): one field more than the client sent.
    if req.host.is_none() && req.fields.len() > MAX_HEADERS - PROXY_FIELDS - 1 {
        return Err(Refusal::TooLarge);
    }
    // Absolute form (`GET http://host/path`): the authority is the host,
    // the backend gets the origin form.
    let t = target.as_bytes();
    let absolute = ["http://", "https://"].iter().find(|scheme| {
        t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
    });
    req.target = range(buf, t);
    if let Some(scheme) = absolute {
        let rest = &t[scheme.len()..];
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = range(buf, &rest[..end]);
        req.host = Some(authority);
        req.target = range(buf, &rest[end..]);
    } else if !(t.starts_with(b"/") || t == b"*") {
        return Err(Refusal::Malformed("malformed request target\n"));
    }
    if req.host.is_none() && !req.http10 {
        return Err(Refusal::Malformed("HTTP/1.1 request without Host\n"));
    }
    // `user:password@host`: an error (RFC 9110 §4.2.4), and a password
    // that would go on to the backend and into the access log.
    if req
        .host
        .as_ref()
        .is_some_and(|h| buf[h.clone()].contains(&b'@'))
    {
        return Err(Refusal::Malformed("userinfo in the request's host\n"));
    }
    // Only a WebSocket handshake switches: any other upgrade (h2c above
    // all, whose requests would then bypass the balancer and the proxy
    // header rules) is served as a plain request, its `Upgrade` dropped.
    // So is one with a body: the backend would read the body, then
    // switch, and gale could not tell where the new protocol starts.
    let handshake = s.upgrade && !req.http10 && req.body == Framing::Empty && method == "GET";
    req.upgrade = handshake
        .then(|| websocket_upgrade(buf, &req.fields))
        .flatten();
    req.expect_continue = !req.http10
        && req.body != Framing::Empty
        && req.fields.iter().any(|f| {
            buf[f.name.clone()].eq_ignore_ascii_case(b"expect")
                && buf[f.value.clone()].eq_ignore_ascii_case(b"100-continue")
        });
    Ok(true)
}

/// The value of the one `Upgrade` field among `fields` when it names the
/// WebSocket protocol alone; `None` for no such field, another protocol,
/// or two `Upgrade` fields.
fn websocket_upgrade(buf: &[u8], fields: &[Field]) -> Option<Range<usize>> {
    let mut upgrades = fields
        .iter()
        .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"upgrade"));
    match (upgrades.next(), upgrades.next()) {
        (Some(f), None)
            if buf[f.value.clone()]
                .trim_ascii()
                .eq_ignore_ascii_case(b"websocket") =>
        {
            Some(f.value.clone())
        }
        _ => None,
    }
}

/// Whether a `101` switches to what a WebSocket handshake asked for: one
/// `Upgrade: websocket` field.
pub fn switches_to_websocket(buf: &[u8], resp: &Response) -> bool {
    websocket_upgrade(buf, &resp.fields).is_some()
}

/// Parse a response head at the start of `buf` to a request made with
/// `method`: `Ok(false)` when more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    resp: &mut Response,
) -> Result<bool, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(code), Some(minor)) = (parsed.code, parsed.version) else {
        return Err("malformed response head");
    };
    fields(buf, parsed.headers, &mut resp.fields);
    let s = special(buf, &resp.fields).map_err(|e| e.trim_end())?;
    resp.len = len;
    resp.code = code;
    resp.reason = range(buf, parsed.reason.unwrap_or("").as_bytes());
    resp.connection = s.connection;
    resp.body = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        Framing::Empty
    } else if s.chunked {
        Framing::Chunked
    } else if let Some(n) = s.content_length {
        if n == 0 {
            Framing::Empty
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::Close
    };
    resp.reusable = minor == 1 && !s.close && resp.body != Framing::Close;
    Ok(true)
}

/// Whether `name` is hop-by-hop, or named as such by a `Connection` field
/// that may name it (the rules of [`headers`], which the HTTP/2 path
/// follows too). `Transfer-Encoding` is kept: chunked bodies pass through
/// as they are.
fn dropped(buf: &[u8], fields: &[Field], connection: bool, name: &[u8]) -> bool {
    headers::hop_by_hop(name)
        || connection
            && headers::connection_may_name(name)
            && fields
                .iter()
                .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"connection"))
                .any(|f| {
                    buf[f.value.clone()]
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
                })
}

/// Write the request for a backend into `out`: HTTP/1.1, hop-by-hop
/// fields dropped, proxy fields appended. An HTTP/1.0 request without
/// `Host` gets the backend's address as its host.
pub fn write_request(
    out: &mut Vec<u8>,
    buf: &[u8],
    req: &Request,
    origin: &ClientOrigin,
    backend: std::net::SocketAddr,
) {
    out.clear();
    out.extend_from_slice(&buf[req.method.clone()]);
    out.push(b' ');
    // An absolute-form target without a path (`http://host` or
    // `http://host?q`) has the path `/` in origin form (RFC 9112 §3.2.1).
    let target = &buf[req.target.clone()];
    if !target.starts_with(b"/") && target != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let fallback;
    let host = match &req.host {
        Some(h) => &buf[h.clone()],
        None => {
            fallback = backend.to_string();
            fallback.as_bytes()
        }
    };
    field(out, b"host", host);
    let (mut xff, mut forwarded) = (None::<Vec<&[u8]>>, None::<Vec<&[u8]>>);
    for f in &req.fields {
        let (name, value) = (&buf[f.name.clone()], &buf[f.value.clone()]);
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.get_or_insert_default().push(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"forwarded") {
            forwarded.get_or_insert_default().push(value);
            continue;
        }
        if headers::client_claim(name)
            // gale answers `100 Continue` itself.
            || name.eq_ignore_ascii_case(b"expect")
            || dropped(buf, &req.fields, req.connection, name)
        {
            continue;
        }
        // Written first, above.
        if name.eq_ignore_ascii_case(b"host") {
            continue;
        }
        field(out, name, value);
    }
    if let Some(upgrade) = &req.upgrade {
        field(out, b"upgrade", &buf[upgrade.clone()]);
        field(out, b"connection", b"upgrade");
    }
    write_proxy_fields(
        out,
        xff.iter().flatten().copied(),
        forwarded.iter().flatten().copied(),
        origin,
        host,
    );
}

/// End a request head for a backend: the proxy fields naming the client
/// after the values earlier proxies gave (`xff`, `forwarded`), then the
/// blank line. Both engines' request heads end here.
pub fn write_proxy_fields<'a>(
    out: &mut Vec<u8>,
    xff: impl Iterator<Item = &'a [u8]>,
    forwarded: impl Iterator<Item = &'a [u8]>,
    origin: &ClientOrigin,
    host: &[u8],
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for earlier in xff {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    origin.write_ip(out);
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(origin.proto().as_bytes());
    out.extend_from_slice(b"\r\nforwarded: ");
    for earlier in forwarded {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    origin.write_forwarded(out);
    if !host.is_empty() && host.iter().all(|&b| b.is_ascii_graphic() && b != b'"') {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Write a backend's response head for the client into `out`. `close`
/// announces that gale closes the client connection after it;
/// `dechunk` that the body goes to an HTTP/1.0 client as plain bytes.
pub fn write_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &Response,
    close: bool,
    http10: bool,
    dechunk: bool,
) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} ", resp.code);
    out.extend_from_slice(&buf[resp.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for f in &resp.fields {
        let (name, value) = (&buf[f.name.clone()], &buf[f.value.clone()]);
        if dropped(buf, &resp.fields, resp.connection, name)
            || dechunk && name.eq_ignore_ascii_case(b"transfer-encoding")
            // Chunks frame the body: a Content-Length beside them is
            // wrong for the client (and for a dechunked body too).
            || resp.body == Framing::Chunked && name.eq_ignore_ascii_case(b"content-length")
        {
            continue;
        }
        field(out, name, value);
    }
    if resp.code == 101 {
        // Switched: the connection is the new protocol's now.
        for f in &resp.fields {
            if buf[f.name.clone()].eq_ignore_ascii_case(b"upgrade") {
                field(out, b"upgrade", &buf[f.value.clone()]);
            }
        }
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response gale writes itself: a short plain text.
/// `(close, http10)`: whether gale closes the connection after it, and
/// whether the client needs `keep-alive` spelled out otherwise.
pub fn write_local(
    out: &mut Vec<u8>,
    (code, reason): (u16, &str),
    text: &str,
    (close, http10): (bool, bool),
    retry_after: Option<&str>,
) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ndate: {}\r\n",
        text.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    if let Some(secs) = retry_after {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
}

pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
