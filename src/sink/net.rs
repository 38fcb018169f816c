//! Connecting to APNS hosts: TCP (resolved anew each time, as Apple asks)
//! and TLS with certificates always verified, through the shared toolkit
//! ([`pushbridge_kit::net`]), plus the HTTP/2 handshake errors, and
//! [`Watched`], which keeps the TLS alert a server ends a session with.
//!
//! Why the alert needs keeping: in TLS 1.3 the client's handshake is done
//! when it sends its certificate, before the server has looked at it. A
//! server that refuses the certificate sends its alert afterwards, while
//! the client is already writing its HTTP/2 preface; the write usually
//! fails first ("broken pipe"), and the server, closing a socket with our
//! unread preface in it, resets the connection: the alert, which says
//! why, is lost. So [`Watched::first_word`] lets the server speak first
//! (an HTTP/2 server's SETTINGS) before we write; a refusal then arrives
//! whole, and a write that fails anyway still reads what is there.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use pushbridge_kit::AddressError;
use rustls::pki_types::ServerName;
use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
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
    /// The TLS session failed before HTTP/2 started.
    #[error("TLS with {0}: {1}")]
    Session(String, #[source] io::Error),
    /// The server ended the session before it said anything (it refused
    /// the TLS session after the client's handshake was done).
    #[error("{host} ended the connection before HTTP/2 started{}", alert.map(|a| format!(" (TLS alert {a:?})")).unwrap_or_default())]
    Closed {
        host: String,
        alert: Option<AlertDescription>,
    },
}

impl ConnectError {
    /// The TLS alert the server refused us with, when it is about our
    /// credential (see [`credential_alert`]).
    pub fn credential_alert(&self) -> Option<AlertDescription> {
        match self {
            ConnectError::Closed { alert, .. } => alert.filter(|a| is_credential_alert(*a)),
            ConnectError::H2(_, e) => e.get_io().and_then(|e| credential_alert(e)),
            other => credential_alert(other),
        }
    }
}

/// Alerts a server sends about the client's certificate (RFC 8446 §6.2):
/// the credential, not the network, is at fault. `decrypt_error` from a
/// server means it could not verify what the client signed (its
/// CertificateVerify: a certificate whose issuer's signature fails).
pub fn is_credential_alert(a: AlertDescription) -> bool {
    use AlertDescription::*;
    matches!(
        a,
        BadCertificate
            | UnsupportedCertificate
            | CertificateRevoked
            | CertificateExpired
            | CertificateUnknown
            | UnknownCA
            | AccessDenied
            | CertificateRequired
            | DecryptError
    )
}

/// The credential alert received from the peer somewhere in `err`'s chain
/// of sources (through `io::Error` wrappers, whose `source()` skips their
/// inner error).
pub fn credential_alert(err: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = e.downcast_ref::<rustls::Error>() {
            return is_credential_alert(*a).then_some(*a);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(a) = credential_alert(inner) {
                return Some(a);
            }
        }
        cur = e.source();
    }
    None
}

/// What a [`Watched`] stream saw of its peer.
#[derive(Debug, Default)]
pub struct PeerState {
    /// The alert the peer ended the session with.
    alert: Mutex<Option<AlertDescription>>,
    /// The peer sent application data (for HTTP/2, its SETTINGS): it
    /// accepted the session, client certificate included.
    spoke: AtomicBool,
    spoke_notify: Notify,
}

impl PeerState {
    /// The alert the peer sent, if it sent one.
    pub fn alert(&self) -> Option<AlertDescription> {
        *self.alert.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the peer sent application data.
    pub fn spoke(&self) -> bool {
        self.spoke.load(Ordering::Acquire)
    }

    /// Completes once the peer sent application data.
    pub async fn spoken(&self) {
        loop {
            let n = self.spoke_notify.notified();
            if self.spoke() {
                return;
            }
            n.await;
        }
    }

    fn note(&self, e: &io::Error) {
        if let Some(rustls::Error::AlertReceived(a)) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            self.alert.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(*a);
        }
    }
}

/// A stream that notes what the peer says: whether it sent application
/// data, and the alert it ended the TLS session with (read even when a
/// write fails first).
pub struct Watched<S> {
    inner: S,
    peer: Arc<PeerState>,
    /// Read by [`Watched::first_word`], handed out before anything else.
    early: Vec<u8>,
}

impl<S> Watched<S> {
    /// Watch `inner`; `peer` is where it notes what it sees.
    pub fn new(inner: S, peer: Arc<PeerState>) -> Self {
        Self {
            inner,
            peer,
            early: Vec::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    /// Wait up to `within` for the peer's first bytes, before writing
    /// anything (kept for the reader). `Ok` when it spoke or stayed quiet
    /// (a server that waits for the client); an error when it ended the
    /// session instead (its alert is in [`PeerState::alert`]).
    pub async fn first_word(&mut self, within: Duration) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 16 * 1024];
        match tokio::time::timeout(within, self.read(&mut buf)).await {
            Err(_) => Ok(()),
            Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(n)) => {
                buf.truncate(n);
                self.early = buf;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    /// A write failed: the peer may have said why before it left. Read what
    /// is there (the connection is lost; any data is dropped).
    fn after_write_error(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        self.peer.note(&e);
        if self.peer.alert().is_none() {
            let mut scratch = [0u8; 1024];
            for _ in 0..4 {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                    Poll::Ready(Err(r)) => {
                        self.peer.note(&r);
                        break;
                    }
                    _ => break,
                }
            }
        }
        e
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before && !self.peer.spoke() => {
                self.peer.spoke.store(true, Ordering::Release);
                self.peer.spoke_notify.notify_waiters();
            }
            Poll::Ready(Err(e)) => self.peer.note(e),
            _ => {}
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.after_write_error(cx, e))),
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.after_write_error(cx, e))),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.after_write_error(cx, e))),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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

    fn alert_io(a: AlertDescription) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, rustls::Error::AlertReceived(a))
    }

    #[test]
    fn credential_alerts_are_found_through_io_errors() {
        let tls = ConnectError::Net(pushbridge_kit::ConnectError::Tls {
            addr: "api.push.apple.com:443".into(),
            source: alert_io(AlertDescription::CertificateExpired),
        });
        assert_eq!(tls.credential_alert(), Some(AlertDescription::CertificateExpired));
        let session = ConnectError::Session("h:1".into(), alert_io(AlertDescription::UnknownCA));
        assert_eq!(session.credential_alert(), Some(AlertDescription::UnknownCA));
        // Not about our credential, or no alert at all.
        let other = ConnectError::Session("h:1".into(), alert_io(AlertDescription::HandshakeFailure));
        assert_eq!(other.credential_alert(), None);
        let reset = ConnectError::Session("h:1".into(), io::ErrorKind::ConnectionReset.into());
        assert_eq!(reset.credential_alert(), None);
        let closed = ConnectError::Closed {
            host: "h:1".into(),
            alert: Some(AlertDescription::CertificateRevoked),
        };
        assert_eq!(closed.credential_alert(), Some(AlertDescription::CertificateRevoked));
        assert!(closed.to_string().contains("TLS alert CertificateRevoked"), "{closed}");
    }

    #[tokio::test]
    async fn the_first_word_is_kept_for_the_reader_and_an_alert_is_noted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(1024);
        let peer = Arc::new(PeerState::default());
        let mut w = Watched::new(client, peer.clone());
        server.write_all(b"SETTINGS").await.unwrap();
        w.first_word(Duration::from_secs(5)).await.unwrap();
        assert!(peer.spoke());
        server.write_all(b"+more").await.unwrap();
        drop(server);
        let mut all = Vec::new();
        w.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"SETTINGS+more");
        // A quiet peer is waited for only so long.
        let (client, _server) = tokio::io::duplex(1024);
        let quiet = Arc::new(PeerState::default());
        let mut w = Watched::new(client, quiet.clone());
        w.first_word(Duration::from_millis(10)).await.unwrap();
        assert!(!quiet.spoke() && quiet.alert().is_none());
        // An alert on a read is noted.
        quiet.note(&alert_io(AlertDescription::CertificateExpired));
        assert_eq!(quiet.alert(), Some(AlertDescription::CertificateExpired));
    }
}
