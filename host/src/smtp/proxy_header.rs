//! PROXY protocol headers (HAProxy's spec, via the `ppp` crate) that carry
//! the client's address to backends that expect them. Health probes send a
//! header too, so the MTA does not wait for one: v2 `LOCAL` (no address),
//! and for v1 the probe connection's own addresses, since Postfix rejects
//! the v1 `UNKNOWN` form.

use std::net::SocketAddr;

use ppp::v2;

use crate::config::ProxyProtocol;

/// The header for a client connection from `client` to gale's `local`.
pub fn for_client(kind: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match kind {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => {
            // v1 needs both addresses in one family; map IPv4 into IPv6
            // when they differ.
            let (src, dst) = same_family(client, local);
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let (src, dst) = same_family(client, local);
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (src, dst),
            )
            .build()
            .unwrap_or_default()
        }
    }
}

/// The header for a connection made on gale's own behalf (health probe)
/// from `local` to `backend`.
pub fn for_probe(kind: ProxyProtocol, local: SocketAddr, backend: SocketAddr) -> Vec<u8> {
    match kind {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => for_client(kind, local, backend),
        ProxyProtocol::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap_or_default(),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_round_trip_through_a_parser() {
        let client: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        let v1 = for_client(ProxyProtocol::V1, client, local);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 2525\r\n");
        let v2 = for_client(ProxyProtocol::V2, client, local);
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client, local)));
        let local_probe = for_probe(ProxyProtocol::V2, local, client);
        let parsed = ppp::v2::Header::try_from(&local_probe[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert!(for_client(ProxyProtocol::None, client, local).is_empty());
    }
}
