//! Credentials a running sink replaces on a reload: the sink builds them
//! from each new [`SinkConfig`] on [`super::SinkContext::reload`] and
//! publishes them, numbered, to its connection workers, which compare
//! numbers to know when their connection was made with old credentials.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use super::{SinkConfig, SinkError};

/// One set of credentials and its number (0 for those the sink started
/// with, then 1, 2, ... per reload).
pub struct Versioned<T> {
    /// 0 for the credentials the sink started with, +1 per reload that
    /// replaced them (logged as `generation`).
    pub generation: u64,
    /// The credentials themselves (what the sink built from its config).
    pub value: T,
}

/// What the workers hold: the current credentials, updated by [`follow`].
pub type Live<T> = watch::Receiver<Arc<Versioned<T>>>;

/// Start with `value` (generation 0).
pub fn channel<T>(value: T) -> (watch::Sender<Arc<Versioned<T>>>, Live<T>) {
    watch::channel(Arc::new(Versioned { generation: 0, value }))
}

/// Build credentials from every new config on `reload` and publish them on
/// `tx`; returns once no reload can come (the sender is gone). A config
/// that cannot be built (a file changed again since the reload checked
/// it) is logged and the running credentials stay.
pub async fn follow<T>(
    mut reload: watch::Receiver<Arc<SinkConfig>>,
    tx: watch::Sender<Arc<Versioned<T>>>,
    build: impl Fn(&SinkConfig) -> Result<T, SinkError>,
) {
    let mut generation = 0;
    while reload.changed().await.is_ok() {
        let config = reload.borrow_and_update().clone();
        match build(&config) {
            Ok(value) => {
                generation += 1;
                tx.send_replace(Arc::new(Versioned { generation, value }));
                tracing::info!(
                    generation,
                    "new credentials: new requests and connections use them; open connections finish their streams and close"
                );
            }
            Err(e) => tracing::error!(error = %e, "reloaded credentials cannot be used; keeping the running ones"),
        }
    }
}

/// Run `sink` to its end while `follow` serves reloads beside it (a
/// `follow` that ends first just stops serving them).
pub async fn run_with(sink: impl Future<Output = ()>, follow: impl Future<Output = ()>) {
    let follow = async {
        follow.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = sink => {}
        _ = follow => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::log::LogConfig;

    #[tokio::test]
    async fn each_reload_is_built_and_numbered_and_failures_keep_the_old_one() {
        let (reload_tx, reload) = watch::channel(Arc::new(SinkConfig::Log(LogConfig::default())));
        let (tx, live) = channel(String::from("start"));
        let build = |c: &SinkConfig| match c {
            SinkConfig::Log(l) if l.output.is_some() => Ok(format!("{:?}", l.output)),
            _ => Err(SinkError::config("output", "missing")),
        };
        let task = tokio::spawn(follow(reload, tx, build));
        let with = |p: &str| Arc::new(SinkConfig::Log(LogConfig { output: Some(p.into()) }));
        let mut seen = live.clone();
        reload_tx.send_replace(with("a.jsonl"));
        seen.changed().await.unwrap();
        assert_eq!(seen.borrow().generation, 1);
        assert!(seen.borrow().value.contains("a.jsonl"));
        reload_tx.send_replace(Arc::new(SinkConfig::Log(LogConfig::default())));
        reload_tx.send_replace(with("b.jsonl"));
        seen.changed().await.unwrap();
        assert_eq!(seen.borrow().generation, 2, "the failed build did not count");
        assert!(seen.borrow().value.contains("b.jsonl"));
        drop(reload_tx);
        task.await.unwrap();
    }
}
