//! What `bench-http2` and `bench-binary` share: a test PKI in a temporary
//! directory, the bench app's config, the workload (one payload to 1000
//! devices, an hour to live), the feeder that hands it to a detached sink
//! (paced or as fast as the sink takes it), the tally of reported outcomes,
//! and the sink's shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use pushbridge::config::Config;
use pushbridge::outcome::{CompletionReceiver, Notification, Outcome};
use pushbridge::sink::{AppConfig, Detached};
use pushbridge::tls::TestPki;
use pushbridge_api::{DeviceToken, Environment};
use tokio::task::JoinHandle;

/// The topic of the bench app and of every notification.
pub(super) const TOPIC: &str = "com.example.bench";

/// How many distinct device tokens the notifications go to, round-robin.
const DEVICES: u64 = 1000;

/// A fresh test PKI, its CA certificate written to `ca` in `dir`.
pub(super) struct Pki {
    /// Holds `ca` and the credentials a bench writes next to it; removed
    /// when dropped, so it must outlive the sink.
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    /// The CA certificate (PEM) the sink trusts.
    pub ca: PathBuf,
}

impl Pki {
    /// Generate the PKI in a new temporary directory named `prefix…`.
    pub(super) fn new(prefix: &str) -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let pki = TestPki::generate()?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem)?;
        Ok(Pki { dir, pki, ca })
    }
}

/// The one app of the bench config `text` (`[[apps]]` lines).
pub(super) fn app(text: &str) -> anyhow::Result<AppConfig> {
    let config = Config::parse(text, std::path::Path::new("<bench>")).context("bench config")?;
    match config.apps.into_iter().next() {
        Some(app) => Ok(app),
        None => bail!("bench config without an app"),
    }
}

/// The notifications of a bench: number `i` goes to device `i % 1000 + 1`
/// with the same alert payload, expiring an hour after the bench started.
pub(super) struct Workload {
    /// Seconds since the Unix epoch.
    expiration: u64,
    payload: Arc<str>,
    tokens: Vec<DeviceToken>,
}

impl Workload {
    pub(super) fn new() -> anyhow::Result<Workload> {
        let expiration = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let payload: Arc<str> = Arc::from(
            r#"{"aps":{"alert":{"title":"bob","body":"are you coming to the meeting later today?"},"badge":3,"sound":"default","thread-id":"bob"}}"#,
        );
        let tokens: Vec<DeviceToken> = (0..DEVICES)
            .map(|i| DeviceToken::parse(&format!("{:064x}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Workload {
            expiration,
            payload,
            tokens,
        })
    }

    /// Notification number `i` (also its outbox id).
    fn note(&self, i: u64) -> Notification {
        let mut note = Notification::new(
            i as i64,
            TOPIC,
            self.tokens[(i % DEVICES) as usize].clone(),
            Environment::Production,
            self.payload.clone(),
        );
        note.expiration = self.expiration;
        note
    }
}

/// A detached sink being fed a workload.
pub(super) struct Feeding {
    /// The sink's reports.
    pub completions: CompletionReceiver,
    /// The sink's counters (for `--metrics`).
    pub counters: std::sync::Arc<pushbridge::outcome::Counters>,
    /// When the feeder was started, just before the first hand-over.
    pub started: Instant,
    /// Hands the notifications over; ends after the last or when the sink
    /// stops taking them.
    feeder: JoinHandle<()>,
    /// The sink; ends once its input is dropped and all it took is settled.
    sink: JoinHandle<()>,
}

impl Feeding {
    /// Spawn `app`'s sink (needs a runtime) and a task handing it
    /// notifications `0..n` of `workload`, at `rate` per second (0: as fast
    /// as the sink takes them), calling `on_send(i)` just before handing
    /// over number `i`.
    pub(super) fn start(
        app: &AppConfig,
        workload: Workload,
        n: u64,
        rate: u64,
        on_send: impl Fn(u64) + Send + 'static,
    ) -> anyhow::Result<Feeding> {
        let Detached {
            input: tx,
            completions,
            task: sink,
            all_counters,
            ..
        } = app.spawn_detached()?;
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..n {
                if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let note = workload.note(i);
                on_send(i);
                if tx.send(note).await.is_err() {
                    break;
                }
            }
        });
        Ok(Feeding {
            completions,
            counters: all_counters,
            started,
            feeder,
            sink,
        })
    }

    /// Wait for the feeder, then up to 10 s for the sink to end.
    pub(super) async fn finish(self) {
        let _ = self.feeder.await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.sink).await;
    }
}

/// Outcomes reported so far.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub delivered: u64,
    /// Every outcome but delivered.
    pub other: u64,
}

impl Tally {
    pub(super) fn count(&mut self, outcome: &Outcome) {
        if *outcome == Outcome::Delivered {
            self.delivered += 1;
        } else {
            self.other += 1;
        }
    }

    /// Outcomes of any kind.
    pub(super) fn reported(&self) -> u64 {
        self.delivered + self.other
    }

    /// An error unless all `n` notifications were delivered.
    pub(super) fn all_delivered(&self, n: u64) -> anyhow::Result<()> {
        if self.delivered != n {
            bail!("{} notifications were not delivered", n - self.delivered);
        }
        Ok(())
    }
}
