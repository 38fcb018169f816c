//! Outbound connections: TCP connect and TLS handshake, each under a
//! timeout, with errors that name the peer. The address is resolved anew
//! on every connect (Apple asks for this; IRC networks rotate too).

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a connection could not be set up. Each variant names the peer
/// (`host:port`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Tcp { addr: String, source: std::io::Error },
    #[error("TLS with {addr}: {source}")]
    Tls { addr: String, source: std::io::Error },
    /// `stage` is `connect to` or `TLS with`.
    #[error("{stage} {addr}: timed out")]
    Timeout { stage: &'static str, addr: String },
}

impl From<ConnectError> for std::io::Error {
    fn from(e: ConnectError) -> Self {
        let kind = match &e {
            ConnectError::Tcp { source, .. } | ConnectError::Tls { source, .. } => source.kind(),
            ConnectError::Timeout { .. } => std::io::ErrorKind::TimedOut,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// TCP to `addr` (`host:port`) within `timeout`, with `TCP_NODELAY` set
/// (every peer of pushbridge is latency-sensitive request/response).
pub async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "connect to",
            addr: addr.to_owned(),
        })?
        .map_err(|source| ConnectError::Tcp {
            addr: addr.to_owned(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// [`connect`], then a TLS handshake for `name`, each within `timeout`.
pub async fn connect_tls(
    addr: &str,
    name: ServerName<'static>,
    tls: &TlsConnector,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tcp = connect(addr, timeout).await?;
    tokio::time::timeout(timeout, tls.connect(name, tcp))
        .await
        .map_err(|_| ConnectError::Timeout {
            stage: "TLS with",
            addr: addr.to_owned(),
        })?
        .map_err(|source| ConnectError::Tls {
            addr: addr.to_owned(),
            source,
        })
}

/// Why a `host:port` value cannot be used; each variant quotes it, for
/// config messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{authority:?}: {port:?} is not a port number")]
    BadPort { authority: String, port: String },
    #[error("{authority:?}: {host:?} is not a valid TLS server name")]
    BadServerName { authority: String, host: String },
}

/// Checks that `s` is `host:port` with a non-empty host (a name, an IPv4
/// address or a bracketed IPv6 address) and a numeric port.
pub fn check_host_port(s: &str) -> Result<(), AddressError> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok() =>
        {
            Ok(())
        }
        _ => Err(AddressError::NotHostPort(s.to_owned())),
    }
}

/// The TLS server name of `host:port` (`[v6]:port` accepted): a DNS name or
/// an IP address.
pub fn server_name(authority: &str) -> Result<ServerName<'static>, AddressError> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| AddressError::NotHostPort(authority.to_owned()))?;
    if port.parse::<u16>().is_err() {
        return Err(AddressError::BadPort {
            authority: authority.to_owned(),
            port: port.to_owned(),
        });
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| AddressError::BadServerName {
        authority: authority.to_owned(),
        host: host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        for ok in ["localhost:5347", "127.0.0.1:1", "[::1]:6697", "irc.example.org:6697"] {
            check_host_port(ok).unwrap();
        }
        for bad in ["localhost", ":5347", "host:port", "a b:1", "host:70000"] {
            assert!(check_host_port(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("api.push.apple.com:443"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(server_name("127.0.0.1:2197"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:2197"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("no-port").unwrap_err().to_string().contains("host:port"));
        assert!(server_name("host:http")
            .unwrap_err()
            .to_string()
            .contains("port number"));
        assert!(server_name("bad host:1").is_err());
    }

    #[tokio::test]
    async fn refused_connection_names_the_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = connect(&addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Tcp { .. }), "{err}");
        assert!(err.to_string().contains(&addr), "{err}");
        let io: std::io::Error = err.into();
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn connects_and_sets_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tcp = connect(&addr, Duration::from_secs(5)).await.unwrap();
        assert!(tcp.nodelay().unwrap());
    }
}
