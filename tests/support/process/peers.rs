//! The real peers gale is tested against, each run as a process of its
//! own and stopped on drop: `smtp-sink`, nginx, swaks, and Postfix
//! instances with their config, queue and log in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// `smtp-sink` on 127.0.0.1:`port`.
pub struct SmtpSink {
    pub child: Child,
    pub address: SocketAddr,
}

impl SmtpSink {
    pub fn start(port: u16) -> SmtpSink {
        SmtpSink::start_at(format!("127.0.0.1:{port}").parse().unwrap())
    }

    /// On `address` (any loopback address, so that DNS tests can tell
    /// backends apart).
    pub fn start_at(address: SocketAddr) -> SmtpSink {
        SmtpSink::start_with(address, &[])
    }

    /// With more of `smtp-sink`'s options, e.g. `["-r", "MAIL"]` to answer
    /// MAIL FROM with `450 4.3.0`.
    pub fn start_with(address: SocketAddr, options: &[&str]) -> SmtpSink {
        let child = Command::new(require("smtp-sink"))
            .args(["-u", "nobody"])
            .args(options)
            .args([&address.to_string(), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(address, "smtp-sink");
        SmtpSink { child, address }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An nginx of its own (config, pid, logs in a temp dir; one process, no
/// master) on 127.0.0.1:`port`, answering every request with `200` and
/// `name` as the body.
pub struct Nginx {
    pub child: Child,
    pub address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(port: u16, name: &str) -> Nginx {
        Nginx::start_with_status(port, name, 200)
    }

    /// Answering every request with `status` (`name` as the body).
    pub fn start_with_status(port: u16, name: &str, status: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n\
                   client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                   scgi_temp_path {d}/scgi;\n\
                   server {{\n    listen {address};\n\
                     location / {{ return {status} \"{name}\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new(require("nginx"))
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(address, "nginx");
        Nginx {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Nginx {
    /// Requests it answered so far (lines of its access log, written
    /// just after each response went out).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self._dir.path().join("access.log"))
            .map_or(0, |log| log.lines().count())
    }

    /// Wait up to 5 s until it has logged `n` requests; how many it has.
    pub fn wait_requests(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.requests() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.requests()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message by swaks through `server` from the loopback address `from`
/// to `to`: whether swaks succeeded, and its transcript.
pub fn swaks_from(from: &str, server: SocketAddr, to: &str) -> (bool, String) {
    let out = Command::new(require("swaks"))
        .args(["--server", &server.to_string(), "--local-interface", from])
        .args(["--from", "sender@client.test", "--to", to])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One message over SMTPS through `server` from `client_ip`: swaks'
/// transcript, or why it failed.
pub fn swaks_smtps(server: SocketAddr, client_ip: &str, to: &str) -> Result<String, String> {
    let out = Command::new(require("swaks"))
        .args(["--server", &server.to_string(), "--tls-on-connect"])
        .args(["--local-interface", client_ip, "--timeout", "10"])
        .args(["--from", "sender@client.test", "--to", to])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(transcript)
    } else {
        Err(transcript)
    }
}

/// A Postfix instance of its own (config, queue, log) in a temp dir,
/// listening on 127.0.0.1 with `smtpd_upstream_proxy_protocol = haproxy`,
/// discarding what it accepts.
pub struct Postfix {
    pub address: SocketAddr,
    /// SMTPS: the CA of its certificate (for 127.0.0.1).
    pub ca: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl Postfix {
    pub fn start() -> Postfix {
        Postfix::start_with(false, &[])
    }

    /// Like [`Postfix::start`], speaking SMTPS (implicit TLS, as on port
    /// 465: `smtpd_tls_wrappermode`) after the PROXY header, with a
    /// certificate of its own.
    pub fn start_smtps() -> Postfix {
        Postfix::start_with(true, &[])
    }

    /// Like [`Postfix::start`], without PROXY: it takes the client's
    /// address from XCLIENT, which 127.0.0.1 may send; with more main.cf
    /// `settings`.
    pub fn start_xclient(settings: &[&str]) -> Postfix {
        let mut all = vec![
            "smtpd_upstream_proxy_protocol =",
            "smtpd_authorized_xclient_hosts = 127.0.0.1",
        ];
        all.extend_from_slice(settings);
        Postfix::start_with(false, &all)
    }

    fn start_with(smtps: bool, settings: &[&str]) -> Postfix {
        let postfix = require("postfix");
        let dir = tempfile::Builder::new()
            .prefix("gale-postfix")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let port = free_port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        std::fs::write(
            d.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {q}\ndata_directory = {data}\n\
                 mail_owner = postfix\nsetgid_group = postdrop\n\
                 inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 myhostname = postfix.test\nmydestination =\nmynetworks = 127.0.0.0/8\n\
                 relay_domains = example.test\n\
                 default_transport = discard\nrelay_transport = discard\nlocal_transport = discard\n\
                 alias_maps =\nalias_database =\n\
                 maillog_file_prefixes = /tmp\nmaillog_file = {log}\n\
                 smtpd_upstream_proxy_protocol = haproxy\nsmtpd_upstream_proxy_timeout = 5s\n",
                q = d.join("queue").display(),
                data = d.join("data").display(),
                log = d.join("maillog").display(),
            ),
        )
        .unwrap();
        if !settings.is_empty() {
            Postfix::write_settings(d, settings);
        }
        let mut smtpd = String::from("smtpd");
        let mut ca = None;
        if smtps {
            let Signed {
                ca: signer,
                cert,
                key,
            } = ca_signed(&d.join("conf"), "smtpd", "postfix.test", &["postfix.test"]);
            ca = Some(signer);
            Postfix::write_settings(
                d,
                &[
                    &format!("smtpd_tls_cert_file = {}", cert.display()),
                    &format!("smtpd_tls_key_file = {}", key.display()),
                ],
            );
            smtpd.push_str(" -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt");
            // smtpd's TLS session cache and entropy.
            smtpd.push_str("\ntlsmgr unix - - n 1000? 1 tlsmgr");
        }
        std::fs::write(
            d.join("conf/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - {smtpd}\n\
                 pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n\
                 showq unix n - n - - showq\nerror unix - - n - - error\n\
                 retry unix - - n - - error\ndiscard unix - - n - - discard\n\
                 anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(d.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let status = Command::new(postfix)
            .arg("-c")
            .arg(d.join("conf"))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let log = std::fs::read_to_string(d.join("maillog")).unwrap_or_default();
        assert!(status.success(), "postfix did not start:\n{log}");
        let postfix = Postfix { address, ca, dir };
        // Not a probe connection: smtpd would log the missing PROXY header.
        postfix.wait_log(&["daemon started"], Duration::from_secs(15));
        postfix
    }

    /// Change one main.cf setting (`postconf -e`), e.g.
    /// `"queue_minfree = 0"`; [`Postfix::reload`] applies it.
    pub fn set(&self, setting: &str) {
        Postfix::write_settings(self.dir.path(), &[setting]);
    }

    fn write_settings(dir: &Path, settings: &[&str]) {
        let status = Command::new(require("postconf"))
            .arg("-c")
            .arg(dir.join("conf"))
            .arg("-e")
            .args(settings)
            .status()
            .unwrap();
        assert!(status.success(), "postconf -e {settings:?}");
    }

    /// Stop and start again with the settings as they are now.
    pub fn restart(&self) {
        for action in ["stop", "start"] {
            let status = Command::new(require("postfix"))
                .arg("-c")
                .arg(self.dir.path().join("conf"))
                .arg(action)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "postfix {action}");
        }
    }

    /// `postfix reload`: new smtpd processes read the changed settings.
    pub fn reload(&self) {
        let status = Command::new(require("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("reload")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "postfix reload");
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Wait until `n` maillog lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.maillog().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} maillog lines with {needle:?}:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for a maillog line containing every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .maillog()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no maillog line with {needles:?}:\n{}",
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(require("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("conf"))
            .arg("abort")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
