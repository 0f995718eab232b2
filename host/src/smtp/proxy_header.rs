//! PROXY protocol headers (HAProxy's spec, via the `ppp` crate) that carry
//! the client's address to backends that expect them. Health probes send a
//! header too, so the MTA does not wait for one: v2 `LOCAL` (no address),
//! and for v1 the probe connection's own addresses, since Postfix rejects
//! the v1 `UNKNOWN` form.
//!
//! A v2 header for a client whose TLS gale terminated carries what its
//! handshake settled, in the TLVs HAProxy sends with `send-proxy-v2-ssl`:
//! `PP2_TYPE_SSL` (client flag `PP2_CLIENT_SSL`, then the version and
//! cipher sub-TLVs, in OpenSSL's names) and the SNI as
//! `PP2_TYPE_AUTHORITY`. Its `verify` field is 0: the spec reads 0 as "a
//! client certificate presented and verified", but gale asks for none and
//! sends 0 as HAProxy does then (OpenSSL's verify result with no
//! certificate is X509_V_OK), so that receivers see the same header from
//! either.

use std::net::SocketAddr;

use ppp::v2;

use crate::config::ProxyProtocol;
use crate::tls::Summary;

/// `PP2_CLIENT_SSL`: the client connected over TLS.
const CLIENT_SSL: u8 = 0x01;

/// The header for a client connection from `client` to gale's `local`;
/// `tls`: what the client's handshake with gale settled (v2 only).
pub fn for_client(
    kind: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<&Summary>,
) -> Vec<u8> {
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
            let builder = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (src, dst),
            );
            match tls {
                None => builder.build(),
                Some(tls) => with_tls(builder, tls).and_then(v2::Builder::build),
            }
            .unwrap_or_default()
        }
    }
}

/// The header for a connection made on gale's own behalf (health probe)
/// from `local` to `backend`.
pub fn for_probe(kind: ProxyProtocol, local: SocketAddr, backend: SocketAddr) -> Vec<u8> {
    match kind {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => for_client(kind, local, backend, None),
        ProxyProtocol::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap_or_default(),
    }
}

/// `builder` with the TLVs that describe the client's TLS.
fn with_tls(builder: v2::Builder, tls: &Summary) -> std::io::Result<v2::Builder> {
    let mut ssl = vec![CLIENT_SSL, 0, 0, 0, 0];
    for (kind, value) in [
        (v2::Type::SSLVersion, tls.version.as_bytes()),
        (v2::Type::SSLCipher, tls.cipher.as_bytes()),
    ] {
        ssl.push(kind as u8);
        ssl.extend_from_slice(&(value.len() as u16).to_be_bytes());
        ssl.extend_from_slice(value);
    }
    let builder = builder.write_tlv(v2::Type::SSL, &ssl)?;
    match &tls.sni {
        // A host name is at most 253 bytes (rustls checks it).
        Some(name) => builder.write_tlv(v2::Type::Authority, name.as_bytes()),
        None => Ok(builder),
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
        let v1 = for_client(ProxyProtocol::V1, client, local, None);
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 2525\r\n");
        let v2 = for_client(ProxyProtocol::V2, client, local, None);
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client, local)));
        let local_probe = for_probe(ProxyProtocol::V2, local, client);
        let parsed = ppp::v2::Header::try_from(&local_probe[..]).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert!(for_client(ProxyProtocol::None, client, local, None).is_empty());
    }

    #[test]
    fn a_tls_client_is_described_in_the_tlvs_haproxy_sends() {
        let client: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:465".parse().unwrap();
        let tls = Summary {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            sni: Some("mx.example.org".into()),
        };
        let v2 = for_client(ProxyProtocol::V2, client, local, Some(&tls));
        let parsed = ppp::v2::Header::try_from(&v2[..]).unwrap();
        assert_eq!(parsed.addresses, ppp::v2::Addresses::from((client, local)));
        let tlvs: Vec<_> = parsed.tlvs().map(Result::unwrap).collect();
        assert_eq!(tlvs.len(), 2, "{tlvs:?}");
        assert_eq!(tlvs[0].kind, v2::Type::SSL as u8);
        let ssl = &tlvs[0].value;
        assert_eq!(
            &ssl[..5],
            &[CLIENT_SSL, 0, 0, 0, 0],
            "client flag, verify 0"
        );
        // Sub-TLVs in the same type-length-value form.
        let mut subs = Vec::new();
        let mut rest = &ssl[5..];
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
            subs.push((rest[0], std::str::from_utf8(&rest[3..3 + len]).unwrap()));
            rest = &rest[3 + len..];
        }
        assert_eq!(
            subs,
            [
                (v2::Type::SSLVersion as u8, "TLSv1.3"),
                (v2::Type::SSLCipher as u8, "TLS_AES_256_GCM_SHA384")
            ]
        );
        assert_eq!(tlvs[1].kind, v2::Type::Authority as u8);
        assert_eq!(&tlvs[1].value[..], b"mx.example.org");
        // v1 has no room for it.
        assert_eq!(
            for_client(ProxyProtocol::V1, client, local, Some(&tls)),
            for_client(ProxyProtocol::V1, client, local, None)
        );
    }
}
