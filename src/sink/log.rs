//! `protocol = "log"`: one JSON line per notification, sent nowhere.
//!
//! `{"topic":…,"device_token":…,"environment":…,"id":…,"payload":{"aps":…}}`
//! on stdout, or appended to `output` when set (a file created owner-only,
//! mode 0600, or tightened to it: the lines hold device tokens and message
//! text). A line is reported delivered once it has been written and
//! flushed.

use std::io::Write;
use std::path::PathBuf;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::SinkContext;
use crate::outcome::{Notification, Outcome};

/// The `log` sink's keys of an `[[apps]]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// File to append the JSON lines to instead of stdout.
    pub output: Option<PathBuf>,
}

/// One notification as a JSON line (with the trailing newline).
pub fn render_line(n: &Notification, out: &mut Vec<u8>) {
    // The payload is JSON we built ourselves; embed it as an object.
    let head = serde_json::json!({
        "topic": &*n.app,
        "device_token": n.token.as_str(),
        "environment": n.environment.as_str(),
        "id": n.id,
    })
    .to_string();
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(n.payload.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Write `ctx.input` until it closes.
pub async fn run(config: LogConfig, ctx: SinkContext) {
    let SinkContext {
        mut input, outcomes, ..
    } = ctx;
    let stopped = outcomes.clone();
    // Writes are blocking file/pipe I/O: keep them off the runtime.
    let (tx, mut rx) = mpsc::channel::<Vec<Notification>>(4);
    let output = config.output.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut w: Box<dyn Write> = match &output {
            Some(path) => match crate::private_file::append(path) {
                Ok(f) => Box::new(std::io::BufWriter::with_capacity(1 << 16, f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "log sink cannot open its output; notifications stay in the outbox");
                    return;
                }
            },
            None => Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout())),
        };
        let mut buf = Vec::with_capacity(1 << 16);
        while let Some(batch) = rx.blocking_recv() {
            buf.clear();
            for n in &batch {
                render_line(n, &mut buf);
            }
            if let Err(e) = w.write_all(&buf).and_then(|_| w.flush()) {
                tracing::error!(error = %e, "log sink write failed; notifications stay in the outbox");
                return;
            }
            for n in &batch {
                outcomes.settle(n, Outcome::Delivered);
            }
        }
    });
    let mut batch = Vec::with_capacity(512);
    while input.recv_many(&mut batch, 512).await > 0 {
        if tx.send(std::mem::take(&mut batch)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    stopped.stopped("log");
}
