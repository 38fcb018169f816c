//! Connecting to APNS hosts: TCP (resolved anew each time, as Apple asks)
//! and TLS with certificates always verified, through the shared toolkit
//! ([`pushbridge_kit::net`]), plus the HTTP/2 handshake errors.

use std::time::Duration;

use pushbridge_kit::AddressError;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Time allowed for TCP connect, TLS and a protocol handshake each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pool connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, resolved anew on every connect (Apple asks for an
    /// uncached lookup per connection).
    pub authority: String,
    pub server_name: ServerName<'static>,
}

impl Target {
    /// `host:port` (or `[v6]:port`).
    pub fn parse(authority: &str) -> Result<Target, AddressError> {
        let server_name = pushbridge_kit::server_name(authority)?;
        Ok(Target {
            authority: authority.to_owned(),
            server_name,
        })
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP or TLS (the toolkit's error names the host).
    #[error(transparent)]
    Net(#[from] pushbridge_kit::ConnectError),
    #[error("{0} did not agree to HTTP/2 (ALPN h2)")]
    NoH2(String),
    #[error("HTTP/2 handshake with {0}: {1}")]
    H2(String, h2::Error),
    #[error("{0}: timed out")]
    Timeout(String),
}

/// TCP + TLS to `target`, each within [`CONNECT_TIMEOUT`].
pub async fn connect_tls(target: &Target, tls: &TlsConnector) -> Result<TlsStream<TcpStream>, ConnectError> {
    Ok(pushbridge_kit::connect_tls(&target.authority, target.server_name.clone(), tls, CONNECT_TIMEOUT).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("api.push.apple.com:443").unwrap();
        assert_eq!(t.authority, "api.push.apple.com:443");
        assert!(matches!(t.server_name, ServerName::DnsName(_)));
        let t = Target::parse("[::1]:2197").unwrap();
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));
        assert!(Target::parse("nocolon").unwrap_err().to_string().contains("host:port"));
    }
}
