//! What the fuzz targets check, one function per target. Each takes the
//! fuzzer's bytes, feeds them to one of gale's parsers the way a peer
//! would, and panics (a crash, to libFuzzer) when a property gale relies
//! on does not hold. Not panicking on any input is the first property of
//! them all.
//!
//! `fuzz_targets/*.rs` are one line each; `tests/regressions.rs` replays
//! the seeds and every input that once failed through these functions.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use arbitrary::{Arbitrary, Unstructured};
use gale::config::{Config, ConfigError, ProxyProtocol};
use gale::http::h1::chunked::Chunked;
use gale::http::h1::head::{Framing, Request, parse_request, write_request};
use gale::http::headers::ClientOrigin;
use gale::plugin::types::{DnsRecord, RecordType};
use gale::smtp::proxy_header;
use gale::smtp::reply::{self, MAX_REPLY, Parsed};
use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncRead, ReadBuf};

/// The config parser and validator: any text is a config or an error that
/// names the file, a line inside it and a key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("fuzz/gale.toml"), text) {
        Ok(_) => {}
        Err(ConfigError::Invalid {
            file,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(file, Path::new("fuzz/gale.toml"));
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&line) && column >= 1,
                "{line}:{column} is not in a text of {lines} lines"
            );
            assert!(
                !key.is_empty() && !message.is_empty(),
                "{key:?}: {message:?}"
            );
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parsing text read a file: {e}"),
    }
}

/// The SMTP reply reader: `parse` on the whole input and `read_reply` on
/// the same bytes arriving in pieces agree, and a complete reply is a
/// well-formed prefix of at most `MAX_REPLY` bytes.
pub fn smtp_reply(data: &[u8]) {
    let whole = reply::parse(data);
    if let Ok(Parsed::Complete { code, len }) = whole {
        assert!(len <= data.len() && len <= MAX_REPLY, "{len}");
        assert_eq!(data[len - 1], b'\n');
        assert!((200..=599).contains(&code));
        assert_eq!(&data[..3], code.to_string().as_bytes());
        assert_eq!(reply::parse(&data[..len]), whole);
    }
    let step = data.first().map_or(1, |&b| usize::from(b % 64) + 1);
    let mut pieces = Pieces { data, step };
    let read = RUNTIME.block_on(reply::read_reply(&mut pieces));
    match (whole, read) {
        (Ok(Parsed::Complete { code, len }), Ok(r)) => {
            assert_eq!((r.code, &r.raw[..]), (code, &data[..len]));
            assert!(data[len..].starts_with(&r.rest));
        }
        (Ok(Parsed::Incomplete), Err(reply::ReplyError::Closed)) | (Err(_), Err(_)) => {}
        (whole, read) => panic!("whole: {whole:?}, in pieces of {step}: {read:?}"),
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
});

/// A peer that sends `data` `step` bytes at a time, then closes.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Arbitrary)]
struct Proxied {
    v2: bool,
    probe: bool,
    client: SocketAddr,
    local: SocketAddr,
    /// A TLS client, and the name it asked for (at most 253 bytes kept,
    /// as rustls allows no longer).
    tls: Option<Option<String>>,
}

/// The PROXY header encoder, round-tripped through `ppp`'s decoder: the
/// backend reads back the addresses gale meant (IPv4 mapped into IPv6 when
/// the two sides differ in family).
pub fn proxy_header(data: &[u8]) {
    let Ok(p) = Proxied::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let kind = if p.v2 {
        ProxyProtocol::V2
    } else {
        ProxyProtocol::V1
    };
    let tls = p.tls.as_ref().map(|sni| gale::tls::Summary {
        version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        sni: sni.as_ref().map(|s| {
            let mut end = s.len().min(253);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Box::from(&s[..end])
        }),
    });
    let bytes = if p.probe {
        proxy_header::for_probe(kind, p.client, p.local)
    } else {
        proxy_header::for_client(kind, p.client, p.local, tls.as_ref())
    };
    let (src, dst) = same_family(p.client, p.local);
    if p.v2 {
        let h = ppp::v2::Header::try_from(&bytes[..]).expect("a v2 header decodes");
        assert_eq!(h.len(), bytes.len());
        if p.probe {
            assert_eq!(h.command, ppp::v2::Command::Local);
            assert_eq!(h.addresses, ppp::v2::Addresses::Unspecified);
        } else {
            assert_eq!(h.command, ppp::v2::Command::Proxy);
            assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
            assert_eq!(h.addresses, ppp::v2::Addresses::from((src, dst)));
            let tlvs: Vec<_> = h.tlvs().map(|t| t.expect("a TLV decodes")).collect();
            let authority = tlvs
                .iter()
                .find(|t| t.kind == ppp::v2::Type::Authority as u8)
                .map(|t| t.value.to_vec());
            match &tls {
                None => assert!(tlvs.is_empty()),
                Some(tls) => {
                    assert_eq!(tlvs[0].kind, ppp::v2::Type::SSL as u8);
                    let sni = tls.sni.as_deref().map(|s| s.as_bytes().to_vec());
                    assert_eq!(authority, sni);
                }
            }
        }
    } else {
        // 107 bytes is the longest v1 line a receiver must accept.
        assert!(bytes.len() <= 107, "{}", String::from_utf8_lossy(&bytes));
        let h = ppp::v1::Header::try_from(&bytes[..]).expect("a v1 header decodes");
        assert_eq!(h.header.len(), bytes.len());
        let want = match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                ppp::v1::Addresses::new_tcp6(*s.ip(), *d.ip(), s.port(), d.port())
            }
            mixed => panic!("addresses of two families: {mixed:?}"),
        };
        assert_eq!(h.addresses, want);
    }
}

/// Both addresses in one family: IPv4 mapped into IPv6 when they differ.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    (v6(a), v6(b))
}

/// The HTTP/1 request path: a head gale accepts, rewritten for the
/// backend, parses again to the same method, target, host and body
/// framing (so gale and the backend cannot disagree on where a request
/// ends: no smuggling), carries no field in which the client speaks for
/// the proxy, and a chunked body is scanned without overrun.
pub fn http_request(data: &[u8]) {
    let mut req = Request::default();
    match parse_request(data, &mut req) {
        Ok(true) => {}
        // More bytes needed (the connection bounds how many).
        Ok(false) => return,
        Err(refusal) => {
            let (code, _) = refusal.status();
            assert!(matches!(code, 400 | 431 | 501), "{refusal:?}");
            return;
        }
    }
    assert!(req.len <= data.len());
    let peer = ClientOrigin::new("192.0.2.1:40000".parse().unwrap(), false);
    let backend: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut out = Vec::new();
    write_request(&mut out, data, &req, &peer, backend);
    let shown = || String::from_utf8_lossy(&out).into_owned();
    // A backend that holds requests to gale's own limits reads it whole.
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut backend_view = httparse::Request::new(&mut fields);
    assert_eq!(
        backend_view.parse(&out).map_err(|e| e.to_string()),
        Ok(httparse::Status::Complete(out.len())),
        "{}",
        shown()
    );
    // What the backend reads about the client is what gale wrote: no
    // field in which a client speaks for the proxy, one
    // X-Forwarded-Proto; and one way to frame the body, with no
    // `Content_Length` a CGI-style backend would frame it by instead.
    let names: Vec<String> = backend_view
        .headers
        .iter()
        .map(|h| h.name.to_ascii_lowercase())
        .collect();
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    for claim in ["x-real-ip", "x-forwarded-host", "true-client-ip"] {
        assert_eq!(count(claim), 0, "{claim} in {}", shown());
    }
    assert_eq!(count("x-forwarded-proto"), 1, "{}", shown());
    assert!(count("content-length") <= 1, "{}", shown());
    assert!(
        !names.iter().any(|n| n.contains('_')
            && ["content-length", "transfer-encoding"].contains(&n.replace('_', "-").as_str())),
        "{}",
        shown()
    );
    // Without the three fields gale appends, it is a request gale itself
    // would take, and means what the client's did.
    let ours = find(&out, b"\r\nx-forwarded-for: ").expect("X-Forwarded-For") + 2;
    let mut theirs = out[..ours].to_vec();
    theirs.extend_from_slice(b"\r\n");
    let out = theirs;
    let mut again = Request::default();
    assert_eq!(parse_request(&out, &mut again), Ok(true), "{}", shown());
    assert_eq!(again.len, out.len(), "{}", shown());
    assert_eq!(out[again.method.clone()], data[req.method.clone()]);
    // Origin form: what an absolute-form target had after its authority,
    // with the path `/` when it had none.
    let mut target = data[req.target.clone()].to_vec();
    if !target.starts_with(b"/") && target != b"*" {
        target.insert(0, b'/');
    }
    assert_eq!(out[again.target.clone()], target, "{}", shown());
    let host = match &req.host {
        Some(h) => data[h.clone()].to_vec(),
        None => backend.to_string().into_bytes(),
    };
    assert_eq!(again.host.map(|h| out[h].to_vec()), Some(host));
    assert_eq!(again.body, req.body, "{}", shown());
    assert!(!again.http10);

    if req.body == Framing::Chunked {
        let body = &data[req.len..];
        let mut chunked = Chunked::default();
        let mut end = 0;
        let used = chunked.scan(body, |r| {
            assert!(r.start >= end && r.end <= body.len(), "{r:?} after {end}");
            end = r.end;
        });
        if let Ok(used) = used {
            assert!(used <= body.len() && end <= used);
            assert!(chunked.done() || used == body.len());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A config with an embedded DNS zone, and the records it answers with.
static ZONE: LazyLock<(Config, Vec<DnsRecord>)> = LazyLock::new(|| {
    let text = r#"
[listeners.smtp]
protocol = "smtp"
address = "127.0.0.1:2525"
pool = "mta"

[pools.mta]
backends = [{ name = "a", address = "127.0.0.1:2601" }]

[dns]
zone = "example.test."
name = "mx.example.test."
pool = "mta"
"#;
    let config = Config::parse(Path::new("zone.toml"), text).expect("the zone config is valid");
    let record = |rtype, value: &str, weight| DnsRecord {
        name: "mx.example.test.".into(),
        rtype,
        value: value.into(),
        ttl: 30,
        weight,
        set_id: value.into(),
    };
    let records = vec![
        record(RecordType::A, "192.0.2.1", 10),
        record(RecordType::A, "192.0.2.2", 1),
        record(RecordType::Aaaa, "2001:db8::1", 5),
    ];
    (config, records)
});

/// The embedded DNS server: any message gets a reply that parses, carries
/// the query's id and, over UDP, fits the size the query offered (512
/// bytes without EDNS, at most 1232), or no reply at all when it is not a
/// query (QR=1 included: answering responses makes reflection loops). The
/// truncated reply a rate-limited client gets instead is never larger
/// than its query and carries no records.
pub fn dns_message(data: &[u8]) {
    let (config, records) = &*ZONE;
    let response = data.len() >= 3 && data[2] & 0x80 != 0;
    // What the query offered, if it parses; a malformed one gets a bare
    // header.
    let offered = Message::from_vec(data).ok().map_or(512, |m| {
        m.edns.map_or(512, |e| e.max_payload().clamp(512, 1232))
    });
    for udp in [true, false] {
        let Some(bytes) = gale::dns::embedded::answer(data, udp, config.dns.as_ref(), records)
        else {
            continue;
        };
        assert!(!response, "a response (QR=1) was answered");
        let reply = Message::from_vec(&bytes).expect("gale's reply parses");
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]));
        if udp {
            assert!(
                bytes.len() <= usize::from(offered),
                "{} bytes over UDP, {offered} offered",
                bytes.len()
            );
        }
    }
    if let Some(bytes) = gale::dns::embedded::slip(data) {
        assert!(!response, "a response (QR=1) was slipped");
        assert!(bytes.len() <= data.len(), "slipped {} bytes", bytes.len());
        let reply = Message::from_vec(&bytes).expect("a slipped reply parses");
        assert!(reply.metadata.truncation && reply.answers.is_empty());
        assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    }
}
