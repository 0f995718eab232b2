//! The live status page at `GET /`: one HTML file with its style and
//! script inline (no external assets, so it works on a closed network)
//! that reads `/status` every second and redraws.
//!
//! With a token in the config the page is behind it too. A browser
//! cannot send a bearer header when it navigates, so the 401 answer to a
//! page request is a form that sends the token once to `POST /login`,
//! which sets an HttpOnly, same-site cookie holding a value derived from
//! the token (not the token: no script can read it, and it is no bearer
//! token if it leaks). The cookie opens reads (GET, HEAD) only, so a page
//! elsewhere cannot make the browser steer a backend with it, and it
//! expires after `READ_COOKIE_MAX_AGE`. It has no `Secure` flag: the admin
//! listener serves plain HTTP only (no TLS in `[admin]`), where a browser
//! would not send a `Secure` cookie back. Put a TLS proxy in front to
//! reach it over an untrusted network.

use hyper::body::Incoming;
use hyper::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, HeaderValue, SET_COOKIE, WWW_AUTHENTICATE,
};
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};

use super::{Reply, text};

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
/// The cookie `POST /login` sets.
const READ_COOKIE: &str = "gale_read";
/// Seconds the read cookie lasts (12 hours, an operator's working day):
/// a browser left logged in does not keep reading the status for good.
const READ_COOKIE_MAX_AGE: u32 = 12 * 60 * 60;

/// Nothing but the page's own inline style and script and reads of
/// `/status` on the same origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The status page.
pub fn page() -> Reply {
    html(StatusCode::OK, PAGE)
}

/// The answer to a page request without the token: a form asking for it.
pub fn login() -> Reply {
    let mut reply = html(StatusCode::UNAUTHORIZED, LOGIN);
    reply
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    reply
}

fn html(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = text(status, body);
    let headers = reply.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    reply
}

/// The read cookie's value for `token`, good until `expires` (UNIX
/// seconds): `EXPIRES.MAC`, the MAC a one-way function of the token and
/// the expiry, so that gale holds the expiry too (`Max-Age` is only the
/// browser's) and a cookie cannot be made to last longer. The expiry is
/// hashed as 8 bytes after a 32-byte key: every input has the same
/// length, which leaves SHA-256 no length extension to exploit.
fn read_value(token: &str, expires: u64) -> String {
    let key = Sha256::digest(format!("gale admin read cookie\0{token}"));
    let mac = Sha256::new()
        .chain_update(key)
        .chain_update(expires.to_be_bytes())
        .finalize();
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{expires}.{hex}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The answer to `POST /login` (the bearer token already checked): the
/// read cookie.
pub fn logged_in(token: Option<&str>) -> Reply {
    let mut reply = text(StatusCode::NO_CONTENT, "");
    if let Some(token) = token {
        let cookie = format!(
            "{READ_COOKIE}={}; Max-Age={READ_COOKIE_MAX_AGE}; HttpOnly; SameSite=Strict; Path=/",
            read_value(token, unix_now() + u64::from(READ_COOKIE_MAX_AGE))
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(SET_COOKIE, value);
        }
    }
    reply
}

/// Whether the request carries an unexpired read cookie of `token`.
pub fn has_read_cookie(req: &Request<Incoming>, token: &str) -> bool {
    let now = unix_now();
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|&(name, _)| name == READ_COOKIE)
        .any(|(_, value)| {
            let expires = value
                .split_once('.')
                .and_then(|(expires, _)| expires.parse::<u64>().ok());
            expires.is_some_and(|expires| {
                expires > now
                    && super::constant_time_eq(
                        value.as_bytes(),
                        read_value(token, expires).as_bytes(),
                    )
            })
        })
}

/// Whether the request names this machine by address or as localhost.
/// Without a token the admin API is on loopback, and any other name in
/// `Host` means a page whose name was made to resolve to 127.0.0.1 (DNS
/// rebinding): same-origin with itself, so `Origin` does not tell.
pub fn local_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(HOST) else {
        // HTTP/1.0 without Host: not a browser.
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// A browser request made by a page of another origin (it sends
/// `Origin`; curl and other clients do not). Refused for anything that
/// changes state, so that a page elsewhere cannot drain a backend
/// through an operator's browser, token or not.
pub fn cross_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get("origin") else {
        return false;
    };
    let host = req.headers().get(hyper::header::HOST);
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(|h| h.to_str())) else {
        return true;
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}
