//! TLS settings read and checked with the rest of the config, so that a
//! missing file, a key that does not fit its certificate or a certificate
//! not valid for the name it is to serve is a config error with its line,
//! not a failed handshake later:
//!
//! - a listener's certificates (HTTPS, SMTPS): a default one and any
//!   number chosen by the name the client asks for (SNI);
//! - a backend's TLS (`tls = true`): the CA its certificate must chain to,
//!   or none checked (`tls_verify = false`), and the name to ask for.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use toml::Spanned;

use super::file::{BackendSection, TlsSection};
use super::{ConfigError, Errors};

/// A listener's certificates, loaded and checked when the config is.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Every file read, watched so that a renewed certificate is served
    /// from the next handshake on (a reload; sessions keep theirs).
    pub files: Vec<PathBuf>,
    pub server: Arc<rustls::ServerConfig>,
}

/// How gale speaks TLS to a backend.
#[derive(Clone)]
pub struct BackendTls {
    pub connector: tokio_rustls::TlsConnector,
    /// Sent as SNI (when a DNS name) and checked in the certificate.
    pub name: ServerName<'static>,
    /// The CA file, watched like a listener's certificate.
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("name", &self.name)
            .field("ca", &self.ca)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Load a listener's certificates into a rustls server config offering
/// `alpn` (HTTP: h2 and http/1.1; SMTPS: none).
pub(super) fn load(
    errors: &Errors<'_>,
    base: &Path,
    tls: &TlsSection,
    key: &str,
    alpn: &[&[u8]],
) -> Result<TlsConfig, ConfigError> {
    let mut files = Vec::new();
    let default = certified_key(errors, base, (&tls.cert, &tls.key), key, &mut files)?;
    let mut by_name = ResolvesServerCertUsingSni::new();
    let mut names_seen: Vec<String> = Vec::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        let sni_key = format!("{key}.sni[{i}]");
        let certified = certified_key(errors, base, (&sni.cert, &sni.key), &sni_key, &mut files)?;
        if sni.names.get_ref().is_empty() {
            return Err(errors.spanned(
                &sni.names,
                &format!("{sni_key}.names"),
                "name at least one host name this certificate serves",
            ));
        }
        for name in sni.names.get_ref() {
            let lower = name.to_ascii_lowercase();
            if names_seen.contains(&lower) {
                return Err(errors.spanned(
                    &sni.names,
                    &format!("{sni_key}.names"),
                    format!("{name:?} is named by an earlier certificate"),
                ));
            }
            by_name.add(name, certified.clone()).map_err(|e| {
                errors.spanned(
                    &sni.names,
                    &format!("{sni_key}.names"),
                    format!("the certificate cannot serve {name:?}: {e}"),
                )
            })?;
            names_seen.push(lower);
        }
    }
    let resolver = Certificates {
        by_name,
        default: Arc::new(default),
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| errors.spanned(&tls.key, &format!("{key}.key"), e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsConfig {
        files,
        server: Arc::new(server),
    })
}

/// The certificate for the name the client asked for, else the default
/// (no SNI, an IP address, a name no certificate is listed for).
#[derive(Debug)]
struct Certificates {
    by_name: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.server_name().is_some()
            && let Some(named) = self.by_name.resolve(hello)
        {
            return Some(named);
        }
        Some(self.default.clone())
    }
}

/// A certificate chain and its key, read from `(cert, key)` (relative to
/// `base`), checked to fit each other; the paths go to `files`.
fn certified_key(
    errors: &Errors<'_>,
    base: &Path,
    (cert, key_file): (&Spanned<String>, &Spanned<String>),
    key: &str,
    files: &mut Vec<PathBuf>,
) -> Result<CertifiedKey, ConfigError> {
    let cert_path = base.join(cert.get_ref());
    let key_path = base.join(key_file.get_ref());
    let chain = read_certificates(errors, cert, &cert_path, &format!("{key}.cert"))?;
    let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        errors.spanned(
            key_file,
            &format!("{key}.key"),
            format!(
                "cannot read a PEM private key from {}: {e}",
                key_path.display()
            ),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        errors.spanned(
            key_file,
            &format!("{key}.key"),
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    files.extend([cert_path, key_path]);
    Ok(certified)
}

/// The PEM certificates in `path` (at least one).
fn read_certificates(
    errors: &Errors<'_>,
    value: &Spanned<String>,
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            errors.spanned(
                value,
                key,
                format!("cannot read a PEM certificate from {}: {e}", path.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(errors.spanned(
            value,
            key,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(chain)
}

/// A backend's TLS, if it has `tls = true`; `address` names it when
/// `tls_name` does not.
pub(super) fn backend(
    errors: &Errors<'_>,
    base: &Path,
    b: &BackendSection,
    address: std::net::SocketAddr,
    key: &str,
) -> Result<Option<Arc<BackendTls>>, ConfigError> {
    let on = b.tls.as_ref().is_some_and(|t| *t.get_ref());
    if !on {
        // Settings of a TLS that is off would be ignored without a word.
        let stray = [
            ("tls_ca", b.tls_ca.as_ref().map(Spanned::span)),
            ("tls_verify", b.tls_verify.as_ref().map(Spanned::span)),
            ("tls_name", b.tls_name.as_ref().map(Spanned::span)),
        ];
        if let Some((name, Some(span))) = stray.into_iter().find(|(_, span)| span.is_some()) {
            return Err(errors.at(
                span,
                &format!("{key}.{name}"),
                "applies only with tls = true",
            ));
        }
        return Ok(None);
    }
    let verify = b.tls_verify.as_ref().is_none_or(|v| *v.get_ref());
    let name = match &b.tls_name {
        None => ServerName::IpAddress(address.ip().into()),
        Some(n) => ServerName::try_from(n.get_ref().clone()).map_err(|_| {
            errors.spanned(
                n,
                &format!("{key}.tls_name"),
                "not a DNS name or an IP address",
            )
        })?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| errors.at(0..0, &format!("{key}.tls"), e.to_string()))?;
    let (config, ca) = match (&b.tls_ca, verify) {
        (Some(ca), false) => {
            return Err(errors.spanned(
                ca,
                &format!("{key}.tls_ca"),
                "tls_verify = false checks no certificate: drop one of them",
            ));
        }
        (None, true) => {
            let span = b.tls.as_ref().map_or(0..0, Spanned::span);
            return Err(errors.at(
                span,
                &format!("{key}.tls"),
                "name the CA that signs the backend's certificate (tls_ca), or say tls_verify = false",
            ));
        }
        (Some(ca), true) => {
            let path = base.join(ca.get_ref());
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(errors, ca, &path, &format!("{key}.tls_ca"))? {
                roots.add(cert).map_err(|e| {
                    errors.spanned(
                        ca,
                        &format!("{key}.tls_ca"),
                        format!("not a CA certificate: {e}"),
                    )
                })?;
            }
            (
                builder.with_root_certificates(roots).with_no_client_auth(),
                Some(path),
            )
        }
        (None, false) => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth(),
            None,
        ),
    };
    Ok(Some(Arc::new(BackendTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
        ca,
    })))
}

/// `tls_verify = false`: any certificate is taken, its signatures on the
/// handshake still checked (the session is encrypted, to whoever answers).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
