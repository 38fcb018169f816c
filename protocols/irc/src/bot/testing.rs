//! Test support shared by the bot's modules: a bot on a test context with
//! a fake core that records the events it is sent, and helpers to feed it
//! lines and read what it did.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushbridge_api::{Context, Envelope, Event, Presence, Reply};

use super::{Bot, Output};
use crate::msg::Msg;
use crate::IrcConfig;

/// A valid device token.
pub const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A [`bot`] with the default config, registered on a server that
/// acknowledged the `account-tag` capability.
pub async fn account_tag_bot() -> (Bot, Arc<Mutex<Vec<Event>>>) {
    let (mut b, events) = bot(serde_json::json!({})).await;
    feed(
        &mut b,
        &[
            ":srv CAP * LS :account-tag",
            ":srv CAP * ACK :account-tag",
            ":srv 001 pushbridge :hi",
        ],
    )
    .await;
    (b, events)
}

/// A bot on a test context, and the events it sent the core.
pub async fn bot(extra: serde_json::Value) -> (Bot, Arc<Mutex<Vec<Event>>>) {
    let mut cfg = serde_json::json!({"network": "test", "server": "127.0.0.1:6667", "channels": ["#chat"]});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let config: IrcConfig = serde_json::from_value(cfg).unwrap();
    let (ctx, mut core) = Context::for_test("irc:test", config);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    tokio::spawn(async move {
        while let Some(Envelope { event, reply, .. }) = core.recv().await {
            let answer = match &event {
                Event::Message(_) => Ok(Reply::Queued(1)),
                Event::ListDevices { .. } => Ok(Reply::Devices(Vec::new())),
                Event::Settings { .. } => Ok(Reply::Settings(Default::default())),
                _ => Ok(Reply::Done),
            };
            seen.lock().unwrap().push(event);
            if let Some(r) = reply {
                let _ = r.send(answer);
            }
        }
    });
    (Bot::new(ctx).await.unwrap(), events)
}

/// Hand the bot `lines`; the lines it wants written (`FAIL <error>` for a
/// failure).
pub async fn feed(bot: &mut Bot, lines: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        bot.handle(&Msg::parse(l).unwrap(), &mut out).await;
    }
    out.into_iter()
        .map(|o| match o {
            Output::Now(l) | Output::Paced(l) => l,
            Output::Fail(e) => format!("FAIL {e}"),
        })
        .collect()
}

/// The users devices were registered for.
pub fn registers(events: &Mutex<Vec<Event>>) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Register { user, .. } => Some(user.to_string()),
            _ => None,
        })
        .collect()
}

/// Let the fake core take what the bot sent it.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The presence the bot reported last.
pub fn presence(events: &Mutex<Vec<Event>>) -> Option<Presence> {
    events.lock().unwrap().iter().rev().find_map(|e| match e {
        Event::Presence { presence, .. } => Some(*presence),
        _ => None,
    })
}
