//! Who a client is: its address made canonical (IPv4-mapped IPv6 seen as
//! IPv4) and the key its sessions count under for
//! `max_sessions_per_client` (an IPv4 address or an IPv6 /64).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) written as
/// the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whose sessions count together for `max_sessions_per_client`: an IPv4
/// address, or an IPv6 client's /64. One IPv6 host is handed a /64 (RFC
/// 6177 and SLAAC assume at least that), so counting single addresses
/// would let it open 2^64 times the cap.
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        ip @ IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
    }
}

/// Sessions in flight per client (IPv4 address or IPv6 /64); the admin
/// listener counts its connections with it too.
#[derive(Default)]
pub(crate) struct Clients(Mutex<HashMap<IpAddr, u32>>);

/// One session of a client; freed on drop.
pub(crate) struct FromClient(Arc<Clients>, IpAddr);

impl Clients {
    /// Count one more session from `ip` (its /64 for IPv6), unless it has
    /// `limit` already.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<FromClient> {
        let ip = client_key(ip);
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(FromClient(self.clone(), ip))
    }

    /// Sessions in flight from `ip` (its /64 for IPv6).
    pub(crate) fn sessions_of(&self, ip: IpAddr) -> u32 {
        let open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for FromClient {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_clients_are_seen_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:40001".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.7:40001".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::7]:40001".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn ipv6_clients_in_one_64_share_a_per_client_limit() {
        let clients = Arc::new(Clients::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = clients.enter(ip("2001:db8:1:2::1"), 2).expect("first");
        let second = clients
            .enter(ip("2001:db8:1:2:ffff::9"), 2)
            .expect("second");
        assert!(
            clients.enter(ip("2001:db8:1:2::3"), 2).is_none(),
            "third in the /64"
        );
        let other = clients.enter(ip("2001:db8:1:3::1"), 2);
        assert!(other.is_some(), "the next /64 has its own count");
        let v4 = clients.enter(ip("192.0.2.1"), 1).expect("IPv4");
        assert!(
            clients.enter(ip("192.0.2.1"), 1).is_none(),
            "IPv4 at its cap"
        );
        assert!(
            clients.enter(ip("192.0.2.2"), 1).is_some(),
            "IPv4: per address"
        );
        drop((first, second, other, v4));
        let open = clients.0.lock().unwrap();
        assert!(open.is_empty(), "entries outlive their sessions: {open:?}");
    }
}
