//! The live status page at `GET /`: one HTML file with its style and
//! script inline (no external assets, so it works on a closed network)
//! that reads `/status` every second and redraws.
//!
//! With a token in the config the page is behind it too. A browser
//! cannot send a bearer header when it navigates, so the 401 answer to a
//! page request is a form that keeps the token in a same-site cookie, and
//! that cookie authorizes reads (GET, HEAD) only: a page elsewhere cannot
//! make the browser steer a backend with it.

use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};

use super::{Reply, text};

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
/// The cookie the login form sets.
const TOKEN_COOKIE: &str = "gale_admin_token";

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

/// The token the login form stored, if the request carries it.
pub fn cookie_token(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == TOKEN_COOKIE).then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
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
