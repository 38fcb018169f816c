//! TLS for the APNS sinks and the simulator: the toolkit's client configs
//! and PEM loading (re-exported from `pushbridge_kit::tls`), plus what only
//! the core needs: PKCS#12 identities, server configs (optionally requiring
//! client certificates) and a throwaway PKI generated with rcgen for the
//! simulator and tests.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};

pub use pushbridge_kit::tls::{client_config, load_certs, load_identity, load_key, provider, root_store, Identity};

/// A TLS setup problem, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Loading PEM files or building a client config (the shared toolkit).
    #[error(transparent)]
    Kit(#[from] pushbridge_kit::TlsError),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Other(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    pushbridge_kit::tls::file_err(path, message).into()
}

/// Certificate chain and key from a PKCS#12 (`.p12`) file, as Keychain
/// Access exports an APNS certificate.
pub fn load_pkcs12(path: &Path, password: &str) -> Result<Identity, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let store = p12_keystore::KeyStore::from_pkcs12(&data, password, p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| file_err(path, format!("cannot read PKCS#12 (wrong pkcs12_password?): {e}")))?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| file_err(path, "no private key with a certificate inside"))?;
    if chain.certs().is_empty() {
        return Err(file_err(path, "the private key has no certificate"));
    }
    let key = PrivateKeyDer::try_from(chain.key().as_der().to_vec())
        .map_err(|e| file_err(path, format!("unusable private key: {e}")))?;
    Ok(Identity {
        chain: chain
            .certs()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect(),
        key,
    })
}

/// A PKCS#12 file holding `identity`, protected by `password` (tests).
pub fn to_pkcs12(identity: &Identity, password: &str) -> Result<Vec<u8>, TlsError> {
    let key = p12_keystore::PrivateKey::from_der(identity.key.secret_der())
        .map_err(|e| TlsError::Other(format!("pkcs12 key: {e}")))?;
    let certs = identity
        .chain
        .iter()
        .map(|c| p12_keystore::Certificate::from_der(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Other(format!("pkcs12 certificate: {e}")))?;
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        "apns",
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(b"apns".to_vec(), key, certs)),
    );
    store
        .writer(password)
        .write()
        .map_err(|e| TlsError::Other(format!("pkcs12 write: {e}")))
}

/// A server config; with `client_ca`, clients must present a certificate
/// issued by it (the binary gateway, certificate-auth HTTP/2).
pub fn server_config(
    identity: Identity,
    client_ca: Option<&[CertificateDer<'static>]>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Other(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A throwaway PKI: one CA, a server certificate for `localhost`,
/// `127.0.0.1` and `::1`, and a way to issue client certificates. Used by
/// `pushbridge simulate` and the tests; PEM strings so they can be written
/// to files that the gateway's config then points at.
pub struct TestPki {
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    ca_params: rcgen::CertificateParams,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestPki {
    pub fn generate() -> Result<Self, TlsError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pushbridge simulator CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.clone().self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

        let server_key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "api.push.apple.com".to_owned()])?;
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            "127.0.0.1".parse().map_err(|_| TlsError::Other("ip".into()))?,
        ));
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            "::1".parse().map_err(|_| TlsError::Other("ip".into()))?,
        ));
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let server_cert = params.signed_by(&server_key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_key,
            ca_cert,
            ca_params,
        })
    }

    /// The CA certificate (DER), to require client certificates issued by it.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// The server identity.
    pub fn server_identity(&self) -> Result<Identity, TlsError> {
        identity_from_pem(&self.server_cert_pem, &self.server_key_pem)
    }

    /// Issue a client certificate with common name `cn` (e.g. the topic, as
    /// Apple's provider certificates carry it). Returns (cert PEM, key PEM).
    pub fn issue_client(&self, cn: &str) -> Result<(String, String), TlsError> {
        self.issue_client_with(cn, |_| {})
    }

    /// [`TestPki::issue_client`] with the certificate's params changed by
    /// `edit` first (e.g. its validity period).
    pub fn issue_client_with(
        &self,
        cn: &str,
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Result<(String, String), TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// An identity from PEM text.
pub fn identity_from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Other(format!("bad certificate PEM: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Other(format!("bad key PEM: {e}")))?;
    Ok(Identity { chain, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn mutual_tls_round_trip_with_generated_pki() {
        let pki = TestPki::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let (cert, key) = pki.issue_client("com.example.chat").unwrap();
        let combined = dir.path().join("client.pem");
        std::fs::write(&combined, format!("{cert}{key}")).unwrap();

        let server = server_config(pki.server_identity().unwrap(), Some(&[pki.ca_der()]), &[b"h2"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let has_client_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
            tls.write_all(b"hi").await.unwrap();
            tls.shutdown().await.unwrap();
            (has_client_cert, alpn)
        });

        let identity = load_identity(&combined, None).unwrap();
        let client = client_config(Some(&ca), Some(identity), &[b"h2"]).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        let (had_cert, alpn) = srv.await.unwrap();
        assert!(had_cert);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[test]
    fn pkcs12_round_trip_and_wrong_password() {
        let pki = TestPki::generate().unwrap();
        let (cert, key) = pki.issue_client("com.example.chat").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("client.pem");
        std::fs::write(&pem, format!("{cert}{key}")).unwrap();
        let id = load_identity(&pem, None).unwrap();
        let p12 = dir.path().join("client.p12");
        std::fs::write(&p12, to_pkcs12(&id, "s3cret").unwrap()).unwrap();
        let back = load_pkcs12(&p12, "s3cret").unwrap();
        assert_eq!(back.chain, id.chain);
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        let err = load_pkcs12(&p12, "wrong").unwrap_err().to_string();
        assert!(err.contains("client.p12") && err.contains("pkcs12_password"), "{err}");
        // A usable client config comes out of it.
        client_config(None, Some(back), &[b"h2"]).unwrap();
    }
}
