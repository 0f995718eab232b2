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
//! elsewhere cannot make the browser steer a backend with it.

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

/// The read cookie's value for `token`: a one-way function of it.
fn read_value(token: &str) -> String {
    let digest = Sha256::digest(format!("gale admin read cookie\0{token}"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer to `POST /login` (the bearer token already checked): the
/// read cookie.
pub fn logged_in(token: Option<&str>) -> Reply {
    let mut reply = text(StatusCode::NO_CONTENT, "");
    if let Some(token) = token {
        let cookie = format!(
            "{READ_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            read_value(token)
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            reply.headers_mut().insert(SET_COOKIE, value);
        }
    }
    reply
}

/// Whether the request carries the read cookie of `token`.
pub fn has_read_cookie(req: &Request<Incoming>, token: &str) -> bool {
    let wanted = read_value(token);
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| {
            name == READ_COOKIE && super::constant_time_eq(value.as_bytes(), wanted.as_bytes())
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
