//! The accept loop and each connection's loop: TLS and HTTP/2 handshakes
//! in the connection's task, its requests answered inside that task, and
//! the faults per connection (GOAWAY, drop, stall after N requests).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::handle;
use super::auth::ConnAuth;
use super::State;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(std::io::Error),
    /// The HTTP/2 handshake or the connection failed.
    #[error(transparent)]
    H2(#[from] h2::Error),
}

/// Accept connections until `stop` is cancelled, each served in a task of
/// its own; then wait for those tasks (they end on `stop` too).
pub(super) async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let Some((tcp, peer)) = crate::simulator::next_connection(&listener, &stop).await else {
            break;
        };
        let id = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
        conns.spawn(async move {
            tokio::select! {
                r = serve_connection(tcp, acceptor, state, id) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "simulator connection ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

/// What a connection does after a request, by the fault options.
enum AfterRequest {
    /// Read the next request.
    Continue,
    /// Close the socket with streams in flight (`drop_every`).
    Drop,
    /// Go silent (`stall_connections`).
    Stall,
}

/// Serve one connection (number `id`, from 1) until the client ends it
/// or a fault does.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    id: u64,
) -> Result<(), ConnError> {
    let tls = acceptor.accept(tcp).await.map_err(ConnError::Tls)?;
    let has_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(state.options.max_concurrent_streams)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tls)
        .await?;
    let mut served = 0u64;
    let auth = ConnAuth::default();
    // The connection's requests are handled inside its task: the answers
    // ready after one round of reading go out together in one write (a
    // task per request ran between the connection's polls and each answer
    // cost a TLS record and a syscall of its own).
    let mut handlers = Handlers::new();
    loop {
        let next = tokio::select! {
            biased;
            n = conn.accept() => n,
            _ = drain(&mut handlers) => continue,
        };
        let Some(next) = next else { break };
        let (req, respond) = match next {
            Ok(x) => x,
            Err(e) => {
                detach(handlers);
                return Err(e.into());
            }
        };
        served += 1;
        state.requests.fetch_add(1, Ordering::Relaxed);
        handlers.push(handle(req, respond, state.clone(), has_cert, id, auth.clone()));
        if state.options.goaway_every == Some(served) {
            state.goaways.fetch_add(1, Ordering::Relaxed);
            conn.graceful_shutdown();
        }
        match after_request(&state, id, served) {
            AfterRequest::Continue => {}
            AfterRequest::Drop => {
                drop(conn); // closes the socket mid-stream
                detach(handlers);
                return Ok(());
            }
            AfterRequest::Stall => {
                detach(handlers);
                // Hold the connection without polling it, until stopped.
                return std::future::pending().await;
            }
        }
    }
    detach(handlers);
    Ok(())
}

/// Whether connection `id` drops or stalls after its `served`th request
/// (counted).
fn after_request(state: &State, id: u64, served: u64) -> AfterRequest {
    if state.options.drop_every == Some(served) {
        state.drops.fetch_add(1, Ordering::Relaxed);
        AfterRequest::Drop
    } else if id <= state.options.stall_connections {
        state.stalls.fetch_add(1, Ordering::Relaxed);
        AfterRequest::Stall
    } else {
        AfterRequest::Continue
    }
}

/// Requests being handled on one connection.
type Handlers = FuturesUnordered<BoxFuture<'static, ()>>;

/// Run every handler that can make progress; completes once at least one
/// finished (pending while none did).
fn drain(handlers: &mut Handlers) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let mut finished = false;
        while let Poll::Ready(Some(())) = handlers.poll_next_unpin(cx) {
            finished = true;
        }
        if finished {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// Let the handlers of a connection no longer polled finish on their own.
fn detach(mut handlers: Handlers) {
    if !handlers.is_empty() {
        tokio::spawn(async move { while handlers.next().await.is_some() {} });
    }
}
