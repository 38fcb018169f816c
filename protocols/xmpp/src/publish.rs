//! XEP-0357 publishes: the user's server publishes to a push node (with
//! the node's secret in the publish options) when a message reaches an
//! offline user; the component checks node and secret and hands the core
//! a message for the device behind the node, from the notification's
//! summary form (`urn:xmpp:push:summary`: sender, body, message count).
//!
//! A publish for a device the core no longer knows (APNS reported it gone)
//! is answered `cancel`/`item-not-found`, so the server disables the node
//! (XEP-0357 §8), and the node is forgotten.

use std::collections::HashMap;

use pushbridge_api::{Context, DeviceToken, Event, EventError, Message, Reply};
use subtle::ConstantTimeEq;

use crate::alert;
use crate::registry::{Registration, Registry, RegistryError};
use crate::stanza::{fields, Req, NS_DATA, NS_PUSH};
use crate::xml::Element;
use crate::XmppConfig;

/// What a publish carries.
struct Publish<'a> {
    /// The push node published to.
    node: &'a str,
    /// The `secret` of the publish options; empty when absent.
    secret: String,
    /// The notification's summary form: var → value.
    summary: HashMap<String, String>,
}

/// Read a `<pubsub/>` publish; the error is the text of a `bad-request`.
fn read(pubsub: &Element) -> Result<Publish<'_>, &'static str> {
    let publish = pubsub.find("publish", None).ok_or("no publish element")?;
    let node = publish.get("node").ok_or("publish without a node")?;
    let secret = pubsub
        .find("publish-options", None)
        .and_then(|o| o.find("x", Some(NS_DATA)))
        .map(fields)
        .and_then(|f| f.get("secret").cloned())
        .unwrap_or_default();
    let summary = publish
        .find("item", None)
        .and_then(|i| i.find("notification", Some(NS_PUSH)))
        .and_then(|n| n.find("x", Some(NS_DATA)))
        .map(fields)
        .unwrap_or_default();
    Ok(Publish { node, secret, summary })
}

/// Answer a XEP-0357 publish (`pubsub`, sent in `req`): the iq reply.
pub async fn publish(ctx: &Context<XmppConfig>, registry: &Registry, req: &Req, pubsub: &Element) -> Element {
    let p = match read(pubsub) {
        Ok(p) => p,
        Err(text) => return req.error("modify", "bad-request", Some(text)),
    };
    let reg = match registry.lookup(p.node).await {
        Ok(Some(r)) => r,
        Ok(None) => return req.error("cancel", "item-not-found", Some("unknown push node/secret")),
        Err(RegistryError::Store(e)) => return req.error("wait", "internal-server-error", Some(&e.to_string())),
        Err(e) => return e.reply(req),
    };
    if p.secret.is_empty() || !bool::from(p.secret.as_bytes().ct_eq(reg.secret.as_bytes())) {
        tracing::info!(
            adapter = ctx.name(),
            node = p.node,
            "publish with a missing or wrong secret refused"
        );
        return req.error("cancel", "item-not-found", Some("unknown push node/secret"));
    }
    let (Some(user), Ok(token)) = (registry.user(&reg.jid), DeviceToken::parse(&reg.token)) else {
        return req.error("cancel", "item-not-found", Some("registration unusable"));
    };
    let message = message(ctx, user, &reg.jid, token.clone(), &p.summary);
    match ctx.submit(Event::Message(message)).await {
        Ok(Reply::Queued(n)) if n > 0 => req.result(None),
        Ok(_) | Err(EventError::NoSuchDevice) => {
            device_gone(ctx, registry, p.node, &reg, &token).await;
            req.error("cancel", "item-not-found", Some("the device is no longer registered"))
        }
        Err(EventError::UnknownTopic(t)) => {
            req.error("cancel", "item-not-found", Some(&format!("unknown topic {t:?}")))
        }
        Err(e) => req.error("wait", "internal-server-error", Some(&e.to_string())),
    }
}

/// The message for the device `token` of `to` (the account `account`, a
/// bare JID), from the summary form; its title, subtitle and thread as
/// [`crate::alert`] shapes them.
fn message(
    ctx: &Context<XmppConfig>,
    to: pushbridge_api::UserId,
    account: &str,
    token: DeviceToken,
    summary: &HashMap<String, String>,
) -> Message {
    let shape = alert::shape(
        ctx.config(),
        account,
        summary.get("last-message-sender").map(String::as_str),
    );
    let body = summary.get("last-message-body").filter(|b| !b.is_empty()).cloned();
    let badge = summary.get("message-count").and_then(|c| c.trim().parse::<u32>().ok());
    Message {
        to,
        from: shape.title,
        subtitle: shape.subtitle,
        text: body,
        thread: Some(shape.thread),
        device: Some(token),
        respect_presence: false,
        badge,
    }
}

/// APNS reported the device gone (or it was removed): the node is dead,
/// so forget it; the user's server disables it on the error answer.
async fn device_gone(
    ctx: &Context<XmppConfig>,
    registry: &Registry,
    node: &str,
    reg: &Registration,
    token: &DeviceToken,
) {
    if let Err(e) = registry.forget(node, reg).await {
        tracing::warn!(adapter = ctx.name(), node, error = %e, "could not forget a dead node");
    }
    tracing::info!(
        adapter = ctx.name(),
        node,
        device = token.short(),
        "publish for a removed device: node disabled"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[tokio::test]
    async fn publishes_checked_and_turned_into_messages() {
        let f = fixture();
        let r = f
            .execute(&req(), &command("register-push-apns", &[("token", TOKEN)]))
            .await;
        let got = result_fields(&r);
        let (node, secret) = (got["node"].clone(), got["secret"].clone());
        let server = Req {
            id: "p1".into(),
            from: "localhost".into(),
            to: "push.localhost".into(),
        };
        let sum = [
            ("message-count", "3"),
            ("last-message-sender", "bob@localhost/pc"),
            ("last-message-body", "hi <there> & you"),
        ];
        // Unknown node, wrong secret, no secret: item-not-found.
        for p in [
            publish_stanza("nope", Some(&secret), &sum),
            publish_stanza(&node, Some("wrong"), &sum),
            publish_stanza(&node, None, &sum),
        ] {
            let r = f.publish(&server, &p).await;
            assert_eq!(condition(&r).0, "cancel");
            assert_eq!(condition(&r).1, "item-not-found");
        }
        let before = f.events.lock().unwrap().len();
        assert_eq!(before, 1, "only the registration reached the core");
        // A good one.
        let r = f.publish(&server, &publish_stanza(&node, Some(&secret), &sum)).await;
        assert_eq!(r.get("type"), Some("result"));
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.to.as_str(), "xmpp:alice@localhost");
                assert_eq!(m.from, "bob@localhost");
                assert_eq!(m.thread.as_deref(), Some("bob@localhost"));
                assert_eq!(m.subtitle, None);
                assert_eq!(m.text.as_deref(), Some("hi <there> & you"));
                assert_eq!(m.badge, Some(3));
                assert_eq!(m.device.as_ref().map(|d| d.as_str()), Some(TOKEN));
                assert!(!m.respect_presence);
            }
            other => panic!("{other:?}"),
        }
        // A summary without body or sender.
        let r = f.publish(&server, &publish_stanza(&node, Some(&secret), &[])).await;
        assert_eq!(r.get("type"), Some("result"));
        match f.events.lock().unwrap().last().unwrap() {
            Event::Message(m) => {
                assert_eq!(m.text, None);
                // Anonymous: titled with the account's server, grouped by
                // account (never the generic body, never one global thread).
                assert_eq!(m.from, "localhost");
                assert_eq!(m.thread.as_deref(), Some("alice@localhost"));
                assert_eq!(m.subtitle, None);
                assert_eq!(m.badge, None);
            }
            other => panic!("{other:?}"),
        }
        // The core removed the device (APNS said 410): item-not-found, and
        // the node is forgotten.
        f.core(Core::DeviceGone);
        let r = f.publish(&server, &publish_stanza(&node, Some(&secret), &sum)).await;
        assert_eq!(condition(&r).1, "item-not-found");
        assert!(f.ctx.state_get(&format!("node:{node}")).await.unwrap().is_none());
        assert_eq!(
            index(&f, "alice@localhost").await,
            Vec::<String>::new(),
            "index entry gone too"
        );
    }

    #[tokio::test]
    async fn publish_the_core_cannot_take_now_answers_wait_and_keeps_the_node() {
        let f = fixture();
        let (node, secret) = register_as(&f, "alice@localhost/phone", "d1").await.unwrap();
        f.core(Core::Unavailable);
        let r = f
            .publish(
                &server_req(),
                &publish_stanza(&node, Some(&secret), &[("message-count", "1")]),
            )
            .await;
        let (typ, cond, text) = condition(&r);
        assert_eq!((typ.as_str(), cond.as_str()), ("wait", "internal-server-error"));
        assert!(text.contains("store is busy"), "{text}");
        assert!(matches!(f.events.lock().unwrap().last(), Some(Event::Message(_))));
        // The registration stays, so the next publish goes through.
        assert!(f.ctx.state_get(&format!("node:{node}")).await.unwrap().is_some());
        assert_eq!(index(&f, "alice@localhost").await, std::slice::from_ref(&node));
        f.core(Core::Accepts);
        let r = f
            .publish(&server_req(), &publish_stanza(&node, Some(&secret), &[]))
            .await;
        assert_eq!(r.get("type"), Some("result"), "{r:?}");
    }
}
