//! rustls client setup shared by every outbound TLS connection (APNS sinks,
//! IRC over TLS): roots, PEM loading, client certificates. Certificates are
//! always verified; a configured CA file is trusted *in addition to* the
//! Mozilla roots (`webpki-roots`), for simulators and private networks.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A TLS setup problem, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Other(String),
}

/// A [`TlsError::File`] for `path`.
pub fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| file_err(path, format!("no usable private key: {e}")))
}

/// Certificate + key from separate PEM files, or from one combined PEM
/// (`key_file = None`: the key is looked for in `cert_file`).
pub fn load_identity(cert_file: &Path, key_file: Option<&Path>) -> Result<Identity, TlsError> {
    let chain = load_certs(cert_file)?;
    let key = load_key(key_file.unwrap_or(cert_file))?;
    Ok(Identity { chain, key })
}

/// Roots to verify a server against: the Mozilla set (which holds Apple's
/// public roots) plus, when `ca_file` is given, every CA in that PEM file.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in load_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| file_err(path, format!("unusable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// The crypto provider every pushbridge TLS config uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config: TLS 1.2+, server certificates always verified against
/// [`root_store`]`(ca_file)`, an optional client certificate, and the ALPN
/// protocols to offer (e.g. `[b"h2"]`; empty for none).
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<Identity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca_file)?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_are_named() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem")), None, &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("pushbridge-kit-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = load_certs(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("no CERTIFICATE"), "{err}");
        let err = load_key(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("private key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_roots_and_alpn() {
        let c = client_config(None, None, &[b"h2"]).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!root_store(None).unwrap().is_empty());
    }
}
