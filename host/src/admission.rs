//! Who may open a session on a listener, and how often: the `allow` and
//! `deny` networks and `client_rate` new sessions a second per client,
//! checked on accept, before the session has a task and before any
//! backend is touched, so that a refused client costs one reply and a
//! close. gale is the one address every sender touches: this is where an
//! operator keeps out a network or slows down a client that opens
//! sessions in a loop.
//!
//! `deny` is checked first, then `allow` (when set, only its networks may
//! connect), then the client's rate. Clients count by address, an IPv6
//! client by its /64 (as `max_sessions_per_client`); the buckets live in
//! the listener's accept loop ([`crate::rate`], bounded), so a reload
//! that changes the rate keeps what each client has spent.
//!
//! A refused SMTP client gets `554 5.7.1` for `allow`/`deny` (`421 4.7.0`
//! with `deny_reply = 421`) and `421 4.7.0` for the rate; an HTTP client
//! `403` or `429` with `Retry-After`; a tcp client a close, and so does a
//! client of an HTTPS or SMTPS listener (the reply would first need a
//! handshake).

use std::net::IpAddr;
use std::time::Instant;

use crate::config::{Admission, DenyReply, ListenerConfig, Protocol};
use crate::rate::Buckets;

/// Why a client was refused: the `reason` label of
/// `gale_admission_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In `deny`, or not in a set `allow`.
    Denied,
    /// Over `client_rate`.
    Rate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "deny",
            Refusal::Rate => "rate",
        }
    }
}

/// Whether `ip` (canonical: IPv4 as IPv4) may open a session now; a
/// session admitted takes a token from its client's bucket in `rates`,
/// under `client`'s key (its address, or its /64).
pub fn check(
    admission: &Admission,
    rates: &mut Buckets<IpAddr>,
    ip: IpAddr,
    client: IpAddr,
    now: Instant,
) -> Result<(), Refusal> {
    let denied = admission.deny.iter().any(|net| net.contains(&ip))
        || (!admission.allow.is_empty() && !admission.allow.iter().any(|net| net.contains(&ip)));
    if denied {
        return Err(Refusal::Denied);
    }
    rates
        .take(admission.rate, client, now)
        .map_err(|_| Refusal::Rate)
}

/// What listener `l` writes to a client it refused before closing, with
/// the code it counts (`None`: it only closes).
pub fn reply(l: &ListenerConfig, refusal: Refusal) -> Option<(u16, String)> {
    let host = &l.hostname;
    match (l.protocol, refusal) {
        // A reply would first need a handshake (HTTPS, SMTPS).
        _ if l.tls.is_some() => None,
        (Protocol::Smtp, Refusal::Denied) => Some(match l.admission.deny_reply {
            DenyReply::Reject => (554, format!("554 5.7.1 {host} Access denied\r\n")),
            DenyReply::Defer => (
                421,
                format!("421 4.7.0 {host} Access denied, try again later\r\n"),
            ),
        }),
        (Protocol::Smtp, Refusal::Rate) => Some((
            421,
            format!("421 4.7.0 {host} Too many new sessions from your address, slow down\r\n"),
        )),
        (Protocol::Http, Refusal::Denied) => {
            Some((403, http_reply("403 Forbidden", "", "forbidden\n")))
        }
        (Protocol::Http, Refusal::Rate) => Some((
            429,
            http_reply(
                "429 Too Many Requests",
                "retry-after: 1\r\n",
                "too many new connections from your address\n",
            ),
        )),
        (Protocol::Tcp, _) => None,
    }
}

fn http_reply(status: &str, fields: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{fields}connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::RateLimit;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(allow: &[&str], deny: &[&str], per_second: u32) -> Admission {
        Admission {
            allow: allow.iter().map(|n| n.parse().unwrap()).collect(),
            deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
            deny_reply: DenyReply::Reject,
            rate: RateLimit {
                per_second,
                burst: per_second,
            },
        }
    }

    #[test]
    fn deny_wins_over_allow_and_allow_keeps_everyone_else_out() {
        let rules = admission(&["192.0.2.0/24", "2001:db8::/32"], &["192.0.2.128/25"], 0);
        let mut rates = Buckets::default();
        let now = Instant::now();
        let verdict =
            |rates: &mut Buckets<IpAddr>, s: &str| check(&rules, rates, ip(s), ip(s), now);
        assert_eq!(verdict(&mut rates, "192.0.2.1"), Ok(()));
        assert_eq!(verdict(&mut rates, "2001:db8:5::1"), Ok(()));
        assert_eq!(verdict(&mut rates, "192.0.2.200"), Err(Refusal::Denied));
        assert_eq!(verdict(&mut rates, "198.51.100.1"), Err(Refusal::Denied));
        assert_eq!(verdict(&mut rates, "2001:db9::1"), Err(Refusal::Denied));
        // No allow list: only deny refuses.
        let open = admission(&[], &["198.51.100.0/24"], 0);
        assert_eq!(
            check(&open, &mut rates, ip("203.0.113.9"), ip("203.0.113.9"), now),
            Ok(())
        );
        assert_eq!(
            check(
                &open,
                &mut rates,
                ip("198.51.100.7"),
                ip("198.51.100.7"),
                now
            ),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn a_network_written_ipv4_mapped_matches_ipv4_clients() {
        let toml = "[listeners.in]\nprotocol = \"smtp\"\naddress = \"127.0.0.1:0\"\npool = \"p\"\n\
                    deny = [\"::ffff:192.0.2.0/120\"]\n[pools.p]\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), toml).unwrap();
        let rules = &config.listeners[0].admission;
        let mut rates = Buckets::default();
        let now = Instant::now();
        let client = ip("192.0.2.9");
        assert_eq!(
            check(rules, &mut rates, client, client, now),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn the_rate_counts_per_client_key() {
        let rules = admission(&[], &[], 2);
        let mut rates = Buckets::default();
        let now = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(check(&rules, &mut rates, a, a, now), Ok(()));
        assert_eq!(check(&rules, &mut rates, a, a, now), Ok(()));
        assert_eq!(check(&rules, &mut rates, a, a, now), Err(Refusal::Rate));
        assert_eq!(check(&rules, &mut rates, b, b, now), Ok(()));
        // A denied client spends no token.
        let strict = admission(&[], &["192.0.2.2/32"], 2);
        assert_eq!(check(&strict, &mut rates, b, b, now), Err(Refusal::Denied));
        assert_eq!(check(&rules, &mut rates, b, b, now), Ok(()));
    }
}
