//! A listener's TLS certificate: read and checked with the rest of the
//! config, so a missing file or a key that does not fit the certificate is
//! a config error with its line, not a failed handshake later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::file::TlsSection;
use super::{ConfigError, Errors};

/// A listener's certificate, loaded and checked when the config is.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

/// Load a listener's certificate chain and key into a rustls server
/// config offering HTTP/2 and HTTP/1.1 by ALPN.
pub(super) fn load(
    errors: &Errors<'_>,
    base: &Path,
    tls: &TlsSection,
    key: &str,
) -> Result<TlsConfig, ConfigError> {
    let cert_path = base.join(tls.cert.get_ref());
    let key_path = base.join(tls.key.get_ref());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            errors.spanned(
                &tls.cert,
                &format!("{key}.cert"),
                format!(
                    "cannot read a PEM certificate from {}: {e}",
                    cert_path.display()
                ),
            )
        })?;
    if chain.is_empty() {
        return Err(errors.spanned(
            &tls.cert,
            &format!("{key}.cert"),
            format!("{} holds no certificate", cert_path.display()),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
        errors.spanned(
            &tls.key,
            &format!("{key}.key"),
            format!(
                "cannot read a PEM private key from {}: {e}",
                key_path.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| {
            errors.spanned(
                &tls.key,
                &format!("{key}.key"),
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsConfig {
        cert: cert_path,
        key: key_path,
        server: Arc::new(server),
    })
}
