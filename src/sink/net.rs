//! Connecting to APNS hosts: TCP (resolved anew each time, as Apple asks)
//! and TLS with certificates always verified.

use std::time::Duration;

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
    pub fn parse(authority: &str) -> Result<Target, String> {
        let (host, _port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {authority:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("endpoint {authority:?}: {host:?} is not a valid TLS server name: {e}"))?;
        Ok(Target {
            authority: authority.to_owned(),
            server_name,
        })
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0}: {1}")]
    Tcp(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("{0} did not agree to HTTP/2 (ALPN h2)")]
    NoH2(String),
    #[error("HTTP/2 handshake with {0}: {1}")]
    H2(String, h2::Error),
    #[error("{0}: timed out")]
    Timeout(String),
}

/// TCP + TLS to `target`.
pub async fn connect_tls(target: &Target, tls: &TlsConnector) -> Result<TlsStream<TcpStream>, ConnectError> {
    let name = &target.authority;
    let timed = |what: &str| ConnectError::Timeout(format!("{what} {name}"));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(name))
        .await
        .map_err(|_| timed("connect to"))?
        .map_err(|e| ConnectError::Tcp(name.clone(), e))?;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(target.server_name.clone(), tcp))
        .await
        .map_err(|_| timed("TLS with"))?
        .map_err(|e| ConnectError::Tls(name.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("api.push.apple.com:443").unwrap();
        assert_eq!(t.authority, "api.push.apple.com:443");
        assert!(matches!(t.server_name, ServerName::DnsName(_)));
        let t = Target::parse("127.0.0.1:2197").unwrap();
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));
        let t = Target::parse("[::1]:2197").unwrap();
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));
        assert!(Target::parse("nocolon").is_err());
    }
}
