//! Certificates made with openssl for the tests' TLS peers.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require;

/// A self-signed certificate for `localhost` and 127.0.0.1 (P-256, one
/// day) written into `dir` by openssl: (cert.pem, key.pem).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new(require("openssl"))
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// A certificate for `names` (and 127.0.0.1) with subject `cn`, signed
/// by a CA of its own made beside it in `dir`, as `prefix`*.pem: what a
/// client that verifies (rustls, webpki) accepts once given the CA.
pub struct Signed {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_signed(dir: &Path, prefix: &str, cn: &str, names: &[&str]) -> Signed {
    let file = |suffix: &str| dir.join(format!("{prefix}{suffix}"));
    let (ca_key, ca, key, csr, cert, ext) = (
        file("-ca.key"),
        file("-ca.pem"),
        file("-key.pem"),
        file(".csr"),
        file("-cert.pem"),
        file(".ext"),
    );
    let path = |p: &PathBuf| p.display().to_string();
    let openssl = |args: &[&str]| {
        let made = Command::new(require("openssl"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca_subject = format!("/CN={cn} test CA");
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", &ca_subject];
    args.extend(ec.split(' '));
    let (ca_key_path, ca_path) = (path(&ca_key), path(&ca));
    args.extend(["-keyout", &ca_key_path, "-out", &ca_path]);
    openssl(&args);
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-subj", &subject];
    args.extend(ec.split(' '));
    let (key_path, csr_path) = (path(&key), path(&csr));
    args.extend(["-keyout", &key_path, "-out", &csr_path]);
    openssl(&args);
    let dns: String = names.iter().map(|n| format!(",DNS:{n}")).collect();
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:127.0.0.1{dns}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    let (ext_path, cert_path) = (path(&ext), path(&cert));
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &csr_path,
        "-CA",
        &ca_path,
        "-CAkey",
        &ca_key_path,
        "-CAcreateserial",
        "-extfile",
        &ext_path,
        "-out",
        &cert_path,
    ]);
    Signed { ca, cert, key }
}
