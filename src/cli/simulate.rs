//! `pushbridge simulate`: the APNS simulator as a command, for operators
//! trying a config and for adapter authors: the HTTP/2 provider API, and
//! on request the legacy binary gateway and its feedback service.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::Args as ClapArgs;
use pushbridge::simulator::binary;
use pushbridge::simulator::http2::{Options, Simulator};
use pushbridge::simulator::Recorder;
use pushbridge::tls::{self, TestPki};
use rustls::pki_types::CertificateDer;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Address of the HTTP/2 provider API.
    #[arg(long, default_value = "127.0.0.1:2197")]
    listen: String,
    /// Server certificate chain (PEM); without it a certificate for
    /// localhost, 127.0.0.1 and ::1 is generated from a fresh CA.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Write the generated CA certificate here (the app's ca_file).
    #[arg(long, conflicts_with = "cert")]
    write_ca: Option<PathBuf>,
    /// Verify provider tokens (JWT, ES256) against this public key (PEM).
    #[arg(long)]
    jwt_key: Option<PathBuf>,
    /// Generate a provider key, write it here as a .p8 file (the app's
    /// key_file; owner-only, mode 0600), and verify tokens against it.
    #[arg(long, conflicts_with = "jwt_key")]
    write_p8: Option<PathBuf>,
    /// Provider tokens must be issued by this team id (iss).
    #[arg(long)]
    team_id: Option<String>,
    /// Accept client certificates issued by this CA (PEM) in place of tokens.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Issue a client certificate and key (one PEM) from the generated CA,
    /// write it here (the app's cert_file; owner-only, mode 0600), and
    /// accept it in place of tokens.
    #[arg(long, conflicts_with_all = ["client_ca", "cert"])]
    write_client_cert: Option<PathBuf>,
    /// Answer every request for TOKEN with STATUS and REASON, e.g.
    /// <token>=410:Unregistered (repeatable).
    #[arg(long = "reject", value_name = "TOKEN=STATUS:REASON")]
    rejects: Vec<String>,
    /// Close each connection with GOAWAY after this many requests.
    #[arg(long, value_name = "N")]
    goaway_every: Option<u64>,
    /// Drop each connection after this many requests, leaving the streams
    /// in flight unanswered (what a network failure does).
    #[arg(long, value_name = "N")]
    drop_every: Option<u64>,
    /// Fraction (0 to 1) of valid requests answered with --fail-status.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Status for --fail-rate: 503 (ServiceUnavailable), 500 or 429 (TooManyRequests).
    #[arg(long, default_value_t = 503, value_parser = parse_fail_status)]
    fail_status: u16,
    /// SETTINGS_MAX_CONCURRENT_STREAMS announced to clients.
    #[arg(long, default_value_t = 1000)]
    max_streams: u32,
    /// Answer each HTTP/2 request this many milliseconds late (a distant APNS).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The first N connections go silent after their first request: no
    /// answers, no PONGs, socket left open (a dead peer; what the
    /// gateway's PING keep-alive detects).
    #[arg(long, value_name = "N", default_value_t = 0)]
    stall_connections: u64,
    /// Append accepted notifications as JSON lines here (default: stdout).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Also serve the legacy binary gateway here (e.g. 127.0.0.1:2195);
    /// it requires client certificates (--write-client-cert or --client-ca).
    #[arg(long, value_name = "ADDR")]
    binary_listen: Option<String>,
    /// Serve the binary protocol's feedback service here (e.g. 127.0.0.1:2196).
    #[arg(long, value_name = "ADDR", requires = "binary_listen")]
    feedback_listen: Option<String>,
    /// Binary gateway: answer notifications for TOKEN with an error
    /// response of STATUS (8 = invalid token), e.g. <token>=8 (repeatable).
    #[arg(long = "binary-reject", value_name = "TOKEN=STATUS")]
    binary_rejects: Vec<String>,
    /// Binary gateway: drop each connection after N notifications without
    /// an error response.
    #[arg(long, value_name = "N")]
    binary_drop_every: Option<u64>,
    /// Binary gateway: send error responses this many milliseconds late,
    /// reading and discarding what the client writes meanwhile.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    binary_error_delay_ms: u64,
    /// Feedback service: list TOKEN as gone since UNIX_TIME (default: now),
    /// e.g. <token>@1700000000 (repeatable).
    #[arg(long = "feedback", value_name = "TOKEN[@UNIX_TIME]")]
    feedback: Vec<String>,
}

fn parse_binary_reject(s: &str) -> anyhow::Result<(String, u8)> {
    let (token, status) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--binary-reject {s:?}: expected TOKEN=STATUS"))?;
    let status: u8 = status
        .parse()
        .ok()
        .filter(|s| *s != 0)
        .ok_or_else(|| anyhow!("--binary-reject {s:?}: STATUS must be 1 to 255"))?;
    pushbridge_api::DeviceToken::parse(token).map_err(|e| anyhow!("--binary-reject {s:?}: {e}"))?;
    Ok((token.to_owned(), status))
}

fn parse_feedback(s: &str, now: u32) -> anyhow::Result<(String, u32)> {
    let (token, time) = match s.split_once('@') {
        Some((t, time)) => (
            t,
            time.parse()
                .map_err(|_| anyhow!("--feedback {s:?}: UNIX_TIME must be seconds since 1970"))?,
        ),
        None => (s, now),
    };
    pushbridge_api::DeviceToken::parse(token).map_err(|e| anyhow!("--feedback {s:?}: {e}"))?;
    Ok((token.to_owned(), time))
}

/// A `--fail-status` other than 429, 500 or 503.
#[derive(Debug, thiserror::Error)]
#[error("must be 429, 500 or 503")]
struct BadFailStatus;

fn parse_fail_status(s: &str) -> Result<u16, BadFailStatus> {
    match s {
        "429" => Ok(429),
        "500" => Ok(500),
        "503" => Ok(503),
        _ => Err(BadFailStatus),
    }
}

fn parse_reject(s: &str) -> anyhow::Result<(String, u16, String)> {
    let (token, rest) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--reject {s:?}: expected TOKEN=STATUS:REASON"))?;
    let (status, reason) = rest
        .split_once(':')
        .ok_or_else(|| anyhow!("--reject {s:?}: expected TOKEN=STATUS:REASON"))?;
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (400..600).contains(s))
        .ok_or_else(|| anyhow!("--reject {s:?}: STATUS must be an HTTP error status (400-599)"))?;
    pushbridge_api::DeviceToken::parse(token).map_err(|e| anyhow!("--reject {s:?}: {e}"))?;
    Ok((token.to_owned(), status, reason.to_owned()))
}

/// The refusals and feedback entries asked for on the command line,
/// checked.
struct Faults {
    /// `--reject`: token, HTTP status, reason.
    rejects: Vec<(String, u16, String)>,
    /// `--binary-reject`: token, binary status.
    binary_rejects: Vec<(String, u8)>,
    /// `--feedback`: token, seconds since 1970.
    feedback: Vec<(String, u32)>,
}

/// Check the numeric options and parse the repeatable ones, in the order
/// the errors have always been reported.
fn check_args(args: &Args) -> anyhow::Result<Faults> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    if args.goaway_every == Some(0) || args.drop_every == Some(0) {
        bail!("--goaway-every and --drop-every must be at least 1");
    }
    let rejects = args
        .rejects
        .iter()
        .map(|s| parse_reject(s))
        .collect::<Result<Vec<_>, _>>()?;
    let binary_rejects = args
        .binary_rejects
        .iter()
        .map(|s| parse_binary_reject(s))
        .collect::<Result<Vec<_>, _>>()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as u32;
    let feedback = args
        .feedback
        .iter()
        .map(|s| parse_feedback(s, now))
        .collect::<Result<Vec<_>, _>>()?;
    if args.binary_drop_every == Some(0) {
        bail!("--binary-drop-every must be at least 1");
    }
    Ok(Faults {
        rejects,
        binary_rejects,
        feedback,
    })
}

/// What the simulators authenticate with: the server identity, the
/// provider-token key and the CAs client certificates must chain to.
struct Credentials {
    identity: tls::Identity,
    jwt_key: Option<jsonwebtoken::DecodingKey>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl Credentials {
    /// Load or generate them, writing what was asked for (`--write-ca`,
    /// `--write-p8`, `--write-client-cert`) and saying so on stderr.
    fn prepare(args: &Args) -> anyhow::Result<Self> {
        let pki = TestPki::generate()?;
        let identity = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => tls::load_identity(c, Some(k))?,
            _ => pki.server_identity()?,
        };
        if let Some(path) = &args.write_ca {
            std::fs::write(path, &pki.ca_pem).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("simulator: CA certificate written to {}", path.display());
        }
        Ok(Self {
            identity,
            jwt_key: jwt_key(args)?,
            client_ca: client_ca(args, &pki)?,
        })
    }

    /// How requests are authenticated, for people.
    fn describe(&self) -> &'static str {
        match (&self.jwt_key, &self.client_ca) {
            (Some(_), Some(_)) => "provider tokens or client certificates",
            (Some(_), None) => "provider tokens (ES256)",
            (None, Some(_)) => "client certificates",
            (None, None) => "none (every request accepted)",
        }
    }
}

/// `--jwt-key` read, or a key generated and written as `--write-p8`.
fn jwt_key(args: &Args) -> anyhow::Result<Option<jsonwebtoken::DecodingKey>> {
    Ok(match (&args.jwt_key, &args.write_p8) {
        (Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(
                jsonwebtoken::DecodingKey::from_ec_pem(&pem)
                    .map_err(|e| anyhow!("{}: not an EC public key PEM: {e}", path.display()))?,
            )
        }
        (None, Some(path)) => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            pushbridge::private_file::write(path, kp.serialize_pem().as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("simulator: provider key written to {}", path.display());
            Some(jsonwebtoken::DecodingKey::from_ec_pem(kp.public_key_pem().as_bytes())?)
        }
        (None, None) => None,
    })
}

/// `--client-ca` read, or a client certificate issued from the generated
/// CA and written as `--write-client-cert` (that CA then verifies it).
fn client_ca(args: &Args, pki: &TestPki) -> anyhow::Result<Option<Vec<CertificateDer<'static>>>> {
    Ok(match (&args.client_ca, &args.write_client_cert) {
        (Some(path), _) => Some(tls::load_certs(path)?),
        (None, Some(path)) => {
            let (cert, key) = pki.issue_client("pushbridge simulator client")?;
            pushbridge::private_file::write(path, format!("{cert}{key}").as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("simulator: client certificate written to {}", path.display());
            Some(vec![pki.ca_der()])
        }
        (None, None) => None,
    })
}

/// The HTTP/2 simulator's options from the command line.
fn http2_options(args: &Args, jwt_key: Option<jsonwebtoken::DecodingKey>, client_certs: bool) -> Options {
    Options {
        jwt_key: jwt_key.map(Arc::new),
        team_id: args.team_id.clone(),
        client_certs,
        goaway_every: args.goaway_every,
        drop_every: args.drop_every,
        fail_rate: args.fail_rate,
        fail_status: args.fail_status,
        max_concurrent_streams: args.max_streams,
        response_delay: (args.delay_ms > 0).then(|| std::time::Duration::from_millis(args.delay_ms)),
        stall_connections: args.stall_connections,
    }
}

/// Where records go: appended to `--record`, or stdout.
fn output(record: &Option<PathBuf>) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    Ok(match record {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    })
}

/// Run the simulators until Ctrl-C or SIGTERM, then print what they saw.
/// Fails on bad options, unreadable or unwritable files, and ports that
/// cannot be bound.
pub fn run(args: Args) -> anyhow::Result<()> {
    let faults = check_args(&args)?;
    let creds = Credentials::prepare(&args)?;
    let auth = creds.describe();
    let client_certs = creds.client_ca.is_some();
    let binary_server = match (&args.binary_listen, &creds.client_ca) {
        (None, _) => None,
        (Some(_), None) => bail!("the binary gateway authenticates clients by certificate: add --write-client-cert FILE or --client-ca CA.pem"),
        (Some(_), Some(cas)) => Some(tls::server_config(creds.identity.clone(), Some(cas), &[])?),
    };
    let server = tls::server_config(creds.identity, creds.client_ca.as_deref(), &[b"h2"])?;
    let options = http2_options(&args, creds.jwt_key, client_certs);
    let out = output(&args.record)?;
    let binary_out = output(&args.record)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let sim = start_http2(&args, server, options, out, &faults, auth).await?;
        let binary = match (binary_server, &args.binary_listen) {
            (Some(server), Some(addr)) => Some(start_binary(addr, &args, server, binary_out, &faults).await?),
            _ => None,
        };
        super::shutdown_signal().await;
        if let Some(b) = binary {
            stop_binary(b).await;
        }
        stop_http2(sim).await;
        Ok(())
    })
}

/// Listen on `--listen`, start the HTTP/2 simulator with the configured
/// refusals, and say so.
async fn start_http2(
    args: &Args,
    server: rustls::ServerConfig,
    options: Options,
    out: Box<dyn std::io::Write + Send>,
    faults: &Faults,
    auth: &str,
) -> anyhow::Result<Simulator> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let sim = Simulator::start(listener, server, options, Recorder::new(false, Some(out)))?;
    for (token, status, reason) in &faults.rejects {
        sim.state().reject(token, *status, reason);
    }
    eprintln!(
        "simulator: HTTP/2 provider API listening on {} (auth: {auth})",
        sim.addr()
    );
    Ok(sim)
}

/// Listen on `addr` (`--binary-listen`) and `--feedback-listen`, start
/// the binary simulator with its refusals and feedback list, and say so.
async fn start_binary(
    addr: &str,
    args: &Args,
    server: rustls::ServerConfig,
    out: Box<dyn std::io::Write + Send>,
    faults: &Faults,
) -> anyhow::Result<binary::Simulator> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let feedback_listener = match &args.feedback_listen {
        Some(f) => Some(
            tokio::net::TcpListener::bind(f)
                .await
                .with_context(|| format!("cannot listen on {f}"))?,
        ),
        None => None,
    };
    let options = binary::Options {
        drop_every: args.binary_drop_every,
        error_delay: (args.binary_error_delay_ms > 0)
            .then(|| std::time::Duration::from_millis(args.binary_error_delay_ms)),
    };
    let b = binary::Simulator::start(
        listener,
        feedback_listener,
        server,
        options,
        Recorder::new(false, Some(out)),
    )?;
    for (token, status) in &faults.binary_rejects {
        b.state().reject(token, *status);
    }
    for (token, time) in &faults.feedback {
        b.state().add_feedback(token, *time);
    }
    eprintln!(
        "simulator: binary gateway listening on {} (client certificates)",
        b.addr()
    );
    if let Some(f) = b.feedback_addr() {
        eprintln!(
            "simulator: feedback service listening on {f} ({} tokens listed)",
            faults.feedback.len()
        );
    }
    Ok(b)
}

/// Stop the binary simulator and print what it saw.
async fn stop_binary(b: binary::Simulator) {
    let s = b.state().clone();
    b.stop().await;
    eprintln!(
        "simulator: binary gateway accepted {} notifications in {} TLS records over {} connections, {} error responses ({} notifications discarded after them), {} dropped",
        s.recorder.count(),
        s.tls_records.load(Ordering::Relaxed),
        s.connections.load(Ordering::Relaxed),
        s.errors_sent.load(Ordering::Relaxed),
        s.discarded.load(Ordering::Relaxed),
        s.drops.load(Ordering::Relaxed)
    );
}

/// Stop the HTTP/2 simulator and print what it saw.
async fn stop_http2(sim: Simulator) {
    let s = sim.state().clone();
    sim.stop().await;
    eprintln!(
        "simulator: {} requests, {} notifications accepted, {} connections, {} GOAWAYs, {} dropped, {} failures injected",
        s.requests.load(Ordering::Relaxed),
        s.recorder.count(),
        s.connections.load(Ordering::Relaxed),
        s.goaways.load(Ordering::Relaxed),
        s.drops.load(Ordering::Relaxed),
        s.failures_injected.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn option_values() {
        assert_eq!(parse_fail_status("429").unwrap(), 429);
        assert_eq!(
            parse_fail_status("404").unwrap_err().to_string(),
            "must be 429, 500 or 503"
        );
        assert_eq!(
            parse_reject(&format!("{TOK}=410:Unregistered")).unwrap(),
            (TOK.to_owned(), 410, "Unregistered".to_owned())
        );
        assert!(parse_reject(&format!("{TOK}=200:Fine")).is_err());
        assert!(parse_reject("abc=410:Unregistered").is_err());
        assert_eq!(parse_binary_reject(&format!("{TOK}=8")).unwrap(), (TOK.to_owned(), 8));
        assert!(parse_binary_reject(&format!("{TOK}=0")).is_err());
        assert_eq!(parse_feedback(TOK, 7).unwrap(), (TOK.to_owned(), 7));
        assert_eq!(parse_feedback(&format!("{TOK}@9"), 7).unwrap(), (TOK.to_owned(), 9));
    }
}
