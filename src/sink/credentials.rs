//! Client certificates for the APNS sinks: a PEM certificate with its key
//! (one combined file, or two), or a PKCS#12 file as Keychain Access
//! exports it. Shared by the HTTP/2 sink (certificate auth) and the binary
//! sink (its only auth).

use std::path::PathBuf;

use super::SinkError;
use crate::tls::Identity;

/// The certificate keys of an app's config.
#[derive(Debug, Clone, Copy)]
pub struct CertificateKeys<'a> {
    pub cert_file: Option<&'a PathBuf>,
    pub private_key_file: Option<&'a PathBuf>,
    pub pkcs12_file: Option<&'a PathBuf>,
    pub pkcs12_password: Option<&'a str>,
}

impl CertificateKeys<'_> {
    /// Whether any certificate key is set.
    pub fn any(&self) -> bool {
        self.cert_file.is_some()
            || self.private_key_file.is_some()
            || self.pkcs12_file.is_some()
            || self.pkcs12_password.is_some()
    }

    /// Load the identity they name; `Ok(None)` when none is set. Errors name
    /// the key or the file.
    pub fn load(&self) -> Result<Option<Identity>, SinkError> {
        let tls = |source| SinkError::Tls {
            what: "client certificate",
            source,
        };
        match (self.cert_file, self.pkcs12_file) {
            (Some(_), Some(_)) => Err(SinkError::config(
                "cert_file and pkcs12_file",
                "choose one way to give the client certificate, not both",
            )),
            (Some(cert), None) => {
                if self.pkcs12_password.is_some() {
                    return Err(SinkError::config(
                        "pkcs12_password",
                        "goes with pkcs12_file, not cert_file",
                    ));
                }
                crate::tls::load_identity(cert, self.private_key_file.map(|p| p.as_path()))
                    .map(Some)
                    .map_err(|e| tls(e.into()))
            }
            (None, Some(p12)) => {
                if self.private_key_file.is_some() {
                    return Err(SinkError::config(
                        "private_key_file",
                        "goes with cert_file; a PKCS#12 file holds its key",
                    ));
                }
                crate::tls::load_pkcs12(p12, self.pkcs12_password.unwrap_or(""))
                    .map(Some)
                    .map_err(tls)
            }
            (None, None) if self.private_key_file.is_some() => Err(SinkError::config(
                "private_key_file",
                "needs cert_file (the certificate it belongs to)",
            )),
            (None, None) if self.pkcs12_password.is_some() => {
                Err(SinkError::config("pkcs12_password", "needs pkcs12_file"))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Checks `connections` (1 to 64) and that each `(key, endpoint)` given is
/// a usable `host:port`.
pub fn check_common(connections: usize, endpoints: &[(&'static str, Option<&String>)]) -> Result<(), SinkError> {
    if connections == 0 || connections > 64 {
        return Err(SinkError::config("connections", "must be 1 to 64"));
    }
    for (key, ep) in endpoints {
        if let Some(ep) = ep {
            pushbridge_kit::check_host_port(ep).map_err(|e| SinkError::config(key, e.to_string()))?;
            super::net::Target::parse(ep).map_err(|e| SinkError::config(key, e.to_string()))?;
        }
    }
    Ok(())
}
