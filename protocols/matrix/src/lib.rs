//! The Matrix adapter: a push gateway serving the Matrix Push Gateway API
//! v1 (`POST /_matrix/push/v1/notify`) to homeservers, a drop-in for
//! Sygnal's APNS side with pushbridge's durable outbox behind it.
//!
//! Layout: [`config`] is `[[adapters.matrix]]`; [`notify`] parses a
//! request body (a pure function, [`notify::parse_notify`]) and decodes
//! pushkeys; [`payload`] maps one device of a notification to a
//! [`pushbridge_api::Push`] (Sygnal's APNS mapping); [`server`] is the
//! HTTP endpoint, which queues the pushes and waits (up to
//! `outcome_timeout`) for Apple's answers to list the pushkeys to reject;
//! this file holds the adapter and its listener.
#![forbid(unsafe_code)]

pub mod config;
pub mod notify;
pub mod payload;
pub mod server;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use pushbridge_api::{Adapter, AdapterError, ConfigError, ConnectionGuard, Context};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub use config::{MatrixApp, MatrixConfig};
pub use notify::{parse_notify, Notify, NotifyError};

/// The Matrix push gateway adapter.
pub struct MatrixAdapter;

impl Adapter for MatrixAdapter {
    type Config = MatrixConfig;
    const KIND: &'static str = "matrix";

    fn instance_name(config: &MatrixConfig) -> String {
        config.name.clone()
    }

    fn check(config: &MatrixConfig) -> Result<(), ConfigError> {
        config.check()
    }

    async fn run(ctx: Context<MatrixConfig>) -> Result<(), AdapterError> {
        let listen = ctx.config().listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| AdapterError::Config(format!("cannot listen on {listen}: {e}")))?;
        serve(listener, ctx).await
    }
}

/// Serve the push gateway on `listener` until shutdown; requests in
/// progress are finished first.
pub async fn serve(listener: TcpListener, ctx: Context<MatrixConfig>) -> Result<(), AdapterError> {
    let local = listener.local_addr()?;
    tracing::info!(adapter = ctx.name(), listen = %local, "matrix adapter listening");
    let shutdown = ctx.shutdown().clone();
    let name = ctx.name().to_owned();
    let counted = Counted {
        listener,
        status: ctx.status().clone(),
    };
    axum::serve(counted, server::router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!(adapter = %name, "matrix adapter stopped");
    Ok(())
}

/// The TCP listener, counting open connections in the adapter's status.
struct Counted {
    listener: TcpListener,
    status: std::sync::Arc<pushbridge_api::AdapterStatus>,
}

impl axum::serve::Listener for Counted {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        // EMFILE and friends: wait a little instead of spinning.
        let mut delay = Duration::from_millis(10);
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = self.status.connection_opened();
                    return (CountedStream { stream, _guard: guard }, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "accept failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection, counted until dropped.
struct CountedStream {
    stream: TcpStream,
    _guard: ConnectionGuard,
}

impl AsyncRead for CountedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
