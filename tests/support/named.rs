//! A BIND 9 of its own: config, zone, journal and log in a temp dir, on
//! 127.0.0.1:`port` (UDP and TCP), authoritative for `example.test` with
//! dynamic updates allowed to one TSIG key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::require;

/// The key BIND accepts updates with (hmac-sha256).
pub const KEY_NAME: &str = "gale-key.";
pub const KEY_SECRET: &str = "c2VjcmV0LWtleS1mb3ItZ2FsZS10ZXN0cy0zMi1ieXRlcw==";

pub struct Named {
    pub address: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Named {
    pub fn start(port: u16) -> Named {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::fs::write(
            dir.path().join("example.test.zone"),
            "$TTL 60\n@ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
             @ IN NS ns1.example.test.\nns1 IN A 127.0.0.1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                "options {{\n  directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n\
                 listen-on-v6 {{ none; }};\n  pid-file \"{d}/named.pid\";\n  recursion no;\n\
                 dnssec-validation no;\n  session-keyfile \"{d}/session.key\";\n\
                 managed-keys-directory \"{d}\";\n}};\n\
                 controls {{ }};\n\
                 key \"{KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{KEY_SECRET}\"; }};\n\
                 zone \"example.test\" {{\n  type primary;\n  file \"{d}/example.test.zone\";\n\
                 allow-update {{ key \"{KEY_NAME}\"; }};\n}};\n"
            ),
        )
        .unwrap();
        let mut named = Named {
            address,
            child: None,
            dir,
        };
        named.resume();
        named
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("named.conf")
    }

    /// Start (again) on the same port, zone and journal; returns once it
    /// answers for the zone.
    pub fn resume(&mut self) {
        let child = Command::new(require("named"))
            .args(["-g", "-4", "-c"])
            .arg(self.conf())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("named.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "named did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (SIGKILL): updates to it fail until [`Named::resume`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        Command::new(require("dig"))
            .args(["@127.0.0.1", "-p", &self.address.port().to_string()])
            .args(["+time=1", "+tries=1", "+short", "example.test.", "SOA"])
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dig's output for `args` against `server`.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(require("dig"))
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The addresses answered for mx.example.test over UDP or TCP.
pub fn addresses(server: SocketAddr, tcp: bool) -> BTreeSet<String> {
    let mut args = vec!["mx.example.test.", "A", "+short"];
    if tcp {
        args.push("+tcp");
    }
    dig(server, &args).lines().map(str::to_string).collect()
}
