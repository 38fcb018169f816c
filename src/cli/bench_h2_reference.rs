//! `pushbridge bench-h2-reference` (hidden; for `bench/peers/run`, issue 16):
//! the ceiling of the HTTP/2 library itself. It is the smallest client the
//! `h2` crate allows, on pushbridge's TLS stack (rustls with ring), doing
//! what h2load does in the same table: `--requests` POSTs of one body to one
//! URL path over one connection, `--streams` in flight, from one task. No
//! outbox, no payload building, no JWT, no outcome handling (a response is
//! read to its end, as the sink does).
//!
//! Its row says how much of the gap between pushbridge's HTTP/2 sink and
//! h2load (C, nghttp2) is the Rust HTTP/2 library rather than pushbridge.
//! Prints `<requests> requests in <seconds> s: <rate> req/s`; an answer
//! other than 200 or a connection error is an error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args as ClapArgs;
use futures::stream::{FuturesUnordered, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The HTTP/2 server, HOST:PORT (TLS, ALPN h2).
    #[arg(long)]
    target: String,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// URL path of every request, e.g. /3/device/<token>.
    #[arg(long)]
    path: String,
    /// File whose bytes are every request's body.
    #[arg(long)]
    body: PathBuf,
    /// The apns-topic header.
    #[arg(long)]
    topic: String,
    /// Requests to send.
    #[arg(long, default_value_t = 200_000)]
    requests: usize,
    /// Requests in flight at once (h2load's -m).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// 0: one thread, as h2load runs; N: tokio's multi-thread runtime with
    /// N workers, as pushbridge runs.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.requests == 0 || args.streams == 0 {
        bail!("--requests and --streams must be at least 1");
    }
    let runtime = match args.workers {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    let (answered, took) = runtime.block_on(drive(&args))?;
    let secs = took.as_secs_f64();
    println!(
        "{answered} requests in {secs:.3} s: {:.0} req/s",
        answered as f64 / secs
    );
    Ok(())
}

/// Connects, then keeps `streams` requests in flight until `requests` are
/// answered; returns how many and how long that took (from the first
/// request, after the handshakes).
async fn drive(args: &Args) -> anyhow::Result<(usize, std::time::Duration)> {
    let body = Bytes::from(std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).with_context(|| format!("reading {}", args.ca.display()))? {
        roots.add(cert.with_context(|| format!("a certificate in {}", args.ca.display()))?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(&args.target)
        .await
        .with_context(|| format!("connecting to {}", args.target))?;
    tcp.set_nodelay(true)?;
    let host = args
        .target
        .rsplit_once(':')
        .map_or(args.target.as_str(), |(host, _)| host);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())?;
    let tls = TlsConnector::from(Arc::new(tls)).connect(name, tcp).await?;
    let (mut client, connection) = h2::client::handshake(tls).await?;
    let connection = tokio::spawn(connection);

    let uri = format!("https://{}{}", args.target, args.path);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < args.requests {
        while sent < args.requests && in_flight.len() < args.streams {
            std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
            let request = http::Request::post(uri.as_str())
                .header("apns-topic", args.topic.as_str())
                .header("apns-push-type", "alert")
                .body(())?;
            let (response, mut stream) = client.send_request(request, false)?;
            stream.send_data(body.clone(), true)?;
            in_flight.push(answer(response));
            sent += 1;
        }
        let Some(status) = in_flight.next().await else { break };
        let status = status?;
        if status != http::StatusCode::OK {
            bail!("answer {status} to request {answered}");
        }
        answered += 1;
    }
    let took = started.elapsed();
    connection.abort();
    Ok((answered, took))
}

/// The status of a response, once its body was read to the end (as the
/// sink reads APNS's answers): a body dropped before its end would make h2
/// reset the stream (RST_STREAM CANCEL), and servers that guard against
/// rapid resets (nghttpd) end a connection that sends thousands of them.
async fn answer(response: h2::client::ResponseFuture) -> Result<http::StatusCode, h2::Error> {
    let response = response.await?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    Ok(status)
}
