//! Outcomes flowing back from the sinks: count them, log them, remove
//! devices APNS says are gone, and take finished notifications out of the
//! outbox.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Stats;
use crate::sink::{Outcome, SinkReport};
use crate::store::{Command, StoreHandle};

/// Handle reports until every sink has stopped.
pub async fn run(mut reports: mpsc::UnboundedReceiver<SinkReport>, store: StoreHandle, stats: Arc<Stats>) {
    while let Some(report) = reports.recv().await {
        let report = match report {
            SinkReport::Done(r) => r,
            SinkReport::DeviceGone {
                topic,
                token,
                since_ms,
                reason,
            } => {
                tracing::info!(device = token.short(), topic = %topic, reason = %reason, "APNS reports a device gone");
                let _ = store
                    .send_command(Command::RemoveDevice { token, topic, since_ms })
                    .await;
                continue;
            }
        };
        match &report.outcome {
            Outcome::Delivered => stats.inc_delivered(),
            Outcome::Rejected {
                reason,
                remove_device,
                since_ms,
            } => {
                stats.inc_rejected();
                tracing::warn!(id = report.id, device = report.token.short(), topic = %report.topic, reason = %reason, "notification rejected");
                if *remove_device {
                    let _ = store
                        .send_command(Command::RemoveDevice {
                            token: report.token.clone(),
                            topic: report.topic.clone(),
                            since_ms: *since_ms,
                        })
                        .await;
                }
            }
            Outcome::Expired { reason } => {
                stats.inc_expired();
                tracing::warn!(id = report.id, device = report.token.short(), topic = %report.topic, reason = %reason, "notification expired undelivered");
            }
        }
        if store.send_command(Command::Complete { id: report.id }).await.is_err() {
            tracing::warn!(
                id = report.id,
                "store closed before a report was recorded; it will be re-sent on the next start"
            );
        }
    }
}
