//! Test configs built as TOML tables instead of `format!` templates: a
//! test names the listeners, pools and backends it needs and the keys it
//! changes; every other key keeps gale's default.
//!
//! ```ignore
//! let toml = Conf::new()
//!     .smtp("in", "mta")
//!     .set("listeners.in.connect_timeout", "500ms")
//!     .probe("mta", "smtp", "200ms", "500ms")
//!     .backend("mta", "a", a.address)
//!     .set("pools.mta.backends.a.weight", 3)
//!     .to_string();
//! ```

use std::net::SocketAddr;

use toml::{Table, Value};

#[derive(Clone, Debug, Default)]
pub struct Conf {
    root: Table,
}

impl Conf {
    pub fn new() -> Conf {
        Conf::default()
    }

    /// Listener `name` on 127.0.0.1 (a port the kernel picks) serving
    /// `pool`.
    pub fn listener(self, name: &str, protocol: &str, pool: &str) -> Conf {
        let at = format!("listeners.{name}");
        self.set(&format!("{at}.protocol"), protocol)
            .set(&format!("{at}.address"), "127.0.0.1:0")
            .set(&format!("{at}.pool"), pool)
            .pool(pool)
    }

    /// An SMTP listener (see [`Conf::listener`]).
    pub fn smtp(self, name: &str, pool: &str) -> Conf {
        self.listener(name, "smtp", pool)
    }

    /// An HTTP listener (see [`Conf::listener`]).
    pub fn http(self, name: &str, pool: &str) -> Conf {
        self.listener(name, "http", pool)
    }

    /// The admin listener on 127.0.0.1 (a port the kernel picks); a token
    /// by `set("admin.token", ...)`.
    pub fn admin(self) -> Conf {
        self.set("admin.address", "127.0.0.1:0")
    }

    /// Instance `n` (2, 3 or 4) of three gale instances on
    /// 127.0.0.{2,3,4}: its SMTP listener `smtp` on `port` before pool
    /// `mta` of `backend`, and `[peers]` naming the other two, probed over
    /// TCP every 200 ms. Publishing `pool = "peers"` is the caller's.
    pub fn peer_instance(self, n: u8, port: u16, backend: SocketAddr) -> Conf {
        let members: Vec<Value> = (2..=4)
            .filter(|other| *other != n)
            .map(|other| {
                Value::Table(Table::from_iter([
                    ("name".to_string(), format!("gale-{other}").into()),
                    (
                        "address".to_string(),
                        format!("127.0.0.{other}:{port}").into(),
                    ),
                ]))
            })
            .collect();
        self.smtp("smtp", "mta")
            .set("listeners.smtp.address", format!("127.0.0.{n}:{port}"))
            .backend("mta", "mta", backend)
            .set("peers.address", format!("127.0.0.{n}"))
            .set("peers.name", format!("gale-{n}"))
            .set("peers.probe.kind", "tcp")
            .set("peers.probe.interval", "200ms")
            .set("peers.probe.timeout", "200ms")
            .set("peers.members", members)
    }

    /// Pool `name`, empty if it is new.
    pub fn pool(mut self, name: &str) -> Conf {
        table(&mut self.root, &format!("pools.{name}"));
        self
    }

    /// The pool's active probe.
    pub fn probe(self, pool: &str, kind: &str, interval: &str, timeout: &str) -> Conf {
        let at = format!("pools.{pool}.probe");
        self.set(&format!("{at}.kind"), kind)
            .set(&format!("{at}.interval"), interval)
            .set(&format!("{at}.timeout"), timeout)
    }

    /// Backend `name` at `address` at the end of `pool`'s list; its other
    /// keys by `set("pools.POOL.backends.NAME.KEY", ...)`.
    pub fn backend(mut self, pool: &str, name: &str, address: SocketAddr) -> Conf {
        let pool = table(&mut self.root, &format!("pools.{pool}"));
        let backends = pool
            .entry("backends")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = backends else {
            panic!("pools.*.backends is not a list")
        };
        let mut backend = Table::new();
        backend.insert("name".into(), name.into());
        backend.insert("address".into(), address.to_string().into());
        list.push(Value::Table(backend));
        self
    }

    /// Backends `p0`, `p1`, ... at `addresses` in `pool`, each sent a
    /// PROXY v2 header (as Postfix with `smtpd_upstream_proxy_protocol`
    /// wants).
    pub fn proxied_backends(mut self, pool: &str, addresses: &[SocketAddr]) -> Conf {
        for (i, address) in addresses.iter().enumerate() {
            let name = format!("p{i}");
            self = self.backend(pool, &name, *address).set(
                &format!("pools.{pool}.backends.{name}.proxy_protocol"),
                "v2",
            );
        }
        self
    }

    /// Set the key at a dotted `path` (`server.drain_timeout`,
    /// `pools.mta.probe.kind`); in `pools.POOL.backends.NAME.KEY` the
    /// backend is found by its name.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Conf {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        table(&mut self.root, parent).insert(key.to_string(), value.into());
        self
    }

    /// Remove the key at a dotted `path` (the same paths as [`Conf::set`]).
    pub fn unset(mut self, path: &str) -> Conf {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        table(&mut self.root, parent).remove(key);
        self
    }
}

impl std::fmt::Display for Conf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&toml::to_string(&self.root).expect("a TOML table serializes"))
    }
}

/// The table at dotted `path` under `root`, created as needed; a
/// `backends` segment is followed by a backend's name.
fn table<'a>(root: &'a mut Table, path: &str) -> &'a mut Table {
    let mut at = root;
    let mut segments = path.split('.').filter(|s| !s.is_empty());
    while let Some(segment) = segments.next() {
        let entry = at
            .entry(segment)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Array(list) = entry {
            assert_eq!(segment, "backends", "{segment} in {path} is a list");
            let name = segments.next().expect("backends.NAME");
            at = list
                .iter_mut()
                .filter_map(Value::as_table_mut)
                .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
                .unwrap_or_else(|| panic!("no backend {name} in {path}"));
        } else {
            at = entry
                .as_table_mut()
                .unwrap_or_else(|| panic!("{segment} in {path} is not a table"));
        }
    }
    at
}
